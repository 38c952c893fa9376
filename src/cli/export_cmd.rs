//! `fedolf export RUN_DIR [--out FILE]`: a run's last checkpointed model as safetensors, with
//! PyTorch's names and layouts.

use std::path::Path;

use anyhow::Context;
use fedolf::io::checkpoint::Checkpoint;
use fedolf::io::report::RunDir;

use crate::run_cmd::read_checkpoint;

/// `fedolf export RUN_DIR [--out FILE]`: the last checkpoint's model, read and checked
/// against the run's model before it is written, and read back after.
pub fn export(run_dir: &Path, out: Option<&Path>) -> anyhow::Result<()> {
    if !Checkpoint::exists(run_dir) {
        let trials: Vec<String> = std::fs::read_dir(run_dir)
            .with_context(|| format!("cannot read {}", run_dir.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| Checkpoint::exists(&e.path()))
            .map(|e| e.path().display().to_string())
            .collect();
        anyhow::bail!(
            "{} holds no checkpoint{}",
            run_dir.display(),
            if trials.is_empty() { String::new() } else { format!("; export one of its trials: {}", trials.join(", ")) }
        );
    }
    let dir = RunDir::open(run_dir).with_context(|| format!("cannot export {}", run_dir.display()))?;
    let cfg = dir.read_config()?;
    let checkpoint = read_checkpoint(&dir.path, &cfg).with_context(|| format!("cannot export {}", run_dir.display()))?;
    let source = run_dir.join(fedolf::io::checkpoint::FOLDER).join("model.safetensors");
    let target = out.map(Path::to_path_buf).unwrap_or_else(|| run_dir.join("model.safetensors"));
    checkpoint.export_model(&target).with_context(|| format!("cannot write {}", target.display()))?;
    println!("wrote {} (from {}, round {})", target.display(), source.display(), checkpoint.round);
    Ok(())
}

//! Runs that survive: checkpoints, `--resume` after SIGINT giving the uninterrupted run's
//! results bit for bit, `export`, the bare invocation's run folder, and NaN/inf handling.

mod results_csv;
mod scratch;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use results_csv::without_timing;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fedolf"))
}

fn subset() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/data/fashion-mnist-subset").to_string()
}

/// A small run: 10 iid clients on 2,000 images, evaluated every round.
fn small_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["run", "--quiet", "--out", out.to_str().unwrap(), "--data-dir", &subset()].iter().map(|s| s.to_string()).collect();
    for set in ["data.train_limit=2000", "data.test_limit=500", "data.partition=iid", "federation.clients=10", "federation.clients_per_round=5", "federation.eval_every=1"]
        .iter()
        .chain(extra)
    {
        args.extend(["--set".to_string(), set.to_string()]);
    }
    args
}

fn only_dir(out: &Path) -> PathBuf {
    let dirs: Vec<_> = std::fs::read_dir(out).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

fn status(dir: &Path) -> String {
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    s["status"].as_str().unwrap().to_string()
}

fn rows(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("rounds.csv")).map_or(0, |t| t.lines().count().saturating_sub(1))
}

/// Start a run, SIGINT it once `after` rounds are written, resume it; the resumed run must
/// equal an uninterrupted one (results minus timing, and the final weights, byte for byte).
fn interrupt_and_resume(extra: &[&str], rounds: usize, after: usize) {
    let label = extra.join(" ");
    let mut sets = vec![format!("federation.rounds={rounds}"), "checkpoint_every=2".to_string()];
    sets.extend(extra.iter().map(|s| s.to_string()));
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();

    let full = scratch::tempdir().unwrap();
    let o = bin().args(small_args(full.path(), &sets)).output().unwrap();
    assert!(o.status.success(), "{label}: {}", String::from_utf8_lossy(&o.stderr));
    let full_dir = only_dir(full.path());

    let cut = scratch::tempdir().unwrap();
    let child = bin().args(small_args(cut.path(), &sets)).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    let cut_dir = loop {
        let dirs: Vec<_> = std::fs::read_dir(cut.path()).unwrap().map(|e| e.unwrap().path()).collect();
        if let Some(d) = dirs.first().filter(|d| rows(d) >= after) {
            break d.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(600), "{label}: no progress");
        std::thread::sleep(Duration::from_millis(50));
    };
    // SIGINT, as Ctrl-C sends it.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) }, 0);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{label}: the run finished before the signal; raise `rounds`");
    assert!(err.contains("interrupted") && err.contains("fedolf run --resume"), "{label}: {err}");
    assert_eq!(status(&cut_dir), "interrupted");
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(cut_dir.join("checkpoint/state.json")).unwrap()).unwrap();
    assert!(state["round"].as_u64().unwrap() as usize >= after, "{label}: checkpoint at {}", state["round"]);

    let o = bin().args(["run", "--quiet", "--resume", cut_dir.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{label}: resume: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(status(&cut_dir), "completed");
    for file in ["rounds.csv", "clients.csv"] {
        assert_eq!(without_timing(&full_dir.join(file)), without_timing(&cut_dir.join(file)), "{label}: {file}");
    }
    let weights = |d: &Path| std::fs::read(d.join("checkpoint/model.safetensors")).unwrap();
    assert!(weights(&full_dir) == weights(&cut_dir), "{label}: final weights differ");
}

#[test]
fn fedolf_with_toa_resumes_bit_identically() {
    interrupt_and_resume(&["method=fedolf", "federation.clusters=3", "toa.s=0.5"], 10, 3);
}

#[test]
fn heterofl_resumes_bit_identically() {
    interrupt_and_resume(&["method=heterofl"], 10, 3);
}

#[test]
fn slt_resumes_bit_identically() {
    // SLT's stage schedule depends on the round: a resume must pick the right stage.
    interrupt_and_resume(&["method=slt"], 10, 3);
}

#[test]
fn adaptivefl_reward_resumes_bit_identically() {
    // Its reward tables are learnt round by round: the checkpoint must carry them.
    interrupt_and_resume(&["method=adaptivefl", "adaptivefl.selection=\"reward\"", "federation.clusters=3"], 10, 3);
}

#[test]
fn export_writes_pytorch_named_safetensors() {
    let out = scratch::tempdir().unwrap();
    let o = bin().args(small_args(out.path(), &["federation.rounds=1"])).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dir = only_dir(out.path());
    let target = out.path().join("cnn.safetensors");
    let o = bin().args(["export", dir.to_str().unwrap(), "--out", target.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&target).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().cloned().collect();
    names.sort();
    // The paper's CNN: conv5×5(32), conv5×5(64), linear(64·7·7 → 10), PyTorch layouts.
    assert_eq!(names, ["layers.0.conv.bias", "layers.0.conv.weight", "layers.1.conv.bias", "layers.1.conv.weight", "layers.2.linear.bias", "layers.2.linear.weight"]);
    assert_eq!(st.tensor("layers.0.conv.weight").unwrap().shape(), [32, 1, 5, 5]);
    assert_eq!(st.tensor("layers.2.linear.weight").unwrap().shape(), [10, 64 * 7 * 7]);
    // A folder without a checkpoint is refused, naming it.
    let o = bin().args(["export", out.path().to_str().unwrap()]).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no checkpoint"));
}

#[test]
fn bare_invocation_writes_into_runs() {
    // No arguments at all: the config comes from the environment, results go to ./runs/.
    let cwd = scratch::tempdir().unwrap();
    let config = cwd.path().join("small.toml");
    let mut text = fedolf::config::DEFAULT_TOML.replace("rounds = 60", "rounds = 1").replace("train_limit = 10000", "train_limit = 1000");
    text = text.replace("partition = \"dirichlet\"", "partition = \"iid\"").replace("test_limit = 0", "test_limit = 200");
    text = text.replace("data_dir = \"\"", &format!("data_dir = \"{}\"", subset()));
    std::fs::write(&config, text).unwrap();
    let o = bin().current_dir(cwd.path()).env("FEDOLF_CONFIG", &config).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = only_dir(&cwd.path().join("runs"));
    assert!(run.file_name().unwrap().to_string_lossy().starts_with("default-"));
    assert!(run.join("summary.json").exists() && run.join("checkpoint/model.safetensors").exists());
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 2, "only small.toml and runs/ in the working folder");
}

fn run(extra: &[&str]) -> (Output, PathBuf, scratch::TempDir) {
    let out = scratch::tempdir().unwrap();
    let o = bin().args(small_args(out.path(), extra)).output().unwrap();
    let dir = only_dir(out.path());
    (o, dir, out)
}

#[test]
fn nonfinite_clients_stop_the_run_or_are_skipped() {
    // lr = 1e30 makes every client's local training overflow in its first epoch.
    let (o, dir, _keep) = run(&["federation.rounds=2", "train.lr=1e30"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("round 1, client") && (err.contains("diverged") || err.contains("NaN")), "{err}");
    assert_eq!(status(&dir), "failed");
    // Skipped instead: the run completes, every client is counted, the model never moves.
    let (o, dir, _keep) = run(&["federation.rounds=2", "train.lr=1e30", "train.nonfinite=\"skip\""]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(dir.join("rounds.csv")).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "skipped").unwrap();
    let skipped: Vec<usize> = text.lines().skip(1).map(|l| l.split(',').nth(col).unwrap().parse().unwrap()).collect();
    assert_eq!(skipped, vec![5, 5]);
    // Nothing non-finite reached the global model.
    let bytes = std::fs::read(dir.join("checkpoint/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (name, view) in st.tensors() {
        assert!(view.data().chunks_exact(4).all(|c| f32::from_le_bytes(c.try_into().unwrap()).is_finite()), "{name}");
    }
}

/// Every file under `dir` with its bytes, to show a refused command changed nothing (but the
/// lock file, which only names the process that last held the folder).
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n != fedolf::io::lock::LOCK_FILE) {
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// Overwrite the first value of tensor number `index` (sorted by name) with NaN; returns its name.
fn poison_tensor(file: &Path, index: usize) -> String {
    let mut bytes = std::fs::read(file).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let mut names: Vec<&String> = header.as_object().unwrap().keys().filter(|k| *k != "__metadata__").collect();
    names.sort();
    let name = names[index].clone();
    let at = 8 + header_len + header[&name]["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(file, bytes).unwrap();
    name
}

/// A refused command: exit 1, one line naming `wants`, every file of `dir` as it was.
fn refused(args: &[&str], dir: &Path, wants: &[&str]) {
    let before = snapshot(dir);
    let o = bin().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    for w in wants {
        assert!(err.contains(w), "{args:?}: the error should name `{w}`: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(snapshot(dir) == before, "{args:?} changed {}", dir.display());
}

#[test]
fn damaged_run_folders_are_refused_and_left_as_they_were() {
    let out = scratch::tempdir().unwrap();
    let o = bin().args(small_args(out.path(), &["federation.rounds=1", "federation.clients_per_round=2"])).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = only_dir(out.path());
    let work = scratch::tempdir().unwrap();

    // No checkpoint/ (a run killed before its first one): nothing to resume, nothing touched.
    let bare = work.path().join("bare");
    copy_dir(&run, &bare);
    std::fs::remove_dir_all(bare.join("checkpoint")).unwrap();
    refused(&["run", "--resume", bare.to_str().unwrap()], &bare, &[bare.to_str().unwrap(), "no checkpoint", "nothing to resume"]);

    // A NaN in the checkpoint's weights is the file's fault, named with its tensor.
    let poisoned = work.path().join("poisoned");
    copy_dir(&run, &poisoned);
    let tensor = poison_tensor(&poisoned.join("checkpoint/model.safetensors"), 1);
    refused(&["run", "--resume", poisoned.to_str().unwrap()], &poisoned, &["checkpoint/model.safetensors", &tensor, "NaN"]);
    refused(&["export", poisoned.to_str().unwrap()], &poisoned, &["checkpoint/model.safetensors", &tensor]);

    // A truncated model file is not exported.
    let truncated = work.path().join("truncated");
    copy_dir(&run, &truncated);
    let model = truncated.join("checkpoint/model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..1000]).unwrap();
    refused(&["export", truncated.to_str().unwrap()], &truncated, &["checkpoint/model.safetensors", "not a safetensors file"]);
    refused(&["run", "--resume", truncated.to_str().unwrap()], &truncated, &["checkpoint/model.safetensors"]);

    // A checkpoint of another model (names that do not belong to the run's) is refused too.
    let other = work.path().join("other");
    copy_dir(&run, &other);
    let config = std::fs::read_to_string(other.join("config.toml")).unwrap().replace("name = \"cnn\"", "name = \"alexnet\"");
    std::fs::write(other.join("config.toml"), config).unwrap();
    refused(&["export", other.to_str().unwrap()], &other, &["checkpoint/state.json", "layers"]);

    // A multi-seed run whose unfinished trial has results but no checkpoint is refused.
    let trials_out = scratch::tempdir().unwrap();
    let o = bin().args(small_args(trials_out.path(), &["federation.rounds=1", "federation.clients_per_round=2", "seeds=[1, 2]"])).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let trials = only_dir(trials_out.path());
    let second = trials.join("trial-2");
    std::fs::remove_dir_all(second.join("checkpoint")).unwrap();
    let summary = std::fs::read_to_string(second.join("summary.json")).unwrap().replace("\"completed\"", "\"failed\"");
    std::fs::write(second.join("summary.json"), summary).unwrap();
    refused(&["run", "--resume", trials.to_str().unwrap()], &trials, &["trial-2", "no checkpoint"]);
}

#[test]
fn command_line_faults_read_as_one_clear_line() {
    // Piped into a reader that stops reading (`fedolf list | head -2`): a quiet end, no panic.
    let mut child = bin().arg("list").stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked") && o.status.code() != Some(101), "{:?}: {err}", o.status);

    // An invalid value given with --set: blamed on that --set, said once.
    let o = bin().args(["run", "--quiet", "--set", "federation.rounds=0"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.matches("must be at least 1").count(), 1, "{err}");
    assert!(err.contains("--set federation.rounds=0") && !err.contains("built in"), "{err}");

    // An unknown field given with --set: the --set is named, not the built-in config.
    let o = bin().args(["run", "--quiet", "--set", "nosuch.field=1"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("--set nosuch.field=1") && err.contains("unknown field") && !err.contains("built in"), "{err}");
}

#[test]
fn runs_created_at_once_get_folders_of_their_own() {
    // Eight runs asking for a folder in the same instant (the same second's timestamp):
    // eight folders, none shared.
    let out = scratch::tempdir().unwrap();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (out, barrier) = (out.path().to_path_buf(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                fedolf::io::report::RunDir::create(&out, "sweep").unwrap().path
            })
        })
        .collect();
    let mut paths: Vec<PathBuf> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 8, "{paths:?}");
    // Two `fedolf run`s started together into one --out both complete.
    let children: Vec<_> = (1..=2).map(|seed| bin().args(small_args(out.path(), &["federation.rounds=1", &format!("seed={seed}")])).output_async()).collect();
    for o in children.into_iter().map(|c| c.wait_with_output().unwrap()) {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let completed = std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().path()).filter(|d| d.join("summary.json").exists()).count();
    assert_eq!(completed, 2);
}

trait SpawnPiped {
    fn output_async(&mut self) -> std::process::Child;
}

impl SpawnPiped for Command {
    fn output_async(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
    }
}

#[test]
fn a_killed_run_resumes_at_once_and_a_locked_one_is_refused_untouched() {
    let out = scratch::tempdir().unwrap();
    let mut child = bin().args(small_args(out.path(), &["federation.rounds=8", "checkpoint_every=2"])).output_async();
    let started = Instant::now();
    let dir = loop {
        let dirs: Vec<_> = std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().path()).collect();
        if let Some(d) = dirs.first().filter(|d| rows(d) >= 3) {
            break d.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(600), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let holder = std::fs::read_to_string(dir.join(fedolf::io::lock::LOCK_FILE)).unwrap();
    assert!(holder.starts_with(&format!("process {}", child.id())), "{holder}");
    // While another process holds the folder, a resume is refused, naming the folder and the
    // holder, and changes no file.
    let lock = fedolf::io::lock::FolderLock::acquire(&dir).unwrap();
    let before = snapshot(&dir);
    let o = bin().args(["run", "--quiet", "--resume", dir.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains(dir.to_str().unwrap()) && err.contains(&format!("is being written by process {}", std::process::id())), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(before == snapshot(&dir), "a refused writer changed the folder");
    // The SIGKILLed run's own lock died with it: once the holder lets go, it resumes at once.
    drop(lock);
    let o = bin().args(["run", "--quiet", "--resume", dir.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(status(&dir), "completed");
}

#[test]
fn a_device_that_is_not_there_is_one_line_and_writes_nothing() {
    // CUDA without the NVIDIA driver, wgpu with no Vulkan driver visible (the loader is
    // pointed at none); a binary without the backend says so. Where the device is there, the
    // run simply works, and there is nothing to check.
    for device in ["cuda", "wgpu"] {
        let out = scratch::tempdir().unwrap();
        let o = bin().args(small_args(out.path(), &["federation.rounds=1"])).args(["--device", device]).env("VK_DRIVER_FILES", "/nonexistent/icd.json").env("VK_ICD_FILENAMES", "/nonexistent/icd.json").output().unwrap();
        if o.status.success() {
            continue;
        }
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{device}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{device}: {err}");
        assert!(err.contains(&format!("device `{device}`")) && !err.contains("panicked"), "{device}: {err}");
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0, "{device}: a run folder was made for a run that cannot start");
    }
}

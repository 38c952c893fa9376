//! `fedolf plot RUN_DIR`: a finished run's accuracy against round and against cumulative
//! energy, as SVG files in the run folder.

use std::path::Path;

use anyhow::bail;
use fedolf::io::plot::{line_chart, Series};
use fedolf::io::report::RoundsCsv;

/// Accuracy vs round and accuracy vs cumulative energy from `rounds.csv`.
pub fn plot(run_dir: &Path) -> anyhow::Result<()> {
    let csv = run_dir.join("rounds.csv");
    let rounds = RoundsCsv::read(&csv)?;
    let (round, accuracy) = (rounds.full_column("round")?, rounds.column("accuracy")?);
    let (compute, comm) = (rounds.full_column("energy_compute_j")?, rounds.full_column("energy_comm_j")?);
    let (mut by_round, mut by_energy, mut energy) = (Vec::new(), Vec::new(), 0.0);
    for i in 0..round.len() {
        energy += (compute[i] + comm[i]) / 1e3;
        if let Some(acc) = accuracy[i] {
            by_round.push((round[i], acc * 100.0));
            by_energy.push((energy, acc * 100.0));
        }
    }
    if by_round.is_empty() {
        bail!("{}: no evaluated rounds to plot", csv.display());
    }
    let name = run_dir.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let a = run_dir.join("accuracy-vs-round.svg");
    line_chart(&a, &format!("{name}: test accuracy"), "round", "accuracy (%)", &[Series { name: name.clone(), points: by_round }])?;
    let e = run_dir.join("accuracy-vs-energy.svg");
    line_chart(&e, &format!("{name}: accuracy vs energy"), "cumulative energy (kJ)", "accuracy (%)", &[Series { name, points: by_energy }])?;
    println!("wrote {}\nwrote {}", a.display(), e.display());
    Ok(())
}

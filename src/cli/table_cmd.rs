//! `fedolf table GRID`: every (seed, row) run of a grid file into one folder — seed by seed, so
//! a grid stopped part-way already holds whole seeds of the table — then the table and the
//! plot. Running the same command again continues: finished runs are kept, the run in flight
//! resumes from its checkpoint (its results are those of an uninterrupted run), failed runs
//! are reported, not retried.

use std::io::IsTerminal;
use std::time::Instant;

use anyhow::Context;
use fedolf::config::Config;
use fedolf::engine;
use fedolf::io::checkpoint::Checkpoint;
use fedolf::io::grid::{self, Grid, GridDir, GridRow, TableRow};
use fedolf::io::plot::{band_chart, Band};
use fedolf::io::report::{write_atomic, RunDir, Summary};
use fedolf::io::trials::TrialsSummary;
use fedolf::runtime::backend::{probe, DeviceKind};
use fedolf::runtime::memory::CountingAllocator;
use fedolf_datasets::Dataset;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::args::TableArgs;
use crate::run_cmd::{read_checkpoint, run_trial, stop_on_signals, TrialOptions};

pub fn table(args: TableArgs, alloc: &'static CountingAllocator) -> anyhow::Result<()> {
    let grid = Grid::read(&args.grid)?;
    if !args.report {
        // Every device the grid runs on answers before its folder is touched.
        let mut devices: Vec<DeviceKind> = Vec::new();
        for row in &grid.rows {
            if !devices.contains(&row.config.device) {
                devices.push(row.config.device);
            }
        }
        for device in devices {
            probe(device)?;
        }
    }
    let dir = GridDir::open(&args.out, &grid, !args.report)?;
    if !args.report {
        run_grid(&grid, &dir, &args, alloc)?;
    }
    report(&grid, &dir)
}

/// What one run of the grid is when the command starts.
enum State {
    Done,
    Failed(String),
    /// Resume from the trial's checkpoint.
    Resume,
    /// Run from round 1 (a trial stopped before its first checkpoint starts over: the same
    /// seed gives the same rounds).
    Fresh,
}

fn state(trial: &std::path::Path, cfg: &Config) -> anyhow::Result<State> {
    Ok(match grid::trial_summary(trial) {
        Some(s) if s.status == "completed" => State::Done,
        Some(s) if s.status == "failed" => State::Failed(s.error.unwrap_or_default()),
        _ if Checkpoint::exists(trial) => {
            read_checkpoint(trial, cfg).with_context(|| format!("cannot resume {}", trial.display()))?;
            State::Resume
        }
        _ => State::Fresh,
    })
}

fn run_grid(grid: &Grid, dir: &GridDir, args: &TableArgs, alloc: &'static CountingAllocator) -> anyhow::Result<()> {
    let stop = stop_on_signals()?;
    let (runs, rounds) = grid.size();
    // Every checkpoint is read back before anything runs, so a damaged one stops the grid
    // before it writes.
    let mut plan = Vec::with_capacity(runs);
    for &seed in &grid.seeds {
        for row in &grid.rows {
            let trial_cfg = row.config.trial(seed);
            let s = state(&dir.trial(row, seed), &trial_cfg)?;
            plan.push((seed, row, trial_cfg, s));
        }
    }
    let ended: Vec<usize> = plan.iter().filter(|p| matches!(p.3, State::Done | State::Failed(_))).map(|p| p.2.federation.rounds).collect();
    let (done_rounds, mut done_runs) = (ended.iter().sum::<usize>(), ended.len());
    let terminal = std::io::stderr().is_terminal();
    let bar = ProgressBar::with_draw_target(Some(rounds as u64), if terminal { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() });
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} rounds {elapsed_precise} eta {eta_precise} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_position(done_rounds as u64);
    bar.reset_eta();
    let say = |line: String| {
        if args.quiet {
        } else if terminal {
            bar.println(line);
        } else {
            eprintln!("{line}");
        }
    };
    say(format!("grid {}: {} rows × {} seeds = {runs} runs, {rounds} rounds; {done_runs} runs already done; results in {}", grid.name, grid.rows.len(), grid.seeds.len(), dir.path.display()));
    let started = Instant::now();
    let mut rounds_now = 0usize;
    let mut data: Option<(fedolf::config::DataConfig, Dataset)> = None;
    for (seed, row, trial_cfg, s) in plan {
        match s {
            State::Done => continue,
            State::Failed(why) => {
                say(format!("  {} seed {seed}: failed earlier ({why}); move {} away to run it again", row.name, dir.trial(row, seed).display()));
                continue;
            }
            State::Resume | State::Fresh => {}
        }
        let resume = matches!(s, State::Resume);
        if resume {
            say(format!("  {} seed {seed}: resuming from its checkpoint", row.name));
        }
        bar.set_prefix(format!("runs {done_runs}/{runs}"));
        bar.set_message(format!("{} seed {seed}", row.name));
        if data.as_ref().is_none_or(|(d, _)| *d != trial_cfg.data) {
            data = Some((trial_cfg.data.clone(), engine::load_dataset(&trial_cfg)?));
        }
        let dataset = &data.as_ref().expect("loaded above").1;
        let row_dir = RunDir { path: dir.row(row) };
        std::fs::create_dir_all(&row_dir.path).with_context(|| format!("cannot create {}", row_dir.path.display()))?;
        row_dir.write_config(&row.config).with_context(|| format!("writing {}", row_dir.path.join("config.toml").display()))?;
        let trial_dir = row_dir.trial(seed).with_context(|| format!("cannot create trial-{seed} in {}", row_dir.path.display()))?;
        trial_dir.write_config(&trial_cfg).with_context(|| format!("writing {}", trial_dir.path.join("config.toml").display()))?;
        let opts = TrialOptions { quiet: true, alloc, stop: &stop, resume, grid: Some(&bar) };
        let before = bar.position();
        let (summary, result) = run_trial(&trial_cfg, dataset, &trial_dir, &opts, None)?;
        rounds_now += (bar.position() - before) as usize;
        write_row_summary(grid, dir, row)?;
        match result {
            Err(fedolf::engine::error::SimError::Interrupted { .. }) => {
                bar.abandon();
                anyhow::bail!("interrupted during {} seed {seed} (checkpointed); continue with: fedolf table {} --out {}", row.name, grid.file.display(), args.out.display());
            }
            // A run that fails before its first round failed on its setup (data, partition,
            // model): every run of the grid would, so the grid stops, and the trial is not
            // kept as failed, so the next start tries it again.
            Err(e) if summary.rounds_completed == 0 && !resume => {
                bar.abandon();
                let _ = std::fs::remove_dir_all(&trial_dir.path);
                write_row_summary(grid, dir, row)?;
                anyhow::bail!("{} seed {seed}: {e} (nothing ran; fix {} and start again)", row.name, grid.file.display());
            }
            Err(e) => say(format!("  {} seed {seed}: FAILED: {e}", row.name)),
            Ok(_) => {
                done_runs += 1;
                let left = rounds.saturating_sub(bar.position() as usize);
                let eta = if rounds_now > 0 { started.elapsed().as_secs_f64() / rounds_now as f64 * left as f64 } else { 0.0 };
                say(format!(
                    "  [{done_runs}/{runs} runs, {} elapsed, eta {}] {} seed {seed}: final {}, mean of last evals {}, {:.0} s",
                    clock(started.elapsed().as_secs_f64()),
                    clock(eta),
                    row.name,
                    pct(summary.final_accuracy),
                    pct(summary.mean_last_accuracy),
                    summary.wall_s
                ));
            }
        }
    }
    bar.finish_and_clear();
    Ok(())
}

fn pct(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |a| format!("{:.2} %", a * 100.0))
}

fn clock(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// The row folder's `summary.json`: its trials so far, with their spreads.
fn write_row_summary(grid: &Grid, dir: &GridDir, row: &GridRow) -> anyhow::Result<()> {
    let trials: Vec<Summary> = grid.seeds.iter().filter_map(|&s| grid::trial_summary(&dir.trial(row, s))).collect();
    let path = dir.row(row);
    RunDir { path: path.clone() }.write_summary(&TrialsSummary::new(&grid.seeds, trials)).with_context(|| format!("writing {}", path.join("summary.json").display()))
}

/// Print the table and write `table.md`, `table.csv` and `accuracy.svg` into the grid folder.
fn report(grid: &Grid, dir: &GridDir) -> anyhow::Result<()> {
    let rows = grid::collect(grid, dir)?;
    let md = grid::markdown(grid, &rows);
    let md_path = dir.path.join("table.md");
    let csv_path = dir.path.join("table.csv");
    let header = format!(
        "Grid `{}` ({}): mean ± sample std over the completed seeds of {:?}; accuracy in %, bytes summed over the run, peak = the mean over rounds of the largest client peak.\n\n",
        grid.name,
        grid.file.display(),
        grid.seeds
    );
    write_atomic(&md_path, format!("{header}{md}").as_bytes()).with_context(|| format!("writing {}", md_path.display()))?;
    write_atomic(&csv_path, grid::csv(&rows).as_bytes()).with_context(|| format!("writing {}", csv_path.display()))?;
    println!("\n{header}{md}");
    println!("wrote {}\nwrote {}", md_path.display(), csv_path.display());
    let bands: Vec<Band> = rows.iter().filter(|r| !r.curves.is_empty()).map(|r: &TableRow| Band { name: r.name.clone(), points: grid::band(&r.curves) }).collect();
    if !bands.is_empty() {
        let svg = dir.path.join("accuracy.svg");
        band_chart(&svg, &format!("{}: test accuracy (mean, min–max over seeds)", grid.name), "round", "accuracy (%)", &bands)?;
        println!("wrote {}", svg.display());
    }
    Ok(())
}

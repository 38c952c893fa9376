//! `fedolf run`: resolve the config, load data, run on the chosen backend with a progress
//! bar, and write the run folder (also when the run fails part-way).

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use fedolf::runtime::backend::{probe, with_backend, BackendTask, DeviceKind};
use fedolf::config::{Config, DEFAULT_TOML};
use fedolf::runtime::memory::CountingAllocator;
use fedolf::io::report::{RunDir, Summary};
use fedolf::io::run_writer::RunWriter;
use fedolf::io::checkpoint::{Checkpoint, CheckpointError};
use fedolf::engine::error::SimError;
use fedolf::engine::{self, RoundObserver, RunInfo, RunStart};
use fedolf::records::RoundRecord;
use fedolf::io::trials::{Spread, TrialsSummary};
use fedolf_datasets::Dataset;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::args::RunArgs;

/// Resolve the config from the file (or built-in default) and the command-line overrides.
pub fn resolve_config(args: &RunArgs) -> anyhow::Result<Config> {
    let (text, origin) = match &args.config {
        Some(path) => (
            std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (DEFAULT_TOML.to_string(), "experiments/default.toml (built in)".to_string()),
    };
    let quoted = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut overrides = args.overrides.clone();
    if let Some(seed) = args.seed {
        overrides.push(format!("seed={seed}"));
        overrides.push("seeds=[]".into());
    }
    if !args.seeds.is_empty() {
        let list: Vec<String> = args.seeds.iter().map(u64::to_string).collect();
        overrides.push(format!("seeds=[{}]", list.join(", ")));
    }
    if let Some(device) = &args.device {
        let kind = DeviceKind::parse(device)?;
        overrides.push(format!("device={}", quoted(kind.name())));
    }
    if let Some(dir) = &args.data_dir {
        overrides.push(format!("data.data_dir={}", quoted(&dir.display().to_string())));
    }
    Ok(Config::from_toml(&text, &origin, &overrides)?)
}

pub fn run(args: RunArgs, alloc: &'static CountingAllocator) -> anyhow::Result<()> {
    let stop = stop_on_signals()?;
    // The folder is locked before anything reads it for writing: one writer per run folder.
    let (cfg, dir, resuming, _lock) = match &args.resume {
        Some(path) => {
            let dir = RunDir::open(path).with_context(|| format!("cannot resume {}", path.display()))?;
            let lock = dir.lock()?;
            let cfg = dir.read_config()?;
            probe(cfg.device)?;
            (cfg, dir, true, lock)
        }
        None => {
            let cfg = resolve_config(&args)?;
            // The device answers before the run folder exists.
            probe(cfg.device)?;
            let dir = RunDir::create(&args.out, &cfg.name).with_context(|| format!("cannot create a run folder in {}", args.out.display()))?;
            let lock = dir.lock()?;
            dir.write_config(&cfg).context("cannot write the run's config")?;
            (cfg, dir, false, lock)
        }
    };
    if resuming {
        check_resumable(&cfg, &dir)?;
    }
    let dataset = engine::load_dataset(&cfg)?;
    let opts = TrialOptions { quiet: args.quiet, alloc, stop: &stop, resume: resuming, grid: None };
    if cfg.seeds.is_empty() {
        let (summary, result) = run_trial(&cfg, &dataset, &dir, &opts, None)?;
        check_end(result, &dir)?;
        print_table(&summary, &dir);
        return Ok(());
    }
    // The paper's protocol: one trial per seed, each in its own folder; the summary of all
    // trials is rewritten after each one, so a failure keeps what finished. Resuming skips
    // the trials that completed and continues the first that did not.
    let seeds = cfg.trial_seeds();
    let mut trials = Vec::with_capacity(seeds.len());
    for (i, &seed) in seeds.iter().enumerate() {
        let trial_cfg = cfg.trial(seed);
        let trial_dir = dir.trial(seed).with_context(|| format!("cannot create trial-{seed} in {}", dir.path.display()))?;
        if resuming {
            if let Some(done) = completed_summary(&trial_dir.path) {
                trials.push(done);
                continue;
            }
        }
        trial_dir.write_config(&trial_cfg).context("writing the trial's config.toml")?;
        let label = format!("trial {}/{} (seed {seed})", i + 1, seeds.len());
        let (summary, result) = run_trial(&trial_cfg, &dataset, &trial_dir, &opts, Some(label))?;
        trials.push(summary);
        dir.write_summary(&TrialsSummary::new(&seeds, trials.clone())).context("writing summary.json")?;
        check_end(result, &dir).with_context(|| format!("trial with seed {seed}"))?;
    }
    dir.write_summary(&TrialsSummary::new(&seeds, trials.clone())).context("writing summary.json")?;
    print_trials_table(&TrialsSummary::new(&seeds, trials), &dir);
    Ok(())
}

/// SIGINT / SIGTERM set `stop` (the run checkpoints and ends); a second one ends the
/// process at once.
pub(crate) fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&stop)).context("installing the signal handler")?;
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing the signal handler")?;
    }
    Ok(stop)
}

/// An interruption is reported with the command that resumes the run.
fn check_end(result: Result<Vec<RoundRecord>, SimError>, dir: &RunDir) -> anyhow::Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(e @ SimError::Interrupted { .. }) => {
            let root = dir.path.parent().filter(|p| p.join("config.toml").exists() && dir.path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("trial-")));
            let run = root.unwrap_or(&dir.path);
            Err(anyhow::anyhow!("{e}; resume with: fedolf run --resume {}", run.display()))
        }
        Err(e) => Err(e.into()),
    }
}

/// A trial folder's summary when that trial completed.
fn completed_summary(dir: &Path) -> Option<Summary> {
    fedolf::io::grid::trial_summary(dir).filter(|s| s.status == "completed")
}

/// Before a resume writes anything: the checkpoint of every run it continues reads back
/// against the run's model (a single run must have one). A multi-seed run's trials that never
/// started run from round 1; one that holds results but no checkpoint is refused, since
/// running it again would overwrite them.
fn check_resumable(cfg: &Config, dir: &RunDir) -> anyhow::Result<()> {
    if cfg.seeds.is_empty() {
        read_checkpoint(&dir.path, cfg).with_context(|| format!("cannot resume {}", dir.path.display()))?;
        return Ok(());
    }
    for seed in cfg.trial_seeds() {
        let trial = dir.path.join(format!("trial-{seed}"));
        let trial_cfg = cfg.trial(seed);
        if completed_summary(&trial).is_some() {
            continue;
        }
        if Checkpoint::exists(&trial) {
            read_checkpoint(&trial, &trial_cfg).with_context(|| format!("cannot resume {}", dir.path.display()))?;
        } else if trial.join("rounds.csv").exists() {
            anyhow::bail!(
                "cannot resume {}: {} holds results but no checkpoint, so there is nothing to resume it from and running it again would overwrite them (nothing was changed; move that folder away to run the trial again)",
                dir.path.display(),
                trial.display()
            );
        }
    }
    Ok(())
}

/// The checkpoint in `run`, read on a backend this binary has (the CPU's when compiled in:
/// reading needs only the model's names and shapes).
pub(crate) fn read_checkpoint(run: &Path, cfg: &Config) -> anyhow::Result<Checkpoint> {
    let compiled = DeviceKind::compiled();
    let device = if compiled.contains(&DeviceKind::Cpu) { DeviceKind::Cpu } else { compiled[0] };
    Ok(with_backend(device, ReadCheckpoint { run, cfg })??)
}

struct ReadCheckpoint<'a> {
    run: &'a Path,
    cfg: &'a Config,
}

impl BackendTask for ReadCheckpoint<'_> {
    type Output = Result<Checkpoint, SimError>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        engine::run_folder::read_checkpoint::<B>(self.run, self.cfg, &device)
    }
}

pub(crate) struct TrialOptions<'a> {
    pub quiet: bool,
    pub alloc: &'static CountingAllocator,
    pub stop: &'a AtomicBool,
    /// Continue from the trial's checkpoint when it has one.
    pub resume: bool,
    /// A grid's bar over all its rounds (`fedolf table`): the trial advances it instead of a
    /// bar of its own, and prints no line per round.
    pub grid: Option<&'a ProgressBar>,
}

/// One seed's run into `dir`: progress, round files, checkpoints, `summary.json` (also on
/// failure or interruption).
pub(crate) fn run_trial(
    cfg: &Config,
    dataset: &Dataset,
    dir: &RunDir,
    opts: &TrialOptions<'_>,
    label: Option<String>,
) -> anyhow::Result<(Summary, Result<Vec<RoundRecord>, SimError>)> {
    let started = Instant::now();
    let mut progress = Progress::new(cfg, dir, opts.quiet, label, opts.grid);
    let memory = (cfg.device == DeviceKind::Cpu).then_some(opts.alloc);
    let resume = (opts.resume && Checkpoint::exists(&dir.path)).then_some(dir.path.as_path());
    let start = RunStart { resume, stop: Some(opts.stop) };
    let task = SimTask { cfg, dataset, memory, observer: &mut progress, start };
    let result = with_backend(cfg.device, task)?;
    progress.finish();
    let error = result.as_ref().err().map(|e| e.to_string());
    let mut summary = Summary::new(cfg, &dataset.source, progress.writer.records(), started.elapsed().as_secs_f64(), error);
    if matches!(result, Err(SimError::Interrupted { .. })) {
        summary.status = "interrupted".into();
    }
    progress.writer.summary(&summary).context("writing summary.json")?;
    Ok((summary, result))
}

struct SimTask<'a> {
    cfg: &'a Config,
    dataset: &'a Dataset,
    memory: Option<&'static CountingAllocator>,
    observer: &'a mut dyn RoundObserver,
    start: RunStart<'a>,
}

impl BackendTask for SimTask<'_> {
    type Output = Result<Vec<RoundRecord>, SimError>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        engine::run_from::<B>(self.cfg, self.dataset, &device, self.memory, self.observer, self.start)
    }
}

/// Progress bar over rounds (hidden when stderr is not a terminal or with --quiet), one log
/// line per round, and `rounds.csv` rewritten after every round.
struct Progress {
    /// The run's results files and checkpoints.
    writer: RunWriter,
    bar: ProgressBar,
    /// False when the bar is a grid's (it outlives the trial).
    own_bar: bool,
    quiet: bool,
    rounds: usize,
    last_accuracy: Option<f64>,
    /// `trial i/n (seed s)` in multi-seed runs.
    label: Option<String>,
}

impl Progress {
    fn new(cfg: &Config, dir: &RunDir, quiet: bool, label: Option<String>, grid: Option<&ProgressBar>) -> Self {
        let rounds = cfg.federation.rounds;
        if let Some(bar) = grid {
            return Self { writer: RunWriter::new(dir.clone()), bar: bar.clone(), own_bar: false, quiet: true, rounds, last_accuracy: None, label };
        }
        let bar = ProgressBar::with_draw_target(Some(rounds as u64), ProgressDrawTarget::stderr());
        if quiet || !std::io::stderr().is_terminal() {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix}round {pos}/{len} [{bar:30}] {elapsed_precise} eta {eta} {msg}")
                .expect("static template")
                .progress_chars("=> "),
        );
        if let Some(l) = &label {
            bar.set_prefix(format!("{l} "));
        }
        Self { writer: RunWriter::new(dir.clone()), bar, own_bar: true, quiet, rounds, last_accuracy: None, label }
    }

    fn say(&self, line: String) {
        if self.quiet {
            return;
        }
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    fn finish(&self) {
        if self.own_bar {
            self.bar.finish_and_clear();
        }
    }
}

impl RoundObserver for Progress {
    fn on_calibration(&mut self, row: &fedolf::accounting::budget::ProbeRow, of: usize) {
        if row.capacity + 1 == of {
            self.say(format!("memory budgets: calibrating the peak predictor (2 SGD steps of the method's plan at each of {of} capacities)"));
        }
        self.say(format!(
            "  capacity {:>2} (l = {:>2} not trained): resident {:.1} MB + measured {:.1} MB ÷ Eq. 23 {:.1} MB = ρ {:.3}",
            row.capacity,
            row.frozen,
            row.resident as f64 / 1e6,
            row.measured_transient as f64 / 1e6,
            row.theoretical_transient as f64 / 1e6,
            row.ratio()
        ));
    }

    fn on_start(&mut self, info: &RunInfo) {
        if let Some(l) = &self.label {
            self.say(l.clone());
        }
        self.say(format!(
            "data: {} ({} train / {} test) | model: {} layers, {:.2} M params | frozen per cluster: {} | {} workers × {} threads | results: {}",
            info.dataset_source,
            info.train_size,
            info.test_size,
            info.num_layers,
            info.model_params as f64 / 1e6,
            match (&info.cluster_frozen, &info.calibration) {
                (Some(f), _) => format!("{f:?}"),
                (None, Some(_)) => "chosen each round by each client's memory budget".to_string(),
                (None, None) => "the layers below the SLT stage".to_string(),
            },
            info.workers.workers,
            info.workers.threads_per_worker,
            self.writer.place()
        ));
    }

    fn on_resume(&mut self, records: &[RoundRecord]) -> std::io::Result<()> {
        self.writer.resume_from(records)?;
        self.last_accuracy = records.iter().rev().find_map(|r| r.accuracy);
        if self.own_bar {
            self.bar.set_position(records.len() as u64);
        } else {
            self.bar.inc(records.len() as u64);
        }
        self.say(format!("resumed after round {} from {}", records.len(), self.writer.place_of(fedolf::io::checkpoint::FOLDER)));
        Ok(())
    }

    fn on_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        self.writer.checkpoint(checkpoint)
    }

    fn on_round(&mut self, r: &RoundRecord) -> std::io::Result<()> {
        self.writer.push(r.clone())?;
        if r.accuracy.is_some() {
            self.last_accuracy = r.accuracy;
        }
        let acc = r.accuracy.map_or("      ".to_string(), |a| format!("{:5.1}%", a * 100.0));
        let mem = r.peak_mem_mb.map_or(String::new(), |m| format!(" | peak {m:.1} MB"));
        let mem = if r.unfit_clients > 0 { format!("{mem} | {} sat out (no plan fits its budget)", r.unfit_clients) } else { mem };
        self.say(format!(
            "round {:>4}/{} | acc {acc} | train loss {:.4} | down {:.2} MB up {:.2} MB | compute {:.1} s{mem}",
            r.round,
            self.rounds,
            r.train_loss,
            r.bytes_down as f64 / 1e6,
            r.bytes_up as f64 / 1e6,
            r.compute_s
        ));
        if self.own_bar {
            self.bar.set_message(self.last_accuracy.map_or(String::new(), |a| format!("acc {:.1}%", a * 100.0)));
        }
        self.bar.inc(1);
        Ok(())
    }
}

fn print_table(s: &Summary, dir: &RunDir) {
    let pct = |v: Option<f64>| v.map_or("n/a".to_string(), |a| format!("{:.2}%", a * 100.0));
    let rows = [
        ("method", s.method.clone()),
        ("model / dataset", format!("{} / {}", s.model, s.dataset)),
        ("rounds", s.rounds_completed.to_string()),
        ("final accuracy", pct(s.final_accuracy)),
        ("best accuracy", pct(s.best_accuracy)),
        ("mean of last evals", pct(s.mean_last_accuracy)),
        ("bytes down / up", format!("{:.1} MB / {:.1} MB", s.total_bytes_down as f64 / 1e6, s.total_bytes_up as f64 / 1e6)),
        ("compute / wall", format!("{:.1} s / {:.1} s", s.total_compute_s, s.wall_s)),
        ("mean peak memory", s.peak_memory_line()),
        ("energy compute / comm", format!("{:.3} kJ / {:.3} kJ", s.energy_compute_kj, s.energy_comm_kj)),
        ("results", dir.path.display().to_string()),
    ];
    println!();
    for (k, v) in rows {
        println!("  {k:<22} {v}");
    }
    if let Some(b) = &s.memory_budgets {
        let rows = [
            ("over budget", format!("{} of {} client rounds ({:.1} %)", b.over_budget, b.client_rounds, 100.0 * b.miss_rate)),
            (
                "excess when over",
                if b.over_budget == 0 { "none".into() } else { format!("mean {:.2} MB, max {:.2} MB ({:.1} % of its budget)", b.mean_excess_mb, b.max_excess_mb, b.max_excess_pct) },
            ),
            ("prediction error", format!("mean {:.1} %, worst {:.1} % (|measured − predicted| ÷ predicted)", b.mean_abs_error_pct, b.max_abs_error_pct)),
            ("sat out", format!("{} sampled client rounds fit no plan", b.sat_out)),
        ];
        for (k, v) in rows {
            println!("  {k:<22} {v}");
        }
    }
}

fn print_trials_table(s: &TrialsSummary, dir: &RunDir) {
    let pct = |v: &Option<Spread>| v.as_ref().map_or("n/a".to_string(), |a| {
        let each: Vec<String> = a.values.iter().map(|v| format!("{:.2}", v * 100.0)).collect();
        format!("{:.2} ± {:.2} %  ({})", a.mean * 100.0, a.std * 100.0, each.join(", "))
    });
    let seeds: Vec<String> = s.seeds.iter().map(u64::to_string).collect();
    let rows = [
        ("method", s.method.clone()),
        ("model / dataset", format!("{} / {}", s.model, s.dataset)),
        ("trials (seeds)", format!("{} ({})", s.trials_completed, seeds.join(", "))),
        ("final accuracy", pct(&s.final_accuracy)),
        ("best accuracy", pct(&s.best_accuracy)),
        ("mean of last evals", pct(&s.mean_last_accuracy)),
        ("mean peak memory", s.mean_peak_mem_mb.as_ref().map_or("n/a".into(), |m| format!("{:.1} ± {:.1} MB", m.mean, m.std))),
        ("results", dir.path.display().to_string()),
    ];
    println!();
    for (k, v) in rows {
        println!("  {k:<22} {v}");
    }
    println!("  (mean ± sample standard deviation over trials; per-trial values in brackets)");
}

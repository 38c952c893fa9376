//! `fedolf bench speed`: seconds per local SGD step of every model at the paper's batch, and
//! seconds per round of the default experiment for several worker settings, each beside the
//! same work done by PyTorch (`benches/pytorch_twin.py`) in the same run when PyTorch is
//! installed — the ratios the speed targets are written in.

use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use fedolf::runtime::backend::{probe, with_backend, BackendTask, DeviceKind};
use fedolf::config::{Config, DEFAULT_TOML};
use fedolf::runtime::memory::CountingAllocator;
use fedolf::engine::{self, RoundObserver};
use fedolf::records::RoundRecord;
use fedolf::accounting::speed::{median, paired_ratio, step_flops, stepper, StepSpec};
use fedolf::runtime::workers::{available_cores, WorkerLayout};
use fedolf_kernels::peak::{self, Peak};
use fedolf_models::{ModelKind, ModelOptions};
use serde_json::{json, Value};

use crate::args::SpeedArgs;
use crate::pytorch::{take_turn, untimed_calls, PyTorch, Session};

/// The paper's per-model setting: input, classes, batch, the largest frozen count of its
/// cluster table (c − 1).
pub const PAPER_SETTINGS: [(ModelKind, [usize; 3], usize, usize, usize); 4] = [
    (ModelKind::Cnn, [1, 28, 28], 10, 16, 1),
    (ModelKind::AlexNet, [3, 32, 32], 10, 128, 4),
    (ModelKind::ResNet20, [3, 32, 32], 100, 128, 4),
    (ModelKind::ResNet44, [3, 32, 32], 100, 128, 4),
];

fn step_specs(repeats: usize) -> Vec<StepSpec> {
    PAPER_SETTINGS
        .into_iter()
        .flat_map(|(model, input, classes, batch, largest)| {
            [0, largest].map(|frozen| StepSpec { model, input, classes, batch, frozen, warmup: 1, repeats })
        })
        .collect()
}

/// Every step spec on one backend, ours and the twin's (when it runs) taking turns step by
/// step: this project's VM drifts by up to 20 % within seconds, so only steps taken side by
/// side share its speed. `passes` blocks of `repeats` turns per spec; who goes first
/// alternates from turn to turn.
struct StepTask<'a> {
    specs: &'a [StepSpec],
    passes: usize,
    twin: Option<&'a mut Session>,
}

impl BackendTask for StepTask<'_> {
    type Output = anyhow::Result<StepPasses>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let StepTask { specs, passes, mut twin } = self;
        let mut ours = vec![vec![0.0; specs.len()]; passes];
        let mut theirs = vec![vec![0.0; specs.len()]; if twin.is_some() { passes } else { 0 }];
        let mut ratios = vec![vec![0.0; specs.len()]; if twin.is_some() { passes } else { 0 }];
        let mut pairs = vec![(Vec::new(), Vec::new()); specs.len()];
        for (i, spec) in specs.iter().enumerate() {
            eprint!("  {} b{} l={} ... ", spec.model.name(), spec.batch, spec.frozen);
            let mut ours_now = stepper::<B>(spec, &device).with_context(|| format!("{} step", spec.model.name()))?;
            let mut turn = |ours_first: bool, untimed: usize| {
                take_turn(ours_first, untimed, || ours_now.step(), twin.as_deref_mut().map(|t| move |u| t.step(i, u)))
            };
            // The warm-up turns set how many untimed steps open each timed turn.
            let mut untimed = 1;
            for _ in 0..spec.warmup {
                let (o, t) = turn(true, 1)?;
                untimed = untimed_calls(t.map_or(o, |t| o.min(t)));
            }
            for pass in 0..passes {
                let (mut o, mut t) = (Vec::with_capacity(spec.repeats), Vec::with_capacity(spec.repeats));
                for r in 0..spec.repeats {
                    let (ours_s, theirs_s) = turn((pass * spec.repeats + r) % 2 == 0, untimed)?;
                    o.push(ours_s);
                    t.extend(theirs_s);
                }
                if !t.is_empty() {
                    ratios[pass][i] = paired_ratio(&o, &t).unwrap_or(f64::NAN);
                    pairs[i].0.extend_from_slice(&o);
                    pairs[i].1.extend_from_slice(&t);
                    theirs[pass][i] = median(&mut t);
                }
                ours[pass][i] = median(&mut o);
            }
            let mut column: Vec<f64> = ours.iter().map(|p| p[i]).collect();
            eprintln!("{:.4} s", median(&mut column));
        }
        let ratio = pairs.iter().map(|(o, t)| paired_ratio(o, t)).collect();
        Ok(StepPasses { ours, theirs, ratios, ratio })
    }
}

struct Quiet;
impl RoundObserver for Quiet {}

struct RoundTask<'a> {
    cfg: &'a Config,
    dataset: &'a fedolf_datasets::Dataset,
    memory: Option<&'static CountingAllocator>,
}

impl BackendTask for RoundTask<'_> {
    type Output = Result<Vec<RoundRecord>, engine::SimError>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        engine::run::<B>(self.cfg, self.dataset, &device, self.memory, &mut Quiet)
    }
}

/// One row of the round table: a worker setting and its measured seconds per round.
struct RoundRow {
    label: String,
    seconds: f64,
    /// Whether the row used the frozen-prefix cache (the twin is run the same way).
    cache: bool,
}

pub fn bench_speed(args: SpeedArgs, alloc: &'static CountingAllocator) -> anyhow::Result<()> {
    let device = DeviceKind::parse(&args.device)?;
    let cores = available_cores();
    let twin = PyTorch::find(args.python.clone(), cores);
    match &twin {
        Ok(t) => eprintln!("bench speed on {} ({cores} cores); PyTorch {} with {cores} threads ({})", device.name(), t.version, t.python.display()),
        Err(why) => eprintln!("bench speed on {} ({cores} cores); no ratios: {why}", device.name()),
    }

    // 1. Per-step time, every model at its paper batch, l = 0 and the cluster's largest l,
    // ours and the twin's alternating step by step.
    let specs = step_specs(args.repeats);
    probe(device)?;
    let mut session = match &twin {
        Ok(t) => {
            eprintln!("pytorch: building the {} step models ...", specs.len());
            Some(t.serve(&specs)?)
        }
        Err(_) => None,
    };
    eprintln!("steps, fedolf's and pytorch's taking turns ({} blocks of {} per model):", args.passes, args.repeats);
    let passes = with_backend(device, StepTask { specs: &specs, passes: args.passes as usize, twin: session.as_mut() })??;
    drop(session);
    // Each step's share of the machine's FP32 peak (on the CPU: measured here, after the steps
    // so the probe's heat does not slow them).
    let flops = specs
        .iter()
        .map(|spec| {
            let net = spec.model.init_with::<burn::backend::Flex>(spec.input, spec.classes, &ModelOptions::default(), &Default::default())?;
            Ok(step_flops(&net.layer_macs(), spec.batch, spec.frozen))
        })
        .collect::<anyhow::Result<Vec<f64>>>()?;
    let peak = (device == DeviceKind::Cpu).then(|| peak::measure(cores, std::time::Duration::from_millis(200))).flatten();

    // 2. Whole rounds of the default experiment: one worker, the default, and the default
    // with the frozen-prefix cache.
    let default_workers = WorkerLayout::new(0, device != DeviceKind::Cpu);
    let settings = [
        (format!("workers = 1 ({} threads)", cores), vec!["federation.workers=1".to_string()]),
        (format!("workers = {} (default, {} thread each)", default_workers.workers, default_workers.threads_per_worker), vec![]),
        ("default + train.cache_frozen = true".to_string(), vec!["train.cache_frozen=true".to_string()]),
    ];
    let mut rows = Vec::new();
    let mut workload = None;
    for (label, extra) in settings {
        let mut overrides = vec![format!("federation.rounds={}", args.rounds), format!("device=\"{}\"", device.name())];
        overrides.extend(extra);
        let cfg = Config::from_toml(DEFAULT_TOML, "experiments/default.toml (built in)", &overrides)?;
        let dataset = engine::load_dataset(&cfg)?;
        eprint!("fedolf rounds, {label} ... ");
        let memory = (device == DeviceKind::Cpu).then_some(alloc);
        let records = with_backend(device, RoundTask { cfg: &cfg, dataset: &dataset, memory })??;
        let seconds = records.iter().map(|r| r.wall_s).sum::<f64>() / records.len() as f64;
        eprintln!("{seconds:.2} s/round");
        workload.get_or_insert_with(|| round_workload(&cfg, &dataset, &records));
        rows.push(RoundRow { label, seconds, cache: cfg.train.cache_frozen });
    }
    // The twin replays the same clients with and without the prefix cache.
    let twin_round = match (&twin, workload) {
        (Ok(t), Some(mut w)) => {
            let mut by_cache = [0.0; 2];
            for cache in [false, true] {
                eprintln!("pytorch rounds, cache_frozen = {cache} ...");
                w["cache_frozen"] = json!(cache);
                by_cache[cache as usize] = t.round(&w)?;
            }
            Some(by_cache)
        }
        _ => None,
    };

    print_tables(&specs, &passes, (&flops, peak), &rows, twin_round, args.rounds, &twin);
    Ok(())
}

/// Each pass's seconds per step, in `step_specs` order: fedolf's, and PyTorch's when it ran;
/// each pass's paired ratio, and each spec's over every turn of every pass.
struct StepPasses {
    ours: Vec<Vec<f64>>,
    theirs: Vec<Vec<f64>>,
    ratios: Vec<Vec<f64>>,
    ratio: Vec<Option<f64>>,
}

impl StepPasses {
    /// Spec `i`'s median over the passes of `side`.
    fn median(side: &[Vec<f64>], i: usize) -> f64 {
        median(&mut side.iter().map(|pass| pass[i]).collect::<Vec<f64>>())
    }

    /// Spec `i`'s paired ratio in each pass (fedolf ÷ PyTorch): its lowest and highest.
    fn ratio_range(&self, i: usize) -> (f64, f64) {
        self.ratios.iter().map(|pass| pass[i]).fold((f64::INFINITY, 0.0), |(lo, hi), r| (lo.min(r), hi.max(r)))
    }
}

/// The exact work of the measured rounds, for the twin to replay: each round's clients with
/// their sample and frozen counts, and the evaluated rounds.
fn round_workload(cfg: &Config, dataset: &fedolf_datasets::Dataset, records: &[RoundRecord]) -> Value {
    json!({
        "model": cfg.model.name,
        "input": dataset.train.shape,
        "classes": dataset.num_classes,
        "batch": cfg.train.batch_size,
        "epochs": cfg.train.epochs,
        "sgd": {"lr": cfg.train.lr, "momentum": cfg.train.momentum, "weight_decay": cfg.train.weight_decay},
        "rounds": records.iter().map(|r| json!({
            "clients": r.per_client.iter().map(|c| json!({"samples": c.samples, "frozen": c.frozen})).collect::<Vec<_>>()
        })).collect::<Vec<_>>(),
        "eval": {
            "samples": dataset.test.len(),
            "batch": fedolf::local::evaluate::EVAL_BATCH,
            "rounds": records.iter().filter(|r| r.accuracy.is_some()).map(|r| r.round).collect::<Vec<_>>(),
        },
    })
}

fn print_tables(
    specs: &[StepSpec],
    passes: &StepPasses,
    (flops, peak): (&[f64], Option<Peak>),
    rows: &[RoundRow],
    twin_round: Option<[f64; 2]>,
    rounds: usize,
    twin: &Result<PyTorch, String>,
) {
    let against = match twin {
        Ok(t) => format!("PyTorch {} ({} threads)", t.version, t.threads),
        Err(_) => "PyTorch: not installed, no ratios".to_string(),
    };
    let n = passes.ours.len();
    let over = if n > 1 { format!(", the median of {n} passes") } else { String::new() };
    println!("{}", Peak::header(peak, "a step's GFLOP ÷ its seconds ÷ the latter"));
    let share = |gflop: f64, seconds: f64| Peak::share(peak, gflop / seconds);
    println!("local SGD step, median seconds{over} (against {against}); GFLOP: the convolutions' and dense layers' multiply-adds × 2");
    println!("ratio: the median, over every turn, of fedolf's step ÷ PyTorch's step taken beside it; per pass: the same within each pass");
    println!(
        "{:<10} {:>5} {:>3} {:>7} {:>10} {:>7} {:>10} {:>7} {:>8} {:>14}",
        "model", "batch", "l", "GFLOP", "fedolf s", "% peak", "pytorch s", "% peak", "ratio", "ratio per pass"
    );
    for (i, spec) in specs.iter().enumerate() {
        let (ours, gflop) = (StepPasses::median(&passes.ours, i), flops[i] / 1e9);
        let (t, t_share, ratio, range) = if passes.theirs.is_empty() {
            ("-".into(), "-".into(), "-".into(), "-".into())
        } else {
            let t = StepPasses::median(&passes.theirs, i);
            let (lo, hi) = passes.ratio_range(i);
            let ratio = passes.ratio[i].map_or("-".into(), |r| format!("{r:.2}×"));
            (format!("{t:.4}"), share(gflop, t), ratio, if n > 1 { format!("{lo:.2}–{hi:.2}×") } else { "-".into() })
        };
        println!(
            "{:<10} {:>5} {:>3} {:>7.2} {:>10.4} {:>7} {:>10} {:>7} {:>8} {:>14}",
            spec.model.name(),
            spec.batch,
            spec.frozen,
            gflop,
            ours,
            share(gflop, ours),
            t,
            t_share,
            ratio,
            range
        );
    }
    println!();
    println!("default experiment (cnn, fashion-mnist, 10 clients/round, E = 2, batch 32), mean of {rounds} rounds incl. evaluation");
    println!("{:<44} {:>10} {:>12} {:>8}", "setting", "s/round", "pytorch s", "ratio");
    for row in rows {
        let (t, ratio) = match twin_round.map(|by_cache| by_cache[row.cache as usize]) {
            Some(t) => (format!("{t:.2}"), format!("{:.2}×", row.seconds / t)),
            None => ("-".into(), "-".into()),
        };
        println!("{:<44} {:>10.2} {:>12} {:>8}", row.label, row.seconds, t, ratio);
    }
    println!("(ratio = fedolf ÷ pytorch: below 1 is faster; the PyTorch round replays the same clients, sample counts, frozen counts and evaluations on random data, one client after another, with the same prefix-cache setting as the row)");
}

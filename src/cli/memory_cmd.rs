//! `fedolf memory` and `fedolf bench memory`.


use anyhow::{bail, Context};
use burn::tensor::backend::AutodiffBackend;
use fedolf::runtime::backend::{probe, with_backend, BackendTask, DeviceKind};
use fedolf::runtime::memory::CountingAllocator;
use fedolf::accounting::memory_probe::{memory_csv, probe_memory, MemoryRow, MemorySpec};
use fedolf::io::plot::memory_chart;
use fedolf::io::report::write_atomic;
use fedolf::config::Config;
use fedolf::engine::federation::Federation;
use fedolf::engine::error::SimError;
use fedolf_datasets::{Dataset, DatasetKind};
use fedolf_models::ModelKind;

use crate::args::MemoryArgs;

/// The paper's experiments, one per model: `fedolf memory --budget` reads each one's batch,
/// input shape and TOA setting from here.
const PAPER_CONFIGS: [(&str, &str); 4] = [
    ("experiments/paper-emnist-cnn.toml", include_str!("../../experiments/paper-emnist-cnn.toml")),
    ("experiments/paper-cifar10-alexnet.toml", include_str!("../../experiments/paper-cifar10-alexnet.toml")),
    ("experiments/paper-cifar100-resnet20.toml", include_str!("../../experiments/paper-cifar100-resnet20.toml")),
    ("experiments/paper-cifar100-resnet44.toml", include_str!("../../experiments/paper-cifar100-resnet44.toml")),
];

struct FitTask<'a> {
    cfg: &'a Config,
    dataset: &'a Dataset,
    alloc: &'static CountingAllocator,
}

impl BackendTask for FitTask<'_> {
    /// `(frozen, predicted bytes)` from the least frozen level to the most.
    type Output = Result<Vec<(usize, u64)>, SimError>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let mut fed = Federation::<B>::new(self.cfg, self.dataset, &device)?;
        fed.calibrate(Some(self.alloc), &mut |_| {})?;
        (0..fed.setup.capacities).rev().map(|level| fed.capacity_plan(1, 0, level).map(|(plan, bytes)| (plan.frozen(), bytes))).collect()
    }
}

/// `fedolf memory --budget MB`: which `l` fits for each model (FedOLF's plans, each paper
/// config's batch and TOA, the predictor calibrated on this CPU as a run would).
fn fits_budget(budget: f64, alloc: &'static CountingAllocator) -> anyhow::Result<()> {
    if !(budget.is_finite() && budget > 0.0) {
        bail!("--budget {budget}: must be a number of MB > 0");
    }
    println!("memory budget {budget} MB: the fewest frozen layers whose predicted training peak fits (FedOLF; each model at its paper config's batch; Eq. 23 calibrated by 2 measured SGD steps per l on this CPU)");
    println!("{:<9} {:<9} {:>5} {:>3}  {:<10} predicted peak MB at l = 0, 1, …", "model", "dataset", "batch", "N", "fits");
    for (path, text) in PAPER_CONFIGS {
        let overrides = [
            "federation.clients=1".to_string(),
            "federation.clients_per_round=1".into(),
            "federation.clusters=1".into(),
            "data.partition=\"iid\"".into(),
            "federation.capacity=\"memory\"".into(),
            format!("federation.budgets_mb=[{budget}]"),
        ];
        let cfg = Config::from_toml(text, path, &overrides)?;
        let kind = DatasetKind::parse(&cfg.data.dataset)?;
        let n = 2 * cfg.train.batch_size;
        let dataset = Dataset::random_pixels(kind, n, 10, 1);
        let task = FitTask { cfg: &cfg, dataset: &dataset, alloc };
        let mut levels = with_backend(DeviceKind::Cpu, task)??;
        levels.sort_unstable();
        let fits = levels.iter().find(|(_, b)| *b as f64 / 1e6 <= budget).map_or("none".to_string(), |(l, _)| format!("l = {l}"));
        let peaks: Vec<String> = levels.iter().map(|(_, b)| format!("{:.1}", *b as f64 / 1e6)).collect();
        println!("{:<9} {:<9} {:>5} {:>3}  {:<10} {}", cfg.model.name, kind.name(), cfg.train.batch_size, levels.len(), fits, peaks.join(" "));
    }
    Ok(())
}

/// `0..=9`, `0..4`, `0,2,4` or `3`.
pub fn parse_frozen(text: &str) -> anyhow::Result<Vec<usize>> {
    let num = |s: &str| s.trim().parse::<usize>().with_context(|| format!("--frozen `{text}`: `{s}` is not a layer count"));
    if let Some((a, b)) = text.split_once("..=") {
        return Ok((num(a)?..=num(b)?).collect());
    }
    if let Some((a, b)) = text.split_once("..") {
        return Ok((num(a)?..num(b)?).collect());
    }
    text.split(',').map(num).collect()
}

struct ProbeTask<'a> {
    spec: &'a MemorySpec,
    alloc: &'static CountingAllocator,
    on_row: &'a mut dyn FnMut(&MemoryRow),
}

impl BackendTask for ProbeTask<'_> {
    type Output = Result<Vec<MemoryRow>, fedolf::local::error::LocalError>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        probe_memory::<B>(self.spec, &device, self.alloc, self.on_row)
    }
}

fn run_probe(spec: &MemorySpec, device: DeviceKind, alloc: &'static CountingAllocator, verbose: bool) -> anyhow::Result<Vec<MemoryRow>> {
    let mut print = |r: &MemoryRow| {
        if verbose {
            println!("{:<10} {:>6} {:>12.1} {:>12.1} {:>14.1} {:>7.2}", r.mode, r.frozen, r.absolute_mb(), r.measured_mb(), r.theoretical_mb(), r.ratio());
        }
    };
    if verbose {
        println!("{:<10} {:>6} {:>12} {:>12} {:>14} {:>7}", "mode", "frozen", "absolute MB", "extra MB", "Eq.23 MB", "ratio");
    }
    // On the CPU the counting allocator sees the step's heap; on a GPU the probe reads the
    // device memory in use on its stream.
    let task = ProbeTask { spec, alloc, on_row: &mut print };
    Ok(with_backend(device, task)??)
}

pub fn memory(args: MemoryArgs, alloc: &'static CountingAllocator) -> anyhow::Result<()> {
    if let Some(budget) = args.budget {
        return fits_budget(budget, alloc);
    }
    let model = ModelKind::parse(&args.model)?;
    let dataset = DatasetKind::parse(&args.dataset)?;
    let device = DeviceKind::parse(&args.device)?;
    probe(device)?;
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let input = dataset.input_shape();
    let n = model.num_layers();
    let frozen = match &args.frozen {
        Some(t) => parse_frozen(t)?,
        None => (0..n).collect(),
    };
    if let Some(&l) = frozen.iter().find(|&&l| l >= n) {
        bail!("--frozen {l}: {} has {n} layers, so at most {} can freeze", model.name(), n - 1);
    }
    let spec = MemorySpec {
        model,
        options: fedolf_models::ModelOptions { cnn_hidden: args.cnn_hidden, shortcut: args.shortcut.into() },
        input,
        classes: dataset.num_classes(),
        batch: args.batch,
        frozen,
        random_draws: args.draws,
        toa_scales: vec![1.0, 0.75, 0.5, 0.25],
        seed: args.seed,
    };
    let measured = match device {
        DeviceKind::Cpu => "peak heap",
        _ => "peak device memory in use",
    };
    println!(
        "{} on {} ({:?}), batch {}, {}: {measured} of one SGD step (forward + backward + update); absolute = what the client holds (model copy, batch) + extra (the step's peak above that); ratio = extra / Eq. 23",
        model.name(),
        dataset.name(),
        input,
        args.batch,
        device.name(),
    );
    let rows = run_probe(&spec, device, alloc, true)?;
    if let Some(csv) = &args.csv {
        write_atomic(csv, memory_csv(&rows).as_bytes()).with_context(|| format!("writing {}", csv.display()))?;
        println!("wrote {}", csv.display());
    }
    let svg = args.svg.clone().unwrap_or_else(|| format!("memory-{}-b{}.svg", model.name(), args.batch).into());
    memory_chart(&svg, &format!("{} / {} batch {}: memory vs frozen layers", model.name(), dataset.name(), args.batch), &rows)?;
    println!("wrote {}", svg.display());
    Ok(())
}

pub fn bench_memory(batch: usize, alloc: &'static CountingAllocator) -> anyhow::Result<()> {
    let spec = MemorySpec {
        model: ModelKind::ResNet20,
        options: Default::default(),
        input: [3, 32, 32],
        classes: 100,
        batch,
        frozen: vec![0, 2, 4],
        random_draws: 3,
        toa_scales: vec![],
        seed: 1,
    };
    println!("bench memory: ResNet20 (option A shortcuts), 3×32×32, 100 classes, batch {batch}, CPU (counting allocator)");
    let rows = run_probe(&spec, DeviceKind::Cpu, alloc, false)?;
    let get = |mode: &str, l: usize| rows.iter().find(|r| r.mode == mode && r.frozen == l).expect("probed");
    let (o4, r4, t4) = (get("ordered", 4), get("random", 4), get("tinyfel", 4));
    println!("ordered / random  peak at l=4: {:.3}  ({:.1} MB / {:.1} MB)", o4.measured_mb() / r4.measured_mb(), o4.measured_mb(), r4.measured_mb());
    println!("tinyfel / ordered peak at l=4: {:.3}  ({:.1} MB / {:.1} MB)", t4.measured_mb() / o4.measured_mb(), t4.measured_mb(), o4.measured_mb());
    for l in [0, 2, 4] {
        let r = get("ordered", l);
        println!("ordered measured / Eq.23 at l={l}: {:.3}  ({:.1} MB / {:.1} MB)", r.ratio(), r.measured_mb(), r.theoretical_mb());
    }
    Ok(())
}


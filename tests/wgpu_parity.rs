//! wgpu against the CPU backend, from the same host-drawn weights and batches. Compiled with
//! `--features wgpu` only; runs on any Vulkan device (CI: Mesa's lavapipe, a software Vulkan
//! 1.3 driver, about 20× slower than the CPU backend, so every model here is small and every
//! batch a handful of images; lavapipe also caps a storage buffer at 128 MiB). The step and
//! TOA comparisons and their tolerances live in `fedolf::accounting::parity` (the GPU check runs the same
//! ones through `fedolf bench parity`).

#![cfg(feature = "wgpu")]

mod scratch;
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use common::{host_params, random_batch};
use fedolf::local::training::{train_local, ClientData, LocalModel, LocalTraining, SgdSettings};
use fedolf::models::{LayeredNet, ModelKind, ModelOptions};
use fedolf::accounting::parity::{step_parity, toa_parity, SMALL_CASES};
use fedolf::runtime::rng::{stream, Purpose};
use fedolf::compress::toa::ToaMode;

type Cpu = common::Train;
type Gpu = burn::backend::Autodiff<burn::backend::Wgpu>;

const SGD: SgdSettings = SgdSettings { lr: 0.01, momentum: 0.9, weight_decay: 0.0 };

fn cpu() -> burn::backend::flex::FlexDevice {
    Default::default()
}

fn gpu() -> burn::backend::wgpu::WgpuDevice {
    Default::default()
}

#[test]
fn one_seed_gives_bit_identical_initial_weights_on_the_cpu_and_wgpu() {
    for kind in ModelKind::ALL {
        let input = if kind == ModelKind::Cnn { [1, 28, 28] } else { [3, 32, 32] };
        let exits = [1, 2];
        let draw = |seed| stream(seed, Purpose::Init, 0, 0);
        let on_cpu: LayeredNet<Cpu> = kind.init_on_host(input, 10, &ModelOptions::default(), &exits, &mut draw(7), &cpu()).unwrap();
        let on_gpu: LayeredNet<Gpu> = kind.init_on_host(input, 10, &ModelOptions::default(), &exits, &mut draw(7), &gpu()).unwrap();
        assert_eq!(host_params(&on_cpu), host_params(&on_gpu), "{}: initial weights differ between the CPU and wgpu", kind.name());
    }
}

#[test]
fn one_sgd_step_of_each_model_on_wgpu_matches_the_cpu() {
    for case in &SMALL_CASES {
        let p = step_parity::<Gpu>(case, &gpu()).unwrap();
        let what = format!("{} batch {} l={}", case.model.name(), case.batch, case.frozen);
        eprintln!(
            "{what}: loss {} cpu / {} wgpu ({:.3} of tol), prefix {:.3} of tol, worst tensor {:.3} of tol ({})",
            p.loss_cpu, p.loss_device, p.loss_ratio(), p.prefix, p.weights.worst, p.weights.worst_at
        );
        assert!(p.same_start, "{what}: the initial weights differ");
        assert!(p.frozen_untouched, "{what}: a frozen layer changed on wgpu");
        assert!(p.passes(), "{what}: outside the tolerance: {p:?}");
    }
}

#[test]
fn toa_sparsifies_the_same_prefix_on_wgpu_as_on_the_cpu() {
    for mode in [ToaMode::Paper, ToaMode::Topk] {
        let (agreement, same_sent) = toa_parity::<Gpu>(mode, &gpu()).unwrap();
        assert!(same_sent, "{mode:?}: TOA sent different amounts on wgpu");
        assert!(agreement.passes(), "{mode:?}: {agreement:?}");
    }
}

fn model<B: Backend>(kind: ModelKind, input: [usize; 3], classes: usize, seed: u64) -> LayeredNet<B> {
    kind.init_on_host(input, classes, &ModelOptions::default(), &[], &mut stream(seed, Purpose::Init, 0, 0), &Default::default()).unwrap()
}

#[test]
fn a_client_round_on_wgpu_reports_its_device_peak_and_freezing_lowers_it() {
    // ResNet20, one step of 4 images (the peak is sampled in the first two), l = 0 vs l = 4.
    let input = [3, 32, 32];
    let global: LayeredNet<Gpu> = model(ModelKind::ResNet20, input, 100, 1);
    let (x, y) = random_batch::<<Gpu as AutodiffBackend>::InnerBackend>(4, input, 100, 9);
    let indices: Vec<usize> = (0..4).collect();
    let data = ClientData { images: &x, labels: &y, indices: &indices };
    let settings = LocalTraining { epochs: 1, batch_size: 4, sgd: SGD, cache_frozen: false, frozen_norm: Default::default() };
    let peak = |l: usize| {
        let local = LocalModel::ordered(&global, l).unwrap();
        let (_, outcome) = train_local(local, &data, &settings, &mut stream(1, Purpose::LocalShuffle, 0, 0)).unwrap();
        outcome.device_peak_bytes.unwrap_or_else(|| panic!("l = {l}: no device peak on wgpu"))
    };
    let (p0, p4) = (peak(0), peak(4));
    eprintln!("ResNet20 batch 4 on wgpu: device peak {p0} B at l = 0, {p4} B at l = 4");
    assert!(p4 < p0, "freezing 4 layers should lower the device peak: {p4} B at l = 4, {p0} B at l = 0");
}

// ---- the CLI on wgpu vs the CPU ----

fn fedolf(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fedolf")).args(args).output().expect("binary runs")
}

/// 2 rounds of FedOLF on 64 real Fashion-MNIST images: 4 iid clients of 16 in 2 capacity
/// clusters, 2 per round, 2 workers, batches of 8, evaluated every round on 200 test images.
fn small_run(out: &Path, device: &str, extra: &[&str]) -> Output {
    let data = fedolf_datasets::shipped_subset_dir();
    let mut args: Vec<String> = ["run", "--quiet", "--device", device, "--out", out.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let sets = [
        "data.train_limit=64",
        "data.test_limit=200",
        "data.partition=\"iid\"",
        "federation.clients=4",
        "federation.clients_per_round=2",
        "federation.clusters=2",
        "federation.rounds=2",
        "federation.eval_every=1",
        "federation.workers=2",
        "train.epochs=1",
        "train.batch_size=8",
        "train.lr=0.05",
    ];
    for s in sets.iter().chain(extra) {
        args.push("--set".into());
        args.push(s.to_string());
    }
    let o = fedolf(&args);
    assert!(o.status.success(), "{device} run failed: {}", String::from_utf8_lossy(&o.stderr));
    o
}

fn only_run_dir(out: &Path) -> PathBuf {
    let dirs: Vec<_> = std::fs::read_dir(out).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// Column `name` of a CSV file, one string per row.
fn column(path: &Path, name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let i = header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("{}: no column {name}", path.display()));
    lines.map(|l| l.split(',').nth(i).unwrap_or("").to_string()).collect()
}

fn numbers(cells: &[String]) -> Vec<f64> {
    cells.iter().map(|c| c.parse().unwrap_or_else(|_| panic!("not a number: `{c}`"))).collect()
}

#[test]
fn a_two_round_fedolf_run_with_two_workers_on_wgpu_ends_near_the_cpu_run() {
    let (cpu_out, gpu_out) = (scratch::tempdir().unwrap(), scratch::tempdir().unwrap());
    small_run(cpu_out.path(), "cpu", &[]);
    let printed = small_run(gpu_out.path(), "wgpu", &[]);
    let (c, g) = (only_run_dir(cpu_out.path()), only_run_dir(gpu_out.path()));
    // Same seed, same start, same batches: both rounds' mean training loss agree to 1e-5
    // relative, as the README says (measured on lavapipe: round 1 identical in all six
    // printed decimals, round 2 one unit apart in the sixth, 5e-7 relative).
    let (c_loss, g_loss) = (numbers(&column(&c.join("rounds.csv"), "train_loss")), numbers(&column(&g.join("rounds.csv"), "train_loss")));
    for r in 0..2 {
        assert!((c_loss[r] - g_loss[r]).abs() <= 1e-5 * c_loss[r].abs(), "round {} train loss: {} on the CPU, {} on wgpu", r + 1, c_loss[r], g_loss[r]);
    }
    let (c_acc, g_acc) = (numbers(&column(&c.join("rounds.csv"), "accuracy")), numbers(&column(&g.join("rounds.csv"), "accuracy")));
    assert!((c_acc[1] - g_acc[1]).abs() <= 0.03, "round 2 accuracy: {} on the CPU, {} on wgpu", c_acc[1], g_acc[1]);
    assert!(g_acc[1] > 0.2, "wgpu did not learn: round 2 accuracy {}", g_acc[1]);
    // Every client's peak is the device figure, and the final table prints it.
    let peaks = numbers(&column(&g.join("clients.csv"), "peak_mem_mb"));
    assert!(peaks.len() == 4 && peaks.iter().all(|&p| p > 0.0), "wgpu clients' peaks: {peaks:?}");
    let table = String::from_utf8_lossy(&printed.stdout);
    assert!(table.contains("device memory in use"), "the table's memory line on wgpu: {table}");
    eprintln!("train loss cpu {c_loss:?} wgpu {g_loss:?}; accuracy cpu {c_acc:?} wgpu {g_acc:?}; wgpu peaks {peaks:?} MB");
}

#[test]
fn memory_budgets_calibrate_on_wgpu_and_every_client_trains_within_its_budget() {
    let out = scratch::tempdir().unwrap();
    let budgets = ["federation.capacity=\"memory\"", "federation.budgets_mb=[40, 400]", "federation.rounds=1", "federation.eval_every=1"];
    small_run(out.path(), "wgpu", &budgets);
    let dir = only_run_dir(out.path());
    let clients = dir.join("clients.csv");
    let (budget, predicted, peak) = (numbers(&column(&clients, "budget_mb")), numbers(&column(&clients, "predicted_mb")), numbers(&column(&clients, "peak_mem_mb")));
    assert!(!peak.is_empty(), "no client trained");
    for i in 0..peak.len() {
        assert!(predicted[i] > 0.0 && predicted[i] <= budget[i], "client row {i}: predicted {} MB over its budget {} MB", predicted[i], budget[i]);
        assert!(peak[i] > 0.0, "client row {i}: no device peak");
    }
    let summary = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    assert!(summary.contains("memory_budgets"), "summary.json has no budget summary: {summary}");
}

//! Memory budgets choose the frozen count (`federation.capacity = "memory"`): the calibrated
//! predictor is monotone in l and within 10 % of the measured peak for the paper's models at
//! their paper batches, also at a level whose probe it was not given (AlexNet, ResNet20); a client never trains a plan predicted over its budget; budgets that
//! match a cluster table train exactly as the table does; width baselines fit their own
//! sub-models. Its own test binary with the counting allocator; the tests take a lock, so one
//! measures at a time.

mod scratch;
mod common;

use std::sync::Mutex;

use common::{device, Train};
use fedolf::config::{Config, DEFAULT_TOML};
use fedolf_datasets::{Dataset, DatasetKind};
use fedolf::engine::federation::Federation;
use fedolf::runtime::memory::CountingAllocator;
use fedolf::io::report::Summary;
use fedolf::engine::data::load_dataset;
use fedolf::engine::round_loop::{run, RoundObserver};
use fedolf::records::RoundRecord;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn measuring() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

struct Quiet;
impl RoundObserver for Quiet {}

/// `toml` with the overrides `base`, then `extra`.
fn config_with(toml: &str, origin: &str, base: &[&str], extra: &[&str]) -> Config {
    let overrides: Vec<String> = base.iter().chain(extra).map(|s| s.to_string()).collect();
    Config::from_toml(toml, origin, &overrides).unwrap()
}

/// One client holding `samples` random images, under one huge budget, with the paper
/// config's model, batch and optimizer (one local epoch).
fn paper_client(paper_toml: &str, samples: usize, extra: &[&str]) -> (Config, Dataset) {
    let base = [
        "federation.clients=1",
        "federation.clients_per_round=1",
        "federation.clusters=1",
        "data.partition=\"iid\"",
        "federation.capacity=\"memory\"",
        "federation.budgets_mb=[100000]",
        "train.epochs=1",
    ];
    let cfg = config_with(paper_toml, "paper config", &base, extra);
    let kind = DatasetKind::parse(&cfg.data.dataset).unwrap();
    let dataset = Dataset::random_pixels(kind, samples, 20, 1);
    (cfg, dataset)
}

#[test]
fn the_calibrated_predictor_is_monotone_in_l_and_within_10_percent_of_the_measured_peak() {
    let _one = measuring();
    let dev = device();
    // The paper's batches: CNN 16, AlexNet 128, ResNet20 128 (ResNet20 with TOA s = 0.5, so
    // the resident prefix shrinks too). Each client holds 2 full batches and a partial one:
    // more steps, and another batch size, than the 2-step probe. The CNN trains 3 epochs.
    let cases: [(&str, &str, usize, &[&str]); 3] = [
        ("cnn", include_str!("../experiments/paper-emnist-cnn.toml"), 40, &["train.epochs=3"]),
        ("alexnet", include_str!("../experiments/paper-cifar10-alexnet.toml"), 320, &[]),
        ("resnet20", include_str!("../experiments/paper-cifar100-resnet20.toml"), 320, &["toa.s=0.5"]),
    ];
    let mut worst = (0.0f64, String::new());
    for (name, toml, samples, extra) in cases {
        let (cfg, dataset) = paper_client(toml, samples, extra);
        let mut fed = Federation::<Train>::new(&cfg, &dataset, &dev).unwrap();
        fed.calibrate(Some(&ALLOC), &mut |row| eprintln!("{name} probe {row:?} rho {:.3}", row.ratio())).unwrap();
        let n = fed.setup.num_layers;
        // Level n − 1 − l freezes l layers.
        let predicted: Vec<u64> = (0..n).map(|l| fed.capacity_plan(1, 0, n - 1 - l).unwrap().1).collect();
        // Monotone up to 0.5 %: where the peak of two neighbouring levels is the same no-graph
        // forward op (ResNet20 at l = 8 and 9 here: the same bytes to the byte), which rayon
        // thread holds which im2col tile can move one level's measurement by a tile.
        for l in 1..n {
            assert!(predicted[l] as f64 <= predicted[l - 1] as f64 * 1.005, "{name}: predicted peak rises from l = {} to {l}: {predicted:?}", l - 1);
        }
        // Freezing keeps no graph for the frozen layers, so the predicted peak (the probe's
        // measurement) must fall by about what Eq. 23 says their activations and
        // gradients take. Not a fixed fraction of the peak: the rest of it is kernel scratch
        // and the no-graph forward's working set, which the CPU's SIMD width, caches and core
        // count move (AVX-512 makes the CNN's l = 2 probe 0.52 of l = 0, not 0.5).
        let rows = &fed.calibration().unwrap().rows;
        let theory = |l: usize| rows[n - 1 - l].theoretical_transient;
        let (saved, eq23_saved) = (predicted[0] - predicted[n - 1], theory(0) - theory(n - 1));
        eprintln!("{name}: predicted {predicted:?}; l = 0 → {}: saves {saved} B, Eq. 23 {eq23_saved} B ({:.2}×)", n - 1, saved as f64 / eq23_saved as f64);
        // Two-sided. Above Eq. 23's saving would mean the probe lost track of memory the
        // trained layers keep (Eq. 23 counts more maps than the graph keeps). Below: freezing
        // barely shrank the graph. The floor sits well under Eq. 23 because the CPU kernels
        // keep fewer maps than it counts: since the ReLU before a pool is fused into the pool,
        // a trained CNN or AlexNet layer keeps the pool's winners, not its ReLU map. Measured
        // here: CNN 0.40–0.41× and AlexNet 0.40× (0.60–0.82× and 0.68× before that fusion),
        // ResNet20 0.54×. A frozen prefix that kept its graph would save next to nothing.
        let share = saved as f64 / eq23_saved as f64;
        assert!((0.25..=1.05).contains(&share), "{name}: freezing all but the classifier saves {saved} B of predicted peak, {share:.2} × Eq. 23's {eq23_saved} B: {predicted:?}");

        // The middle level is predicted without its own probe: its ρ is the mean of its two
        // neighbours' (a level held out), so the check below tests prediction, not the
        // repeatability of one measurement. Measured here: AlexNet l = 3 −2.0 %, ResNet20
        // l = 5 −1.2 %. Not the CNN at batch 16: its step peak is mostly fixed overhead
        // (kernel scratch, thread pools), so ρ is 1.2, 1.7 and 3.7–5.4 at l = 0, 1, 2 and an
        // interpolated ρ misses by 15–45 %; there the predictor is a lookup of each level's
        // own probe, and all three levels are probed.
        let held = if n > 3 { Some(n / 2) } else { None };
        let mut calibration = fed.calibration().unwrap();
        if let Some(held) = held {
            let level = n - 1 - held;
            let rho = (calibration.rows[level - 1].ratio() + calibration.rows[level + 1].ratio()) / 2.0;
            let own = calibration.rows[level].ratio();
            calibration.rows[level].measured_transient = (rho * calibration.rows[level].theoretical_transient as f64) as u64;
            eprintln!("{name}: level {level} (l = {held}) held out: ρ {own:.3} measured, {rho:.3} from its neighbours");
        }
        fed.use_calibration(calibration);
        let host_global = fed.host_global();
        let clients = fed.round_context(1, Some(&ALLOC));
        let checked: Vec<usize> = match held {
            None => (0..n).collect(),
            Some(held) => vec![0, held, n - 1],
        };
        for l in checked {
            let (plan, predicted) = fed.capacity_plan(1, 0, n - 1 - l).unwrap();
            assert_eq!(plan.frozen(), l);
            let result = clients.run::<Train>(&plan, &host_global, &fed.parts[0], &dev).unwrap();
            let measured = result.record.peak_mem_mb.unwrap();
            let predicted_mb = predicted as f64 / 1e6;
            let error = (measured - predicted_mb).abs() / predicted_mb;
            let how = if Some(l) == held { "held out" } else { "probed" };
            eprintln!("{name} batch {} l = {l} ({how}): predicted {predicted_mb:.2} MB, measured {measured:.2} MB ({:+.1} %)", cfg.train.batch_size, 100.0 * (measured / predicted_mb - 1.0));
            if error > worst.0 {
                worst = (error, format!("{name} l = {l}: predicted {predicted_mb:.2} MB, measured {measured:.2} MB"));
            }
            assert!(error <= 0.10, "{name} l = {l} ({how}): predicted {predicted_mb:.2} MB, measured {measured:.2} MB ({:.1} % off)", 100.0 * error);
        }
    }
    eprintln!("worst case: {:.1} % ({})", 100.0 * worst.0, worst.1);
}

/// The default experiment, small: `clients` on the shipped subset.
fn small(extra: &[&str]) -> Config {
    let base = [
        concat!("data.data_dir=", env!("CARGO_MANIFEST_DIR"), "/datasets/data/fashion-mnist-subset"),
        "data.train_limit=2000",
        "data.test_limit=300",
        "federation.clients=20",
        "federation.clients_per_round=8",
        "federation.rounds=3",
        "federation.eval_every=3",
        "federation.workers=2",
        "train.epochs=1",
    ];
    config_with(DEFAULT_TOML, "default", &base, extra)
}

/// This machine's calibrated peak (MB) of each capacity level (rows[level]) for a client
/// with full batches: the resident model plus the probe's measured transient. Budgets are set
/// between these, not at fixed MB: the kernel scratch in every level's peak moves with the
/// CPU's SIMD width, caches and threads.
fn level_peaks_mb(extra: &[&str]) -> Vec<f64> {
    let overrides: Vec<&str> = extra.iter().copied().chain(["federation.capacity=\"memory\"", "federation.budgets_mb=[100000]"]).collect();
    let cfg = small(&overrides);
    let dataset = load_dataset(&cfg).unwrap();
    let mut fed = Federation::<Train>::new(&cfg, &dataset, &device()).unwrap();
    fed.calibrate(Some(&ALLOC), &mut |_| {}).unwrap();
    let peaks: Vec<f64> = fed.calibration().unwrap().rows.iter().map(|r| (r.resident + r.measured_transient) as f64 / 1e6).collect();
    eprintln!("calibrated level peaks {peaks:?} MB");
    peaks
}

/// The budget half way (geometrically) between two level peaks.
fn between(a: f64, b: f64) -> f64 {
    (a * b).sqrt()
}

fn budgets_mb(budgets: &[f64]) -> String {
    format!("federation.budgets_mb=[{}]", budgets.iter().map(|b| format!("{b:.3}")).collect::<Vec<_>>().join(", "))
}

fn run_small(cfg: &Config) -> Vec<RoundRecord> {
    let dataset = load_dataset(cfg).unwrap();
    run::<Train>(cfg, &dataset, &device(), Some(&ALLOC), &mut Quiet).unwrap()
}

#[test]
fn a_client_never_trains_a_plan_predicted_over_its_budget() {
    let _one = measuring();
    // CNN at batch 32 (here about 6 MB at l = 2, 11 at l = 1, 19 at l = 0): half of l = 2's
    // peak fits nothing at full batches; the jitter moves the others between levels from
    // round to round; twice l = 0's peak (≥ 1.6× after jitter) always trains the whole CNN.
    let p = level_peaks_mb(&[]);
    let whole = 2.0 * p[2];
    let profiles = [p[0] / 2.0, between(p[0], p[1]), between(p[1], p[2]), whole];
    let cfg = small(&["federation.capacity=\"memory\"", &budgets_mb(&profiles), "federation.budget_jitter=0.2"]);
    let records = run_small(&cfg);
    let clients: Vec<_> = records.iter().flat_map(|r| &r.per_client).collect();
    assert!(!clients.is_empty());
    for c in &clients {
        let (budget, predicted) = (c.budget_mb.unwrap(), c.predicted_mb.unwrap());
        assert!(predicted <= budget, "round {} client {}: trained a plan predicted at {predicted} MB on a {budget} MB budget", c.round, c.client);
        assert!(c.peak_mem_mb.is_some());
    }
    let mut frozen: Vec<usize> = clients.iter().map(|c| c.frozen).collect();
    frozen.sort_unstable();
    frozen.dedup();
    assert!(frozen.len() >= 2, "budgets {profiles:?} MB should land on different frozen counts: {frozen:?}");
    assert!(clients.iter().filter(|c| c.budget_mb.unwrap() >= 0.8 * whole).all(|c| c.frozen == 0), "a {whole:.1} MB device trains the whole CNN");
    let sat_out: usize = records.iter().map(|r| r.unfit_clients).sum();
    assert!(sat_out > 0, "the {:.1} MB devices fit no plan and must sit out", profiles[0]);
    for r in &records {
        assert_eq!(r.clients + r.unfit_clients, cfg.federation.clients_per_round, "round {}: trained + sat out = sampled", r.round);
    }
    let summary = Summary::new(&cfg, "subset", &records, 0.0, None).memory_budgets.unwrap();
    assert_eq!(summary.sat_out, sat_out);
    assert_eq!(summary.client_rounds, clients.len());
    assert!(summary.max_abs_error_pct < 25.0, "prediction error {summary:?}");
}

#[test]
fn budgets_that_match_a_cluster_table_train_exactly_as_the_table_does() {
    let _one = measuring();
    // iid: every client holds 100 samples (full batches). A budget between the l = 2 and
    // l = 1 peaks fits l = 2 only, one between l = 1 and l = 0 fits l = 1, ten times l = 0's
    // fits l = 0: the three budget profiles are dealt as the three clusters are.
    let p = level_peaks_mb(&["data.partition=\"iid\""]);
    let profiles = [between(p[0], p[1]), between(p[1], p[2]), 10.0 * p[2]];
    let table = run_small(&small(&["data.partition=\"iid\"", "federation.clusters=3"]));
    let budgets = run_small(&small(&["data.partition=\"iid\"", "federation.capacity=\"memory\"", &budgets_mb(&profiles)]));
    assert_eq!(table.len(), budgets.len());
    for (a, b) in table.iter().zip(&budgets) {
        assert_eq!(a.accuracy, b.accuracy, "round {}", a.round);
        assert_eq!(a.train_loss, b.train_loss, "round {}", a.round);
        assert_eq!((a.bytes_down, a.bytes_up), (b.bytes_down, b.bytes_up), "round {}", a.round);
        let key = |r: &RoundRecord| r.per_client.iter().map(|c| (c.client, c.frozen, c.samples, c.bytes_up)).collect::<Vec<_>>();
        assert_eq!(key(a), key(b), "round {}: the same clients freeze the same layers", a.round);
        assert!(b.per_client.iter().all(|c| c.budget_mb.is_some() && c.predicted_mb.is_some()));
        assert!(a.per_client.iter().all(|c| c.budget_mb.is_none()));
    }
}

#[test]
fn width_baselines_fit_their_own_sub_models() {
    let _one = measuring();
    // HeteroFL's levels are its widths r = 1/3, 2/3, 1: budgets between them.
    let p = level_peaks_mb(&["method=heterofl", "data.partition=\"iid\""]);
    let profiles = [between(p[0], p[1]), between(p[1], p[2]), 10.0 * p[2]];
    let cfg = small(&["method=heterofl", "data.partition=\"iid\"", "federation.rounds=2", "federation.capacity=\"memory\"", &budgets_mb(&profiles)]);
    let records = run_small(&cfg);
    let clients: Vec<_> = records.iter().flat_map(|r| &r.per_client).collect();
    for c in &clients {
        assert_eq!(c.frozen, 0, "HeteroFL prunes width, it does not freeze");
        assert!(c.predicted_mb.unwrap() <= c.budget_mb.unwrap());
    }
    // Smaller budget, narrower sub-model: fewer bytes up.
    // Budgets travel through the config at 3 decimals (no jitter): compare at that precision.
    let up = |budget: f64| clients.iter().filter(|c| (c.budget_mb.unwrap() - budget).abs() < 1e-3).map(|c| c.bytes_up).max();
    let (small_up, full_up) = (up(profiles[0]), up(profiles[2]));
    if let (Some(s), Some(f)) = (small_up, full_up) {
        assert!(s < f, "a {:.1} MB device trains a narrower model than a {:.1} MB one ({s} vs {f} bytes up)", profiles[0], profiles[2]);
    } else {
        panic!("both the {:.1} MB and the {:.1} MB profiles should be sampled in 2 rounds of 8 of 20 clients", profiles[0], profiles[2]);
    }
}

#[test]
fn calibration_without_any_memory_measurement_is_a_clear_error() {
    let _one = measuring();
    let cfg = small(&["federation.capacity=\"memory\"", "federation.budgets_mb=[64]"]);
    let dataset = load_dataset(&cfg).unwrap();
    let mut fed = Federation::<Train>::new(&cfg, &dataset, &device()).unwrap();
    let e = fed.calibrate(None, &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("federation.capacity") && e.contains("measures none"), "{e}");
    let e = fed.plans(1).unwrap_err().to_string();
    assert!(e.contains("calibrate"), "{e}");
}

/// Keeps the checkpoint of one round (written to `dir`) and the calibration it carries.
struct KeepRound<'a> {
    round: usize,
    dir: &'a std::path::Path,
}

impl RoundObserver for KeepRound<'_> {
    fn on_checkpoint(&mut self, checkpoint: &fedolf::io::checkpoint::Checkpoint) -> Result<(), fedolf::io::checkpoint::CheckpointError> {
        if checkpoint.round == self.round {
            checkpoint.write(self.dir)?;
        }
        Ok(())
    }
}

#[test]
fn a_resumed_budget_run_plans_with_the_checkpointed_calibration() {
    let _one = measuring();
    let cfg = small(&["checkpoint_every=1", "federation.capacity=\"memory\"", "federation.budgets_mb=[3, 8, 12, 40]", "federation.budget_jitter=0.2"]);
    let dataset = load_dataset(&cfg).unwrap();
    let dir = scratch::tempdir().unwrap();
    let whole = run::<Train>(&cfg, &dataset, &device(), Some(&ALLOC), &mut KeepRound { round: 1, dir: dir.path() }).unwrap();
    let saved = fedolf::io::checkpoint::Checkpoint::read(dir.path(), &Federation::<Train>::new(&cfg, &dataset, &device()).unwrap().host_global(), 3).unwrap();
    let calibration = saved.calibration.expect("a budget run's checkpoint holds its calibration");
    assert_eq!(calibration.rows.len(), 3);
    let start = fedolf::engine::round_loop::RunStart { resume: Some(dir.path()), stop: None };
    let resumed = fedolf::engine::round_loop::run_from::<Train>(&cfg, &dataset, &device(), Some(&ALLOC), &mut Quiet, start).unwrap();
    assert_eq!(resumed.len(), whole.len());
    let plans = |r: &RoundRecord| r.per_client.iter().map(|c| (c.client, c.frozen, c.budget_mb, c.predicted_mb, c.bytes_up)).collect::<Vec<_>>();
    for (a, b) in whole.iter().zip(&resumed).skip(1) {
        assert_eq!(plans(a), plans(b), "round {}: the resumed run predicts and plans as the whole run did", a.round);
        assert_eq!((a.accuracy, a.unfit_clients), (b.accuracy, b.unfit_clients), "round {}", a.round);
    }
}

//! The engine: concurrent clients give the same run for any worker count, memory accounts keep
//! concurrent clients apart, and the frozen-prefix cache trains like the uncached run.

mod common;

use std::sync::Barrier;

use common::*;
use fedolf::config::{Config, DEFAULT_TOML};
use fedolf::local::training::{train_local, ClientData, FrozenNorm, LocalModel, LocalTraining, SgdSettings};
use fedolf::runtime::memory::CountingAllocator;
use fedolf::models::{LayeredNet, ModelKind};
use fedolf::engine::{self, RoundObserver};
use fedolf::records::RoundRecord;
use fedolf::runtime::workers::{WorkerLayout, Workers};
use rand::SeedableRng;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

struct Quiet;
impl RoundObserver for Quiet {}

fn small_run(overrides: &[&str]) -> Vec<RoundRecord> {
    let mut all: Vec<String> = [
        "data.train_limit=1200",
        "data.test_limit=300",
        "data.min_size=10",
        "federation.clients=12",
        "federation.clients_per_round=5",
        "federation.rounds=2",
        "federation.eval_every=1",
        "train.epochs=2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    all.extend(overrides.iter().map(|s| s.to_string()));
    let cfg = Config::from_toml(DEFAULT_TOML, "default", &all).unwrap();
    let dataset = engine::load_dataset(&cfg).unwrap();
    engine::run::<Train>(&cfg, &dataset, &device(), Some(&ALLOC), &mut Quiet).unwrap()
}

/// Everything a run computes, without the clocks: losses and accuracy as exact bits.
fn outcome(records: &[RoundRecord]) -> Vec<String> {
    records
        .iter()
        .flat_map(|r| {
            let head = format!("round {} acc {:?} test {:?} train {:?} down {} up {}", r.round, r.accuracy, r.test_loss, r.train_loss, r.bytes_down, r.bytes_up);
            std::iter::once(head).chain(r.per_client.iter().map(|c| {
                format!("  client {} frozen {} samples {} loss {:?} down {} up {}", c.client, c.frozen, c.samples, c.train_loss, c.bytes_down, c.bytes_up)
            }))
        })
        .collect()
}

#[test]
fn a_run_is_bit_identical_for_any_worker_count() {
    for method in [&["method=fedolf", "toa.s=0.5"][..], &["method=heterofl"][..]] {
        let runs: Vec<Vec<String>> = [1, 2, 3]
            .iter()
            .map(|workers| {
                let mut o = method.to_vec();
                let w = format!("federation.workers={workers}");
                o.push(&w);
                outcome(&small_run(&o))
            })
            .collect();
        assert!(runs[0].iter().any(|l| l.contains("acc Some")), "{method:?}: evaluated");
        assert_eq!(runs[0], runs[1], "{method:?}: 1 vs 2 workers");
        assert_eq!(runs[0], runs[2], "{method:?}: 1 vs 3 workers");
    }
}

#[test]
fn a_client_measured_on_a_worker_sees_only_its_own_allocations() {
    let workers = Workers::new(WorkerLayout { workers: 2, threads_per_worker: 1 }).unwrap();
    let both_allocated = Barrier::new(2);
    let both_measured = Barrier::new(2);
    let peaks = workers.run_in_order(2, |job| {
        // Job 0 holds 64 MB while job 1 measures its own 1 MB, and the other way round.
        let size = if job == 0 { 64 << 20 } else { 1 << 20 };
        let (_, peak) = ALLOC.measure(|| {
            let block = vec![1u8; size];
            both_allocated.wait();
            std::hint::black_box(&block);
            both_measured.wait();
        });
        peak
    });
    assert!(peaks[0] >= 64 << 20 && peaks[0] < (64 << 20) + (1 << 20), "job 0 peak {}", peaks[0]);
    assert!(peaks[1] >= 1 << 20 && peaks[1] < 2 << 20, "job 1 peak {} includes the other job's block", peaks[1]);
}

/// Train `net` with the first `frozen` layers outside the graph, cached or not.
fn train(net: &LayeredNet<Train>, frozen: usize, cache: bool, n: usize, shape: [usize; 3]) -> (Vec<Vec<(String, Vec<f32>)>>, f64) {
    train_with(net, frozen, cache, FrozenNorm::Running, n, shape)
}

fn train_with(net: &LayeredNet<Train>, frozen: usize, cache: bool, frozen_norm: FrozenNorm, n: usize, shape: [usize; 3]) -> (Vec<Vec<(String, Vec<f32>)>>, f64) {
    let (images, labels) = random_batch::<Inner>(n, shape, 10, 7);
    let indices: Vec<usize> = (0..n).rev().collect();
    let data = ClientData { images: &images, labels: &labels, indices: &indices };
    let settings = LocalTraining { epochs: 3, batch_size: 8, sgd: SgdSettings { lr: 0.05, momentum: 0.9, weight_decay: 5e-4 }, cache_frozen: cache, frozen_norm };
    let local = LocalModel::ordered(net, frozen).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let (trained, outcome) = train_local(local, &data, &settings, &mut rng).unwrap();
    (host_params(&trained.join()), outcome.mean_loss)
}

/// The cache changes which samples share a prefix forward (all of them, in chunks, instead of
/// each mini-batch); per-sample outputs agree up to float summation order, so weights after
/// 3 epochs agree to 1e-4 absolute (observed on Flex: bit-equal) and the loss to 1e-5 relative.
#[test]
fn the_frozen_prefix_cache_trains_like_the_uncached_run() {
    // AlexNet with 6 frozen layers: the prefix ends in a dense layer, so the cache is flat.
    for (kind, shape, frozen) in [(ModelKind::Cnn, [1, 12, 12], 1), (ModelKind::ResNet20, [3, 8, 8], 4), (ModelKind::AlexNet, [1, 16, 16], 6)] {
        let net = seeded::<Train>(kind, shape, 10, 1);
        let (plain, plain_loss) = train(&net, frozen, false, 37, shape);
        let (cached, cached_loss) = train(&net, frozen, true, 37, shape);
        assert!((plain_loss - cached_loss).abs() <= 1e-5 * plain_loss.abs(), "{kind:?}: loss {plain_loss} vs {cached_loss}");
        let worst = plain
            .iter()
            .flatten()
            .zip(cached.iter().flatten())
            .map(|((name, a), (_, b))| (max_abs_diff(a, b), name.clone()))
            .fold((0.0f32, String::new()), |m, x| if x.0 > m.0 { x } else { m });
        assert!(worst.0 <= 1e-4, "{kind:?}: {} differs by {}", worst.1, worst.0);
        // The frozen prefix itself never changes.
        assert_eq!(plain[..frozen], cached[..frozen]);
    }
}

/// The cache serves only where the prefix is one fixed function computed more than once: with
/// E > 1 and running statistics. With each batch's statistics a cache would normalise every
/// sample with the samples of its cache chunk instead of its training batch's.
#[test]
fn the_frozen_prefix_is_cached_only_where_it_is_one_fixed_function_run_more_than_once() {
    let caches = |cache_frozen, epochs, frozen_norm| {
        LocalTraining { epochs, batch_size: 8, sgd: SgdSettings { lr: 0.05, momentum: 0.0, weight_decay: 0.0 }, cache_frozen, frozen_norm }.caches_prefix()
    };
    assert!(caches(true, 2, FrozenNorm::Running));
    assert!(!caches(true, 1, FrozenNorm::Running), "E = 1 runs the prefix once anyway");
    assert!(!caches(false, 3, FrozenNorm::Running));
    assert!(!caches(true, 3, FrozenNorm::Batch));
    // Asked for a cache with batch statistics, a client trains exactly as without one.
    let shape = [3, 8, 8];
    let net = seeded::<Train>(ModelKind::ResNet20, shape, 10, 2);
    let (plain, plain_loss) = train_with(&net, 4, false, FrozenNorm::Batch, 37, shape);
    let (asked, asked_loss) = train_with(&net, 4, true, FrozenNorm::Batch, 37, shape);
    assert_eq!(plain_loss, asked_loss);
    assert!(plain == asked, "batch statistics: the run asked for a cache trained differently");
}

/// The engine weights each upload by its client's sample count n_k: checked on the uploads
/// themselves, and on the merged global model against a host-side n_k-weighted mean of those
/// uploads (layer by layer over the clients that uploaded it), not through the merge code.
#[test]
fn the_engine_weights_each_upload_by_its_own_sample_count() {
    use fedolf::engine::federation::Federation;
    let overrides: Vec<String> = [
        "data.train_limit=1200",
        "data.test_limit=100",
        "data.min_size=10",
        "federation.clients=6",
        "federation.clients_per_round=4",
        "federation.clusters=2",
        "federation.rounds=1",
        "train.epochs=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cfg = Config::from_toml(DEFAULT_TOML, "default", &overrides).unwrap();
    let dataset = engine::load_dataset(&cfg).unwrap();
    let mut fed = Federation::<Train>::new(&cfg, &dataset, &device()).unwrap();
    let plans = fed.plans(1).unwrap();
    let before = fed.host_global();
    let mut uploads = Vec::new();
    {
        let ctx = fed.round_context(1, None);
        for plan in &plans {
            let part = &fed.parts[plan.client];
            let result = ctx.run::<Train>(plan, &before, part, &device()).unwrap();
            assert_eq!(result.upload.weight, part.len() as f64, "client {}", plan.client);
            uploads.push(result.upload);
        }
    }
    let sizes: Vec<usize> = plans.iter().map(|p| fed.parts[p.client].len()).collect();
    assert!(sizes.windows(2).any(|w| w[0] != w[1]), "the check needs unequal n_k: {sizes:?}");
    assert!(plans.iter().any(|p| p.frozen() > 0) && plans.iter().any(|p| p.frozen() == 0), "both clusters sampled");
    fed.merge(&uploads, &plans).unwrap();
    let after = fed.host_global();
    for (l, layer) in after.iter().enumerate() {
        let held: Vec<(f64, &fedolf::tensor::host::HostLayer)> =
            uploads.iter().filter_map(|u| u.layers.iter().find(|(i, _)| *i == l).map(|(_, t)| (u.weight, t))).collect();
        for (i, tensor) in layer.iter().enumerate() {
            let want: Vec<f32> = if held.is_empty() {
                before[l][i].values.clone()
            } else {
                let total: f64 = held.iter().map(|h| h.0).sum();
                (0..tensor.values.len()).map(|e| (held.iter().map(|(w, t)| w * t[i].values[e] as f64).sum::<f64>() / total) as f32).collect()
            };
            assert!(max_abs_diff(&tensor.values, &want) < 1e-5, "layer {l} `{}`: not the n_k-weighted mean of its uploaders", tensor.name);
        }
    }
}

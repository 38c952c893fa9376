#![allow(dead_code)]
//! Shared helpers for the integration tests: the CPU backends and tiny data.

use burn::prelude::*;
use fedolf::tensor::params::{read_model, LayerParams};

pub type Inner = burn::backend::Flex;
pub type Train = burn::backend::Autodiff<Inner>;

pub fn device() -> burn::backend::flex::FlexDevice {
    Default::default()
}

/// Seeded images in [0, 1) and labels in [0, classes).
pub fn random_batch<B: Backend>(n: usize, shape: [usize; 3], classes: usize, seed: u64) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
    let dev = Default::default();
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let len = n * shape.iter().product::<usize>();
    let pixels: Vec<f32> = (0..len).map(|_| next() as f32 / u32::MAX as f32 * 2.0).collect();
    let labels: Vec<i64> = (0..n).map(|_| (next() as usize % classes) as i64).collect();
    (
        Tensor::from_data(TensorData::new(pixels, [n, shape[0], shape[1], shape[2]]), &dev),
        Tensor::from_data(TensorData::new(labels, [n]), &dev),
    )
}

/// Every tensor of a model, to host vectors, for bit-exact comparisons.
pub fn host_params<B: Backend>(net: &fedolf::models::LayeredNet<B>) -> Vec<Vec<(String, Vec<f32>)>> {
    read_model(net).iter().map(host_layer).collect()
}

pub fn host_layer<B: Backend>(layer: &LayerParams<B>) -> Vec<(String, Vec<f32>)> {
    layer.iter().map(|t| (t.name.clone(), to_vec(&t.value))).collect()
}

pub fn to_vec<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Vec<f32> {
    t.clone().into_data().convert::<f32>().into_vec().unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// `kind` with initial weights drawn on the host from `seed` (`redraw_on_host`), so a test's
/// model, and every tolerance tuned on it, is the same on every run.
pub fn seeded<B: Backend>(kind: fedolf::models::ModelKind, shape: [usize; 3], classes: usize, seed: u64) -> fedolf::models::LayeredNet<B> {
    use rand::SeedableRng;
    let net = kind.init::<B>(shape, classes, &Default::default()).unwrap();
    fedolf::models::redraw_on_host(net, &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed)).unwrap()
}

/// `method`'s strategy as a run builds it from the built-in default experiment with `sets`
/// applied (e.g. `fedolf.merge="blend"`), without a model to measure and with `download`.
pub fn strategy_downloading(method: &str, download: fedolf::strategy::Download, sets: &[&str]) -> Box<dyn fedolf::strategy::Strategy<Train>> {
    let mut overrides: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    overrides.push(format!("method=\"{method}\""));
    let cfg = fedolf::config::Config::from_toml(fedolf::config::DEFAULT_TOML, "experiments/default.toml", &overrides).unwrap();
    fedolf::strategy::strategy_for::<Train>(&fedolf::strategy::Build { cfg: &cfg, capacities: cfg.federation.clusters, download, model: None }).unwrap()
}

/// [`strategy_downloading`] with the full download.
pub fn strategy(method: &str, sets: &[&str]) -> Box<dyn fedolf::strategy::Strategy<Train>> {
    strategy_downloading(method, fedolf::strategy::Download::Full, sets)
}

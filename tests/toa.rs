//! TOA (ARCHITECTURE.md, "Vocabulary"): kept counts, norm-proportional sampling, unbiased estimators,
//! shapes, and the server's model untouched.

mod common;

use burn::prelude::*;
use common::*;
use fedolf::models::{Features, Layer, LayeredNet, ModelKind};
use fedolf::compress::toa::{kept_count, norm_probabilities, select, sparsify_prefix, ToaError, ToaMode, ToaSettings};
use rand::SeedableRng;

fn rng(seed: u64) -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
}

#[test]
fn kept_count_is_floor_of_s_times_h() {
    assert_eq!(kept_count(0.3, 64), 19);
    assert_eq!(kept_count(0.25, 64), 16);
    assert_eq!(kept_count(1.0, 64), 64);
    assert_eq!(kept_count(0.01, 10), 1, "never zero tensors");
    let norms: Vec<f32> = (1..=64).map(|i| i as f32).collect();
    for mode in [ToaMode::Paper, ToaMode::Topk, ToaMode::Crs] {
        let sel = select(&norms, kept_count(0.5, 64), mode, &mut rng(1));
        let distinct = sel.indices.len();
        assert!(distinct <= 32 && sel.indices.windows(2).all(|w| w[0] < w[1]), "{mode:?}");
        if mode != ToaMode::Crs {
            assert_eq!(distinct, 32, "{mode:?}");
        }
    }
    let sel = select(&norms, 16, ToaMode::Topk, &mut rng(1));
    assert_eq!(sel.indices, (48..64).collect::<Vec<_>>());
}

#[test]
fn selection_frequency_tracks_norm_proportional_probability() {
    // With one draw per trial, inclusion frequency is exactly p_j = ‖W_j‖ / Σ‖W_i‖.
    let norms = [1.0f32, 2.0, 3.0, 4.0, 0.0];
    let p = norm_probabilities(&norms);
    let trials = 40_000;
    for mode in [ToaMode::Paper, ToaMode::Crs] {
        let mut counts = [0usize; 5];
        let mut r = rng(7);
        for _ in 0..trials {
            for j in select(&norms, 1, mode, &mut r).indices {
                counts[j] += 1;
            }
        }
        for j in 0..5 {
            let freq = counts[j] as f64 / trials as f64;
            // 4σ of a binomial proportion at p ≤ 0.4 over 40k trials is < 0.01.
            assert!((freq - p[j]).abs() < 0.01, "{mode:?} tensor {j}: freq {freq:.4} vs p {:.4}", p[j]);
        }
    }
}

/// Mean over draws of layer 1's pre-activation computed from a TOA-sparsified layer 0,
/// against the full pre-activation. Returns the relative error ‖mean − full‖ / ‖full‖.
fn preactivation_bias(mode: ToaMode, draws: usize) -> f32 {
    let net = ModelKind::AlexNet.init::<Inner>([1, 16, 16], 10, &device()).unwrap();
    let (x, _) = random_batch::<Inner>(2, [1, 16, 16], 10, 3);
    let pre = |prefix: &LayeredNet<Inner>| -> Tensor<Inner, 4> {
        let Features::Map(h) = prefix.forward_range(Features::Map(x.clone()), 0, 1).unwrap() else { unreachable!() };
        let Layer::Conv(unit) = &prefix.layers[1] else { unreachable!() };
        unit.pre_activation(h)
    };
    let (prefix, _) = net.split_at(2).unwrap();
    let full = pre(&prefix);
    let settings = ToaSettings::new(0.5, mode).unwrap();
    let mut r = rng(11);
    let mut sum = full.zeros_like();
    for _ in 0..draws {
        let (sparse, _) = sparsify_prefix(prefix.clone(), settings, &mut r).unwrap();
        sum = sum + pre(&sparse);
    }
    let mean = sum / draws as f32;
    let err = (mean - full.clone()).powi_scalar(2).sum().sqrt().into_scalar();
    let norm = full.powi_scalar(2).sum().sqrt().into_scalar();
    err / norm
}

#[test]
fn unbiased_modes_reproduce_the_full_preactivation_in_expectation() {
    // Measured here (relative error of the mean vs draws M = 150, 600, 2400, 9600):
    // crs 0.114, 0.051, 0.025, 0.012; bernoulli 0.084, 0.035, 0.022, 0.011 — the 1/√M of
    // pure Monte Carlo noise. `paper` (α = 1) stays at 0.49 for every M: biased, which shows
    // the check can fail. Tolerance at M = 2400: 0.06 (> 2× the observed error).
    for mode in [ToaMode::Crs, ToaMode::Bernoulli] {
        let err = preactivation_bias(mode, 2400);
        assert!(err < 0.06, "{mode:?}: relative error of the mean {err}");
    }
    let biased = preactivation_bias(ToaMode::Paper, 200);
    assert!(biased > 0.2, "paper mode should be visibly biased, got {biased}");
}

#[test]
fn last_frozen_output_shape_is_unchanged_and_server_untouched() {
    for (kind, l) in [(ModelKind::AlexNet, 4), (ModelKind::ResNet20, 4), (ModelKind::ResNet44, 3)] {
        let global = kind.init::<Inner>([3, 32, 32], 10, &device()).unwrap();
        let before = host_params(&global);
        let (x, _) = random_batch::<Inner>(2, [3, 32, 32], 10, 1);
        let (prefix, _) = global.clone().split_at(l).unwrap();
        let full_out = prefix.forward_range(Features::Map(x.clone()), 0, l).unwrap().dims();
        for mode in [ToaMode::Paper, ToaMode::Crs, ToaMode::Bernoulli, ToaMode::Topk] {
            let (sparse, report) = sparsify_prefix(prefix.clone(), ToaSettings::new(0.25, mode).unwrap(), &mut rng(3)).unwrap();
            let out = sparse.forward_range(Features::Map(x.clone()), 0, l).unwrap().dims();
            assert_eq!(out, full_out, "{} {mode:?}", kind.name());
            assert!(report.frozen_sent_elems < report.frozen_full_elems, "{} {mode:?}", kind.name());
        }
        assert_eq!(host_params(&global), before, "{}: TOA changed the server's model", kind.name());
    }
}

#[test]
fn alexnet_s_quarter_sends_about_sixteen_percent_of_frozen_parameters() {
    // Paper Fig. 13: s = 0.25 with 4 frozen layers transmits ≈16% of the frozen parameters.
    let net = ModelKind::AlexNet.init::<Inner>([3, 32, 32], 10, &device()).unwrap();
    let (prefix, _) = net.split_at(4).unwrap();
    let (_, report) = sparsify_prefix(prefix, ToaSettings::new(0.25, ToaMode::Paper).unwrap(), &mut rng(5)).unwrap();
    let frac = report.sent_fraction();
    assert!((0.15..0.18).contains(&frac), "sent fraction {frac}");
}

#[test]
fn toa_needs_two_frozen_layers_and_a_valid_scale() {
    let net = ModelKind::AlexNet.init::<Inner>([3, 32, 32], 10, &device()).unwrap();
    let (prefix, _) = net.split_at(1).unwrap();
    let (_, report) = sparsify_prefix(prefix, ToaSettings::new(0.25, ToaMode::Paper).unwrap(), &mut rng(5)).unwrap();
    assert_eq!(report.frozen_sent_elems, report.frozen_full_elems, "one frozen layer: nothing to sparsify");
    for s in [0.0, -0.5, 1.5, f64::NAN] {
        let err = ToaSettings::new(s, ToaMode::Paper).unwrap_err();
        assert!(matches!(err, ToaError::BadScale(_)));
        assert!(err.to_string().contains("outside (0, 1]"), "{err}");
    }
}


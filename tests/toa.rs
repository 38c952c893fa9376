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
    let net = seeded::<Inner>(ModelKind::AlexNet, [1, 16, 16], 10, 1);
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
        let global = seeded::<Inner>(kind, [3, 32, 32], 10, 2);
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
    let net = seeded::<Inner>(ModelKind::AlexNet, [3, 32, 32], 10, 3);
    let (prefix, _) = net.split_at(4).unwrap();
    let (_, report) = sparsify_prefix(prefix, ToaSettings::new(0.25, ToaMode::Paper).unwrap(), &mut rng(5)).unwrap();
    let frac = report.sent_fraction();
    assert!((0.15..0.18).contains(&frac), "sent fraction {frac}");
}

#[test]
fn toa_needs_two_frozen_layers_and_a_valid_scale() {
    let net = seeded::<Inner>(ModelKind::AlexNet, [3, 32, 32], 10, 4);
    let (prefix, _) = net.clone().split_at(1).unwrap();
    let (_, report) = sparsify_prefix(prefix, ToaSettings::new(0.25, ToaMode::Paper).unwrap(), &mut rng(5)).unwrap();
    assert_eq!(report.frozen_sent_elems, report.frozen_full_elems, "one frozen layer: nothing to sparsify");
    for s in [0.0, -0.5, 1.5, f64::NAN] {
        let err = ToaSettings::new(s, ToaMode::Paper).unwrap_err();
        assert!(matches!(err, ToaError::BadScale(_)));
        assert!(err.to_string().contains("outside (0, 1]"), "{err}");
    }
    // s = 1 is "no TOA": the whole frozen prefix goes down, however many layers it has, in
    // every mode (sampling with replacement or by Bernoulli draws would drop tensors even at
    // k = H).
    assert!(ToaSettings::new(0.999, ToaMode::Paper).unwrap().is_active());
    for mode in [ToaMode::Paper, ToaMode::Topk, ToaMode::Crs, ToaMode::Bernoulli] {
        let full = ToaSettings::new(1.0, mode).unwrap();
        assert!(!full.is_active(), "{mode:?}");
        let (prefix, _) = net.clone().split_at(3).unwrap();
        let (_, report) = sparsify_prefix(prefix, full, &mut rng(5)).unwrap();
        assert_eq!(report.frozen_sent_elems, report.frozen_full_elems, "{mode:?}: s = 1 sparsifies nothing");
    }
}

#[test]
fn bernoulli_scales_each_kept_tensor_by_its_inclusion_probability() {
    // π_j = min(1, k·p_j) and a kept tensor is scaled by 1/π_j — also when no draw succeeded
    // and the most likely tensor is kept alone. Equal norms, k = 1: π = 0.25 each, so about a
    // third of the 200 selections (0.75⁴ = 32 %) take that fallback.
    let norms = [1.0f32; 4];
    let mut r = rng(3);
    for _ in 0..200 {
        let sel = select(&norms, 1, ToaMode::Bernoulli, &mut r);
        assert!(!sel.indices.is_empty() && sel.alpha.iter().all(|&a| a == 4.0), "{sel:?}");
    }
}

#[test]
fn norm_probabilities_are_proportional_and_uniform_when_the_norms_say_nothing() {
    assert_eq!(norm_probabilities(&[1.0, 3.0]), vec![0.25, 0.75]);
    // All zero (a layer of dead filters) or not finite: every tensor equally likely, never NaN.
    assert_eq!(norm_probabilities(&[0.0, 0.0, 0.0, 0.0]), vec![0.25; 4]);
    assert_eq!(norm_probabilities(&[f32::INFINITY, 1.0]), vec![0.5; 2]);
    // A NaN norm counts as zero (`max(0)`): that tensor is never drawn.
    assert_eq!(norm_probabilities(&[f32::NAN, 1.0]), vec![0.0, 1.0]);
}


/// Exact inclusion probabilities of `paper` mode's scheme, k draws without replacement, each
/// ∝ p among the tensors not yet drawn (Efraimidis–Spirakis keys give exactly this law): a
/// walk over the subsets drawn so far, `P(S ∪ {j}) += P(S) · p_j / (1 − Σ_S p)`.
fn successive_inclusion(p: &[f64], k: usize) -> Vec<f64> {
    let h = p.len();
    let mut reach = vec![0.0f64; 1 << h];
    reach[0] = 1.0;
    let mut pi = vec![0.0; h];
    for set in 0usize..(1 << h) {
        let (size, prob) = (set.count_ones() as usize, reach[set]);
        if prob == 0.0 {
            continue;
        }
        if size == k {
            for (j, v) in pi.iter_mut().enumerate() {
                if set & (1 << j) != 0 {
                    *v += prob;
                }
            }
            continue;
        }
        let left: f64 = 1.0 - (0..h).filter(|j| set & (1 << j) != 0).map(|j| p[j]).sum::<f64>();
        for j in (0..h).filter(|j| set & (1 << j) == 0) {
            reach[set | (1 << j)] += prob * p[j] / left;
        }
    }
    pi
}

/// TOA's draw with k > 1 on a real layer: ResNet20's first inner convolution (16 filters, the
/// inner-channel TOA site), whose norms `toa_norms` gives as each filter's Frobenius norm.
/// A trained layer's filters differ in norm far more than a fresh draw's, so filter j is
/// scaled by 1 + j/3 first. Inclusion frequencies of `paper` mode at k = 8 must match the
/// exact probabilities of sampling without replacement, which are flatter than Eq. 3's
/// `k·p_j` (capped at 1); `crs` and `bernoulli` are checked against their own laws.
#[test]
fn toa_inclusion_with_k_above_one_follows_the_scheme_in_use_on_a_real_layer() {
    use fedolf::tensor::params::{read_layer, write_layer};
    let net = seeded::<Inner>(ModelKind::ResNet20, [3, 32, 32], 10, 21);
    let mut layers = net.layers;
    let mut params = read_layer(&layers[1]);
    let conv1 = params.iter_mut().find(|t| t.name.ends_with("conv1.weight")).expect("a block's inner conv");
    assert_eq!(conv1.shape, vec![16, 16, 3, 3]);
    let per = 16 * 9;
    let mut w = to_vec(&conv1.value);
    for (j, chunk) in w.chunks_mut(per).enumerate() {
        chunk.iter_mut().for_each(|v| *v *= 1.0 + j as f32 / 3.0);
    }
    conv1.value = Tensor::from_data(TensorData::new(w.clone(), [w.len()]), &device());
    let layer = write_layer(layers.remove(1), 1, &params).unwrap();
    let norms = to_vec(&layer.toa_norms().expect("a block has an inner TOA site"));
    let by_hand: Vec<f32> = w.chunks(per).map(|f| f.iter().map(|v| v * v).sum::<f32>().sqrt()).collect();
    assert!(max_abs_diff(&norms, &by_hand) < 1e-4 * by_hand[15], "toa_norms {norms:?} vs Frobenius {by_hand:?}");

    let (h, k, trials) = (16, kept_count(0.5, 16), 20_000);
    assert_eq!(k, 8);
    let p = norm_probabilities(&norms);
    let exact = successive_inclusion(&p, k);
    assert!((exact.iter().sum::<f64>() - k as f64).abs() < 1e-9);
    let eq3: Vec<f64> = p.iter().map(|pj| (k as f64 * pj).min(1.0)).collect();
    let gap = exact.iter().zip(&eq3).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(gap > 0.05, "the check could not tell the schemes apart (gap {gap})");
    let crs: Vec<f64> = p.iter().map(|pj| 1.0 - (1.0 - pj).powi(k as i32)).collect();
    for (mode, law) in [(ToaMode::Paper, &exact), (ToaMode::Bernoulli, &eq3), (ToaMode::Crs, &crs)] {
        let mut counts = vec![0usize; h];
        let mut r = rng(5);
        for _ in 0..trials {
            for j in select(&norms, k, mode, &mut r).indices {
                counts[j] += 1;
            }
        }
        for j in 0..h {
            let (freq, pi) = (counts[j] as f64 / trials as f64, law[j]);
            // 4.5σ of a binomial proportion over 20k trials (σ ≤ 0.0036).
            let tol = 4.5 * (pi * (1.0 - pi) / trials as f64).sqrt() + 1e-3;
            assert!((freq - pi).abs() < tol, "{mode:?} filter {j}: frequency {freq:.4}, inclusion probability {pi:.4}");
        }
    }
}

/// TOA inside ResNet20's residual blocks keeps `⌊s·16⌋` inner channels of every frozen block
/// but the last (conv1's filters and BN1, conv2's matching inputs) and never touches a block's
/// input or output channels, so the skip path stays aligned.
#[test]
fn toa_in_a_resnet_samples_inner_channels_only() {
    use fedolf::tensor::params::read_model;
    let net = seeded::<Inner>(ModelKind::ResNet20, [3, 32, 32], 10, 22);
    let (prefix, _) = net.split_at(4).unwrap();
    let (sparse, report) = sparsify_prefix(prefix.clone(), ToaSettings::new(0.5, ToaMode::Paper).unwrap(), &mut rng(3)).unwrap();
    assert!(report.frozen_sent_elems < report.frozen_full_elems);
    let (full, cut) = (read_model(&prefix), read_model(&sparse));
    for q in 0..4 {
        for (a, b) in full[q].iter().zip(&cut[q]) {
            let inner = a.name.contains("conv1.") || a.name.contains("bn1.");
            let expected = if q < 3 && inner {
                // conv1 [16, c_in, 3, 3] → [8, …]; BN1 vectors [16] → [8].
                let mut s = a.shape.clone();
                s[0] = 8;
                s
            } else if q < 3 && a.name.contains("conv2.weight") {
                let mut s = a.shape.clone();
                s[1] = 8;
                s
            } else {
                a.shape.clone()
            };
            assert_eq!(b.shape, expected, "layer {q} `{}`", a.name);
        }
    }
}

/// The layer after a sampled one, its inputs kept and scaled (`toa_scale_inputs`), against the
/// definition: the full layer on an input whose kept channels are scaled by α_j and whose other
/// channels are zero.
fn scaled_inputs_match_the_masked_input(net: &LayeredNet<Inner>, q: usize, h: Features<Inner>, keep: &[usize], alpha: &[f32]) {
    let dev = device();
    let channels = match &h {
        Features::Map(x) => x.dims()[1],
        Features::Flat(x) => x.dims()[1],
    };
    let mut mask = vec![0.0f32; channels];
    for (&j, &a) in keep.iter().zip(alpha) {
        mask[j] = a;
    }
    let idx = Tensor::<Inner, 1, Int>::from_data(TensorData::new(keep.iter().map(|&j| j as i64).collect::<Vec<_>>(), [keep.len()]), &dev);
    let alpha_t = Tensor::<Inner, 1>::from_data(TensorData::new(alpha.to_vec(), [alpha.len()]), &dev);
    let mask = Tensor::<Inner, 1>::from_data(TensorData::new(mask, [channels]), &dev);
    let (masked, kept) = match h {
        Features::Map(x) => (Features::Map(x.clone() * mask.reshape([1, channels, 1, 1])), Features::Map(x.select(1, idx.clone()))),
        Features::Flat(x) => (Features::Flat(x.clone() * mask.reshape([1, channels])), Features::Flat(x.select(1, idx.clone()))),
    };
    let expected = to_vec(&net.layers[q].forward(masked).into_flat());
    let scaled = net.layers[q].clone().toa_scale_inputs(&idx, &alpha_t, channels).unwrap();
    let got = to_vec(&scaled.forward(kept).into_flat());
    let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "layer {q}: the check needs a non-zero output");
    let err = max_abs_diff(&got, &expected);
    assert!(err <= 1e-5 * scale, "layer {q}: kept and scaled inputs differ from the masked input by {err} (scale {scale})");
}

#[test]
fn scaling_a_dense_layers_inputs_keeps_each_channels_flattened_rows() {
    // AlexNet's first dense layer reads the last convolution's map flattened (NCHW: channel j
    // owns hw consecutive rows, hw > 1 here); its second reads flat neurons (hw = 1).
    let net = seeded::<Inner>(ModelKind::AlexNet, [3, 32, 32], 10, 23);
    let (x, _) = random_batch::<Inner>(3, [3, 32, 32], 10, 4);
    let conv_out = net.forward_range(Features::Map(x.clone()), 0, 5).unwrap();
    let Features::Map(map) = &conv_out else { panic!("AlexNet's fifth layer outputs a map") };
    let [_, c, hh, ww] = map.dims();
    assert!(hh * ww > 1, "the check needs a map wider than one pixel");
    assert!(matches!(net.layers[5], Layer::Dense(_)) && matches!(net.layers[6], Layer::Dense(_)));
    scaled_inputs_match_the_masked_input(&net, 5, conv_out, &[0, 3, 7, c - 1], &[0.5, 2.0, 1.25, 3.0]);
    let hidden = net.forward_range(Features::Map(x), 0, 6).unwrap();
    scaled_inputs_match_the_masked_input(&net, 6, hidden, &[1, 2, 40], &[4.0, 0.25, 1.5]);
}

//! Layer-wise baselines: QSGD, CoCoFL's window and server rule, random freezing and TinyFEL
//! plans, FedAvg's drop variant.

mod common;

use burn::prelude::*;
use common::*;
use fedolf::aggregate::LayerUpload;
use fedolf::config::Method;
use fedolf::freeze::LayerRole;
use fedolf::params::NamedTensor;
use fedolf::qsgd::{quantize_dequantize, QsgdSettings};
use fedolf::strategy::{cocofl_blend, strategy_for, Download, PlanContext};
use rand::SeedableRng;

fn layout(n: usize) -> fedolf::models::SpaceLayout {
    fedolf::models::SpaceLayout { sizes: vec![10, 20], layers: vec![Default::default(); n] }
}

fn rng(seed: u64) -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
}

#[test]
fn qsgd_byte_count_matches_the_formula() {
    // 1000 values at 8 bits in buckets of 128: 1000 bytes + 4 · ⌈1000/128⌉ = 1000 + 32.
    assert_eq!(QsgdSettings::new(8, 128).unwrap().bytes(1000), 1032);
    // 16 bits: 2000 + 32. 3 bits of 10 values in one bucket: ⌈30/8⌉ + 4 = 8.
    assert_eq!(QsgdSettings::new(16, 128).unwrap().bytes(1000), 2032);
    assert_eq!(QsgdSettings::new(3, 128).unwrap().bytes(10), 8);
    assert_eq!(QsgdSettings::new(8, 128).unwrap().levels(), 127);
    assert!(QsgdSettings::new(1, 128).is_err() && QsgdSettings::new(17, 128).is_err() && QsgdSettings::new(8, 0).is_err());
}

#[test]
fn qsgd_is_unbiased_and_coarser_with_fewer_bits() {
    let v: Vec<f32> = (0..256).map(|i| ((i as f32) * 0.37).sin() * (1.0 + i as f32 / 64.0)).collect();
    let mut r = rng(1);
    for bits in [2u32, 4, 8] {
        let settings = QsgdSettings::new(bits, 128).unwrap();
        let trials = 40_000;
        let mut mean = vec![0f64; v.len()];
        for _ in 0..trials {
            let mut q = v.clone();
            quantize_dequantize(&mut q, settings, &mut r);
            for (m, x) in mean.iter_mut().zip(&q) {
                *m += *x as f64 / trials as f64;
            }
        }
        let err = mean.iter().zip(&v).map(|(m, x)| (m - *x as f64).powi(2)).sum::<f64>().sqrt();
        let norm = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        // Monte Carlo error of the mean at 2 bits (one level, ξ ∈ {0, 1}):
        // ≈ sqrt(Σ_i a_i / trials) ≈ sqrt(22 / 40 000) ≈ 0.02; fewer bits only shrink it.
        // A biased quantizer (e.g. always rounding down) misses by 10–50%.
        assert!(err / norm < 0.03, "{bits} bits: relative error of the mean {}", err / norm);
    }
    // Zero buckets stay zero; values keep their sign.
    let mut z = vec![0.0f32; 10];
    quantize_dequantize(&mut z, QsgdSettings::new(4, 128).unwrap(), &mut r);
    assert!(z.iter().all(|&x| x == 0.0));
}

#[test]
fn cocofl_windows_are_contiguous_and_start_anywhere_in_0_to_l() {
    let s = strategy_for(Method::Cocofl, Download::Full);
    let l = layout(7);
    let ctx = PlanContext { num_layers: 7, clusters: 5, round: 1, layout: &l };
    let mut starts = std::collections::BTreeSet::new();
    let mut r = rng(2);
    for _ in 0..400 {
        let plan = s.plan(&ctx, 0, 1, &mut r).unwrap(); // cluster 1 of 5: l = 3, window 4
        let trained: Vec<usize> = plan.roles.iter().enumerate().filter(|(_, r)| **r == LayerRole::Trained).map(|(i, _)| i).collect();
        assert_eq!(trained.len(), 4);
        assert!(trained.windows(2).all(|w| w[1] == w[0] + 1), "contiguous: {trained:?}");
        let start = trained[0];
        assert!(plan.roles[..start].iter().all(|r| *r == LayerRole::FrozenNoGraph));
        assert!(plan.roles[start + 4..].iter().all(|r| *r == LayerRole::FrozenInGraph));
        starts.insert(start);
    }
    assert_eq!(starts.into_iter().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
}

fn t(values: &[f32]) -> Vec<NamedTensor<Inner>> {
    vec![NamedTensor {
        name: "w".into(),
        shape: vec![values.len()],
        value: Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), &device()),
    }]
}

#[test]
fn cocofl_server_rule_by_hand() {
    // Two layers, 4 participants. Layer 0: uploaded by 2 ([2, 4] and [6, 8]) → r = 1/2,
    // mean [4, 6], old [0, 10] → 0.5·[4, 6] + 0.5·[0, 10] = [2, 8]. Layer 1: nobody → kept.
    // Sample counts are ignored (CoCoFL's mean is unweighted).
    let global = vec![t(&[0.0, 10.0]), t(&[1.0, 1.0])];
    let uploads = vec![
        LayerUpload::whole(100.0, vec![(0, t(&[2.0, 4.0]))]),
        LayerUpload::whole(1.0, vec![(0, t(&[6.0, 8.0]))]),
    ];
    let out = cocofl_blend(&global, &uploads, 4).unwrap();
    assert_eq!(to_vec(&out[0].as_ref().unwrap()[0].value), vec![2.0, 8.0]);
    assert!(out[1].is_none());
}

#[test]
fn random_freezing_and_tinyfel_freeze_l_layers() {
    let lay = layout(10);
    let ctx = PlanContext { num_layers: 10, clusters: 5, round: 1, layout: &lay };
    let mut r = rng(3);
    for cluster in 0..5 {
        let l = 4 - cluster;
        let plan = strategy_for(Method::RandomFreeze, Download::Full).plan(&ctx, 0, cluster, &mut r).unwrap();
        assert_eq!(plan.frozen(), l);
        let plan = strategy_for(Method::Tinyfel, Download::Full).plan(&ctx, 0, cluster, &mut r).unwrap();
        assert_eq!(plan.roles[..l], vec![LayerRole::FrozenGradDiscarded; l][..]);
        assert_eq!(plan.frozen(), l);
    }
    let drop = strategy_for(Method::FedavgDrop, Download::Full);
    assert!(drop.eligible(4, 5) && !drop.eligible(3, 5));
}

#[test]
fn heterofl_takes_prefixes_and_feddrop_random_subsets_of_width_i_over_c() {
    let lay = layout(3);
    let ctx = PlanContext { num_layers: 3, clusters: 5, round: 1, layout: &lay };
    let mut r = rng(4);
    // Cluster 1 of 5 (i = 2): r = 0.4 → ⌈4⌉ of 10 and ⌈8⌉ of 20.
    let plan = strategy_for(Method::Heterofl, Download::Full).plan(&ctx, 0, 1, &mut r).unwrap();
    let w = plan.width.unwrap();
    assert_eq!(w.kept, vec![(0..4).collect::<Vec<_>>(), (0..8).collect()]);
    let a = strategy_for(Method::Feddrop, Download::Full).plan(&ctx, 0, 1, &mut r).unwrap().width.unwrap();
    let b = strategy_for(Method::Feddrop, Download::Full).plan(&ctx, 0, 1, &mut r).unwrap().width.unwrap();
    assert_eq!((a.kept[0].len(), a.kept[1].len()), (4, 8));
    assert_ne!(a, b, "a fresh draw per plan");
    // The strongest cluster trains the full width.
    let full = strategy_for(Method::Heterofl, Download::Full).plan(&ctx, 0, 4, &mut r).unwrap().width.unwrap();
    assert!(full.is_full(&lay));
}

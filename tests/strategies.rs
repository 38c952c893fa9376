//! Layer-wise baselines: QSGD, CoCoFL's window and server rule, random freezing and TinyFEL
//! plans, FedAvg's drop variant.

mod common;

use burn::prelude::*;
use common::*;
use fedolf::tensor::aggregate::LayerUpload;
use fedolf::local::roles::LayerRole;
use fedolf::tensor::params::NamedTensor;
use fedolf::compress::qsgd::{quantize_dequantize, QsgdSettings};
use fedolf::strategy::{cocofl_blend, Download, EvalView, PlanContext, Strategy};
use rand::SeedableRng;

fn layout(n: usize) -> fedolf::models::SpaceLayout {
    fedolf::models::SpaceLayout { sizes: vec![10, 20], is_fc: vec![false, false], layers: vec![Default::default(); n] }
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
    let s = strategy("cocofl", &[]);
    let l = layout(7);
    let ctx = PlanContext { num_layers: 7, capacities: 5, round: 1, rounds: 10, layout: &l };
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
    let ctx = PlanContext { num_layers: 10, capacities: 5, round: 1, rounds: 10, layout: &lay };
    let mut r = rng(3);
    for cluster in 0..5 {
        let l = 4 - cluster;
        let plan = strategy("random-freeze", &[]).plan(&ctx, 0, cluster, &mut r).unwrap();
        assert_eq!(plan.frozen(), l);
        let plan = strategy("tinyfel", &[]).plan(&ctx, 0, cluster, &mut r).unwrap();
        assert_eq!(plan.roles[..l], vec![LayerRole::FrozenGradDiscarded; l][..]);
        assert_eq!(plan.frozen(), l);
    }
    let drop = strategy("fedavg-drop", &[]);
    assert!(drop.eligible(4, 5) && !drop.eligible(3, 5));
}

#[test]
fn heterofl_takes_prefixes_and_feddrop_random_subsets_of_width_i_over_c() {
    let lay = layout(3);
    let ctx = PlanContext { num_layers: 3, capacities: 5, round: 1, rounds: 10, layout: &lay };
    let mut r = rng(4);
    // Cluster 1 of 5 (i = 2): r = 0.4 → ⌈4⌉ of 10 and ⌈8⌉ of 20.
    let plan = strategy("heterofl", &[]).plan(&ctx, 0, 1, &mut r).unwrap();
    let w = plan.width.unwrap();
    assert_eq!(w.kept, vec![(0..4).collect::<Vec<_>>(), (0..8).collect()]);
    let a = strategy("feddrop", &[]).plan(&ctx, 0, 1, &mut r).unwrap().width.unwrap();
    let b = strategy("feddrop", &[]).plan(&ctx, 0, 1, &mut r).unwrap().width.unwrap();
    assert_eq!((a.kept[0].len(), a.kept[1].len()), (4, 8));
    assert_ne!(a, b, "a fresh draw per plan");
    // The strongest cluster trains the full width.
    let full = strategy("heterofl", &[]).plan(&ctx, 0, 4, &mut r).unwrap().width.unwrap();
    assert!(full.is_full(&lay));
}

#[test]
fn slt_widths_and_stage_lengths_by_hand() {
    use fedolf::strategy::{stage_count, stage_ends, stage_of, stage_width};
    // s_j = 0.5 + 0.5·(j−1)/(J−1), J = N − 1.
    assert_eq!(stage_count(4), 3);
    assert_eq!((0..3).map(|j| stage_width(j, 3)).collect::<Vec<_>>(), vec![0.5, 0.75, 1.0]);
    assert_eq!(stage_width(0, 1), 1.0);
    // Equal weights over 6 rounds: 2 each. Weights 1:2:1 over 8: cumulative 2, 6, 8.
    assert_eq!(stage_ends(&[1.0, 1.0, 1.0], 6), vec![2, 4, 6]);
    assert_eq!(stage_ends(&[1.0, 2.0, 1.0], 8), vec![2, 6, 8]);
    // A dominant first stage still leaves one round to each later stage.
    assert_eq!(stage_ends(&[100.0, 1.0, 1.0], 3), vec![1, 2, 3]);
    // Fewer rounds than stages: the first T stages get one round each.
    assert_eq!(stage_ends(&[1.0; 4], 2), vec![1, 2, 2, 2]);
    let ends = [2, 4, 6];
    assert_eq!([1, 2, 3, 4, 5, 6].map(|t| stage_of(&ends, t)), [0, 0, 1, 1, 2, 2]);
}

/// A ResNet-like layout: stem (space 0 out, inner 1), identity block (inner 2, out 0),
/// projection block (inner 4, out 3), head.
fn resnet_like_layout() -> fedolf::models::SpaceLayout {
    use fedolf::models::LayerSpaces;
    let s = |input, inner, output| LayerSpaces { input, inner, output };
    fedolf::models::SpaceLayout {
        sizes: vec![16, 16, 16, 32, 32],
        is_fc: vec![false; 5],
        layers: vec![s(None, Some(1), Some(0)), s(Some(0), Some(2), Some(0)), s(Some(0), Some(4), Some(3)), s(Some(3), None, None)],
    }
}

#[test]
fn slt_plans_freeze_earlier_stages_and_narrow_what_no_full_layer_produces() {
    let lay = resnet_like_layout();
    // Equal stages over 6 rounds: rounds 1–2 stage 0 (s = 0.5), 3–4 stage 1 (0.75), 5–6 stage 2 (1.0).
    let slt = strategy("slt", &[]);
    let ctx = |round| PlanContext { num_layers: 4, capacities: 2, round, rounds: 6, layout: &lay };
    let mut r = rng(5);
    let (f, t) = (LayerRole::FrozenNoGraph, LayerRole::Trained);

    // Stage 0, weakest cluster (d = 1): the stem is full; block 1 shares the stem's space so
    // its output stays whole, its inner space narrows to 8; stage 2's spaces narrow to 16.
    let p = slt.plan(&ctx(1), 0, 0, &mut r).unwrap();
    assert_eq!(p.roles, vec![t; 4]);
    let kept: Vec<usize> = p.width.unwrap().kept.iter().map(Vec::len).collect();
    assert_eq!(kept, vec![16, 16, 8, 16, 16]);
    // Stage 1: the stem freezes; block 1 is full; s = 0.75 beyond.
    let p = slt.plan(&ctx(3), 0, 0, &mut r).unwrap();
    assert_eq!(p.roles, vec![f, t, t, t]);
    let kept: Vec<usize> = p.width.unwrap().kept.iter().map(Vec::len).collect();
    assert_eq!(kept, vec![16, 16, 16, 24, 24]);
    let EvalView::Width(stage) = slt.eval_view(&ctx(3)) else { panic!("SLT evaluates a sub-model before its last stage") };
    assert_eq!(stage.kept.iter().map(Vec::len).collect::<Vec<_>>(), kept);
    // The stronger cluster (d = 2) trains block 2 at full width too: nothing narrows.
    let p = slt.plan(&ctx(4), 0, 1, &mut r).unwrap();
    assert_eq!(p.roles, vec![f, t, t, t]);
    assert!(p.width.is_none());
    // Last stage: the first two layers frozen, the rest full; the full model is evaluated.
    let p = slt.plan(&ctx(6), 0, 0, &mut r).unwrap();
    assert_eq!((p.roles, p.width), (vec![f, f, t, t], None));
    assert_eq!(slt.eval_view(&ctx(6)), EvalView::Full);

    // Parameter-weighted stages: 3 : 2 : 1 over 6 rounds → rounds 1–3, 4–5, 6.
    let weighted = fedolf::strategy::Slt { stage_params: Some(vec![300, 200, 100]) };
    let stage = |round| Strategy::<Train>::plan(&weighted, &ctx(round), 0, 0, &mut rng(0)).unwrap().frozen();
    assert_eq!([1, 3, 4, 5, 6].map(stage), [0, 0, 1, 1, 2]);
}

#[test]
fn cocofl_fake_int8_flag_reaches_the_plan() {
    let lay = layout(5);
    let ctx = PlanContext { num_layers: 5, capacities: 3, round: 1, rounds: 10, layout: &lay };
    assert!(strategy("cocofl", &["cocofl.fake_int8=true"]).plan(&ctx, 0, 0, &mut rng(6)).unwrap().fake_int8_frozen);
    assert!(!strategy("cocofl", &[]).plan(&ctx, 0, 0, &mut rng(6)).unwrap().fake_int8_frozen);
}

#[test]
fn fake_int8_keeps_255_levels_within_half_a_step() {
    use fedolf::local::fake_quant::fake_int8;
    let v: Vec<f32> = (0..4000).map(|i| ((i as f32) * 0.731).sin() * 3.0).collect();
    let q = to_vec(&fake_int8(t(&v)[0].value.clone()));
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let step = max / 127.0;
    let mut levels: Vec<i64> = q.iter().map(|x| (x / step).round() as i64).collect();
    levels.sort_unstable();
    levels.dedup();
    assert!(levels.len() <= 255 && levels.len() > 200, "{} levels", levels.len());
    assert!(levels.iter().all(|l| l.abs() <= 127));
    for (a, b) in v.iter().zip(&q) {
        assert!((a - b).abs() <= step / 2.0 + 1e-5, "{a} → {b}");
    }
    assert_eq!(to_vec(&fake_int8(t(&[0.0, 0.0])[0].value.clone())), vec![0.0, 0.0]);
}

#[test]
fn fake_int8_touches_only_frozen_weights_and_training_still_runs() {
    use fedolf::local::fake_quant::fake_int8_frozen;
    use fedolf::local::training::{LocalModel, SgdSettings};
    use fedolf::models::ModelKind;
    let global = seeded::<Train>(ModelKind::Cnn, [1, 28, 28], 10, 1);
    let before = host_params(&global);
    let (f, tr, g) = (LayerRole::FrozenNoGraph, LayerRole::Trained, LayerRole::FrozenInGraph);
    let local = fake_int8_frozen(LocalModel::from_roles(&global, &[f, tr, g]).unwrap()).unwrap();
    let (prefix, graph) = (host_params(&local.no_graph), host_params(&local.graph));
    let distinct = |v: &[f32]| {
        let mut b: Vec<u32> = v.iter().map(|x| (x + 0.0).to_bits()).collect(); // −0 and +0 are one level
        b.sort_unstable();
        b.dedup();
        b.len()
    };
    // Frozen weights (rank ≥ 2): quantized (≤ 255 values, changed); rank-1 tensors untouched.
    let ranks: Vec<Vec<usize>> = fedolf::tensor::params::read_model(&global).iter().map(|l| l.iter().map(|t| t.shape.len()).collect()).collect();
    let mut quantized = 0;
    for (layer, i) in [(&prefix[0], 0), (&graph[1], 2)] {
        for (((name, q), (_, w)), rank) in layer.iter().zip(&before[i]).zip(&ranks[i]) {
            if *rank >= 2 {
                assert!(distinct(q) <= 255 && q != w, "{name}: {} distinct values", distinct(q));
                quantized += 1;
            } else {
                assert_eq!(q, w, "{name}");
            }
        }
    }
    assert_eq!(quantized, 2, "conv1 weight and the classifier weight");
    // The trained layer is bit-identical to the global model.
    assert_eq!(graph[0], before[1]);
    // A step trains layer 2 only, through the quantized frozen layer above it.
    let (x, y) = random_batch::<Inner>(8, [1, 28, 28], 10, 3);
    let (stepped, loss) = local.fresh_step(x, y, &SgdSettings { lr: 0.1, momentum: 0.0, weight_decay: 0.0 });
    assert!(loss.into_scalar().is_finite());
    let after = host_params(&stepped.graph);
    assert_ne!(after[0], graph[0]);
    assert_eq!(after[1], graph[1]);
}

/// FedOLF at c = 5 on AlexNet (N = 7): cluster i (1..5, 0-based 0..4) freezes l = 5 − i =
/// 4, 3, 2, 1, 0 layers outside the graph and trains the rest; TOA only where l ≥ 2; QSGD
/// wherever something is frozen.
#[test]
fn fedolf_plans_c5_levels_and_toa_only_from_two_frozen_layers() {
    use fedolf::compress::toa::{ToaMode, ToaSettings};
    let layout = layout(7);
    let ctx = PlanContext { num_layers: 7, capacities: 5, round: 1, rounds: 10, layout: &layout };
    let toa = Download::Toa(ToaSettings::new(0.5, ToaMode::Paper).unwrap());
    let fedolf = strategy_downloading("fedolf", toa, &[]);
    let mut levels = Vec::new();
    for cluster in 0..5 {
        let plan = fedolf.plan(&ctx, 3, cluster, &mut rng(1)).unwrap();
        let l = plan.frozen();
        levels.push(l);
        assert_eq!(plan.roles[..l], vec![LayerRole::FrozenNoGraph; l][..], "cluster {cluster}");
        assert_eq!(plan.roles[l..], vec![LayerRole::Trained; 7 - l][..], "cluster {cluster}");
        assert_eq!(plan.download, if l >= 2 { toa } else { Download::Full }, "cluster {cluster} (l = {l})");
        assert!(plan.width.is_none());
    }
    assert_eq!(levels, vec![4, 3, 2, 1, 0]);
    let qsgd = Download::Qsgd(QsgdSettings::new(8, 128).unwrap());
    let fedolf = strategy_downloading("fedolf", qsgd, &[]);
    let downloads: Vec<Download> = (0..5).map(|c| fedolf.plan(&ctx, 3, c, &mut rng(1)).unwrap().download).collect();
    assert_eq!(downloads, vec![qsgd, qsgd, qsgd, qsgd, Download::Full]);
}

fn named(values: &[f32]) -> Vec<NamedTensor<Inner>> {
    vec![NamedTensor { name: "w".into(), shape: vec![values.len()], value: Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), &device()) }]
}

/// Three clients with different layers and unequal n_k, merged by hand. Global: L0 = [100],
/// L1 = [100, 100], L2 = [100], L3 = [100]. A (n = 1) uploads L1 = [0, 4], L2 = [10];
/// B (n = 3) uploads L2 = [2]; C (n = 4) uploads L0 = [8], L1 = [8, 0], L2 = [6].
fn three_uploaders() -> (Vec<Vec<NamedTensor<Inner>>>, Vec<LayerUpload<Inner>>) {
    let global = vec![named(&[100.0]), named(&[100.0, 100.0]), named(&[100.0]), named(&[100.0])];
    let uploads = vec![
        LayerUpload::whole(1.0, vec![(1, named(&[0.0, 4.0])), (2, named(&[10.0]))]),
        LayerUpload::whole(3.0, vec![(2, named(&[2.0]))]),
        LayerUpload::whole(4.0, vec![(0, named(&[8.0])), (1, named(&[8.0, 0.0])), (2, named(&[6.0]))]),
    ];
    (global, uploads)
}

fn merged_values(out: Vec<Option<Vec<NamedTensor<Inner>>>>) -> Vec<Option<Vec<f32>>> {
    out.into_iter().map(|l| l.map(|t| to_vec(&t[0].value))).collect()
}

#[test]
fn fedolf_merges_each_layer_over_its_own_uploaders_under_both_rules() {
    let (global, uploads) = three_uploaders();
    let plans = |n: usize| -> Vec<fedolf::strategy::ClientPlan> {
        let layout = layout(4);
        let ctx = PlanContext { num_layers: 4, capacities: 1, round: 1, rounds: 1, layout: &layout };
        let s = strategy("fedavg", &[]);
        (0..n).map(|k| s.plan(&ctx, k, 0, &mut rng(1)).unwrap()).collect()
    };
    // Weighted (the default): L0 = C's; L1 = (1·[0, 4] + 4·[8, 0]) / 5; L2 = (10 + 3·2 + 4·6) / 8.
    let mut weighted = strategy("fedolf", &[]);
    let got = merged_values(weighted.merge(&global, &uploads, &plans(3)).unwrap());
    let want = vec![Some(vec![8.0]), Some(vec![6.4, 0.8]), Some(vec![5.0]), None];
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.is_some(), w.is_some());
        if let (Some(g), Some(w)) = (g, w) {
            assert!(max_abs_diff(g, w) < 1e-5, "weighted: {got:?} vs {want:?}");
        }
    }
    // Blend ([17]): r = uploaders / participants, the uploaders' plain mean.
    // L0: r = 1/3, 8/3 + 200/3; L1: r = 2/3, mean [4, 2]; L2: r = 1, mean 6.
    let mut blend = strategy("fedolf", &["fedolf.merge=\"blend\""]);
    let got = merged_values(blend.merge(&global, &uploads, &plans(3)).unwrap());
    let want = vec![Some(vec![(8.0 + 200.0) / 3.0]), Some(vec![(8.0 + 100.0) / 3.0, (4.0 + 100.0) / 3.0]), Some(vec![6.0]), None];
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.is_some(), w.is_some());
        if let (Some(g), Some(w)) = (g, w) {
            assert!(max_abs_diff(g, w) < 1e-4, "blend: {got:?} vs {want:?}");
        }
    }
    // With a fourth participant that uploaded nothing (r shrinks), L2 moves by 3/4 only.
    let got = merged_values(blend.merge(&global, &uploads, &plans(4)).unwrap());
    assert!((got[2].as_ref().unwrap()[0] - (0.75 * 6.0 + 25.0)).abs() < 1e-4, "{got:?}");
}

/// FedOLF's levels freeze layers: a run with more clusters than the model has layers is
/// refused before anything trains, naming the field, and the run header's frozen counts per
/// cluster are c − i.
#[test]
fn fedolf_refuses_more_clusters_than_layers_and_reports_its_levels() {
    use fedolf::config::{Config, DEFAULT_TOML};
    let overrides: Vec<String> = ["federation.clusters=4", "federation.clients=8", "federation.clients_per_round=4", "data.partition=\"iid\""].iter().map(|s| s.to_string()).collect();
    let cfg = Config::from_toml(DEFAULT_TOML, "default", &overrides).unwrap();
    let dataset = fedolf_datasets::Dataset::random_pixels(fedolf_datasets::DatasetKind::FashionMnist, 64, 20, 1);
    let err = fedolf::engine::federation::Federation::<Train>::new(&cfg, &dataset, &device()).err().expect("4 clusters on the 3-layer CNN");
    assert!(err.to_string().contains("federation.clusters"), "{err}");
    let fedolf = fedolf::strategy::facts("fedolf").unwrap();
    assert_eq!((fedolf.frozen_per_cluster)(5), Some(vec![4, 3, 2, 1, 0]));
}

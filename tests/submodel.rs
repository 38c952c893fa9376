//! Width sub-models: extract∘embed round-trips, r = 1 is the full model, every ratio runs
//! on every model (ResNet skips stay aligned), and masked MWA keeps unheld elements.

mod common;

use burn::module::AutodiffModule;
use burn::prelude::*;
use common::*;
use fedolf::tensor::aggregate::{aggregate_layerwise, LayerUpload};
use fedolf::models::{LayeredNet, ModelKind};
use fedolf::tensor::params::{read_model, write_model};
use fedolf::tensor::submodel::{embed, embedding_indices, extract, kept_channels, WidthSpec};
use rand::SeedableRng;

const RATIOS: [f64; 5] = [0.2, 0.4, 0.6, 0.8, 1.0];

/// A fresh inner-backend copy (its own BN cells) of a seeded model.
fn global(kind: ModelKind, shape: [usize; 3]) -> LayeredNet<Train> {
    seeded::<Train>(kind, shape, 10, 1)
}

#[test]
fn one_rounding_rule() {
    assert_eq!(kept_channels(0.2, 16), 4); // ⌈3.2⌉
    assert_eq!(kept_channels(0.5, 33), 17);
    assert_eq!(kept_channels(0.01, 16), 1);
    assert_eq!(kept_channels(1.0, 64), 64);
}

#[test]
fn every_ratio_runs_on_every_model_and_input_shape() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    for kind in ModelKind::ALL {
        for shape in [[1, 28, 28], [3, 32, 32]] {
            let g = global(kind, shape);
            let layout = g.channel_spaces();
            let (x, _) = random_batch::<Inner>(2, shape, 10, 1);
            for r in RATIOS {
                for spec in [WidthSpec::prefix(&layout, r), WidthSpec::random(&layout, r, &mut rng)] {
                    let sub = extract(g.valid(), &layout, &spec, &device());
                    assert_eq!(sub.forward(x.clone()).dims(), [2, 10], "{} {shape:?} r={r}", kind.name());
                }
            }
        }
    }
}

#[test]
fn resnet_stages_are_single_spaces() {
    let g = global(ModelKind::ResNet20, [3, 32, 32]);
    let layout = g.channel_spaces();
    // 3 stage spaces + 9 inner spaces.
    assert_eq!(layout.sizes.iter().filter(|&&c| c == 16).count(), 1 + 3);
    assert_eq!(layout.sizes.len(), 3 + 9);
    // Blocks 2–3 of stage 1 read and write the stem's space.
    assert_eq!(layout.layers[1].input, layout.layers[0].output);
    assert_eq!(layout.layers[1].output, layout.layers[0].output);
}

#[test]
fn extract_then_embed_round_trips_exactly() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    for kind in ModelKind::ALL {
        let g = global(kind, [3, 32, 32]);
        let layout = g.channel_spaces();
        let g_params = read_model(&g.valid());
        for r in [0.4, 1.0] {
            let spec = WidthSpec::random(&layout, r, &mut rng);
            let local = read_model(&extract(g.valid(), &layout, &spec, &device()));
            let idx = embedding_indices(g.valid(), &layout, &spec, &device()).unwrap();
            for (l, (values, masks)) in embed(&local, &idx, &g_params).into_iter().enumerate() {
                for (t, (v, m)) in values.iter().zip(&masks).enumerate() {
                    let (v, m, g) = (to_vec(&v.value), to_vec(m), to_vec(&g_params[l][t].value));
                    let held = m.iter().filter(|&&x| x == 1.0).count();
                    assert_eq!(held, local[l][t].numel(), "{} layer {l} tensor {}: each local element lands once", kind.name(), local[l][t].name);
                    assert!(m.iter().all(|&x| x == 0.0 || x == 1.0));
                    for i in 0..v.len() {
                        if m[i] == 1.0 {
                            assert_eq!(v[i], g[i], "{} {} element {i}", kind.name(), local[l][t].name);
                        }
                    }
                    if r == 1.0 {
                        assert_eq!(held, g.len(), "r = 1 holds everything");
                    }
                }
            }
        }
    }
}

#[test]
fn prefix_at_full_width_is_the_global_model() {
    for kind in ModelKind::ALL {
        let g = global(kind, [1, 28, 28]);
        let layout = g.channel_spaces();
        let spec = WidthSpec::prefix(&layout, 1.0);
        assert!(spec.is_full(&layout));
        let sub = extract(g.valid(), &layout, &spec, &device());
        assert_eq!(host_params(&sub), host_params(&g.valid()), "{}", kind.name());
    }
}

#[test]
fn masked_mwa_of_identical_submodels_returns_them_and_keeps_unheld_elements() {
    let g = global(ModelKind::AlexNet, [3, 32, 32]);
    let layout = g.channel_spaces();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let spec = WidthSpec::random(&layout, 0.5, &mut rng);
    let g_params = read_model(&g.valid());
    // The client "trained" its sub-model into all-sevens.
    let local: Vec<_> = read_model(&extract(g.valid(), &layout, &spec, &device()))
        .into_iter()
        .map(|layer| layer.into_iter().map(|mut t| { t.value = t.value.zeros_like() + 7.0; t }).collect::<Vec<_>>())
        .collect();
    let idx = embedding_indices(g.valid(), &layout, &spec, &device()).unwrap();
    let embedded = embed(&local, &idx, &g_params);
    let upload = |w: f64| {
        let (layers, masks): (Vec<_>, Vec<_>) = embedded.iter().cloned().enumerate().map(|(l, (v, m))| ((l, v), m)).unzip();
        LayerUpload::masked(w, layers, masks)
    };
    let merged = aggregate_layerwise(&g_params, &[upload(3.0), upload(5.0)]).unwrap();
    for (l, layer) in merged.iter().enumerate() {
        for (t, tensor) in layer.as_ref().unwrap().iter().enumerate() {
            let (out, old, mask) = (to_vec(&tensor.value), to_vec(&g_params[l][t].value), to_vec(&embedded[l].1[t]));
            for i in 0..out.len() {
                let expected = if mask[i] == 1.0 { 7.0 } else { old[i] };
                assert!((out[i] - expected).abs() < 1e-6, "layer {l} {} element {i}", tensor.name);
            }
        }
    }
    // And the result writes back into the model.
    let merged: Vec<_> = merged.into_iter().map(|l| l.map(|ts| ts.into_iter().map(|t| fedolf::tensor::params::NamedTensor { name: t.name, shape: t.shape, value: Tensor::from_inner(t.value) }).collect())).collect();
    write_model(g, &merged).unwrap();
}

#[test]
fn the_scaler_survives_copies_and_scales_hidden_outputs() {
    let mut g = global(ModelKind::Cnn, [1, 28, 28]);
    let (x, _) = random_batch::<Inner>(2, [1, 28, 28], 10, 5);
    let base = to_vec(&g.valid().forward(x.clone()));
    g.set_scaler(2.0);
    // valid() / from_inner (the deep copy every client gets) keep the plain field.
    let copy = fedolf::tensor::params::deep_copy(&g);
    let scaled = to_vec(&copy.valid().forward(x.clone()));
    assert!(max_abs_diff(&base, &scaled) > 1e-3, "the scaler changes the output");
    g.set_scaler(1.0);
    assert!(max_abs_diff(&base, &to_vec(&g.valid().forward(x))) < 1e-6);
}

#[test]
fn ordered_dropout_trains_only_the_drawn_prefix() {
    use fedolf::local::training::{ClientData, LocalTraining, SgdSettings};
    use fedolf::local::ordered_dropout::train_ordered_dropout;
    // FedAvg's CNN (hidden FC 512): the hidden neurons are a sliced space too.
    let options = fedolf::models::ModelOptions { cnn_hidden: 512, ..Default::default() };
    let g = ModelKind::Cnn.init_with::<Train>([1, 28, 28], 10, &options, &device()).unwrap();
    let sizes = g.channel_spaces().sizes; // [32, 64, 512]
    let before = host_params(&g.valid());
    let (x, y) = random_batch::<Inner>(16, [1, 28, 28], 10, 9);
    let indices: Vec<usize> = (0..16).collect();
    let data = ClientData { images: &x, labels: &y, indices: &indices };
    let settings = LocalTraining { epochs: 1, batch_size: 16, sgd: SgdSettings { lr: 0.1, momentum: 0.0, weight_decay: 0.0 }, cache_frozen: false, frozen_norm: Default::default() };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let (trained, outcome) = train_ordered_dropout(g, &sizes, &[0.5], &data, &settings, &mut rng).unwrap();
    assert_eq!(outcome.steps, 1);
    let after = host_params(&trained.valid());
    // conv1 weight [32, 1, 5, 5]: filters 0..16 trained, 16..32 untouched.
    let (w0, w1) = (&before[0][0].1, &after[0][0].1);
    let per_filter = 25;
    assert!(w0[..16 * per_filter] != w1[..16 * per_filter], "prefix filters moved");
    assert_eq!(w0[16 * per_filter..], w1[16 * per_filter..], "filters outside the prefix stay");
    // The classifier's class outputs are never sliced, but only the kept hidden rows train.
    let (o0, o1) = (&before[2][2].1, &after[2][2].1); // output.weight [512, 10]
    assert!(o0[..256 * 10] != o1[..256 * 10]);
    assert_eq!(o0[256 * 10..], o1[256 * 10..]);
}

#[test]
fn static_bn_statistics_do_not_depend_on_the_old_ones() {
    use fedolf::strategy::recompute_bn_statistics;
    let (x, _) = random_batch::<Inner>(24, [3, 32, 32], 10, 11);
    let stats = |net: &LayeredNet<Train>| -> Vec<f32> {
        read_model(&net.valid()).into_iter().flatten().filter(|t| t.is_buffer()).flat_map(|t| to_vec(&t.value)).collect()
    };
    let once = recompute_bn_statistics(global(ModelKind::ResNet20, [3, 32, 32]), &x, 8);
    let first = stats(&once);
    // Overwrite every running statistic with garbage, then recompute: momentum 1/(t+1)
    // gives the first batch weight 1, so nothing of the old values may survive.
    let garbage: Vec<_> = read_model(&once)
        .into_iter()
        .map(|layer| Some(layer.into_iter().map(|mut t| { if t.is_buffer() { t.value = t.value.zeros_like() + 42.0; } t }).collect::<Vec<_>>()))
        .collect();
    let spoiled = write_model(once, &garbage).unwrap();
    assert!(stats(&spoiled).iter().all(|&v| v == 42.0));
    let second = stats(&recompute_bn_statistics(spoiled, &x, 8));
    assert!(max_abs_diff(&first, &second) < 1e-4, "recomputed statistics depend on the old ones");
}

#[test]
fn slt_stage_submodels_run_and_train_on_every_model() {
    use fedolf::local::training::{LocalModel, SgdSettings};
    use fedolf::strategy::{stage_count, stage_plan, stage_trainable_params};
    for kind in ModelKind::ALL {
        let shape = [3, 32, 32];
        let g = global(kind, shape);
        let layout = g.channel_spaces();
        let n = g.num_layers();
        let (x, y) = random_batch::<Inner>(4, shape, 10, 2);
        let weights = stage_trainable_params(&g.valid(), &layout, &device());
        assert_eq!(weights.len(), stage_count(n));
        assert!(weights.iter().all(|&w| w > 0), "{}: {weights:?}", kind.name());
        for j in 0..stage_count(n) {
            for full in [1, 2] {
                let (roles, width) = stage_plan(&layout, n, j, full);
                let sub = fedolf::tensor::params::mark_trainable(LayeredNet::<Train>::from_inner(extract(g.valid(), &layout, &width, &device())));
                let local = LocalModel::from_roles(&sub, &roles).unwrap();
                assert_eq!(local.no_graph.num_layers(), j, "{} stage {j}", kind.name());
                let (stepped, loss) = local.fresh_step(x.clone(), y.clone(), &SgdSettings { lr: 0.01, momentum: 0.0, weight_decay: 0.0 });
                assert!(loss.into_scalar().is_finite(), "{} stage {j} full {full}", kind.name());
                assert_eq!(stepped.trained_layers().len(), n - j);
            }
        }
        // The last stage trains the model's top at full width.
        assert!(stage_plan(&layout, n, stage_count(n) - 1, 1).1.is_full(&layout));
    }
}

//! Where the code must do what the FedOLF paper did (issue 10): HeteroFL keeps FC layers
//! whole, frozen BatchNorm is frozen in every mode, QSGD leaves buffers exact, the ResNets
//! have He et al.'s parameter counts, and the headline accuracy statistics.

mod common;

use burn::module::{AutodiffModule, Module};
use burn::prelude::*;
use common::*;
use fedolf::local::roles::LayerRole;
use fedolf::local::training::{train_local, ClientData, LocalModel, LocalTraining, SgdSettings};
use fedolf::local::roles::{layer_roles, FreezeMode};
use fedolf::models::{Features, Layer, LayeredNet, ModelKind, ModelOptions, PaddedSkip, Shortcut};
use fedolf::tensor::params::read_model;
use fedolf::compress::qsgd::{quantize_prefix, QsgdSettings};
use fedolf::strategy::PlanContext;
use fedolf::tensor::submodel::{extract, WidthSpec};
use rand::SeedableRng;

fn options(cnn_hidden: usize, shortcut: Shortcut) -> ModelOptions {
    ModelOptions { cnn_hidden, shortcut }
}

fn weight_dims(layer: &Layer<Inner>) -> Vec<Vec<usize>> {
    read_model(&LayeredNet { layers: vec![layer.clone()], exits: Vec::new(), full_depth: 1, input_channels: 1, input_height: 1, input_width: 1, num_classes: 2 })[0]
        .iter()
        .filter(|t| t.name.ends_with("weight"))
        .map(|t| t.shape.clone())
        .collect()
}

#[test]
fn heterofl_prunes_conv_channels_and_keeps_fc_layers_whole() {
    // AlexNet on CIFAR at r = 0.5: conv5 keeps 128 of 256 filters; FC1 reads the 128 kept
    // channels' 4×4 columns and keeps all 512 neurons; the classifier is [512, 10].
    let g = seeded::<Inner>(ModelKind::AlexNet, [3, 32, 32], 10, 1);
    let layout = g.channel_spaces();
    let hetero = strategy("heterofl", &[]);
    let ctx = PlanContext { num_layers: 7, capacities: 2, round: 1, rounds: 1, layout: &layout };
    let plan = hetero.plan(&ctx, 0, 0, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1)).unwrap();
    let spec = plan.width.expect("HeteroFL plans a width");
    assert_eq!(spec.scaler, 2.0);
    let sub = extract(g, &layout, &spec, &device());
    assert_eq!(weight_dims(&sub.layers[4]), vec![vec![128, 128, 3, 3]]);
    assert_eq!(weight_dims(&sub.layers[5]), vec![vec![128 * 16, 512]]);
    assert_eq!(weight_dims(&sub.layers[6]), vec![vec![512, 10]]);

    // FedAvg's CNN variant (hidden FC 512) on 28×28: conv2 keeps 32 of 64, the hidden FC
    // reads 32·7·7 inputs and keeps 512 neurons.
    let g = ModelKind::Cnn.init_with::<Inner>([1, 28, 28], 10, &options(512, Shortcut::A), &device()).unwrap();
    let layout = g.channel_spaces();
    let sub = extract(g, &layout, &WidthSpec::prefix_conv(&layout, 0.5), &device());
    assert_eq!(weight_dims(&sub.layers[1]), vec![vec![32, 16, 5, 5]]);
    assert_eq!(weight_dims(&sub.layers[2]), vec![vec![32 * 49, 512], vec![512, 10]]);
}

#[test]
fn the_paper_cnn_has_one_linear_classifier_and_fedavg_cnn_a_hidden_layer() {
    let paper = seeded::<Inner>(ModelKind::Cnn, [1, 28, 28], 47, 2);
    // conv 1·32·25 + 32, conv 32·64·25 + 64, linear 64·7·7·47 + 47.
    assert_eq!(paper.num_params(), (800 + 32) + (51_200 + 64) + (3136 * 47 + 47));
    let fedavg = ModelKind::Cnn.init_with::<Inner>([1, 28, 28], 47, &options(512, Shortcut::A), &device()).unwrap();
    assert_eq!(fedavg.num_params(), (800 + 32) + (51_200 + 64) + (3136 * 512 + 512) + (512 * 47 + 47));
    assert_eq!(paper.num_layers(), 3);
    assert_eq!(fedavg.num_layers(), 3);
}

#[test]
fn resnets_have_he_et_al_parameter_counts() {
    // He et al. §4.2 (option A): ResNet20 0.27 M, ResNet44 0.66 M. By hand, 10 classes:
    // stem 432 + 32; stage blocks 4608 + 64 (16 ch), 18432 + 128 (32 ch), 73728 + 256 (64 ch);
    // the first block of stages 2 / 3 has conv1 16→32 / 32→64; head 64·10 + 10.
    // Trainable parameters (Burn's `num_params` also counts BN running statistics).
    let count = |kind: ModelKind, shortcut| {
        let net = kind.init_with::<Inner>([3, 32, 32], 10, &options(0, shortcut), &device()).unwrap();
        net.layer_infos().iter().map(|i| i.trainable_params).sum::<usize>()
    };
    assert_eq!(count(ModelKind::ResNet20, Shortcut::A), 269_722);
    assert_eq!(count(ModelKind::ResNet44, Shortcut::A), 658_586);
    // Option B adds the two 1×1 projections + BN: 16·32 + 64 and 32·64 + 128.
    assert_eq!(count(ModelKind::ResNet20, Shortcut::B), 269_722 + 576 + 2176);
    assert_eq!(count(ModelKind::ResNet44, Shortcut::B), 658_586 + 576 + 2176);
}

#[test]
fn option_a_skip_subsamples_and_pads_and_follows_slicing() {
    // x: [1, 2, 4, 4] holding 0..32; stride 2 keeps rows/cols 0 and 2.
    let x = Tensor::<Inner, 1, Int>::arange(0..32, &device()).float().reshape([1, 2, 4, 4]);
    let skip = PaddedSkip::new(2, 4, 2);
    let out = to_vec(&skip.forward(x.clone()));
    assert_eq!(out.len(), 4 * 4);
    assert_eq!(&out[0..4], &[0.0, 2.0, 8.0, 10.0]);
    assert_eq!(&out[4..8], &[16.0, 18.0, 24.0, 26.0]);
    assert!(out[8..].iter().all(|&v| v == 0.0), "padded channels are zero");
    // Keep input channel 1 and output channels 1 and 3: input 1 still lands on output 1,
    // now local output 0 of 2.
    let sliced = skip.slice(Some(&[1]), Some(&[1, 3]));
    assert_eq!((sliced.sources.clone(), sliced.targets.clone(), sliced.out_channels), (vec![0], vec![0], 2));
    let x1 = x.narrow(1, 1, 1);
    let out = to_vec(&sliced.forward(x1));
    assert_eq!(out, vec![16.0, 18.0, 24.0, 26.0, 0.0, 0.0, 0.0, 0.0]);
}

fn running_stats(net: &LayeredNet<Inner>, layer: usize) -> Vec<Vec<f32>> {
    read_model(net)[layer].iter().filter(|t| t.is_buffer()).map(|t| to_vec(&t.value)).collect()
}

#[test]
fn frozen_batch_norm_in_the_graph_uses_and_keeps_running_statistics() {
    let global = seeded::<Train>(ModelKind::ResNet20, [3, 32, 32], 10, 3);
    // Non-trivial running statistics, as after some rounds: one training-mode pass.
    let (x, y) = random_batch::<Inner>(16, [3, 32, 32], 10, 3);
    let global = fedolf::strategy::recompute_bn_statistics(global, &x, 16);
    let before = global.valid();
    // Layers 1–3 frozen in the graph (random freezing above the trained layer 0).
    let mut roles = vec![LayerRole::Trained; 10];
    roles[1..4].fill(LayerRole::FrozenInGraph);
    let local = LocalModel::from_roles(&global, &roles).unwrap();

    // Forward equals the inner backend's (running-statistics) forward, bit for bit.
    let h = before.forward_range(Features::Map(x.clone()), 0, 1).unwrap();
    let expect = before.forward_range(h.clone(), 1, 4).unwrap().into_flat();
    let got = local.graph.forward_range(Features::<Train>::from_inner(h), 1, 4).unwrap().into_flat();
    assert_eq!(to_vec(&got.inner()), to_vec(&expect));

    // A training step moves the trained layer's statistics but not the frozen layers'.
    let indices: Vec<usize> = (0..16).collect();
    let data = ClientData { images: &x, labels: &y, indices: &indices };
    let settings = LocalTraining { epochs: 1, batch_size: 8, sgd: SgdSettings { lr: 0.05, momentum: 0.9, weight_decay: 0.0 }, cache_frozen: false, frozen_norm: Default::default() };
    let (trained, _) = train_local(local, &data, &settings, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1)).unwrap();
    let after = trained.join().valid();
    assert_ne!(running_stats(&after, 0), running_stats(&before, 0), "trained layer 0 updates its statistics");
    for l in 1..4 {
        assert_eq!(running_stats(&after, l), running_stats(&before, l), "frozen layer {l} kept its statistics");
    }
}

#[test]
fn tinyfel_trains_exactly_like_fedolf_on_resnet20() {
    // Same frozen function (BN on running statistics either way), same gradients for the
    // trained layers: one local round gives the same weights.
    let global = seeded::<Train>(ModelKind::ResNet20, [3, 32, 32], 10, 4);
    let (x, y) = random_batch::<Inner>(16, [3, 32, 32], 10, 4);
    let global = fedolf::strategy::recompute_bn_statistics(global, &x, 16);
    let indices: Vec<usize> = (0..16).collect();
    let data = ClientData { images: &x, labels: &y, indices: &indices };
    let settings = LocalTraining { epochs: 1, batch_size: 8, sgd: SgdSettings { lr: 0.05, momentum: 0.9, weight_decay: 5e-4 }, cache_frozen: false, frozen_norm: Default::default() };
    let l = 4;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let run = |roles: Vec<LayerRole>| {
        let local = LocalModel::from_roles(&global, &roles).unwrap();
        let (trained, _) = train_local(local, &data, &settings, &mut rand_chacha::ChaCha8Rng::seed_from_u64(7)).unwrap();
        trained.trained_layers()
    };
    let ordered = run(layer_roles(FreezeMode::Ordered, 10, l, &mut rng).unwrap());
    let tinyfel = run(layer_roles(FreezeMode::TinyFel, 10, l, &mut rng).unwrap());
    assert_eq!(ordered.len(), 10 - l);
    let mut worst = 0.0f32;
    for ((la, pa), (lb, pb)) in ordered.iter().zip(&tinyfel) {
        assert_eq!(la, lb);
        for (a, b) in host_layer(pa).iter().zip(host_layer(pb)) {
            assert_eq!(a.0, b.0);
            worst = worst.max(max_abs_diff(&a.1, &b.1));
        }
    }
    assert!(worst <= 1e-6, "TinyFEL and FedOLF differ by {worst}");
}

#[test]
fn qsgd_quantizes_weights_and_sends_batch_norm_buffers_exactly() {
    let net = seeded::<Train>(ModelKind::ResNet20, [3, 32, 32], 10, 5);
    let (x, _) = random_batch::<Inner>(8, [3, 32, 32], 10, 5);
    let net = fedolf::strategy::recompute_bn_statistics(net, &x, 8).valid();
    let (prefix, _) = net.split_at(2).unwrap();
    let before = read_model(&prefix);
    let settings = QsgdSettings::new(4, 128).unwrap();
    let (quantized, bytes) = quantize_prefix(prefix, settings, &mut rand_chacha::ChaCha8Rng::seed_from_u64(2)).unwrap();
    let after = read_model(&quantized);
    let (mut expected_bytes, mut buffers, mut weights_moved) = (0u64, 0, 0);
    for (b, a) in before.iter().flatten().zip(after.iter().flatten()) {
        if b.is_buffer() {
            assert_eq!(to_vec(&b.value), to_vec(&a.value), "{} must travel exactly", b.name);
            expected_bytes += 4 * b.numel() as u64;
            buffers += 1;
        } else {
            weights_moved += usize::from(to_vec(&b.value) != to_vec(&a.value));
            expected_bytes += settings.bytes(b.numel());
        }
    }
    assert!(buffers > 0 && weights_moved > 0);
    assert_eq!(bytes, expected_bytes);
}

#[test]
fn mean_last_accuracy_averages_the_last_tenth_and_at_least_three() {
    use fedolf::records::mean_last;
    let v: Vec<f64> = (1..=20).map(f64::from).collect();
    assert_eq!(mean_last(&v), Some(19.0)); // max(3, 2) = 3 → (18 + 19 + 20) / 3
    let v: Vec<f64> = (1..=40).map(f64::from).collect();
    assert_eq!(mean_last(&v), Some(38.5)); // 4 → (37..=40) / 4
    assert_eq!(mean_last(&[0.5, 0.7]), Some(0.6));
    assert_eq!(mean_last(&[]), None);
}

#[test]
fn trial_spreads_are_mean_and_sample_standard_deviation() {
    let s = fedolf::io::trials::Spread::of(vec![0.80, 0.84, 0.82]).unwrap();
    assert!((s.mean - 0.82).abs() < 1e-12);
    assert!((s.std - 0.02).abs() < 1e-12, "sample std of 0.80, 0.84, 0.82 is 0.02, got {}", s.std);
    assert_eq!(fedolf::io::trials::Spread::of(vec![0.5]).unwrap().std, 0.0);
    assert!(fedolf::io::trials::Spread::of(vec![]).is_none());
}

#[test]
fn a_random_width_resnet_with_option_a_skips_trains() {
    // Feddrop keeps random channels: the option A skip then scatters the kept input channels
    // that survive into the kept output channels (select + select_assign), and gradients
    // flow back through it.
    let g = seeded::<Train>(ModelKind::ResNet20, [3, 32, 32], 10, 6);
    let layout = g.channel_spaces();
    let spec = WidthSpec::random(&layout, 0.5, &mut rand_chacha::ChaCha8Rng::seed_from_u64(5));
    let sub = fedolf::tensor::params::mark_trainable(LayeredNet::<Train>::from_inner(extract(g.valid(), &layout, &spec, &device())));
    let before = host_params(&sub.valid());
    let (x, y) = random_batch::<Inner>(4, [3, 32, 32], 10, 6);
    let indices: Vec<usize> = (0..4).collect();
    let data = ClientData { images: &x, labels: &y, indices: &indices };
    let settings = LocalTraining { epochs: 1, batch_size: 4, sgd: SgdSettings { lr: 0.05, momentum: 0.0, weight_decay: 0.0 }, cache_frozen: false, frozen_norm: Default::default() };
    let local = LocalModel::ordered(&sub, 0).unwrap();
    let (trained, outcome) = train_local(local, &data, &settings, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1)).unwrap();
    assert!(outcome.mean_loss.is_finite());
    let after = host_params(&trained.join().valid());
    // Every block below the last downsampling skip received a gradient through it.
    assert_ne!(before[4], after[4]);
    assert_ne!(before[0], after[0]);
}

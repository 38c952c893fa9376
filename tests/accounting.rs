//! Memory, communication and energy accounting on a model small enough to count by hand.

mod common;

use common::*;
use fedolf::accounting::energy::Energy;
use fedolf::accounting::speed::{paired_ratio, step_flops};
use fedolf::local::roles::LayerRole;
use fedolf::local::roles::{layer_roles, FreezeMode};
use fedolf::models::{FeatureShape, ModelKind};
use fedolf::tensor::params::layer_numel;
use fedolf::accounting::theory::{theoretical_memory, TheoreticalMemory};
use rand::SeedableRng;

/// A step's FLOPs (the `% peak` of `fedolf bench speed`) from the layers' multiply-adds, by hand.
/// ResNet20 on 3×32×32, per sample: the stem 16·27·1024 = 442 368 with block 1's two 16 → 16
/// convolutions 16·144·1024 = 2 359 296 each; a block of one stage 2 × 2 359 296 (the same
/// count at every stage: channels double as pixels quarter); a stage's first block 16·… s2:
/// 1 179 648 + 2 359 296; the classifier's 64·100 + 100 parameters. The CNN on 1×8×8:
/// 32·25·64 and 64·32·25·16 multiply-adds, then its 2 570 parameters.
#[test]
fn a_steps_flops_are_its_layers_multiply_adds_by_hand() {
    let block = 2 * 2_359_296;
    let first_of_stage = 1_179_648 + 2_359_296;
    let resnet: Vec<usize> = ModelKind::ResNet20.init::<Inner>([3, 32, 32], 100, &device()).unwrap().layer_macs();
    assert_eq!(resnet, vec![442_368 + block, block, block, first_of_stage, block, block, first_of_stage, block, block, 6_500]);
    assert_eq!(resnet.iter().sum::<usize>(), 40_556_900);
    let cnn = ModelKind::Cnn.init::<Inner>([1, 8, 8], 10, &device()).unwrap().layer_macs();
    assert_eq!(cnn, vec![51_200, 819_200, 2_570]);
    // Frozen layers forward only, the first trained one forward and dW, the rest forward, dW, dX.
    let batch = 128;
    let flops = |passes: &[usize]| 2.0 * resnet.iter().zip(passes).map(|(m, p)| m * p * batch).sum::<usize>() as f64;
    assert_eq!(step_flops(&resnet, batch, 0), flops(&[2, 3, 3, 3, 3, 3, 3, 3, 3, 3]));
    assert_eq!(step_flops(&resnet, batch, 4), flops(&[1, 1, 1, 1, 2, 3, 3, 3, 3, 3]));
    assert_eq!(step_flops(&resnet, batch, 10), flops(&[1; 10]));
    // 29.83 GFLOP at l = 0; issue 38's "≈ 31.5" also counted the first layer's input gradient
    // (3 passes everywhere: 31.15).
    assert!((step_flops(&resnet, batch, 0) / 1e9 - 29.83).abs() < 0.005);
}

/// CNN on 1×8×8, 10 classes. By hand (5×5 'same' convs, 2×2 pools):
/// conv1: 32×8×8 conv + 32×8×8 ReLU + 32×4×4 pool = 4608 maps; 32·25 + 32 = 832 params.
/// conv2: 64×4×4 conv + ReLU + 64×2×2 pool = 2304 maps; 64·32·25 + 64 = 51 264 params.
/// classifier (the paper's CNN): 256 → 10: 10 maps; 2 560 + 10 = 2 570 params.
/// FedAvg's variant: 256 → 512 → 10: 512 + 512 + 10 = 1034 maps; 131 584 + 5 130 = 136 714.
#[test]
fn layer_sizes_match_the_hand_count() {
    let net = ModelKind::Cnn.init::<Inner>([1, 8, 8], 10, &device()).unwrap();
    let infos = net.layer_infos();
    let got: Vec<(usize, usize, usize)> = infos.iter().map(|i| (i.activation_elems, i.trainable_params, i.buffer_elems)).collect();
    assert_eq!(got, vec![(4608, 832, 0), (2304, 51_264, 0), (10, 2570, 0)]);
    assert_eq!(infos[1].output, FeatureShape::Map { channels: 64, height: 2, width: 2 });
    // The byte counter counts the same elements the parameter walker sends.
    let numel: Vec<usize> = net.layers.iter().map(layer_numel).collect();
    assert_eq!(numel, vec![832, 51_264, 2570]);

    let options = fedolf::models::ModelOptions { cnn_hidden: 512, ..Default::default() };
    let fedavg = ModelKind::Cnn.init_with::<Inner>([1, 8, 8], 10, &options, &device()).unwrap();
    let head = fedavg.layer_infos()[2].clone();
    assert_eq!((head.activation_elems, head.trainable_params), (1034, 136_714));
}

#[test]
fn eq23_for_ordered_freezing_by_hand() {
    let net = ModelKind::Cnn.init::<Inner>([1, 8, 8], 10, &device()).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let roles = layer_roles(FreezeMode::Ordered, 3, 1, &mut rng).unwrap();
    assert_eq!(roles, vec![LayerRole::FrozenNoGraph, LayerRole::Trained, LayerRole::Trained]);
    let m = theoretical_memory(&net.layer_infos(), &roles, 2, true);
    // Activations of the two trained layers for a batch of 2, 4 bytes each, and the input
    // map of the first trained one (32×4×4, kept for its weight gradient).
    assert_eq!(m.activations, 2 * (512 + 2304 + 10) * 4);
    assert_eq!(m.weights, (832 + 51_264 + 2570) * 4);
    assert_eq!(m.gradients, (51_264 + 2570) * 4);
    assert_eq!(m.optimizer, (51_264 + 2570) * 4);
    assert_eq!(m.eq23(), m.activations + m.weights + m.gradients);

    // TinyFEL keeps the frozen layer's maps (and the 1×8×8 image) and computes its gradient too.
    let roles = layer_roles(FreezeMode::TinyFel, 3, 1, &mut rng).unwrap();
    let t = theoretical_memory(&net.layer_infos(), &roles, 2, true);
    assert_eq!(t.activations, 2 * (64 + 4608 + 2304 + 10) * 4);
    assert_eq!(t.gradients, (832 + 51_264 + 2570) * 4);
    assert_eq!(t.optimizer, m.optimizer);
}

/// AlexNet on a CIFAR-10 image (3×32×32), counted by hand: each conv layer keeps its conv and
/// ReLU maps (and the pool's, after conv 1, 2 and 5), each FC layer its output (and its
/// ReLU's when hidden). ResNet20: the stem's conv, BN and ReLU maps plus the first block's
/// (conv1, BN1, ReLU inside; conv2, BN2, the add and the ReLU outside: 7 maps of 16×32×32);
/// a stride-2 block keeps 7 maps of 32×16×16 (option A's zero-padded skip keeps none); the
/// head its pooled vector and logits.
#[test]
fn eq23_activation_terms_of_alexnet_and_resnet20_by_hand() {
    let alexnet = ModelKind::AlexNet.init::<Inner>([3, 32, 32], 10, &device()).unwrap();
    let got: Vec<(usize, usize)> = alexnet.layer_infos().iter().map(|i| (i.activation_elems, i.trainable_params)).collect();
    let want = vec![
        (2 * 64 * 32 * 32 + 64 * 16 * 16, 64 * 3 * 9 + 64),
        (2 * 192 * 16 * 16 + 192 * 8 * 8, 192 * 64 * 9 + 192),
        (2 * 384 * 8 * 8, 384 * 192 * 9 + 384),
        (2 * 256 * 8 * 8, 256 * 384 * 9 + 256),
        (2 * 256 * 8 * 8 + 256 * 4 * 4, 256 * 256 * 9 + 256),
        (2 * 512, 4096 * 512 + 512),
        (10, 512 * 10 + 10),
    ];
    assert_eq!(got, want);
    // Eq. 23 at l = 4, batch 2: the image map of layer 5 (256×8×8, its weight gradient's
    // input) and the activations of layers 5–7; weights of all seven layers.
    let infos = alexnet.layer_infos();
    let m = theoretical_memory(&infos, &fedolf::local::roles::ordered_roles(7, 4).unwrap(), 2, false);
    assert_eq!(m.activations, 2 * (256 * 8 * 8 + want[4].0 + want[5].0 + want[6].0) as u64 * 4);
    assert_eq!(m.gradients, (want[4].1 + want[5].1 + want[6].1) as u64 * 4);
    assert_eq!(m.weights, want.iter().map(|w| w.1 as u64).sum::<u64>() * 4);

    let resnet = ModelKind::ResNet20.init::<Inner>([3, 32, 32], 10, &device()).unwrap();
    let infos = resnet.layer_infos();
    assert_eq!(infos.len(), 10, "stem + block 1, eight blocks, the head");
    assert_eq!(infos[0].activation_elems, 3 * 16 * 32 * 32 + 7 * 16 * 32 * 32);
    assert_eq!(infos[0].trainable_params, 16 * 3 * 9 + 2 * 16 + 2 * (16 * 16 * 9 + 2 * 16));
    assert_eq!(infos[0].buffer_elems, 3 * 2 * 16, "running mean and variance of three BNs");
    assert_eq!(infos[3].activation_elems, 7 * 32 * 16 * 16, "the stride-2 block into stage 2");
    assert_eq!(infos[3].trainable_params, 32 * 16 * 9 + 32 * 32 * 9 + 2 * 2 * 32);
    assert_eq!(infos[9].activation_elems, 64 + 10);
}

/// The weights term counts BatchNorm's running statistics too; a step adds the activations,
/// gradients and momentum on top of them; the mean over random-freezing draws is taken term by
/// term.
#[test]
fn eq23_weights_hold_batchnorm_buffers_and_a_step_adds_activations_gradients_and_momentum() {
    let resnet = ModelKind::ResNet20.init::<Inner>([3, 32, 32], 10, &device()).unwrap();
    let infos = resnet.layer_infos();
    let m = theoretical_memory(&infos, &fedolf::local::roles::ordered_roles(10, 4).unwrap(), 2, true);
    let all: u64 = infos.iter().map(|i| (i.trainable_params + i.buffer_elems) as u64 * 4).sum();
    assert!(infos.iter().any(|i| i.buffer_elems > 0));
    assert_eq!(m.weights, all, "every layer's parameters and running statistics");
    assert!(m.optimizer > 0 && m.gradients > 0);
    assert_eq!(m.transient(), m.activations + m.gradients + m.optimizer);
    let a = TheoreticalMemory { activations: 10, weights: 20, gradients: 30, optimizer: 40 };
    let b = TheoreticalMemory { activations: 13, weights: 20, gradients: 31, optimizer: 0 };
    assert_eq!(TheoreticalMemory::mean(&[a, b]), TheoreticalMemory { activations: 11, weights: 20, gradients: 30, optimizer: 20 });
}

#[test]
fn random_freezing_keeps_frozen_layers_above_a_trained_one_in_the_graph() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for _ in 0..50 {
        let roles = layer_roles(FreezeMode::Random, 10, 4, &mut rng).unwrap();
        assert_eq!(roles.iter().filter(|r| **r != LayerRole::Trained).count(), 4);
        let first_trained = roles.iter().position(|r| *r == LayerRole::Trained).unwrap();
        for (i, r) in roles.iter().enumerate() {
            match r {
                LayerRole::FrozenNoGraph => assert!(i < first_trained),
                LayerRole::FrozenInGraph => assert!(i > first_trained),
                LayerRole::Trained => {}
                LayerRole::FrozenGradDiscarded | LayerRole::Skipped => panic!("random mode never discards or skips"),
            }
        }
    }
    assert!(layer_roles(FreezeMode::Random, 3, 3, &mut rng).is_err());
}

#[test]
fn energy_by_hand() {
    // 5 W for 10 s = 50 J; 20 MB at 20 Mbit/s = 8 s of a 1 W radio = 8 J.
    let e = Energy { device_power_w: 5.0, link_power_w: 1.0, bandwidth_bps: 20e6 };
    assert_eq!(e.compute_joules(10.0), 50.0);
    assert_eq!(e.comm_joules(20_000_000), 8.0);
}

/// The bench's ratio divides each turn's pair before taking the median, so a stretch where the
/// machine ran slow for both sides of a turn cancels; the ratio of the two medians would read
/// the slow stretch as fedolf's (here 10 ÷ 2 = 5 against the true 0.5).
#[test]
fn a_slow_turn_cancels_in_the_paired_ratio() {
    let ours = [1.0, 10.0, 10.0];
    let theirs = [2.0, 2.0, 20.0];
    assert_eq!(paired_ratio(&ours, &theirs), Some(0.5));
    assert_eq!(paired_ratio(&[0.25, 0.5], &[0.5, 0.125]), Some(2.25));
    assert_eq!(paired_ratio(&[], &[]), None);
}

//! FedOLF local training: frozen layers never move, active ones do, and only active
//! parameters receive gradients.

mod common;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use common::*;
use fedolf::local::error::LocalError;
use fedolf::local::training::{train_local, ClientData, LocalModel, LocalTraining, SgdSettings};
use fedolf::models::ModelKind;
use rand::SeedableRng;

fn settings() -> LocalTraining {
    LocalTraining { epochs: 2, batch_size: 8, sgd: SgdSettings { lr: 0.05, momentum: 0.9, weight_decay: 5e-4 }, cache_frozen: false }
}

#[test]
fn frozen_layers_are_bit_identical_and_active_layers_change() {
    for (kind, l) in [(ModelKind::ResNet20, 4), (ModelKind::AlexNet, 3), (ModelKind::Cnn, 1)] {
        let shape = [3, 32, 32];
        let global = kind.init::<Train>(shape, 10, &device()).unwrap();
        let before = host_params(&global);
        let (x, y) = random_batch::<Inner>(24, shape, 10, 7);
        let indices: Vec<usize> = (0..24).collect();
        let data = ClientData { images: &x, labels: &y, indices: &indices };
        let split = LocalModel::ordered(&global, l).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let (trained, outcome) = train_local(split, &data, &settings(), &mut rng).unwrap();
        assert_eq!(outcome.steps, 2 * 3);
        let after = host_params(&trained.join());
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            let changed = b.iter().zip(a).filter(|((_, vb), (_, va))| vb != va).count();
            if i < l {
                assert_eq!(changed, 0, "{}: frozen layer {i} moved", kind.name());
            } else {
                // Every trainable tensor of an active layer moves (BN running stats too).
                assert_eq!(changed, b.len(), "{}: active layer {i}: only {changed}/{} tensors changed", kind.name(), b.len());
            }
        }
        // The server's model is untouched by a client's training (no shared BN cells).
        assert_eq!(host_params(&global), before, "{}: global model changed", kind.name());
    }
}

struct GradProbe<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    with_grad: Vec<bool>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradProbe<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.with_grad.push(param.val().grad(self.grads).is_some());
    }
}

#[test]
fn gradients_exist_only_for_active_parameters() {
    let global = ModelKind::AlexNet.init::<Train>([3, 32, 32], 10, &device()).unwrap();
    let l = 4;
    let split = LocalModel::ordered(&global, l).unwrap();
    let (x, y) = random_batch::<Inner>(4, [3, 32, 32], 10, 9);
    let logits = split.forward(x);
    let loss = burn::nn::loss::CrossEntropyLossConfig::new().init::<Train>(&device()).forward(logits, Tensor::from_inner(y));
    let grads = loss.backward();
    // The frozen prefix (lifted back to autodiff) has no gradient anywhere...
    let frozen = fedolf::models::LayeredNet::<Train>::from_inner(split.no_graph.clone());
    let mut probe = GradProbe::<Train> { grads: &grads, with_grad: Vec::new() };
    frozen.visit(&mut probe);
    assert!(!probe.with_grad.is_empty());
    assert!(probe.with_grad.iter().all(|g| !g), "a frozen parameter got a gradient");
    // ...and every active parameter has one.
    let mut probe = GradProbe::<Train> { grads: &grads, with_grad: Vec::new() };
    split.graph.visit(&mut probe);
    assert!(probe.with_grad.iter().all(|g| *g), "an active parameter got no gradient");
}

#[test]
fn frozen_count_must_leave_a_trainable_layer() {
    let global = ModelKind::Cnn.init::<Train>([1, 28, 28], 10, &device()).unwrap();
    let err = LocalModel::ordered(&global, 3).unwrap_err();
    assert_eq!(err, LocalError::TooManyFrozen { frozen: 3, num_layers: 3 });
    assert!(err.to_string().contains("below the model's 3 layers"));
}

#[test]
fn divergence_is_reported_not_hidden() {
    let global = ModelKind::Cnn.init::<Train>([1, 28, 28], 10, &device()).unwrap();
    let (x, y) = random_batch::<Inner>(16, [1, 28, 28], 10, 3);
    let x = x * 1e30; // overflows the logits
    let indices: Vec<usize> = (0..16).collect();
    let data = ClientData { images: &x, labels: &y, indices: &indices };
    let split = LocalModel::ordered(&global, 0).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut s = settings();
    s.sgd.lr = 1e10;
    let err = train_local(split, &data, &s, &mut rng).unwrap_err();
    assert!(matches!(err, LocalError::Diverged { .. }), "{err:?}");
}

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
    LocalTraining { epochs: 2, batch_size: 8, sgd: SgdSettings { lr: 0.05, momentum: 0.9, weight_decay: 5e-4 }, cache_frozen: false, frozen_norm: Default::default() }
}

/// In every freezing mode (FedOLF's prefix outside the graph, frozen layers inside it, TinyFEL's
/// discarded gradients; as a prefix and scattered), frozen layers keep every tensor, BatchNorm's
/// running statistics included, and every tensor of a trained layer moves.
#[test]
fn frozen_layers_are_bit_identical_and_active_layers_change() {
    use fedolf::local::roles::LayerRole::{self, FrozenGradDiscarded, FrozenInGraph, FrozenNoGraph, Trained};
    for (kind, l) in [(ModelKind::ResNet20, 4), (ModelKind::AlexNet, 3), (ModelKind::Cnn, 1)] {
        let shape = [3, 32, 32];
        let global = seeded::<Train>(kind, shape, 10, 1);
        let n = global.num_layers();
        let before = host_params(&global);
        let (x, y) = random_batch::<Inner>(24, shape, 10, 7);
        let indices: Vec<usize> = (0..24).collect();
        let data = ClientData { images: &x, labels: &y, indices: &indices };
        let prefix = |mode: LayerRole| (0..n).map(|i| if i < l { mode } else { Trained }).collect::<Vec<_>>();
        let scattered = |mode: LayerRole| (0..n).map(|i| if i % 2 == 1 { mode } else { Trained }).collect::<Vec<_>>();
        let layouts = [prefix(FrozenNoGraph), prefix(FrozenInGraph), prefix(FrozenGradDiscarded), scattered(FrozenInGraph), scattered(FrozenGradDiscarded)];
        for roles in layouts {
            let split = LocalModel::from_roles(&global, &roles).unwrap();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
            let (trained, outcome) = train_local(split, &data, &settings(), &mut rng).unwrap();
            assert_eq!(outcome.steps, 2 * 3);
            let after = host_params(&trained.join());
            for (i, (b, a)) in before.iter().zip(&after).enumerate() {
                let changed: Vec<&str> = b.iter().zip(a).filter(|((_, vb), (_, va))| vb != va).map(|((name, _), _)| name.as_str()).collect();
                if roles[i] == Trained {
                    // Every trainable tensor of an active layer moves (BN running stats too).
                    assert_eq!(changed.len(), b.len(), "{} {roles:?}: active layer {i}: only {changed:?} of {} tensors changed", kind.name(), b.len());
                } else {
                    assert!(changed.is_empty(), "{} {roles:?}: frozen layer {i} moved: {changed:?}", kind.name());
                }
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

/// Where each layer of a split ran in one forward/backward: `(layers outside the graph,
/// layers in it, parameters in the graph with a gradient, parameters in the graph)`.
fn graph_census(split: &LocalModel<Train>) -> (usize, usize, usize, usize) {
    let (x, y) = random_batch::<Inner>(4, [3, 32, 32], 10, 9);
    let logits = split.forward(x);
    let loss = burn::nn::loss::CrossEntropyLossConfig::new().init::<Train>(&device()).forward(logits, Tensor::from_inner(y));
    let grads = loss.backward();
    let mut probe = GradProbe::<Train> { grads: &grads, with_grad: Vec::new() };
    split.graph.visit(&mut probe);
    let with = probe.with_grad.iter().filter(|g| **g).count();
    (split.no_graph.num_layers(), split.graph.num_layers(), with, probe.with_grad.len())
}

/// FedOLF's frozen prefix never enters the autodiff graph: the split holds the l frozen
/// layers on the inner backend (no graph node can be made there: its tensors have no
/// autodiff type), and the graph holds only the N − l trained layers, every parameter of
/// which gets a gradient. A prefix deliberately kept in the graph (frozen with
/// `require_grad = false`, as random freezing does) fails the same census.
#[test]
fn the_frozen_prefix_runs_outside_the_graph_and_only_trained_parameters_get_gradients() {
    let global = seeded::<Train>(ModelKind::AlexNet, [3, 32, 32], 10, 3);
    let n = global.num_layers();
    let l = 4;
    let split = LocalModel::ordered(&global, l).unwrap();
    let trained_params: usize = global.layers[l..].iter().map(|layer| {
        let mut probe = CountParams(0);
        layer.visit(&mut probe);
        probe.0
    }).sum();
    assert_eq!(graph_census(&split), (l, n - l, trained_params, trained_params));
    // The prefix outside the graph holds the global's frozen weights, unchanged.
    let prefix = fedolf::tensor::params::read_model(&split.no_graph);
    let global_prefix = fedolf::tensor::params::read_model(&global.valid());
    for (a, b) in prefix.iter().zip(&global_prefix[..l]) {
        assert_eq!(host_layer(a), host_layer(b));
    }
    // The census can fail: the same frozen layers inside the graph.
    let mut roles = vec![fedolf::local::roles::LayerRole::FrozenInGraph; l];
    roles.extend(vec![fedolf::local::roles::LayerRole::Trained; n - l]);
    let in_graph = LocalModel::from_roles(&global, &roles).unwrap();
    let census = graph_census(&in_graph);
    assert_ne!(census, (l, n - l, trained_params, trained_params), "a prefix in the graph passed the census");
    assert_eq!((census.0, census.1, census.2), (0, n, trained_params), "in the graph, still only trained parameters get gradients");
}

struct CountParams(usize);

impl<B: Backend> ModuleVisitor<B> for CountParams {
    fn visit_float<const D: usize>(&mut self, _param: &Param<Tensor<B, D>>) {
        self.0 += 1;
    }
}

#[test]
fn frozen_count_must_leave_a_trainable_layer() {
    let global = seeded::<Train>(ModelKind::Cnn, [1, 28, 28], 10, 3);
    let err = LocalModel::ordered(&global, 3).unwrap_err();
    assert_eq!(err, LocalError::TooManyFrozen { frozen: 3, num_layers: 3 });
    assert!(err.to_string().contains("below the model's 3 layers"));
}

#[test]
fn divergence_is_reported_not_hidden() {
    let global = seeded::<Train>(ModelKind::Cnn, [1, 28, 28], 10, 4);
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

/// `train.frozen_norm = "batch"`: BatchNorm in the frozen prefix outside the graph normalises
/// with each batch's statistics, as the same layers do in training mode (PyTorch's train mode
/// under `no_grad`), and its running statistics, like every frozen weight, do not move;
/// `"running"` (the default) normalises as evaluation does.
#[test]
fn frozen_batchnorm_uses_running_or_batch_statistics_as_configured() {
    use fedolf::local::training::FrozenNorm;
    use fedolf::models::Features;
    let global = seeded::<Train>(ModelKind::ResNet20, [3, 32, 32], 10, 4);
    let (x, _) = random_batch::<Inner>(8, [3, 32, 32], 10, 5);
    let l = 4;
    let prefix_out = |batch: bool| {
        let mut split = LocalModel::ordered(&global, l).unwrap();
        split.no_graph.layers.iter_mut().for_each(|layer| layer.set_batch_stats(batch));
        let Features::Map(h) = split.prefix_forward(x.clone()) else { unreachable!() };
        to_vec(&h)
    };
    // Evaluation mode (inner backend, running statistics) and training mode (a fresh copy on
    // the autodiff backend: batch statistics).
    let Features::Map(eval) = global.valid().forward_range(Features::Map(x.clone()), 0, l).unwrap() else { unreachable!() };
    let copy = fedolf::tensor::params::deep_copy(&global);
    let Features::Map(train) = copy.forward_range(Features::Map(Tensor::from_inner(x.clone())), 0, l).unwrap() else { unreachable!() };
    let (eval, train) = (to_vec(&eval), to_vec(&train.inner()));
    assert!(max_abs_diff(&eval, &train) > 1e-2, "the check needs running and batch statistics to differ");
    assert!(max_abs_diff(&prefix_out(false), &eval) < 1e-5, "running: the prefix normalises as evaluation does");
    assert!(max_abs_diff(&prefix_out(true), &train) < 1e-4, "batch: the prefix normalises with the batch's statistics");

    // Training with either mode leaves every frozen tensor, running statistics included, as it was.
    let before = host_params(&global);
    for frozen_norm in [FrozenNorm::Running, FrozenNorm::Batch] {
        let (x, y) = random_batch::<Inner>(16, [3, 32, 32], 10, 6);
        let indices: Vec<usize> = (0..16).collect();
        let data = ClientData { images: &x, labels: &y, indices: &indices };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let s = LocalTraining { frozen_norm, ..settings() };
        let (trained, _) = train_local(LocalModel::ordered(&global, l).unwrap(), &data, &s, &mut rng).unwrap();
        let after = host_params(&trained.join());
        assert_eq!(before[..l], after[..l], "{frozen_norm:?}: a frozen tensor moved");
    }
}

#[test]
fn roles_are_checked_and_a_client_holds_the_exits_up_to_its_depth() {
    use fedolf::local::roles::LayerRole::{FrozenInGraph, FrozenNoGraph, Skipped, Trained};
    // AlexNet (N = 7) with exit heads after layers 2 and 4; their global indices are 7 and 8.
    let global = seeded::<Train>(ModelKind::AlexNet, [3, 32, 32], 10, 5).with_exits(&[2, 4], &device()).unwrap();
    let bad = |roles: &[fedolf::local::roles::LayerRole], why: &str| match LocalModel::from_roles(&global, roles) {
        Err(LocalError::BadRoles(msg)) => assert!(msg.contains(why), "{roles:?}: `{msg}` does not say `{why}`"),
        other => panic!("{roles:?}: {:?}, not the refusal `{why}`", other.map(|_| "accepted")),
    };
    bad(&[Trained; 6], "6 roles for a model of 7 layers");
    bad(&[Trained, FrozenNoGraph, Trained, Trained, Trained, Trained, Trained], "before every layer in it");
    // An exit at or below the prefix would read a tensor outside the graph.
    bad(&[FrozenNoGraph, FrozenNoGraph, Trained, Trained, Trained, Trained, Trained], "exit heads need");
    bad(&[FrozenNoGraph, FrozenNoGraph, FrozenNoGraph, FrozenNoGraph, Trained, Trained, Trained], "exit heads need");
    // A skipped layer below an exit held.
    bad(&[Trained, Trained, Skipped, Trained, Trained, Trained, Trained], "exit heads need");
    // Cut where no exit head is.
    bad(&[Trained, Trained, Trained, Skipped, Skipped, Skipped, Skipped], "cut after layer 3 of 7");
    assert_eq!(
        LocalModel::from_roles(&global, &[FrozenInGraph; 7]).unwrap_err(),
        LocalError::TooManyFrozen { frozen: 7, num_layers: 7 }
    );

    let held = |roles: &[fedolf::local::roles::LayerRole]| {
        let model = LocalModel::from_roles(&global, roles).unwrap();
        let trained: Vec<usize> = model.trained_layers().iter().map(|(i, _)| *i).collect();
        let payload: Vec<usize> = model.payload().iter().map(|(i, _)| *i).collect();
        (model.graph.exits.len(), trained, payload)
    };
    // Cut after the first exit: that exit gives the logits, the deeper one is not held.
    assert_eq!(held(&[Trained, Trained, Skipped, Skipped, Skipped, Skipped, Skipped]), (1, vec![0, 1, 7], vec![0, 1, 7]));
    // Cut after the second exit, one layer frozen outside the graph and one inside it.
    assert_eq!(
        held(&[FrozenNoGraph, FrozenInGraph, Trained, Trained, Skipped, Skipped, Skipped]),
        (2, vec![2, 3, 7, 8], vec![0, 1, 2, 3, 7, 8])
    );
    // The whole model: both exits and the classifier.
    assert_eq!(held(&[Trained; 7]), (2, vec![0, 1, 2, 3, 4, 5, 6, 7, 8], vec![0, 1, 2, 3, 4, 5, 6, 7, 8]));

    // A client cut after an exit answers with that exit's logits, computed after its layer.
    let (x, _) = random_batch::<Inner>(2, [3, 32, 32], 10, 6);
    let all = global.forward_all_exits(Tensor::from_inner(x.clone()));
    for (roles, exit) in [(vec![Trained, Trained, Skipped, Skipped, Skipped, Skipped, Skipped], 0), (vec![FrozenNoGraph, Trained, Trained, Trained, Skipped, Skipped, Skipped], 1)] {
        let client = LocalModel::from_roles(&global, &roles).unwrap();
        let err = max_abs_diff(&to_vec(&client.forward(x.clone()).inner()), &to_vec(&all[exit].clone().inner()));
        assert!(err <= 1e-5, "{roles:?}: logits differ from exit {exit}'s by {err}");
    }
}

/// The model's mean cross-entropy on a batch, computed outside the client's code.
fn mean_cross_entropy(net: &fedolf::models::LayeredNet<Train>, x: &Tensor<Inner, 4>, y: &Tensor<Inner, 1, Int>) -> f64 {
    let logits = net.forward(Tensor::from_inner(x.clone()));
    burn::nn::loss::CrossEntropyLossConfig::new().init::<Train>(&device()).forward(logits, Tensor::from_inner(y.clone())).into_scalar().elem()
}

/// The loss a single step reports (the memory probe's unit) is the loss before its update.
#[test]
fn a_single_step_reports_the_loss_of_the_model_it_starts_from() {
    let shape = [1, 28, 28];
    let global = seeded::<Train>(ModelKind::Cnn, shape, 10, 4);
    let (x, y) = random_batch::<Inner>(8, shape, 10, 2);
    let expected = mean_cross_entropy(&global, &x, &y);
    let sgd = settings().sgd;
    for l in [0, 2] {
        let loss = LocalModel::ordered(&global, l).unwrap().single_step(x.clone(), y.clone(), &sgd);
        assert!((loss - expected).abs() <= 1e-5 * expected, "l = {l}: single_step reports {loss}, the loss is {expected}");
        let (loss, peak) = LocalModel::ordered(&global, l).unwrap().single_step_device_peak(x.clone(), y.clone(), &sgd);
        assert!((loss - expected).abs() <= 1e-5 * expected, "l = {l}: single_step_device_peak reports {loss}, the loss is {expected}");
        assert_eq!(peak, None, "the CPU has no device memory statistics");
    }
}

/// A client holds every tensor it was sent, at 4 bytes an element: the frozen prefix as
/// compressed for it, the layers in the graph and the exit heads up to its depth, nothing of a
/// skipped layer. Counted here from the server's model, entry by entry.
#[test]
fn a_client_holds_four_bytes_for_each_element_it_was_sent() {
    use fedolf::compress::toa::{sparsify_prefix, ToaMode, ToaSettings};
    use fedolf::local::roles::LayerRole::{FrozenInGraph, FrozenNoGraph, Skipped, Trained};
    // Exit heads after layers 2 and 4 are entries 7 and 8 (with exits, nothing below layer 2
    // may leave the graph, so the four-layer prefix runs on the model without them).
    let plain = seeded::<Train>(ModelKind::AlexNet, [3, 32, 32], 10, 7);
    let global = plain.clone().with_exits(&[2, 4], &device()).unwrap();
    let sizes: Vec<usize> = fedolf::tensor::params::read_model(&global).iter().map(|layer| layer.iter().map(|t| t.numel()).sum()).collect();
    let held = |entries: &[usize]| entries.iter().map(|&i| sizes[i]).sum::<usize>();
    for (net, roles, prefix, graph) in [
        (&plain, vec![FrozenNoGraph, FrozenNoGraph, FrozenNoGraph, FrozenNoGraph, Trained, Trained, Trained], vec![0, 1, 2, 3], vec![4, 5, 6]),
        (&global, vec![FrozenNoGraph, FrozenInGraph, Trained, Trained, Skipped, Skipped, Skipped], vec![0], vec![1, 2, 3, 7, 8]),
        (&global, vec![Trained, Trained, Skipped, Skipped, Skipped, Skipped, Skipped], vec![], vec![0, 1, 7]),
    ] {
        let mut client = LocalModel::from_roles(net, &roles).unwrap();
        assert_eq!(client.graph_numel(), held(&graph), "{roles:?}: elements in the graph");
        assert_eq!(client.resident_bytes(), 4 * (held(&prefix) + held(&graph)) as u64, "{roles:?}");
        if prefix.len() >= 2 {
            // TOA's prefix: the client holds what it was sent.
            let (sparse, report) = sparsify_prefix(client.no_graph, ToaSettings::new(0.5, ToaMode::Paper).unwrap(), &mut rand_chacha::ChaCha8Rng::seed_from_u64(2)).unwrap();
            assert!(report.frozen_sent_elems < held(&prefix));
            client.no_graph = sparse;
            assert_eq!(client.resident_bytes(), 4 * (report.frozen_sent_elems + held(&graph)) as u64, "{roles:?} with TOA");
        }
    }
}

/// The mean training loss a client reports is the mean of its steps' losses: with lr 0 the
/// model never moves, so over equal batches and every epoch it is the model's mean
/// cross-entropy over the client's samples.
#[test]
fn the_reported_loss_is_the_mean_of_every_steps_loss() {
    let shape = [1, 28, 28];
    let global = seeded::<Train>(ModelKind::Cnn, shape, 10, 8);
    let (x, y) = random_batch::<Inner>(24, shape, 10, 3);
    let expected = mean_cross_entropy(&global, &x, &y);
    let indices: Vec<usize> = (0..24).collect();
    let data = ClientData { images: &x, labels: &y, indices: &indices };
    let still = LocalTraining { epochs: 3, batch_size: 8, sgd: SgdSettings { lr: 0.0, momentum: 0.0, weight_decay: 0.0 }, cache_frozen: false, frozen_norm: Default::default() };
    for l in [0, 1] {
        let split = LocalModel::ordered(&global, l).unwrap();
        let (_, outcome) = train_local(split, &data, &still, &mut rand_chacha::ChaCha8Rng::seed_from_u64(4)).unwrap();
        assert_eq!((outcome.steps, outcome.samples), (9, 72), "l = {l}");
        assert!((outcome.mean_loss - expected).abs() <= 1e-5 * expected, "l = {l}: reported {}, the mean loss is {expected}", outcome.mean_loss);
    }
}

/// The tally's own arithmetic: steps count as they are added, the mean covers closed epochs
/// only, and reads 0 (not 0/0) before any step.
#[test]
fn the_loss_tally_counts_open_steps_and_means_closed_epochs() {
    use fedolf::local::training::LossTally;
    let loss = |v: f32| Tensor::<Inner, 1>::from_floats([v], &device());
    let mut tally = LossTally::<Inner>::default();
    assert_eq!((tally.steps(), tally.mean()), (0, 0.0));
    tally.end_epoch(0).unwrap();
    assert_eq!((tally.steps(), tally.mean()), (0, 0.0), "an epoch without a step");
    tally.add(loss(2.0));
    tally.add(loss(4.0));
    assert_eq!((tally.steps(), tally.mean()), (2, 0.0), "the open epoch's steps count, its losses not yet");
    tally.end_epoch(1).unwrap();
    tally.add(loss(0.5));
    tally.end_epoch(2).unwrap();
    assert_eq!((tally.steps(), tally.mean()), (3, 6.5 / 3.0));
}

/// Every tensor's values of `net`, layer after layer, in one vector.
fn every_value(net: &fedolf::models::LayeredNet<Train>) -> Vec<f32> {
    host_params(net).into_iter().flatten().flat_map(|(_, v)| v).collect()
}

/// Local SGD is PyTorch's: momentum without dampening or Nesterov, L2 weight decay. On one
/// full batch the first step is `w1 = w0 − lr·(g(w0) + λ·w0)` whatever the momentum, and the
/// second adds exactly `μ` times the first step's update on top of plain SGD's second step:
/// `w2(μ) − w2(0) = μ·(w1 − w0)`.
#[test]
fn local_sgd_is_pytorchs_momentum_and_weight_decay() {
    let shape = [1, 28, 28];
    let global = seeded::<Train>(ModelKind::Cnn, shape, 10, 9);
    let (x, y) = random_batch::<Inner>(16, shape, 10, 5);
    let indices: Vec<usize> = (0..16).collect();
    let data = ClientData { images: &x, labels: &y, indices: &indices };
    let run = |epochs: usize, momentum: f64, weight_decay: f64| -> Vec<f32> {
        let settings = LocalTraining { epochs, batch_size: 16, sgd: SgdSettings { lr: 0.05, momentum, weight_decay }, cache_frozen: false, frozen_norm: Default::default() };
        let local = LocalModel::ordered(&global, 0).unwrap();
        let (trained, _) = train_local(local, &data, &settings, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1)).unwrap();
        every_value(&trained.join())
    };
    let w0 = every_value(&global);
    let (w1, w1_momentum, w1_decay) = (run(1, 0.0, 0.0), run(1, 0.9, 0.0), run(1, 0.0, 0.01));
    let step: Vec<f32> = w1.iter().zip(&w0).map(|(a, b)| a - b).collect();
    let scale = step.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0);
    assert!(max_abs_diff(&w1_momentum, &w1) <= 1e-6 * scale, "momentum changed the first step");
    // Weight decay adds −lr·λ·w0 to the first step.
    let decayed: Vec<f32> = w1.iter().zip(&w0).map(|(a, b)| a - 0.05 * 0.01 * b).collect();
    assert!(max_abs_diff(&w1_decay, &decayed) <= 1e-4 * scale, "weight decay is not L2 with the lr: off by {}", max_abs_diff(&w1_decay, &decayed));
    let (plain, momentum) = (run(2, 0.0, 0.0), run(2, 0.9, 0.0));
    let expected: Vec<f32> = plain.iter().zip(&step).map(|(p, s)| p + 0.9 * s).collect();
    let err = max_abs_diff(&momentum, &expected);
    assert!(err <= 1e-3 * scale, "second step with momentum 0.9 is off PyTorch's by {err} (first step's largest move {scale})");
}

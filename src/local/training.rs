//! Running a layered model with frozen layers (FedOLF paper §III-B; ARCHITECTURE.md, "A round",
//! step 5, and "Vocabulary", layer roles).
//!
//! A client's model is laid out by per-layer [`LayerRole`]s:
//! - `FrozenNoGraph` layers (always a prefix) run on the inner (non-autodiff) backend — no
//!   graph, no stored activations, no gradients — and their output re-enters autodiff with
//!   `Tensor::from_inner`. This is FedOLF's frozen prefix.
//! - `FrozenInGraph` layers stay in the graph with `require_grad = false` so gradients flow
//!   through them to trained layers below (random freezing, CoCoFL's upper layers).
//! - `FrozenGradDiscarded` layers are fully in the graph and their gradients are dropped
//!   before the update (TinyFEL).
//! - `Trained` layers get gradients and SGD steps.
//! - `Skipped` layers are not on the client at all: a skipped residual block is the identity
//!   (NeFL's depth scaling), skipped top layers cut the model short (DepthFL, ScaleFL), where
//!   an exit head at the cut gives the logits.
//! The local loss is the plan's [`Objective`] over the model's outputs (one per exit reached,
//! shallowest first, then the classifier's when the client holds it).
//! Only trained parameters reach the optimizer, so only they get optimizer state. Frozen
//! BatchNorm normalises with running statistics and never updates them, outside the graph
//! (Burn's BN uses batch statistics only when autodiff is enabled) and inside it (the
//! layer's `frozen_bn` flag), so every freezing mode computes the same frozen function.

use burn::module::{AutodiffModule, ParamId};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fedolf_models::{Features, LayeredNet};
use rand::seq::SliceRandom;
use rand::Rng;

use crate::local::error::LocalError;
use crate::local::objective::Objective;
use crate::local::roles::{ordered_roles, LayerRole};
use crate::tensor::params::{deep_copy, param_ids, pass_grad_only, read_layer, LayerParams};
use crate::tensor::submodel::index_tensor;

/// SGD as PyTorch defines it (momentum without dampening, L2 weight decay).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdSettings {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalTraining {
    pub epochs: usize,
    pub batch_size: usize,
    pub sgd: SgdSettings,
    /// Compute the frozen prefix's outputs once per round and reuse them every epoch.
    pub cache_frozen: bool,
    /// How BatchNorm normalises in the frozen prefix outside the graph.
    pub frozen_norm: FrozenNorm,
}

/// How BatchNorm in the frozen prefix (outside the graph) normalises. Its running statistics
/// never move there either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrozenNorm {
    /// With the running statistics it was sent (as evaluation does).
    #[default]
    Running,
    /// With each batch's own statistics (PyTorch's train mode under `no_grad`).
    Batch,
}

impl LocalTraining {
    /// Whether a client with a frozen prefix caches its outputs: only worth it with E > 1, and
    /// only sound with running statistics (with each batch's own, the prefix's output depends
    /// on which samples share its batch, so it is not one fixed function to compute once).
    pub fn caches_prefix(&self) -> bool {
        self.cache_frozen && self.epochs > 1 && self.frozen_norm == FrozenNorm::Running
    }
}

/// A client's model for one round, laid out by roles.
#[derive(Debug)]
pub struct LocalModel<B: AutodiffBackend> {
    /// The `FrozenNoGraph` prefix, on the inner backend (TOA/QSGD rewrite it).
    pub no_graph: LayeredNet<B::InnerBackend>,
    /// Everything else, on the autodiff backend.
    pub graph: LayeredNet<B>,
    pub roles: Vec<LayerRole>,
    /// The global layer index of each layer of `graph` (skipped layers are absent).
    pub graph_index: Vec<usize>,
    /// The global index of each exit head of `graph`.
    exit_index: Vec<usize>,
    /// Whether the client holds the classifier (else its deepest exit gives the logits).
    final_logits: bool,
    /// The local loss over the model's outputs.
    pub objective: Objective,
    /// Only these parameters step (TinyFEL); `None` = every parameter with a gradient.
    keep: Option<Vec<ParamId>>,
}

impl<B: AutodiffBackend> LocalModel<B> {
    /// Deep-copy `global` and lay it out by `roles`. `FrozenNoGraph` layers must form a
    /// prefix and at least one layer must train.
    pub fn from_roles(global: &LayeredNet<B>, roles: &[LayerRole]) -> Result<Self, LocalError> {
        let n = global.num_layers();
        if roles.len() != n {
            return Err(LocalError::BadRoles(format!("{} roles for a model of {n} layers", roles.len())));
        }
        if !roles.contains(&LayerRole::Trained) {
            return Err(LocalError::TooManyFrozen { frozen: n, num_layers: n });
        }
        let m = roles.iter().take_while(|r| **r == LayerRole::FrozenNoGraph).count();
        if roles[m..].contains(&LayerRole::FrozenNoGraph) {
            return Err(LocalError::BadRoles("layers outside the graph must come before every layer in it".into()));
        }
        let (prefix, mut graph) = deep_copy(global).split_at(m)?;
        let graph_index: Vec<usize> = (m..n).filter(|&i| roles[i] != LayerRole::Skipped).collect();
        let depth = graph_index.last().map_or(m, |&i| i + 1);
        if graph.exits.iter().any(|e| e.after <= m) || (!graph.exits.is_empty() && roles[..depth].contains(&LayerRole::Skipped)) {
            return Err(LocalError::BadRoles("exit heads need every layer up to them in the graph".into()));
        }
        // Exits beyond the client's depth are not held; their global indices follow the N layers.
        let exit_index: Vec<usize> = graph.exits.iter().enumerate().filter(|(_, e)| e.after <= depth).map(|(e, _)| n + e).collect();
        graph.exits.retain(|e| e.after <= depth);
        let final_logits = depth == n;
        if !final_logits && !graph.exits.iter().any(|e| e.after == depth) {
            return Err(LocalError::BadRoles(format!("the model is cut after layer {depth} of {n}, where it has no exit head")));
        }
        let layers = std::mem::take(&mut graph.layers);
        graph.layers = layers
            .into_iter()
            .zip(&roles[m..])
            .filter(|(_, role)| **role != LayerRole::Skipped)
            .map(|(layer, role)| match role {
                LayerRole::FrozenInGraph => frozen_bn(pass_grad_only(layer), true),
                LayerRole::FrozenGradDiscarded => frozen_bn(layer, true),
                _ => layer,
            })
            .collect();
        let keep = roles[m..].contains(&LayerRole::FrozenGradDiscarded).then(|| {
            let trained = graph.layers.iter().zip(&graph_index).filter(|(_, &i)| roles[i] == LayerRole::Trained).flat_map(|(l, _)| param_ids(l));
            trained.chain(graph.exits.iter().flat_map(param_ids)).collect()
        });
        Ok(Self { no_graph: prefix.valid(), graph, roles: roles.to_vec(), graph_index, exit_index, final_logits, objective: Objective::CrossEntropy, keep })
    }

    /// FedOLF: the first `l` layers frozen outside the graph.
    pub fn ordered(global: &LayeredNet<B>, l: usize) -> Result<Self, LocalError> {
        Self::from_roles(global, &ordered_roles(global.num_layers(), l)?)
    }

    /// Training-mode forward: prefix without a graph, the rest with one.
    /// # Shapes
    /// `[b, c, h, w] (inner) -> [b, classes]`
    pub fn forward(&self, x: Tensor<B::InnerBackend, 4>) -> Tensor<B, 2> {
        self.forward_graph(self.prefix_forward(x)).pop().expect("a client model has an output")
    }

    /// The frozen prefix alone, outside the graph (the identity when nothing is frozen).
    /// # Shapes
    /// `[b, c, h, w] -> [b, c', h', w']` (or `[b, d]` once a prefix reaches the classifier)
    pub fn prefix_forward(&self, x: Tensor<B::InnerBackend, 4>) -> Features<B::InnerBackend> {
        let m = self.no_graph.num_layers();
        self.no_graph.forward_range(Features::Map(x), 0, m).expect("full range of the prefix")
    }

    /// The layers in the graph, from the prefix's output to the logits `[b, classes]` of
    /// every exit reached (shallowest first) and of the classifier when held.
    fn forward_graph(&self, h: Features<B::InnerBackend>) -> Vec<Tensor<B, 2>> {
        let depths: Vec<usize> = self.graph_index.iter().map(|i| i + 1).collect();
        self.graph.forward_with_exits(Features::from_inner(h), &depths, self.final_logits)
    }

    /// One SGD step on a batch with a fresh optimizer; returns the loss as a tensor.
    pub(crate) fn step<O: Optimizer<LayeredNet<B>, B>>(
        self,
        optim: &mut O,
        lr: f64,
        x: Tensor<B::InnerBackend, 4>,
        y: Tensor<B::InnerBackend, 1, Int>,
    ) -> (Self, Tensor<B::InnerBackend, 1>) {
        let h = self.prefix_forward(x);
        self.step_from_prefix(optim, lr, h, y, None)
    }

    /// One SGD step starting from the frozen prefix's output `h` (computed now or cached).
    fn step_from_prefix<O: Optimizer<LayeredNet<B>, B>>(
        mut self,
        optim: &mut O,
        lr: f64,
        h: Features<B::InnerBackend>,
        y: Tensor<B::InnerBackend, 1, Int>,
        device_peak: Option<&mut Option<u64>>,
    ) -> (Self, Tensor<B::InnerBackend, 1>) {
        let device = y.device();
        let outputs = self.forward_graph(h);
        let loss = self.objective.loss(outputs, Tensor::from_inner(y));
        // The forward pass is done and nothing is freed yet: activations are at their peak.
        if let Some(peak) = device_peak {
            sample_device_memory::<B>(&device, peak);
        }
        let value = loss.clone().inner();
        let mut grads = loss.backward();
        let grads = match &self.keep {
            Some(ids) => GradientsParams::from_params(&mut grads, &self.graph, ids),
            None => GradientsParams::from_module(&mut grads, &self.graph),
        };
        self.graph = optim.step(lr, self.graph, grads);
        (self, value)
    }

    /// One SGD step with a fresh optimizer; returns the updated model and the loss.
    pub fn fresh_step(self, x: Tensor<B::InnerBackend, 4>, y: Tensor<B::InnerBackend, 1, Int>, sgd: &SgdSettings) -> (Self, Tensor<B::InnerBackend, 1>) {
        let mut optim = sgd_optimizer::<B>(sgd);
        self.step(&mut optim, sgd.lr, x, y)
    }

    /// One SGD step (fresh optimizer): the unit the memory probe measures.
    pub fn single_step(self, x: Tensor<B::InnerBackend, 4>, y: Tensor<B::InnerBackend, 1, Int>, sgd: &SgdSettings) -> f64 {
        self.fresh_step(x, y, sgd).1.into_scalar().elem::<f64>()
    }

    /// [`Self::single_step`] on a GPU: also the stream's bytes in use at the step's peak (after
    /// the forward pass, before anything is freed). `None` on the CPU.
    pub fn single_step_device_peak(self, x: Tensor<B::InnerBackend, 4>, y: Tensor<B::InnerBackend, 1, Int>, sgd: &SgdSettings) -> (f64, Option<u64>) {
        let mut optim = sgd_optimizer::<B>(sgd);
        let mut peak = None;
        let h = self.prefix_forward(x);
        let (_, loss) = self.step_from_prefix(&mut optim, sgd.lr, h, y, Some(&mut peak));
        (loss.into_scalar().elem::<f64>(), peak)
    }

    /// Bytes of every tensor the client holds (f32): the frozen prefix as compressed for it,
    /// the rest in full, BN buffers included. Counted from the tensors, not the allocator:
    /// Flex shares storage between the server's model and a fresh client copy until it is
    /// written, while a real device holds its own copy.
    pub fn resident_bytes(&self) -> u64 {
        let numel: usize = self.no_graph.layers.iter().map(crate::tensor::params::layer_numel).sum::<usize>() + self.graph_numel();
        numel as u64 * 4
    }

    /// The trained layers as `(global layer index, tensors)`, then the exit heads held
    /// (global index `N + e`): what the client uploads.
    pub fn trained_layers(&self) -> Vec<(usize, LayerParams<B::InnerBackend>)> {
        let layers = self
            .graph
            .layers
            .iter()
            .zip(&self.graph_index)
            .filter(|(_, &i)| self.roles[i] == LayerRole::Trained)
            .map(|(layer, &i)| (i, read_layer(&layer.valid())));
        let exits = self.graph.exits.iter().zip(&self.exit_index).map(|(exit, &i)| (i, read_layer(&exit.valid())));
        layers.chain(exits).collect()
    }

    /// Everything the client downloads, as `(global index, tensors)`: the (compressed)
    /// frozen prefix, the layers in the graph, then the exit heads held (`N + e`). A Flower
    /// node rebuilds this model from it ([`crate::engine::round_context::ClientRound::rebuild`]).
    pub fn payload(&self) -> Vec<(usize, LayerParams<B::InnerBackend>)> {
        let prefix = self.no_graph.layers.iter().enumerate().map(|(i, layer)| (i, read_layer(layer)));
        let layers = self.graph.layers.iter().zip(&self.graph_index).map(|(layer, &i)| (i, read_layer(&layer.valid())));
        let exits = self.graph.exits.iter().zip(&self.exit_index).map(|(exit, &i)| (i, read_layer(&exit.valid())));
        prefix.chain(layers).chain(exits).collect()
    }

    /// Elements of every tensor in the graph part (layers and exits): downloaded in full.
    pub fn graph_numel(&self) -> usize {
        self.graph.layers.iter().map(crate::tensor::params::layer_numel).sum::<usize>() + self.graph.exits.iter().map(crate::tensor::params::layer_numel).sum::<usize>()
    }

    /// Reassemble the full model (the no-graph prefix lifted back onto autodiff), every
    /// layer's BatchNorm back in training mode.
    pub fn join(self) -> LayeredNet<B> {
        let mut net = LayeredNet::join(LayeredNet::from_inner(self.no_graph), self.graph);
        net.layers.iter_mut().for_each(|l| l.set_frozen_bn(false));
        net
    }
}

fn frozen_bn<B: Backend>(mut layer: fedolf_models::Layer<B>, frozen: bool) -> fedolf_models::Layer<B> {
    layer.set_frozen_bn(frozen);
    layer
}

/// A client's data, already on the device: the whole split's tensors plus its sample indices.
pub struct ClientData<'a, B: Backend> {
    pub images: &'a Tensor<B, 4>,
    pub labels: &'a Tensor<B, 1, Int>,
    pub indices: &'a [usize],
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalOutcome {
    pub mean_loss: f64,
    pub steps: usize,
    pub samples: usize,
    /// GPU: device memory in use on the client's stream right after the forward pass (max of
    /// the first two steps), from CubeCL's statistics; `None` on the CPU.
    pub device_peak_bytes: Option<u64>,
}

/// The mean training loss of a client round, tallied the same way by every local trainer, so
/// that trainers taking the same steps report bit-identical losses: an epoch's batch losses
/// are summed in f32 on the device and read once at its end (no per-step host sync); epochs
/// combine on the host in f64.
pub struct LossTally<B: Backend> {
    epoch_sum: Option<Tensor<B, 1>>,
    epoch_steps: usize,
    total: f64,
    steps: usize,
}

impl<B: Backend> Default for LossTally<B> {
    fn default() -> Self {
        Self { epoch_sum: None, epoch_steps: 0, total: 0.0, steps: 0 }
    }
}

impl<B: Backend> LossTally<B> {
    /// One step's loss (a one-element tensor).
    pub fn add(&mut self, loss: Tensor<B, 1>) {
        self.epoch_sum = Some(match self.epoch_sum.take() {
            Some(sum) => sum + loss,
            None => loss,
        });
        self.epoch_steps += 1;
    }

    /// Close epoch `epoch`; a non-finite epoch mean is [`LocalError::Diverged`].
    pub fn end_epoch(&mut self, epoch: usize) -> Result<(), LocalError> {
        if let Some(sum) = self.epoch_sum.take() {
            let mean = sum.into_scalar().elem::<f64>() / self.epoch_steps as f64;
            if !mean.is_finite() {
                return Err(LocalError::Diverged { epoch, loss: mean });
            }
            self.total += mean * self.epoch_steps as f64;
        }
        self.steps += self.epoch_steps;
        self.epoch_steps = 0;
        Ok(())
    }

    /// Steps taken so far, the open epoch's included.
    pub fn steps(&self) -> usize {
        self.steps + self.epoch_steps
    }

    /// Mean loss per step over the closed epochs (0 before any step).
    pub fn mean(&self) -> f64 {
        if self.steps > 0 {
            self.total / self.steps as f64
        } else {
            0.0
        }
    }
}

/// Gather a mini-batch by index on the device.
/// # Shapes
/// images `[n, c, h, w] -> [b, c, h, w]`, labels `[n] -> [b]`
pub fn gather_batch<B: Backend>(data: &ClientData<'_, B>, batch: &[usize]) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
    let idx = index_tensor(batch, &data.images.device());
    (data.images.clone().select(0, idx.clone()), data.labels.clone().select(0, idx))
}

/// E epochs of mini-batch SGD; returns the trained model.
///
/// With `settings.cache_frozen`, E > 1 and a frozen prefix outside the graph, the prefix's
/// outputs for all the client's samples are computed once, before the first epoch, and every
/// step starts from them (FedOLF's own speed-up: the prefix is a fixed function within the
/// round). The cache is allocated inside the measured region, so it counts in the client's
/// peak memory as it would on a device. Batches and their order are the same either way; only
/// the prefix runs on other batch groupings, so results agree up to float summation order.
pub fn train_local<B: AutodiffBackend, R: Rng>(
    mut model: LocalModel<B>,
    data: &ClientData<'_, B::InnerBackend>,
    settings: &LocalTraining,
    rng: &mut R,
) -> Result<(LocalModel<B>, LocalOutcome), LocalError> {
    if settings.batch_size == 0 {
        return Err(LocalError::ZeroBatch);
    }
    let batch_stats = settings.frozen_norm == FrozenNorm::Batch;
    model.no_graph.layers.iter_mut().for_each(|l| l.set_batch_stats(batch_stats));
    let mut optim = sgd_optimizer::<B>(&settings.sgd);
    let cache = (settings.caches_prefix() && model.no_graph.num_layers() > 0)
        .then(|| prefix_cache(&model, data, settings.batch_size));
    // Positions into `data.indices` (and into the cache), shuffled each epoch.
    let mut order: Vec<usize> = (0..data.indices.len()).collect();
    let mut tally = LossTally::default();
    let mut device_peak = None;
    for epoch in 0..settings.epochs {
        order.shuffle(rng);
        for batch in order.chunks(settings.batch_size) {
            let samples: Vec<usize> = batch.iter().map(|&p| data.indices[p]).collect();
            // GPU memory is sampled in the first two steps (the second holds momentum state);
            // each sample syncs the stream, so not in every step.
            let sample = (tally.steps() < 2).then_some(&mut device_peak);
            let (next, loss) = match &cache {
                Some(features) => {
                    let y = gather_labels(data, &samples);
                    let h = gather_features(features, batch);
                    model.step_from_prefix(&mut optim, settings.sgd.lr, h, y, sample)
                }
                None => {
                    let (x, y) = gather_batch(data, &samples);
                    let h = model.prefix_forward(x);
                    model.step_from_prefix(&mut optim, settings.sgd.lr, h, y, sample)
                }
            };
            model = next;
            tally.add(loss);
        }
        tally.end_epoch(epoch)?;
    }
    let (mean_loss, steps) = (tally.mean(), tally.steps());
    Ok((model, LocalOutcome { mean_loss, steps, samples: data.indices.len() * settings.epochs, device_peak_bytes: device_peak }))
}

/// GPU only: the stream's bytes in use after a sync, kept as the maximum in `peak`. On the
/// CPU nothing happens (no sync either); the counting allocator measures memory there.
fn sample_device_memory<B: Backend>(device: &B::Device, peak: &mut Option<u64>) {
    if crate::runtime::backend::device_bytes_in_use(device).is_none() {
        return;
    }
    let _ = B::sync(device);
    if let Some(bytes) = crate::runtime::backend::device_bytes_in_use(device) {
        *peak = Some(peak.map_or(bytes, |p| p.max(bytes)));
    }
}

/// The frozen prefix's output for every sample of `data.indices`, in that order, computed in
/// batches of `batch` (so the transient peak is one batch's prefix activations).
/// # Shapes
/// `[n, c', h', w']` (or `[n, d]`), row `p` for sample `data.indices[p]`
fn prefix_cache<B: AutodiffBackend>(model: &LocalModel<B>, data: &ClientData<'_, B::InnerBackend>, batch: usize) -> Features<B::InnerBackend> {
    let parts: Vec<Features<B::InnerBackend>> = data
        .indices
        .chunks(batch)
        .map(|chunk| model.prefix_forward(gather_batch(data, chunk).0))
        .collect();
    match parts.first() {
        Some(Features::Flat(_)) => Features::Flat(Tensor::cat(parts.into_iter().map(Features::into_flat).collect(), 0)),
        _ => Features::Map(Tensor::cat(
            parts
                .into_iter()
                .map(|f| match f {
                    Features::Map(x) => x,
                    Features::Flat(_) => unreachable!("a prefix's output has one kind for every batch"),
                })
                .collect(),
            0,
        )),
    }
}

/// Rows `positions` of the prefix cache: `[n, ..] -> [b, ..]`.
fn gather_features<B: Backend>(cache: &Features<B>, positions: &[usize]) -> Features<B> {
    match cache {
        Features::Map(x) => Features::Map(x.clone().select(0, index_tensor(positions, &x.device()))),
        Features::Flat(x) => Features::Flat(x.clone().select(0, index_tensor(positions, &x.device()))),
    }
}

/// Labels of `samples`: `[n] -> [b]`.
fn gather_labels<B: Backend>(data: &ClientData<'_, B>, samples: &[usize]) -> Tensor<B, 1, Int> {
    data.labels.clone().select(0, index_tensor(samples, &data.labels.device()))
}

pub(crate) fn sgd_optimizer<B: AutodiffBackend>(sgd: &SgdSettings) -> impl Optimizer<LayeredNet<B>, B> {
    // A fresh optimizer per client per round: Burn keys momentum by parameter id, which
    // would otherwise leak state across rounds (ARCHITECTURE.md, "Burn behaviours the code relies on"). Dampening 0 = PyTorch.
    let momentum = (sgd.momentum > 0.0).then(|| MomentumConfig { momentum: sgd.momentum, dampening: 0.0, nesterov: false });
    let decay = (sgd.weight_decay > 0.0).then(|| WeightDecayConfig { penalty: sgd.weight_decay as f32 });
    SgdConfig::new().with_momentum(momentum).with_weight_decay(decay).init()
}

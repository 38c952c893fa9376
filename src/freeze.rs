//! Running a layered model with a frozen prefix (FedOLF paper §III-B; DESIGN.md step 5).
//!
//! Layers `[0, l)` run on the inner (non-autodiff) backend — no graph, no stored activations,
//! no gradients — and their output re-enters autodiff with `Tensor::from_inner`; layers
//! `[l, N)` train with SGD. Only the suffix is handed to the optimizer, so only active
//! parameters get gradients and optimizer state. Frozen BatchNorm normalises with running
//! statistics (Burn's BN uses batch statistics only when autodiff is enabled).

use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fedolf_models::{Features, LayeredNet, ModelError};
use rand::seq::SliceRandom;
use rand::Rng;
use thiserror::Error;

use crate::params::deep_copy;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum FreezeError {
    #[error("frozen layer count {frozen} must be below the model's {num_layers} layers (at least one layer has to train)")]
    TooManyFrozen { frozen: usize, num_layers: usize },
    #[error("local training diverged: mean loss is {loss} in epoch {epoch} (lower the learning rate?)")]
    Diverged { epoch: usize, loss: f64 },
    #[error("batch_size must be at least 1")]
    ZeroBatch,
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Toa(#[from] crate::toa::ToaError),
}

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
}

/// A client's model for one round: the frozen prefix (inner backend) and the trainable suffix.
#[derive(Debug)]
pub struct SplitModel<B: AutodiffBackend> {
    pub frozen: LayeredNet<B::InnerBackend>,
    pub active: LayeredNet<B>,
}

impl<B: AutodiffBackend> SplitModel<B> {
    /// Deep-copy the global model and split it after `l` layers.
    pub fn from_global(global: &LayeredNet<B>, l: usize) -> Result<Self, FreezeError> {
        let num_layers = global.num_layers();
        if l >= num_layers {
            return Err(FreezeError::TooManyFrozen { frozen: l, num_layers });
        }
        let (frozen, active) = deep_copy(global).split_at(l)?;
        Ok(Self { frozen: frozen.valid(), active })
    }

    pub fn frozen_count(&self) -> usize {
        self.frozen.num_layers()
    }

    /// Training-mode forward: prefix without a graph, suffix with one.
    /// # Shapes
    /// `[b, c, h, w] (inner) -> [b, classes]`
    pub fn forward(&self, x: Tensor<B::InnerBackend, 4>) -> Tensor<B, 2> {
        let l = self.frozen.num_layers();
        let h = self.frozen.forward_range(Features::Map(x), 0, l).expect("full range of the prefix");
        let h = Features::<B>::from_inner(h);
        let n = self.active.num_layers();
        self.active.forward_range(h, 0, n).expect("full range of the suffix").into_flat()
    }

    /// Reassemble the full model (frozen layers lifted back onto the autodiff backend).
    pub fn join(self) -> LayeredNet<B> {
        LayeredNet::join(LayeredNet::from_inner(self.frozen), self.active)
    }
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
}

/// Gather a mini-batch by index on the device.
/// # Shapes
/// images `[n, c, h, w] -> [b, c, h, w]`, labels `[n] -> [b]`
pub fn gather_batch<B: Backend>(data: &ClientData<'_, B>, batch: &[usize]) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
    let device = data.images.device();
    let idx = Tensor::<B, 1, Int>::from_data(
        TensorData::new(batch.iter().map(|&i| i as i64).collect::<Vec<_>>(), [batch.len()]),
        &device,
    );
    (data.images.clone().select(0, idx.clone()), data.labels.clone().select(0, idx))
}

/// E epochs of mini-batch SGD on the active suffix; returns the trained split model.
pub fn train_local<B: AutodiffBackend, R: Rng>(
    mut model: SplitModel<B>,
    data: &ClientData<'_, B::InnerBackend>,
    settings: &LocalTraining,
    rng: &mut R,
) -> Result<(SplitModel<B>, LocalOutcome), FreezeError> {
    if settings.batch_size == 0 {
        return Err(FreezeError::ZeroBatch);
    }
    let device = data.images.device();
    let mut optim = sgd_optimizer::<B>(&settings.sgd);
    let loss_fn = CrossEntropyLossConfig::new().init::<B>(&device);
    let mut order = data.indices.to_vec();
    let (mut steps, mut total_loss) = (0usize, 0.0f64);
    for epoch in 0..settings.epochs {
        order.shuffle(rng);
        let mut epoch_loss: Option<Tensor<B::InnerBackend, 1>> = None;
        let mut epoch_steps = 0;
        for batch in order.chunks(settings.batch_size) {
            let (x, y) = gather_batch(data, batch);
            let logits = model.forward(x);
            let loss = loss_fn.forward(logits, Tensor::from_inner(y));
            // Summed on the device; read once per epoch (no per-step host sync).
            let l = loss.clone().inner();
            epoch_loss = Some(match epoch_loss {
                Some(acc) => acc + l,
                None => l,
            });
            let grads = GradientsParams::from_grads(loss.backward(), &model.active);
            model.active = optim.step(settings.sgd.lr, model.active, grads);
            epoch_steps += 1;
        }
        if let Some(sum) = epoch_loss {
            let mean = sum.into_scalar().elem::<f64>() / epoch_steps as f64;
            if !mean.is_finite() {
                return Err(FreezeError::Diverged { epoch, loss: mean });
            }
            total_loss += mean * epoch_steps as f64;
        }
        steps += epoch_steps;
    }
    let mean_loss = if steps > 0 { total_loss / steps as f64 } else { 0.0 };
    Ok((model, LocalOutcome { mean_loss, steps, samples: data.indices.len() * settings.epochs }))
}

pub(crate) fn sgd_optimizer<B: AutodiffBackend>(sgd: &SgdSettings) -> impl Optimizer<LayeredNet<B>, B> {
    // A fresh optimizer per client per round: Burn keys momentum by parameter id, which
    // would otherwise leak state across rounds (BURN.md fact 7). Dampening 0 = PyTorch.
    let momentum = (sgd.momentum > 0.0).then(|| MomentumConfig { momentum: sgd.momentum, dampening: 0.0, nesterov: false });
    let decay = (sgd.weight_decay > 0.0).then(|| WeightDecayConfig { penalty: sgd.weight_decay as f32 });
    SgdConfig::new().with_momentum(momentum).with_weight_decay(decay).init()
}

//! Layered Burn models for ordered layer freezing.
//!
//! Every model is a [`LayeredNet`]: an ordered `Vec` of freezable [`Layer`]s, input side first.
//! "Layer i" is an index, so freezing the prefix `[0, l)` is a `split_at(l)`.
//! The contract (ARCHITECTURE.md, "The model contract"):
//! - [`LayeredNet::num_layers`], [`LayeredNet::forward_range`],
//! - per-layer shapes and activation sizes for an input shape ([`LayeredNet::layer_infos`]),
//! - the TOA "tensors" of a layer ([`Layer::toa_norms`] and the `toa_*` rewrites).
//!
//! Per-layer parameter read/replace lives in the root crate's `params.rs` (a visitor over one
//! `Layer`), so that Burn's parameter-walking API is touched in one place.

pub mod alexnet;
pub mod cnn;
mod conv_unit;
mod cut;
mod dense_unit;
mod error;
mod exit;
mod features;
mod frozen_norm;
mod host_init;
mod layer;
mod net;
mod padded_skip;
pub mod resnet;
mod residual;
mod shape;
mod slicing;
mod spaces;

pub use conv_unit::ConvUnit;
pub use dense_unit::{DenseUnit, MlpHead};
pub use error::ModelError;
pub use exit::{ExitHead, ExitKind, StridedExit};
pub use features::Features;
pub use host_init::redraw_on_host;
pub use layer::{Layer, ToaSite};
pub use net::LayeredNet;
pub use padded_skip::PaddedSkip;
pub use residual::{BasicBlock, PooledHead, Shortcut, StemUnit};
pub use shape::{ConvShape, FeatureShape, LayerInfo};
pub use cut::LayerCut;
pub use spaces::{LayerSpaces, SpaceLayout};

/// The models this crate builds, by name (what configs and the CLI accept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    Cnn,
    AlexNet,
    ResNet20,
    ResNet44,
}

impl ModelKind {
    pub const ALL: [ModelKind; 4] = [Self::Cnn, Self::AlexNet, Self::ResNet20, Self::ResNet44];

    pub fn name(self) -> &'static str {
        match self {
            Self::Cnn => "cnn",
            Self::AlexNet => "alexnet",
            Self::ResNet20 => "resnet20",
            Self::ResNet44 => "resnet44",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Self::Cnn => "the paper's EMNIST CNN: 2 conv blocks + linear classifier (N = 3); model.cnn_hidden = 512: FedAvg's CNN",
            Self::AlexNet => "CIFAR AlexNet: 5 conv + 2 FC (N = 7)",
            Self::ResNet20 => "CIFAR ResNet20 (option A shortcuts, 0.27 M): stem+block1, 8 blocks, pooled classifier (N = 10)",
            Self::ResNet44 => "CIFAR ResNet44 (option A shortcuts, 0.66 M): stem+block1, 20 blocks, pooled classifier (N = 22)",
        }
    }

    /// Freezing units N (independent of the input shape).
    pub fn num_layers(self) -> usize {
        match self {
            Self::Cnn => 3,
            Self::AlexNet => 7,
            Self::ResNet20 => 10,
            Self::ResNet44 => 22,
        }
    }

    pub fn parse(name: &str) -> Result<Self, ModelError> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| ModelError::UnknownModel(name.to_string()))
    }

    /// Build the model with default options for an input shape `[channels, height, width]`
    /// and a class count.
    pub fn init<B: burn::prelude::Backend>(
        self,
        input: [usize; 3],
        num_classes: usize,
        device: &B::Device,
    ) -> Result<LayeredNet<B>, ModelError> {
        self.init_with(input, num_classes, &ModelOptions::default(), device)
    }

    /// Build the model with `options` (each applies only to its model).
    pub fn init_with<B: burn::prelude::Backend>(
        self,
        input: [usize; 3],
        num_classes: usize,
        options: &ModelOptions,
        device: &B::Device,
    ) -> Result<LayeredNet<B>, ModelError> {
        match self {
            Self::Cnn => cnn::CnnConfig::new(input, num_classes).with_hidden(options.cnn_hidden).init(device),
            Self::AlexNet => alexnet::AlexNetConfig::new(input, num_classes).init(device),
            Self::ResNet20 => resnet::ResNetConfig::resnet20(input, num_classes).with_shortcut(options.shortcut).init(device),
            Self::ResNet44 => resnet::ResNetConfig::resnet44(input, num_classes).with_shortcut(options.shortcut).init(device),
        }
    }

    /// The model with exits after `exit_depths`, every random parameter drawn from `rng` on
    /// the host ([`redraw_on_host`]): the same generator state gives bit-identical weights on
    /// every backend. Layers are drawn before exits, so adding exits never shifts a layer.
    pub fn init_on_host<B: burn::prelude::Backend, R: rand::Rng>(
        self,
        input: [usize; 3],
        num_classes: usize,
        options: &ModelOptions,
        exit_depths: &[usize],
        rng: &mut R,
        device: &B::Device,
    ) -> Result<LayeredNet<B>, ModelError> {
        let net = self.init_with::<B>(input, num_classes, options, device)?.with_exits(exit_depths, device)?;
        redraw_on_host(net, rng)
    }
}

/// Architecture options beyond the model's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelOptions {
    /// CNN: hidden FC width before the classifier; 0 = none (the FedOLF paper's CNN), 512 =
    /// FedAvg's CNN.
    pub cnn_hidden: usize,
    /// ResNets: option A (parameter-free, the default) or B (projection) shortcuts.
    pub shortcut: Shortcut,
}

/// Multiply by a scale unless it is 1 (no extra op, no extra stored map, in the common case).
pub(crate) fn scaled<B: burn::prelude::Backend, const D: usize>(x: burn::prelude::Tensor<B, D>, scale: f32) -> burn::prelude::Tensor<B, D> {
    if scale == 1.0 {
        x
    } else {
        x * scale
    }
}

//! One freezable layer: an enum of the unit kinds, so a model is a plain indexable `Vec`.

use burn::prelude::*;

use crate::conv_unit::ConvUnit;
use crate::dense_unit::{DenseUnit, MlpHead};
use crate::error::ModelError;
use crate::features::Features;
use crate::residual::{BasicBlock, PooledHead, StemUnit};
use crate::slicing;
use crate::cut::LayerCut;
use crate::shape::{ConvShape, FeatureShape, LayerInfo};

#[derive(Module, Debug)]
pub enum Layer<B: Backend> {
    Conv(ConvUnit<B>),
    Dense(DenseUnit<B>),
    Mlp(MlpHead<B>),
    Stem(StemUnit<B>),
    Block(BasicBlock<B>),
    Head(PooledHead<B>),
}

/// Where TOA samples a layer's "tensors" (ARCHITECTURE.md, "Vocabulary", TOA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToaSite {
    /// Output filters / neurons; the next layer keeps the matching (rescaled) input slices.
    Outputs,
    /// A residual block's inner channels (conv1 filters, conv2 input slices); the block's
    /// input and output stay full so skips align.
    Inner,
    /// Never sampled (classifiers: their outputs are the classes).
    None,
}

impl<B: Backend> Layer<B> {
    /// # Shapes
    /// maps `[b, c, h, w]` or flat `[b, d]` in; conv/residual units keep maps, dense units
    /// and heads return `[b, d_out]`.
    pub fn forward(&self, x: Features<B>) -> Features<B> {
        match (self, x) {
            (Self::Conv(u), Features::Map(x)) => Features::Map(u.forward(x)),
            (Self::Stem(u), Features::Map(x)) => Features::Map(u.forward(x)),
            (Self::Block(u), Features::Map(x)) => Features::Map(u.forward(x)),
            (Self::Head(u), Features::Map(x)) => Features::Flat(u.forward(x)),
            (Self::Dense(u), x) => Features::Flat(u.forward(x.into_flat())),
            (Self::Mlp(u), x) => Features::Flat(u.forward(x.into_flat())),
            (_, Features::Flat(_)) => unreachable!("model constructors never put a conv unit after a flatten"),
        }
    }

    pub fn info(&self, input: FeatureShape) -> LayerInfo {
        match self {
            Self::Conv(u) => u.info(input),
            Self::Dense(u) => u.info(input),
            Self::Mlp(u) => u.info(input),
            Self::Stem(u) => u.info(input),
            Self::Block(u) => u.info(input),
            Self::Head(u) => u.info(input),
        }
    }

    /// The convolutions the layer runs on `input` (none for dense units and heads).
    pub fn conv_shapes(&self, input: FeatureShape) -> Vec<ConvShape> {
        match self {
            Self::Conv(u) => vec![u.conv_shape(input)],
            Self::Stem(u) => u.conv_shapes(input),
            Self::Block(u) => u.conv_shapes(input),
            Self::Dense(_) | Self::Mlp(_) | Self::Head(_) => Vec::new(),
        }
    }

    pub fn toa_site(&self) -> ToaSite {
        match self {
            Self::Conv(_) | Self::Dense(_) => ToaSite::Outputs,
            Self::Stem(_) | Self::Block(_) => ToaSite::Inner,
            Self::Mlp(_) | Self::Head(_) => ToaSite::None,
        }
    }

    /// Frobenius norm of each of the layer's TOA tensors (`H_q` of them), or `None` where the
    /// layer is never sampled.
    pub fn toa_norms(&self) -> Option<Tensor<B, 1>> {
        match self {
            Self::Conv(u) => Some(u.filter_norms()),
            Self::Dense(u) => Some(u.neuron_norms()),
            Self::Stem(u) => Some(u.block.inner_norms()),
            Self::Block(u) => Some(u.inner_norms()),
            Self::Mlp(_) | Self::Head(_) => None,
        }
    }

    /// Keep only output tensors `idx` of an [`ToaSite::Outputs`] layer.
    pub fn toa_keep_outputs(self, idx: &Tensor<B, 1, Int>) -> Result<Self, ModelError> {
        match self {
            Self::Conv(u) => Ok(Self::Conv(u.keep_outputs(idx))),
            Self::Dense(u) => Ok(Self::Dense(u.keep_outputs(idx))),
            other => Err(ModelError::ToaUnsupported { layer: other.kind_name(), op: "keep outputs" }),
        }
    }

    /// Keep input channels `idx` of the layer that follows a sampled one, scaled by `alpha`
    /// (the estimator's factor, folded into the weights). `prev_channels` is the sampled
    /// layer's full channel count (locates the flatten's column groups).
    pub fn toa_scale_inputs(
        self,
        idx: &Tensor<B, 1, Int>,
        alpha: &Tensor<B, 1>,
        prev_channels: usize,
    ) -> Result<Self, ModelError> {
        match self {
            Self::Conv(u) => Ok(Self::Conv(u.scale_inputs(idx, alpha))),
            Self::Dense(u) => Ok(Self::Dense(u.scale_inputs(idx, alpha, prev_channels))),
            Self::Mlp(u) => Ok(Self::Mlp(u.scale_inputs(idx, alpha, prev_channels))),
            other => Err(ModelError::ToaUnsupported { layer: other.kind_name(), op: "scale inputs" }),
        }
    }

    /// Sample a residual unit's inner channels (see [`ToaSite::Inner`]).
    pub fn toa_sparsify_inner(self, idx: &Tensor<B, 1, Int>, alpha: &Tensor<B, 1>) -> Result<Self, ModelError> {
        match self {
            Self::Block(u) => Ok(Self::Block(u.sparsify_inner(idx, alpha))),
            Self::Stem(mut u) => {
                u.block = u.block.sparsify_inner(idx, alpha);
                Ok(Self::Stem(u))
            }
            other => Err(ModelError::ToaUnsupported { layer: other.kind_name(), op: "sparsify inner" }),
        }
    }

    /// A narrower copy keeping the channels in `cut` (pure selection, no rescaling): the
    /// sub-model of the width methods (HeteroFL, Feddrop, FjORD).
    pub fn slice(self, cut: &LayerCut<B>) -> Self {
        let keep_in_conv = |conv, cut: &LayerCut<B>| match &cut.input {
            Some((idx, _)) => slicing::conv_keep_inputs(conv, idx),
            None => conv,
        };
        match self {
            Self::Conv(mut u) => {
                u.conv = keep_in_conv(u.conv, cut);
                if let Some(idx) = &cut.output {
                    u = u.keep_outputs(idx);
                }
                Self::Conv(u)
            }
            Self::Dense(mut u) => {
                if let Some((idx, full)) = &cut.input {
                    u.linear = slicing::linear_keep_inputs(u.linear, idx, *full);
                }
                if let Some(idx) = &cut.output {
                    u = u.keep_outputs(idx);
                }
                Self::Dense(u)
            }
            Self::Mlp(mut u) => {
                if let Some((idx, full)) = &cut.input {
                    u.hidden = slicing::linear_keep_inputs(u.hidden, idx, *full);
                }
                if let Some(idx) = &cut.inner {
                    u.hidden = slicing::linear_keep_outputs(u.hidden, idx);
                    // The classifier reads the hidden neurons directly (flat: one row each).
                    let hidden = u.output.weight.dims()[0];
                    u.output = slicing::linear_keep_inputs(u.output, idx, hidden);
                }
                Self::Mlp(u)
            }
            Self::Stem(mut u) => {
                if let Some(idx) = &cut.output {
                    u.conv = slicing::conv_keep_outputs(u.conv, idx);
                    u.bn = slicing::bn_keep(u.bn, idx);
                }
                let full = u.block.conv1.weight.dims()[1];
                let block_cut = LayerCut { input: cut.output.clone().map(|i| (i, full)), inner: cut.inner.clone(), output: cut.output.clone() };
                u.block = u.block.slice(&block_cut);
                Self::Stem(u)
            }
            Self::Block(u) => Self::Block(u.slice(cut)),
            Self::Head(mut u) => {
                if let Some((idx, full)) = &cut.input {
                    u.fc = slicing::linear_keep_inputs(u.fc, idx, *full);
                }
                Self::Head(u)
            }
        }
    }

    /// Let a layer frozen outside the graph normalise with its batch's statistics (PyTorch's
    /// train mode under `no_grad`) instead of the running ones, which stay untouched.
    pub fn set_batch_stats(&mut self, batch: bool) {
        match self {
            Self::Conv(u) => u.batch_stats = batch,
            Self::Stem(u) => {
                u.batch_stats = batch;
                u.block.batch_stats = batch;
            }
            Self::Block(u) => u.batch_stats = batch,
            Self::Dense(_) | Self::Mlp(_) | Self::Head(_) => {}
        }
    }

    /// Mark the layer frozen (or not) for its BatchNorms: frozen BN normalises with running
    /// statistics and leaves them untouched, also inside the autodiff graph.
    pub fn set_frozen_bn(&mut self, frozen: bool) {
        match self {
            Self::Conv(u) => u.frozen_bn = frozen,
            Self::Stem(u) => {
                u.frozen_bn = frozen;
                u.block.frozen_bn = frozen;
            }
            Self::Block(u) => u.frozen_bn = frozen,
            Self::Dense(_) | Self::Mlp(_) | Self::Head(_) => {}
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Conv(_) => "conv",
            Self::Dense(_) => "dense",
            Self::Mlp(_) => "mlp-classifier",
            Self::Stem(_) => "stem+block",
            Self::Block(_) => "residual-block",
            Self::Head(_) => "pooled-classifier",
        }
    }
}

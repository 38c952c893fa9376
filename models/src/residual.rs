//! ResNet pieces (He et al., CVPR 2016, CIFAR variant): the basic residual block — the freezing
//! unit — the stem that freezes together with block 1, and the pooled classifier.
//! Downsampling blocks use He et al.'s option A shortcut (identity, stride-2 subsampling,
//! zero-padded channels; no parameters) or option B (1×1 conv + BN projection).

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;

use crate::frozen_norm::{batch_norm, batch_norm_add_relu, batch_norm_relu, NormMode};
use crate::padded_skip::PaddedSkip;
use crate::shape::{conv_out, ConvShape, FeatureShape, LayerInfo};
use crate::slicing;

/// How a block that changes shape carries its input to the output (He et al., §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shortcut {
    /// Option A: identity with stride-2 subsampling and zero-padded channels (the CIFAR
    /// ResNets of §4.2: ResNet20 has 0.27 M parameters).
    #[default]
    A,
    /// Option B: a 1×1 convolution + BN projection.
    B,
}

fn conv3x3<B: Backend>(c_in: usize, c_out: usize, stride: usize, device: &B::Device) -> Conv2d<B> {
    Conv2dConfig::new([c_in, c_out], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(device)
}

fn bn_params<B: Backend>(bn: &BatchNorm<B>) -> usize {
    2 * bn.gamma.dims()[0]
}

#[derive(Module, Debug)]
pub struct Projection<B: Backend> {
    pub conv: Conv2d<B>,
    pub bn: BatchNorm<B>,
}

#[derive(Module, Debug)]
pub struct BasicBlock<B: Backend> {
    pub conv1: Conv2d<B>,
    pub bn1: BatchNorm<B>,
    pub conv2: Conv2d<B>,
    pub bn2: BatchNorm<B>,
    /// Option B projection (only where the block changes shape).
    pub shortcut: Option<Projection<B>>,
    /// Option A skip (only where the block changes shape); no parameters.
    #[module(skip)]
    pub padded_skip: Option<PaddedSkip>,
    pub stride: usize,
    /// HeteroFL's Scaler after every conv, before its BN (see `ConvUnit::scale`).
    pub scale: f32,
    /// Frozen in the graph: BN normalises with running statistics (see `frozen_norm`).
    pub frozen_bn: bool,
    /// Frozen outside the graph with batch statistics (see `frozen_norm::NormMode`).
    pub batch_stats: bool,
}

impl<B: Backend> BasicBlock<B> {
    pub fn new(c_in: usize, c_out: usize, stride: usize, shortcut: Shortcut, device: &B::Device) -> Self {
        let reshapes = stride != 1 || c_in != c_out;
        let padded_skip = (reshapes && shortcut == Shortcut::A).then(|| PaddedSkip::new(c_in, c_out, stride));
        let shortcut = (reshapes && shortcut == Shortcut::B).then(|| Projection {
            conv: Conv2dConfig::new([c_in, c_out], [1, 1])
                .with_stride([stride, stride])
                .with_bias(false)
                .init(device),
            bn: BatchNormConfig::new(c_out).init(device),
        });
        Self {
            conv1: conv3x3(c_in, c_out, stride, device),
            bn1: BatchNormConfig::new(c_out).init(device),
            conv2: conv3x3(c_out, c_out, 1, device),
            bn2: BatchNormConfig::new(c_out).init(device),
            shortcut,
            padded_skip,
            stride,
            scale: 1.0,
            frozen_bn: false,
            batch_stats: false,
        }
    }

    /// # Shapes
    /// `[b, c_in, h, w] -> [b, c_out, h/stride, w/stride]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let (s, frozen) = (self.scale, NormMode { frozen: self.frozen_bn, batch_stats: self.batch_stats });
        let skip = match (&self.shortcut, &self.padded_skip) {
            (Some(p), _) => batch_norm(&p.bn, crate::scaled(fedolf_kernels::forward(&p.conv, x.clone()), s), frozen),
            (None, Some(pad)) => pad.forward(x.clone()),
            (None, None) => x.clone(),
        };
        let out = batch_norm_relu(&self.bn1, crate::scaled(fedolf_kernels::forward(&self.conv1, x), s), frozen);
        batch_norm_add_relu(&self.bn2, crate::scaled(fedolf_kernels::forward(&self.conv2, out), s), skip, frozen)
    }

    /// The convolutions this block runs on `input`: conv1, conv2, and the option-B projection.
    pub fn conv_shapes(&self, input: FeatureShape) -> Vec<ConvShape> {
        let FeatureShape::Map { height, width, .. } = input else {
            unreachable!("residual blocks only follow feature maps");
        };
        let (w1, w2) = (self.conv1.weight.dims(), self.conv2.weight.dims());
        let (h, w) = (conv_out(height, 3, self.stride, 1), conv_out(width, 3, self.stride, 1));
        let mut shapes = vec![
            ConvShape { input: [w1[1], height, width], weight: w1, stride: self.stride, padding: 1 },
            ConvShape { input: [w2[1], h, w], weight: w2, stride: 1, padding: 1 },
        ];
        if let Some(p) = &self.shortcut {
            let wp = p.conv.weight.dims();
            shapes.push(ConvShape { input: [wp[1], height, width], weight: wp, stride: self.stride, padding: 0 });
        }
        shapes
    }

    /// Output channels of conv1 (the block's inner channel space, TOA's "tensors").
    pub fn inner_channels(&self) -> usize {
        self.conv1.weight.dims()[0]
    }

    pub fn info(&self, input: FeatureShape) -> LayerInfo {
        let FeatureShape::Map { height, width, .. } = input else {
            unreachable!("residual blocks only follow feature maps");
        };
        let c_out = self.conv2.weight.dims()[0];
        let inner = self.inner_channels();
        let (h, w) = (conv_out(height, 3, self.stride, 1), conv_out(width, 3, self.stride, 1));
        let hw = h * w;
        // conv1, bn1, relu (inner) + conv2, bn2, add, relu (outer) + projection conv, bn.
        let shortcut_elems = if self.shortcut.is_some() { 2 * c_out * hw } else { 0 };
        let activation_elems = 3 * inner * hw + 4 * c_out * hw + shortcut_elems;
        let proj_params = self.shortcut.as_ref().map_or(0, |p| p.conv.num_params() + bn_params(&p.bn));
        let bn_count = bn_params(&self.bn1) + bn_params(&self.bn2)
            + self.shortcut.as_ref().map_or(0, |p| bn_params(&p.bn));
        LayerInfo {
            input,
            output: FeatureShape::map(c_out, h, w),
            activation_elems,
            trainable_params: self.conv1.num_params()
                + self.conv2.num_params()
                + bn_params(&self.bn1)
                + bn_params(&self.bn2)
                + proj_params,
            buffer_elems: bn_count,
        }
    }

    /// Keep the channels of `cut` (input / inner / output spaces), pure selection.
    pub(crate) fn slice(mut self, cut: &crate::cut::LayerCut<B>) -> Self {
        if let Some(skip) = self.padded_skip.take() {
            let host = |idx: &Tensor<B, 1, Int>| idx.to_data().convert::<i64>().into_vec::<i64>().unwrap_or_default().into_iter().map(|i| i as usize).collect::<Vec<_>>();
            let inputs = cut.input.as_ref().map(|(idx, _)| host(idx));
            let outputs = cut.output.as_ref().map(host);
            self.padded_skip = Some(skip.slice(inputs.as_deref(), outputs.as_deref()));
        }
        if let Some((idx, _)) = &cut.input {
            self.conv1 = slicing::conv_keep_inputs(self.conv1, idx);
            self.shortcut = self.shortcut.map(|mut p| {
                p.conv = slicing::conv_keep_inputs(p.conv, idx);
                p
            });
        }
        if let Some(idx) = &cut.inner {
            self.conv1 = slicing::conv_keep_outputs(self.conv1, idx);
            self.bn1 = slicing::bn_keep(self.bn1, idx);
            self.conv2 = slicing::conv_keep_inputs(self.conv2, idx);
        }
        if let Some(idx) = &cut.output {
            self.conv2 = slicing::conv_keep_outputs(self.conv2, idx);
            self.bn2 = slicing::bn_keep(self.bn2, idx);
            self.shortcut = self.shortcut.map(|mut p| {
                p.conv = slicing::conv_keep_outputs(p.conv, idx);
                p.bn = slicing::bn_keep(p.bn, idx);
                p
            });
        }
        self
    }

    pub(crate) fn inner_norms(&self) -> Tensor<B, 1> {
        slicing::conv_filter_norms(&self.conv1)
    }

    /// TOA inside a block: keep conv1 filters `idx` (and BN1), and conv2's matching input
    /// slices scaled by `alpha`. Block input/output channels are untouched (skip alignment).
    pub(crate) fn sparsify_inner(mut self, idx: &Tensor<B, 1, Int>, alpha: &Tensor<B, 1>) -> Self {
        self.conv1 = slicing::conv_keep_outputs(self.conv1, idx);
        self.bn1 = slicing::bn_keep(self.bn1, idx);
        self.conv2 = slicing::conv_scale_inputs(self.conv2, idx, alpha);
        self
    }
}

/// The ResNet stem (3×3 conv → BN → ReLU) fused with the first residual block: the paper
/// freezes the stem together with block 1.
#[derive(Module, Debug)]
pub struct StemUnit<B: Backend> {
    pub conv: Conv2d<B>,
    pub bn: BatchNorm<B>,
    pub block: BasicBlock<B>,
    /// HeteroFL's Scaler on the stem conv (the block has its own).
    pub scale: f32,
    /// Frozen in the graph: BN normalises with running statistics (see `frozen_norm`).
    pub frozen_bn: bool,
    /// Frozen outside the graph with batch statistics (see `frozen_norm::NormMode`).
    pub batch_stats: bool,
}

impl<B: Backend> StemUnit<B> {
    pub fn new(c_in: usize, width: usize, device: &B::Device) -> Self {
        Self {
            conv: conv3x3(c_in, width, 1, device),
            bn: BatchNormConfig::new(width).init(device),
            block: BasicBlock::new(width, width, 1, Shortcut::A, device),
            scale: 1.0,
            frozen_bn: false,
            batch_stats: false,
        }
    }

    /// # Shapes
    /// `[b, c_in, h, w] -> [b, width, h, w]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mode = NormMode { frozen: self.frozen_bn, batch_stats: self.batch_stats };
        self.block.forward(batch_norm_relu(&self.bn, crate::scaled(fedolf_kernels::forward(&self.conv, x), self.scale), mode))
    }

    /// The stem's convolution, then its block's.
    pub fn conv_shapes(&self, input: FeatureShape) -> Vec<ConvShape> {
        let FeatureShape::Map { height, width, .. } = input else {
            unreachable!("the stem takes images");
        };
        let weight = self.conv.weight.dims();
        let stem = ConvShape { input: [weight[1], height, width], weight, stride: 1, padding: 1 };
        let mut shapes = vec![stem];
        shapes.extend(self.block.conv_shapes(FeatureShape::map(weight[0], height, width)));
        shapes
    }

    pub fn info(&self, input: FeatureShape) -> LayerInfo {
        let FeatureShape::Map { height, width, .. } = input else {
            unreachable!("the stem takes images");
        };
        let c = self.conv.weight.dims()[0];
        let stem_out = FeatureShape::map(c, height, width);
        let block = self.block.info(stem_out);
        LayerInfo {
            input,
            output: block.output,
            // conv, BN, ReLU of the stem, then the block's own maps.
            activation_elems: 3 * stem_out.elems() + block.activation_elems,
            trainable_params: self.conv.num_params() + bn_params(&self.bn) + block.trainable_params,
            buffer_elems: bn_params(&self.bn) + block.buffer_elems,
        }
    }
}

/// Global average pool → linear classifier; the last freezing unit of a ResNet.
#[derive(Module, Debug)]
pub struct PooledHead<B: Backend> {
    pub pool: AdaptiveAvgPool2d,
    pub fc: Linear<B>,
}

impl<B: Backend> PooledHead<B> {
    pub fn new(channels: usize, classes: usize, device: &B::Device) -> Self {
        Self {
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            fc: LinearConfig::new(channels, classes).init(device),
        }
    }

    /// # Shapes
    /// `[b, c, h, w] -> pool [b, c, 1, 1] -> flatten [b, c] -> [b, classes]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.fc.forward(self.pool.forward(x).flatten(1, 3))
    }

    pub fn info(&self, input: FeatureShape) -> LayerInfo {
        let [c, classes] = self.fc.weight.dims();
        LayerInfo {
            input,
            output: FeatureShape::Flat(classes),
            activation_elems: c + classes,
            trainable_params: self.fc.num_params(),
            buffer_elems: 0,
        }
    }
}

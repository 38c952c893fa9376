//! A plain convolution layer: conv → (BN) → ReLU → (max-pool). The freezing unit of the CNN and
//! of AlexNet's feature extractor.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::shape::{conv_out, ConvShape, FeatureShape, LayerInfo};
use crate::slicing;

#[derive(Module, Debug)]
pub struct ConvUnit<B: Backend> {
    pub conv: Conv2d<B>,
    pub bn: Option<BatchNorm<B>>,
    pub pool: Option<MaxPool2d>,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub pool_size: usize,
    /// HeteroFL's Scaler: conv outputs are multiplied by this (1/r on a width-r sub-model in
    /// training; 1 elsewhere). Not a parameter.
    pub scale: f32,
    /// Frozen in the graph: BN normalises with running statistics (see `frozen_norm`).
    pub frozen_bn: bool,
    /// Frozen outside the graph with batch statistics (see `frozen_norm::NormMode`).
    pub batch_stats: bool,
}

impl<B: Backend> ConvUnit<B> {
    pub fn new(
        channels: [usize; 2],
        kernel: usize,
        padding: usize,
        batch_norm: bool,
        pool_size: Option<usize>,
        device: &B::Device,
    ) -> Self {
        Self::strided(channels, kernel, 1, padding, batch_norm, pool_size, device)
    }

    /// [`new`](Self::new) with a convolution stride (exit heads downsample with stride 2).
    pub fn strided(
        channels: [usize; 2],
        kernel: usize,
        stride: usize,
        padding: usize,
        batch_norm: bool,
        pool_size: Option<usize>,
        device: &B::Device,
    ) -> Self {
        let conv = Conv2dConfig::new(channels, [kernel, kernel])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(padding, padding, padding, padding))
            .with_bias(!batch_norm)
            .init(device);
        let bn = batch_norm.then(|| BatchNormConfig::new(channels[1]).init(device));
        let pool = pool_size.map(|p| MaxPool2dConfig::new([p, p]).with_strides([p, p]).init());
        Self { conv, bn, pool, kernel, stride, padding, pool_size: pool_size.unwrap_or(1), scale: 1.0, frozen_bn: false, batch_stats: false }
    }

    /// The convolution's output before BN/ReLU: the "pre-activation" TOA approximates.
    /// # Shapes
    /// `[b, c_in, h, w] -> [b, c_out, h', w']`
    pub fn pre_activation(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        fedolf_kernels::forward(&self.conv, x)
    }

    /// # Shapes
    /// `[b, c_in, h, w] -> [b, c_out, h'/p, w'/p]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = crate::scaled(fedolf_kernels::forward(&self.conv, x), self.scale);
        match (&self.bn, &self.pool) {
            (Some(bn), pool) => {
                let x = crate::frozen_norm::batch_norm_relu(bn, x, crate::frozen_norm::NormMode { frozen: self.frozen_bn, batch_stats: self.batch_stats });
                match pool {
                    Some(pool) => fedolf_kernels::pool_forward(pool, x),
                    None => x,
                }
            }
            // The ReLU goes into the pool's kernel: the same numbers, two passes fewer.
            (None, Some(pool)) => fedolf_kernels::relu_pool_forward(pool, x),
            (None, None) => relu(x),
        }
    }

    pub fn info(&self, input: FeatureShape) -> LayerInfo {
        let [out_c, ..] = self.conv.weight.dims();
        let (h, w) = match input {
            FeatureShape::Map { height, width, .. } => (height, width),
            FeatureShape::Flat(_) => (1, 1),
        };
        let (ch, cw) = (
            conv_out(h, self.kernel, self.stride, self.padding),
            conv_out(w, self.kernel, self.stride, self.padding),
        );
        let conv_elems = out_c * ch * cw;
        let (ph, pw) = (ch / self.pool_size, cw / self.pool_size);
        let bn_elems = if self.bn.is_some() { conv_elems } else { 0 };
        let pool_elems = if self.pool.is_some() { out_c * ph * pw } else { 0 };
        LayerInfo {
            input,
            output: FeatureShape::map(out_c, ph, pw),
            // conv out + (BN out) + ReLU out + (pool out)
            activation_elems: conv_elems + bn_elems + conv_elems + pool_elems,
            trainable_params: self.conv.num_params() + self.bn.as_ref().map_or(0, |b| 2 * b.gamma.dims()[0]),
            buffer_elems: self.bn.as_ref().map_or(0, |b| 2 * b.gamma.dims()[0]),
        }
    }

    /// The convolution this unit runs on `input`.
    pub fn conv_shape(&self, input: FeatureShape) -> ConvShape {
        let (h, w) = match input {
            FeatureShape::Map { height, width, .. } => (height, width),
            FeatureShape::Flat(_) => (1, 1),
        };
        let weight = self.conv.weight.dims();
        ConvShape { input: [weight[1], h, w], weight, stride: self.stride, padding: self.padding }
    }

    pub(crate) fn filter_norms(&self) -> Tensor<B, 1> {
        slicing::conv_filter_norms(&self.conv)
    }

    pub(crate) fn keep_outputs(mut self, idx: &Tensor<B, 1, Int>) -> Self {
        self.conv = slicing::conv_keep_outputs(self.conv, idx);
        self.bn = self.bn.map(|bn| slicing::bn_keep(bn, idx));
        self
    }

    pub(crate) fn scale_inputs(mut self, idx: &Tensor<B, 1, Int>, alpha: &Tensor<B, 1>) -> Self {
        self.conv = slicing::conv_scale_inputs(self.conv, idx, alpha);
        self
    }
}

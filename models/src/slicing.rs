//! Channel slicing of Burn modules, used by TOA to build a client's sparsified frozen layers.
//! Selecting keeps parameter ids; BN running statistics get fresh cells (never shared with
//! the server's model).

use burn::module::RunningState;
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, Linear};
use burn::prelude::*;

/// Keep output filters `idx` of a convolution: weight `[out, in, kh, kw] -> [k, in, kh, kw]`.
pub(crate) fn conv_keep_outputs<B: Backend>(mut conv: Conv2d<B>, idx: &Tensor<B, 1, Int>) -> Conv2d<B> {
    conv.weight = conv.weight.map(|w| w.select(0, idx.clone()));
    conv.bias = conv.bias.map(|b| b.map(|b| b.select(0, idx.clone())));
    conv
}

/// Keep input channels `idx`: weight `[out, in, kh, kw] -> [out, k, kh, kw]`.
pub(crate) fn conv_keep_inputs<B: Backend>(mut conv: Conv2d<B>, idx: &Tensor<B, 1, Int>) -> Conv2d<B> {
    conv.weight = conv.weight.map(|w| w.select(1, idx.clone()));
    conv
}

/// Keep input channels `idx`, each scaled by `alpha[j]`:
/// weight `[out, in, kh, kw] -> [out, k, kh, kw]`, times `alpha` viewed as `[1, k, 1, 1]`.
pub(crate) fn conv_scale_inputs<B: Backend>(
    conv: Conv2d<B>,
    idx: &Tensor<B, 1, Int>,
    alpha: &Tensor<B, 1>,
) -> Conv2d<B> {
    let mut conv = conv_keep_inputs(conv, idx);
    let k = alpha.dims()[0];
    let alpha = alpha.clone().reshape([1, k, 1, 1]);
    conv.weight = conv.weight.map(|w| w * alpha);
    conv
}

/// Per-filter Frobenius norms: `[out, in, kh, kw] -> [out]`.
pub(crate) fn conv_filter_norms<B: Backend>(conv: &Conv2d<B>) -> Tensor<B, 1> {
    let w = conv.weight.val();
    let out = w.dims()[0];
    w.powi_scalar(2).reshape([out as i32, -1]).sum_dim(1).sqrt().reshape([out])
}

pub(crate) fn bn_keep<B: Backend>(mut bn: BatchNorm<B>, idx: &Tensor<B, 1, Int>) -> BatchNorm<B> {
    bn.gamma = bn.gamma.map(|g| g.select(0, idx.clone()));
    bn.beta = bn.beta.map(|b| b.select(0, idx.clone()));
    bn.running_mean = RunningState::new(bn.running_mean.value().select(0, idx.clone()));
    bn.running_var = RunningState::new(bn.running_var.value().select(0, idx.clone()));
    bn
}

/// Keep output neurons `idx`: Burn's weight is `[d_in, d_out] -> [d_in, k]`.
pub(crate) fn linear_keep_outputs<B: Backend>(mut fc: Linear<B>, idx: &Tensor<B, 1, Int>) -> Linear<B> {
    fc.weight = fc.weight.map(|w| w.select(1, idx.clone()));
    fc.bias = fc.bias.map(|b| b.map(|b| b.select(0, idx.clone())));
    fc
}

/// The weight rows a linear layer reads from input channels `idx`. When the input is a
/// flattened feature map of `prev_channels` channels, channel j owns rows `j·hw .. (j+1)·hw`
/// (NCHW flatten); for flat inputs `hw = 1`.
fn linear_input_rows<B: Backend>(d_in: usize, idx: &Tensor<B, 1, Int>, prev_channels: usize) -> Tensor<B, 1, Int> {
    let hw = d_in / prev_channels;
    let k = idx.dims()[0];
    // rows: [k] -> [k, 1] * hw + [1, hw] -> [k, hw] -> [k·hw], channel-major like the flatten.
    let offsets = Tensor::<B, 1, Int>::arange(0..hw as i64, &idx.device()).reshape([1, hw]);
    (idx.clone().reshape([k, 1]) * (hw as i64) + offsets).reshape([k * hw])
}

/// Keep the input rows of channels `idx` (see [`linear_input_rows`]).
pub(crate) fn linear_keep_inputs<B: Backend>(mut fc: Linear<B>, idx: &Tensor<B, 1, Int>, prev_channels: usize) -> Linear<B> {
    let rows = linear_input_rows(fc.weight.dims()[0], idx, prev_channels);
    fc.weight = fc.weight.map(|w| w.select(0, rows));
    fc
}

/// Keep the input rows of channels `idx`, scaled by `alpha` (see [`linear_input_rows`]).
pub(crate) fn linear_scale_inputs<B: Backend>(
    fc: Linear<B>,
    idx: &Tensor<B, 1, Int>,
    alpha: &Tensor<B, 1>,
    prev_channels: usize,
) -> Linear<B> {
    let hw = fc.weight.dims()[0] / prev_channels;
    let mut fc = linear_keep_inputs(fc, idx, prev_channels);
    let k = alpha.dims()[0];
    // alpha: [k] -> [k, 1] -> [k, hw] -> [k·hw, 1] to scale whole rows.
    let alpha = alpha.clone().reshape([k, 1]).repeat_dim(1, hw).reshape([k * hw, 1]);
    fc.weight = fc.weight.map(|w| w * alpha);
    fc
}

/// Per-neuron Frobenius (L2) norms of a Burn linear layer: `[d_in, d_out] -> [d_out]`.
pub(crate) fn linear_neuron_norms<B: Backend>(fc: &Linear<B>) -> Tensor<B, 1> {
    let w = fc.weight.val();
    let d_out = w.dims()[1];
    w.powi_scalar(2).sum_dim(0).sqrt().reshape([d_out])
}

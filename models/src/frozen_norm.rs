//! BatchNorm for frozen layers that stay in the autodiff graph (random freezing and CoCoFL
//! above the trained window, TinyFEL's prefix).
//!
//! Burn's `BatchNorm::forward` picks its mode from the backend alone: with autodiff enabled
//! it normalises with batch statistics and updates the running ones. A frozen layer must do
//! what the frozen prefix on the inner backend does — normalise with the running statistics
//! and leave them untouched — while gradients still flow through it to trained layers below.
//! [`batch_norm`] runs Burn's inference formula op for op (so the output is bit-identical to
//! the inner backend's) whenever the layer is frozen.

use burn::nn::BatchNorm;
use burn::prelude::*;

/// `bn(x)` in training mode, or Burn's inference formula when `frozen`:
/// `(x − running_mean) / sqrt(running_var + ε) · γ + β`.
/// # Shapes
/// `[b, c, h, w] -> [b, c, h, w]`
pub(crate) fn batch_norm<B: Backend>(bn: &BatchNorm<B>, x: Tensor<B, 4>, frozen: bool) -> Tensor<B, 4> {
    if !frozen {
        return bn.forward(x);
    }
    let device = x.device();
    let channels = x.dims()[1];
    let shape = [1, channels, 1, 1];
    // [c] -> [1, c, 1, 1], the same op order as Burn's `forward_inference`.
    let mean = bn.running_mean.value().to_device(&device).reshape(shape);
    let var = bn.running_var.value().to_device(&device).reshape(shape);
    let std = var.add_scalar(bn.epsilon).sqrt();
    let x = x.sub(mean).div(std);
    let x = x.mul(bn.gamma.val().reshape(shape));
    x.add(bn.beta.val().reshape(shape))
}

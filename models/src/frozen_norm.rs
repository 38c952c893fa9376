//! BatchNorm, written for speed on the CPU backend and for frozen layers in the graph.
//!
//! Frozen layers that stay in the autodiff graph (random freezing and CoCoFL above the
//! trained window, TinyFEL's prefix): Burn's `BatchNorm::forward` picks its mode from the
//! backend alone — with autodiff enabled it normalises with batch statistics and updates the
//! running ones. A frozen layer must do what the frozen prefix on the inner backend does:
//! normalise with the running statistics, leave them untouched, and still pass gradients.
//!
//! Speed: Burn's formula broadcasts `[1, c, 1, 1]` statistics over `[b, c, h, w]`, a stride
//! pattern Flex walks element by element (a strided iterator, ~10× slower than its SIMD
//! paths), in the forward and again in the backward pass; it was most of a ResNet step. Here
//! the map is viewed as `[b, c, h·w]` and every statistic is materialised per (sample,
//! channel) as `[b, c, 1]`, the "one scalar per row" pattern Flex runs with SIMD. The maths
//! is Burn's (biased batch variance, running statistics `(1 − m)·old + m·batch`, the same ε);
//! only the summation order differs. Where the CPU's kernel runs (batch statistics in
//! training), the ReLU after a BatchNorm and a residual block's add-and-ReLU run inside it:
//! one pass and no kept map instead of two or three ops (`batch_norm_relu`,
//! `batch_norm_add_relu`); without autodiff (the frozen prefix, evaluation) the normalisation
//! with its statistics' scale and shift runs in the CPU's kernel too, and everywhere else they
//! are Burn's ops after it, the same numbers.

use burn::nn::BatchNorm;
use burn::prelude::*;
use burn::tensor::activation::relu;
use fedolf_kernels::Then;

/// How a layer's BatchNorms normalise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NormMode {
    /// The layer is frozen: its running statistics are not updated.
    pub frozen: bool,
    /// Frozen outside the graph, normalise with the batch's statistics (PyTorch's train mode
    /// under `no_grad`) instead of the running ones.
    pub batch_stats: bool,
}

/// `bn(x)`: batch statistics while training (autodiff on and not frozen) or when asked for
/// (`batch_stats`), else the running statistics: `(x − μ) / sqrt(σ² + ε) · γ + β`. Running
/// statistics move only while training.
/// # Shapes
/// `[b, c, h, w] -> [b, c, h, w]`
pub(crate) fn batch_norm<B: Backend>(bn: &BatchNorm<B>, x: Tensor<B, 4>, mode: NormMode) -> Tensor<B, 4> {
    normalise(bn, x, mode, Then::Nothing)
}

/// `relu(bn(x))`: one fused kernel where [`batch_norm`] would use the CPU's (batch statistics
/// in training), else the two ops.
/// # Shapes
/// `[b, c, h, w] -> [b, c, h, w]`
pub(crate) fn batch_norm_relu<B: Backend>(bn: &BatchNorm<B>, x: Tensor<B, 4>, mode: NormMode) -> Tensor<B, 4> {
    normalise(bn, x, mode, Then::Relu)
}

/// `relu(bn(x) + skip)`, a residual block's end, fused like [`batch_norm_relu`].
/// # Shapes
/// `[b, c, h, w], [b, c, h, w] -> [b, c, h, w]`
pub(crate) fn batch_norm_add_relu<B: Backend>(bn: &BatchNorm<B>, x: Tensor<B, 4>, skip: Tensor<B, 4>, mode: NormMode) -> Tensor<B, 4> {
    normalise(bn, x, mode, Then::AddRelu(skip))
}

/// [`batch_norm`], then `then`.
fn normalise<B: Backend>(bn: &BatchNorm<B>, x: Tensor<B, 4>, mode: NormMode, then: Then<Tensor<B, 4>>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    let device = x.device();
    // [b, c, h, w] -> [b, c, h·w], the skip too
    let x = x.reshape([b, c, h * w]);
    let flat_skip = then.as_ref().map(|skip| skip.clone().reshape([b, c, h * w]));
    let training = !mode.frozen && B::ad_enabled(&device);
    let batch = training || mode.batch_stats;
    if batch {
        // The CPU's own kernel: one graph node instead of Burn's ops below (same maths).
        if let Some((y, (mean, var))) = fedolf_kernels::batch_norm_train(x.clone(), bn.gamma.val(), bn.beta.val(), bn.epsilon, flat_skip.clone()) {
            if training {
                let host = |v: Vec<f32>| Tensor::<B, 1>::from_data(TensorData::new(v, [c]), &device);
                update_running(bn, host(mean), host(var), &device);
            }
            // [b, c, h·w] -> [b, c, h, w]
            return y.reshape([b, c, h, w]);
        }
    }
    let (mean, var) = if !batch {
        // [c] -> [1, c, 1]
        let mean = bn.running_mean.value().to_device(&device).reshape([1, c, 1]);
        let var = bn.running_var.value().to_device(&device).reshape([1, c, 1]);
        (mean, var)
    } else {
        let n = (b * h * w) as f64;
        // [b, c, h·w] -> [b, c, 1] -> [1, c, 1]
        let mean = x.clone().sum_dim(2).sum_dim(0).div_scalar(n);
        let centered = x.clone().sub(per_sample(mean.clone(), b));
        let var = centered.square().sum_dim(2).sum_dim(0).div_scalar(n);
        if training {
            // [1, c, 1] -> [c]
            update_running(bn, mean.clone().detach().reshape([c]), var.clone().detach().reshape([c]), &device);
        }
        (mean, var)
    };
    // γ / sqrt(σ² + ε) and β − μ·scale, per channel: [1, c, 1]
    let scale = bn.gamma.val().reshape([1, c, 1]).div(var.add_scalar(bn.epsilon).sqrt());
    let shift = bn.beta.val().reshape([1, c, 1]).sub(mean.mul(scale.clone()));
    // The CPU's kernel where nothing needs a gradient (the ops below, in one pass).
    if let Some(y) = fedolf_kernels::batch_norm_fixed(x.clone(), scale.clone().reshape([c]), shift.clone().reshape([c]), flat_skip) {
        // [b, c, h·w] -> [b, c, h, w]
        return y.reshape([b, c, h, w]);
    }
    let y = x.mul(per_sample(scale, b)).add(per_sample(shift, b));
    // [b, c, h·w] -> [b, c, h, w]
    let y = y.reshape([b, c, h, w]);
    match then {
        Then::Nothing => y,
        Then::Relu => relu(y),
        Then::AddRelu(skip) => relu(y + skip),
    }
}

/// The running statistics `(1 − m)·old + m·batch`, from this batch's `[c]` mean and variance.
fn update_running<B: Backend>(bn: &BatchNorm<B>, mean: Tensor<B, 1>, var: Tensor<B, 1>, device: &B::Device) {
    let m = bn.momentum;
    let running_mean = bn.running_mean.value_sync().to_device(device);
    let running_var = bn.running_var.value_sync().to_device(device);
    bn.running_mean.update(running_mean.mul_scalar(1.0 - m).add(mean.mul_scalar(m)).detach());
    bn.running_var.update(running_var.mul_scalar(1.0 - m).add(var.mul_scalar(m)).detach());
}

/// A per-channel statistic repeated for every sample: `[1, c, 1] -> [b, c, 1]`, contiguous, so
/// broadcasting it over `[b, c, h·w]` is one scalar per row.
fn per_sample<B: Backend>(stat: Tensor<B, 3>, b: usize) -> Tensor<B, 3> {
    stat.repeat_dim(0, b)
}

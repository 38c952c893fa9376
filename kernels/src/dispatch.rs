//! The one entry the models call: `conv2d` for any `Backend`. It resolves the backend at run
//! time to its [`ConvKernels`] implementation — the CPU backend with or without `Autodiff` —
//! and hands every other backend (CubeCL: cuda, wgpu) to Burn's own `conv2d`, so nothing
//! changes there. The models stay generic over plain `Backend` and the rest of the code does
//! not notice the kernels.

use std::any::{Any, TypeId};

use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::nn::PaddingConfig2d;
use burn::prelude::*;
use burn::tensor::ops::{ConvOptions, FloatTensor};
use burn::tensor::{Slice, TensorPrimitive};

use crate::extension::ConvKernels;
use crate::norm::Then;
use crate::norm_extension::{BatchStatistics, NormKernels};
use crate::pool_extension::PoolKernels;
use crate::skip_extension::SkipKernels;

/// Moves a value to the type it is already known (by `TypeId`) to be.
fn same_type<S: 'static, T: 'static>(value: S) -> T {
    match (Box::new(value) as Box<dyn Any>).downcast::<T>() {
        Ok(value) => *value,
        Err(_) => unreachable!("callers compare TypeIds first"),
    }
}

fn is<B: 'static, K: 'static>() -> bool {
    TypeId::of::<B>() == TypeId::of::<K>()
}

/// The backends with kernels: the CPU's, with autodiff (training) and without (frozen
/// layers, evaluation).
#[cfg(feature = "flex")]
type Training = burn::backend::Autodiff<burn_flex::Flex>;
#[cfg(feature = "flex")]
type Inner = burn_flex::Flex;

/// `B`'s tensor as `K`'s primitive, `B` being `K`.
fn into_kernel<B: Backend, K: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<K> {
    same_type(t.into_primitive().tensor())
}

/// `K`'s primitive as `B`'s tensor, `B` being `K`.
fn from_kernel<K: Backend, B: Backend, const D: usize>(t: FloatTensor<K>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(same_type(t)))
}

/// `B` is `K`: run `K`'s convolution on `B`'s tensors.
fn conv_through<B: Backend, K: ConvKernels>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    options: &ConvOptions<2>,
) -> Tensor<B, 4> {
    let bias = bias.map(into_kernel::<B, K, 1>);
    from_kernel::<K, B, 4>(K::conv2d_forward(into_kernel::<B, K, 4>(x), into_kernel::<B, K, 4>(weight), bias, options))
}

/// `x: [b, c_in, h, w]`, `weight: [c_out, c_in, kh, kw]`, `bias: [c_out]` →
/// `[b, c_out, ho, wo]`, zero padding `options.padding` on both sides of each axis.
pub fn conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    options: ConvOptions<2>,
) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    {
        if is::<B, Training>() {
            return conv_through::<B, Training>(x, weight, bias, &options);
        }
        if is::<B, Inner>() {
            return conv_through::<B, Inner>(x, weight, bias, &options);
        }
    }
    burn::tensor::module::conv2d(x, weight, bias, options)
}

/// `B` is `K`: run `K`'s max pooling on `B`'s tensor.
fn pool_through<B: Backend, K: PoolKernels>(x: Tensor<B, 4>, size: usize, relu: bool) -> Tensor<B, 4> {
    from_kernel::<K, B, 4>(K::max_pool2d_windows(into_kernel::<B, K, 4>(x), size, relu))
}

/// Max pooling over non-overlapping `size×size` windows (stride `size`, no padding, floor):
/// `[b, c, h, w]` → `[b, c, h/size, w/size]`, of `relu(x)` with `relu`. Resolved like
/// [`conv2d`].
fn windows<B: Backend>(x: Tensor<B, 4>, size: usize, relu: bool) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    {
        if is::<B, Training>() {
            return pool_through::<B, Training>(x, size, relu);
        }
        if is::<B, Inner>() {
            return pool_through::<B, Inner>(x, size, relu);
        }
    }
    let x = if relu { burn::tensor::activation::relu(x) } else { x };
    burn::tensor::module::max_pool2d(x, [size; 2], [size; 2], [0, 0], [1, 1], false)
}

/// Max pooling over non-overlapping `size×size` windows (stride `size`, no padding, floor):
/// `[b, c, h, w]` → `[b, c, h/size, w/size]`. Resolved like [`conv2d`].
pub fn max_pool2d<B: Backend>(x: Tensor<B, 4>, size: usize) -> Tensor<B, 4> {
    windows(x, size, false)
}

/// `max_pool2d(relu(x), size)` in one op where the kernels run (the same numbers, without
/// ReLU's passes over the map).
pub fn relu_max_pool2d<B: Backend>(x: Tensor<B, 4>, size: usize) -> Tensor<B, 4> {
    windows(x, size, true)
}

/// `pool.forward(x)` through [`max_pool2d`] where the pool is one (square windows equal to
/// the stride, unpadded, dilation 1, floor); any other pool stays with `MaxPool2d::forward`.
pub fn pool_forward<B: Backend>(pool: &MaxPool2d, x: Tensor<B, 4>) -> Tensor<B, 4> {
    match window_size(pool) {
        Some(size) => max_pool2d(x, size),
        None => pool.forward(x),
    }
}

/// `pool.forward(relu(x))`, through [`relu_max_pool2d`] where the pool is one.
pub fn relu_pool_forward<B: Backend>(pool: &MaxPool2d, x: Tensor<B, 4>) -> Tensor<B, 4> {
    match window_size(pool) {
        Some(size) => relu_max_pool2d(x, size),
        None => pool.forward(burn::tensor::activation::relu(x)),
    }
}

/// The window size of a pool [`max_pool2d`] computes: square windows equal to the stride,
/// unpadded, dilation 1, floor.
fn window_size(pool: &MaxPool2d) -> Option<usize> {
    let [kh, kw] = pool.kernel_size;
    let windows = kh == kw && pool.stride == [kh, kw] && pool.dilation == [1, 1] && !pool.ceil_mode;
    let unpadded = matches!(pool.padding, PaddingConfig2d::Valid | PaddingConfig2d::Explicit(0, 0, 0, 0));
    (windows && unpadded).then_some(kh)
}

/// `B` is `K`: run `K`'s shortcut on `B`'s tensor, `None` where it does not take it.
fn skip_through<B: Backend, K: SkipKernels>(x: Tensor<B, 4>, stride: usize, c_out: usize) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    let primitive = into_kernel::<B, K, 4>(x.clone());
    K::padded_skip(primitive, stride, c_out).map(from_kernel::<K, B, 4>).ok_or(x)
}

/// The ResNets' option-A shortcut: `x: [b, c_in, h, w]` subsampled by `stride` (every
/// `stride`-th row and column from the first), then zero channels appended up to `c_out`
/// (`c_out ≥ c_in`): `[b, c_out, ⌈h/stride⌉, ⌈w/stride⌉]`. Resolved like [`conv2d`]; Burn's
/// stepped slice and concatenation elsewhere.
pub fn padded_skip<B: Backend>(x: Tensor<B, 4>, stride: usize, c_out: usize) -> Tensor<B, 4> {
    if stride == 1 && x.dims()[1] == c_out {
        return x;
    }
    #[cfg(feature = "flex")]
    let x = {
        let through = if is::<B, Training>() {
            skip_through::<B, Training>(x, stride, c_out)
        } else if is::<B, Inner>() {
            skip_through::<B, Inner>(x, stride, c_out)
        } else {
            Err(x)
        };
        match through {
            Ok(y) => return y,
            Err(x) => x,
        }
    };
    let x = if stride > 1 {
        let st = stride as isize;
        x.slice([Slice::from(..), Slice::from(..), Slice::from_range_stepped(.., st), Slice::from_range_stepped(.., st)])
    } else {
        x
    };
    let [b, c_in, h, w] = x.dims();
    if c_in == c_out {
        return x;
    }
    let zeros = Tensor::zeros([b, c_out - c_in, h, w], &x.device());
    Tensor::cat(vec![x, zeros], 1)
}

/// Training-mode BatchNorm through the kernels: `x: [b, c, n]` normalised with its batch
/// statistics, scaled by `gamma` and shifted by `beta` (`[c]`), then `then` (a ReLU, or the
/// skip added and a ReLU), and those statistics. `None`
/// where `B` has no kernels for it (only the CPU backend with autodiff has: without autodiff
/// BatchNorm never uses batch statistics) or they do not take these tensors.
pub fn batch_norm_train<B: Backend>(
    x: Tensor<B, 3>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    epsilon: f64,
    then: Then<Tensor<B, 3>>,
) -> Option<(Tensor<B, 3>, BatchStatistics)> {
    #[cfg(feature = "flex")]
    if is::<B, Training>() {
        let (x, gamma, beta) = (into_kernel::<B, Training, 3>(x), into_kernel::<B, Training, 1>(gamma), into_kernel::<B, Training, 1>(beta));
        let then = then.map(into_kernel::<B, Training, 3>);
        let (y, statistics) = Training::batch_norm_train(x, gamma, beta, epsilon, then)?;
        return Some((from_kernel::<Training, B, 3>(y), statistics));
    }
    let _ = (x, gamma, beta, epsilon, then);
    None
}

/// BatchNorm with fixed statistics through the kernels: `y = x · scale + shift` per channel
/// (`x: [b, c, n]`, `scale`, `shift`: `[c]`), then `then`. Only on the CPU backend without
/// autodiff (frozen layers outside the graph, evaluation), where nothing needs a gradient;
/// `None` elsewhere, and the caller uses Burn's ops.
pub fn batch_norm_fixed<B: Backend>(x: Tensor<B, 3>, scale: Tensor<B, 1>, shift: Tensor<B, 1>, then: Then<Tensor<B, 3>>) -> Option<Tensor<B, 3>> {
    #[cfg(feature = "flex")]
    if is::<B, Inner>() {
        let (x, scale, shift) = (into_kernel::<B, Inner, 3>(x), into_kernel::<B, Inner, 1>(scale), into_kernel::<B, Inner, 1>(shift));
        let y = crate::flex::batch_norm_fixed(x, scale, shift, then.map(into_kernel::<B, Inner, 3>))?;
        return Some(from_kernel::<Inner, B, 3>(y));
    }
    let _ = (x, scale, shift, then);
    None
}

/// Whether [`conv2d`] takes `B`'s convolutions through the project's kernels.
pub fn has_own_kernels<B: Backend>() -> bool {
    #[cfg(feature = "flex")]
    if is::<B, Training>() || is::<B, Inner>() {
        return true;
    }
    false
}

/// `conv.forward(x)` through [`conv2d`]. Padding Burn computes per input (`Same`) or that
/// differs between sides stays with `Conv2d::forward`.
pub fn forward<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let padding = match conv.padding {
        PaddingConfig2d::Valid => [0, 0],
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => [top, left],
        _ => return conv.forward(x),
    };
    let options = ConvOptions::new(conv.stride, padding, conv.dilation, conv.groups);
    conv2d(x, conv.weight.val(), conv.bias.as_ref().map(|b| b.val()), options)
}

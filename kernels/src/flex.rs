//! The kernels on Burn's CPU backend (Flex): convolution, max pooling, training BatchNorm, the
//! option-A shortcut. Calls the kernels
//! cannot take — another dtype, dilation, groups — go to Flex's own ops, so the extension
//! never changes what is computed, only how fast.

use burn::tensor::ops::{ActivationOps, ConvOptions, FloatTensor, ModuleOps};
use burn::tensor::{DType, TensorData, TensorMetadata};
use burn_flex::{Flex, FlexTensor};

use std::sync::Arc;

use crate::cpu::{self, Wanted};
use crate::extension::{ConvGradientKernels, ConvGradients, ConvKernels};
use crate::geometry::ConvGeometry;
use crate::norm::{self, NormShape, Then};
use crate::norm_extension::{BatchStatistics, NormGradientKernels};
use crate::pool::{self, PoolGeometry};
use crate::pool_extension::{PoolArgmax, PoolGradientKernels, PoolKernels};
use crate::skip::{self, SkipShape};
use crate::skip_extension::{SkipGradientKernels, SkipKernels};

/// The geometry when the kernels apply to these tensors: f32, dilation 1, one group.
fn geometry(tensors: &[&FlexTensor], x: &FlexTensor, weight: &FlexTensor, options: &ConvOptions<2>) -> Option<ConvGeometry> {
    if options.dilation != [1, 1] || options.groups != 1 || !tensors.iter().all(|t| t.dtype() == DType::F32) {
        return None;
    }
    let (xs, ws) = (x.shape(), weight.shape());
    if xs.num_dims() != 4 || ws.num_dims() != 4 {
        return None;
    }
    ConvGeometry::new(xs.dims::<4>(), ws.dims::<4>(), options.stride, options.padding)
}

/// The elements of a tensor made contiguous (`to_contiguous` copies only a strided view).
fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a contiguous f32 tensor (checked by `geometry`)")
}

fn tensor(values: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

impl ConvKernels for Flex {
    fn conv2d_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        options: &ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let all: Vec<&FlexTensor> = [Some(&x), Some(&weight), bias.as_ref()].into_iter().flatten().collect();
        let Some(g) = geometry(&all, &x, &weight, options) else {
            return <Flex as ModuleOps<Flex>>::conv2d(x, weight, bias, options.clone());
        };
        let (x, weight, bias) = (x.to_contiguous(), weight.to_contiguous(), bias.map(|b| b.to_contiguous()));
        let y = cpu::forward(&g, values(&x), values(&weight), bias.as_ref().map(values));
        // [b, c_out, ho·wo] -> [b, c_out, ho, wo]
        tensor(y, [g.batch, g.c_out, g.out_height, g.out_width])
    }
}

impl ConvGradientKernels for Flex {
    fn conv2d_gradients(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        options: &ConvOptions<2>,
        wanted: Wanted,
    ) -> ConvGradients<Self> {
        let Some(g) = geometry(&[&x, &weight, &dy], &x, &weight, options) else {
            return fallback_gradients(x, weight, dy, options, wanted);
        };
        let (x, weight, dy) = (x.to_contiguous(), weight.to_contiguous(), dy.to_contiguous());
        let grads = cpu::backward(&g, values(&x), values(&weight), values(&dy), wanted);
        let [kh, kw] = g.kernel;
        ConvGradients {
            input: grads.input.map(|v| tensor(v, [g.batch, g.c_in, g.height, g.width])),
            weight: grads.weight.map(|v| tensor(v, [g.c_out, g.c_in, kh, kw])),
            bias: grads.bias.map(|v| FlexTensor::from_data(TensorData::new(v, [g.c_out]))),
        }
    }
}

/// Flex's own gradients, for the calls the kernels do not take.
fn fallback_gradients(x: FlexTensor, weight: FlexTensor, dy: FlexTensor, options: &ConvOptions<2>, wanted: Wanted) -> ConvGradients<Flex> {
    type Ops = Flex;
    let input = wanted.input.then(|| <Ops as ModuleOps<Flex>>::conv2d_x_backward(x.clone(), weight.clone(), dy.clone(), options.clone()));
    let weight_grad = wanted.weight.then(|| <Ops as ModuleOps<Flex>>::conv2d_weight_backward(x.clone(), weight.clone(), dy.clone(), options.clone()));
    let bias = wanted.bias.then(|| {
        let c_out = weight.shape().dims::<4>()[0];
        // Burn's bias gradient only reads the bias's shape.
        let bias_shape = FlexTensor::zeros([c_out].into(), dy.dtype());
        <Ops as ModuleOps<Flex>>::conv2d_bias_backward(x, bias_shape, dy)
    });
    ConvGradients { input, weight: weight_grad, bias }
}

/// The pool geometry when the kernels take `x`: f32, at least one full window.
fn pool_geometry(x: &FlexTensor, size: usize) -> Option<PoolGeometry> {
    let shape = x.shape();
    if x.dtype() != DType::F32 || shape.num_dims() != 4 {
        return None;
    }
    PoolGeometry::new(shape.dims::<4>(), size)
}

impl PoolKernels for Flex {
    fn max_pool2d_windows(x: FloatTensor<Self>, size: usize, relu: bool) -> FloatTensor<Self> {
        let Some(g) = pool_geometry(&x, size) else {
            let x = if relu { <Flex as ActivationOps<Flex>>::relu(x) } else { x };
            return <Flex as ModuleOps<Flex>>::max_pool2d(x, [size; 2], [size; 2], [0, 0], [1, 1], false);
        };
        let [b, c, ..] = x.shape().dims::<4>();
        let x = x.to_contiguous();
        tensor(pool::forward(&g, values(&x), None, relu), [b, c, g.out_height(), g.out_width()])
    }
}

impl PoolGradientKernels for Flex {
    fn max_pool2d_supported(x: &FloatTensor<Self>, size: usize) -> bool {
        pool_geometry(x, size).is_some()
    }

    fn max_pool2d_with_argmax(x: FloatTensor<Self>, size: usize, relu: bool) -> (FloatTensor<Self>, PoolArgmax) {
        let g = pool_geometry(&x, size).expect("callers check max_pool2d_supported first");
        let input = x.shape().dims::<4>();
        let x = x.to_contiguous();
        let mut index = Vec::new();
        let y = pool::forward(&g, values(&x), Some(&mut index), relu);
        let y = tensor(y, [input[0], input[1], g.out_height(), g.out_width()]);
        (y, PoolArgmax { input, size, index: Arc::new(index) })
    }

    fn max_pool2d_backward(argmax: &PoolArgmax, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        let g = PoolGeometry::new(argmax.input, argmax.size).expect("the forward's geometry");
        let dy = dy.to_contiguous();
        tensor(pool::backward(&g, &argmax.index, values(&dy)), argmax.input)
    }
}

/// `[b, c, n]` when the kernels take these tensors: f32, γ and β of length `c`.
fn norm_shape(x: &FlexTensor, gamma: &FlexTensor, beta: &FlexTensor) -> Option<NormShape> {
    let (xs, gs, bs) = (x.shape(), gamma.shape(), beta.shape());
    let f32s = [x, gamma, beta].iter().all(|t| t.dtype() == DType::F32);
    if !f32s || xs.num_dims() != 3 || gs.num_dims() != 1 || bs.num_dims() != 1 {
        return None;
    }
    let [batch, channels, pixels] = xs.dims::<3>();
    (gs.dims::<1>() == [channels] && bs.dims::<1>() == [channels] && batch * pixels > 0).then_some(NormShape { batch, channels, pixels })
}

/// [`norm_shape`] where `then`'s skip, if any, is an f32 tensor shaped like `x` too.
fn fused_norm_shape(x: &FlexTensor, gamma: &FlexTensor, beta: &FlexTensor, then: Then<&FlexTensor>) -> Option<NormShape> {
    let skip_fits = match then {
        Then::AddRelu(skip) => skip.dtype() == DType::F32 && skip.shape() == x.shape(),
        _ => true,
    };
    norm_shape(x, gamma, beta).filter(|_| skip_fits)
}

fn vector(values: Vec<f32>) -> FlexTensor {
    let n = values.len();
    FlexTensor::from_data(TensorData::new(values, [n]))
}

impl NormGradientKernels for Flex {
    fn batch_norm_supported(x: &FloatTensor<Self>, gamma: &FloatTensor<Self>, beta: &FloatTensor<Self>, then: Then<&FloatTensor<Self>>) -> bool {
        fused_norm_shape(x, gamma, beta, then).is_some()
    }

    fn batch_norm_forward(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, epsilon: f64, then: Then<FloatTensor<Self>>) -> (FloatTensor<Self>, BatchStatistics) {
        let s = norm_shape(&x, &gamma, &beta).expect("callers check batch_norm_supported first");
        let (x, gamma, beta, then) = (x.to_contiguous(), gamma.to_contiguous(), beta.to_contiguous(), then.map(|t| t.to_contiguous()));
        let (mean, var) = norm::statistics(&s, values(&x));
        let y = norm::forward(&s, values(&x), &mean, &var, values(&gamma), values(&beta), epsilon as f32, then.as_ref().map(values));
        (FlexTensor::from_data(TensorData::new(y, [s.batch, s.channels, s.pixels])), (mean, var))
    }

    fn batch_norm_gradients(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        statistics: &BatchStatistics,
        epsilon: f64,
        then: Then<FloatTensor<Self>>,
        wanted: [bool; 4],
    ) -> [Option<FloatTensor<Self>>; 4] {
        let s = norm_shape(&x, &gamma, &beta).expect("the forward's shapes");
        let (x, gamma, beta, dy) = (x.to_contiguous(), gamma.to_contiguous(), beta.to_contiguous(), dy.to_contiguous());
        let then = then.map(|t| t.to_contiguous());
        let (mean, var) = statistics;
        let grads = norm::gradients(&s, values(&x), values(&dy), (mean, var), (values(&gamma), values(&beta)), epsilon as f32, then.as_ref().map(values));
        let map = |v: Vec<f32>| FlexTensor::from_data(TensorData::new(v, [s.batch, s.channels, s.pixels]));
        let [want_x, want_gamma, want_beta, want_skip] = wanted;
        [
            want_x.then(|| map(grads.x)),
            want_gamma.then(|| vector(grads.gamma)),
            want_beta.then(|| vector(grads.beta)),
            grads.skip.filter(|_| want_skip).map(map),
        ]
    }
}

/// BatchNorm with fixed statistics on the backend without autodiff (`norm::scale_shift`):
/// `x: [b, c, n]`, `scale`, `shift`: `[c]`, a skip shaped like `x`. `None` where the kernel
/// does not take these tensors.
pub(crate) fn batch_norm_fixed(x: FlexTensor, scale: FlexTensor, shift: FlexTensor, then: Then<FlexTensor>) -> Option<FlexTensor> {
    let s = fused_norm_shape(&x, &scale, &shift, then.as_ref())?;
    let (x, scale, shift, then) = (x.to_contiguous(), scale.to_contiguous(), shift.to_contiguous(), then.map(|t| t.to_contiguous()));
    let y = norm::scale_shift(&s, values(&x), values(&scale), values(&shift), then.as_ref().map(values));
    Some(FlexTensor::from_data(TensorData::new(y, [s.batch, s.channels, s.pixels])))
}

/// The shortcut's shape when the kernels take `x`: f32, 4-D, `c_out ≥ c_in`.
fn skip_shape(x: &FlexTensor, stride: usize, c_out: usize) -> Option<SkipShape> {
    let shape = x.shape();
    if x.dtype() != DType::F32 || shape.num_dims() != 4 {
        return None;
    }
    SkipShape::new(shape.dims::<4>(), stride, c_out)
}

impl SkipKernels for Flex {
    fn padded_skip(x: FloatTensor<Self>, stride: usize, c_out: usize) -> Option<FloatTensor<Self>> {
        let s = skip_shape(&x, stride, c_out)?;
        let x = x.to_contiguous();
        Some(tensor(skip::forward(&s, values(&x)), s.output()))
    }
}

impl SkipGradientKernels for Flex {
    fn padded_skip_shape(x: &FloatTensor<Self>, stride: usize, c_out: usize) -> Option<SkipShape> {
        skip_shape(x, stride, c_out)
    }

    fn padded_skip_backward(shape: &SkipShape, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        let dy = dy.to_contiguous();
        tensor(skip::backward(shape, values(&dy)), shape.input())
    }
}

//! Max pooling through the kernels against Burn's own (forward on both backends, and the
//! gradient `Autodiff` computes): pooling copies values, so the results must be equal.

use burn::backend::Autodiff;
use burn_flex::Flex;

mod common;
use common::{tensor, values};

type Ad = Autodiff<Flex>;

/// `(y, dx)` of `Σ pool(x) ⊙ r`.
fn run(shape: [usize; 4], size: usize, own: bool) -> (Vec<f32>, Vec<f32>) {
    let [b, c, h, w] = shape;
    let x = tensor::<Ad, 4>(values(b * c * h * w, 1), shape).require_grad();
    let y = if own {
        fedolf_kernels::max_pool2d(x.clone(), size)
    } else {
        burn::tensor::module::max_pool2d(x.clone(), [size; 2], [size; 2], [0, 0], [1, 1], false)
    };
    let r = tensor::<Ad, 4>(values(y.shape().num_elements(), 2), y.dims());
    let grads = (y.clone() * r).sum().backward();
    (y.inner().into_data().to_vec().unwrap(), x.grad(&grads).unwrap().into_data().to_vec().unwrap())
}

const SHAPES: [([usize; 4], usize); 5] = [([2, 3, 8, 8], 2), ([3, 5, 7, 9], 2), ([1, 1, 28, 28], 2), ([4, 2, 9, 6], 3), ([2, 16, 14, 14], 2)];

#[test]
fn pooling_and_its_gradient_equal_burns() {
    for (shape, size) in SHAPES {
        assert_eq!(run(shape, size, true), run(shape, size, false), "{shape:?} size {size}");
    }
}

#[test]
fn the_inner_backends_pooling_equals_burns() {
    for (shape, size) in SHAPES {
        let [b, c, h, w] = shape;
        let x = tensor::<Flex, 4>(values(b * c * h * w, 3), shape);
        let ours: Vec<f32> = fedolf_kernels::max_pool2d(x.clone(), size).into_data().to_vec().unwrap();
        let burns: Vec<f32> = burn::tensor::module::max_pool2d(x, [size; 2], [size; 2], [0, 0], [1, 1], false).into_data().to_vec().unwrap();
        assert_eq!(ours, burns, "{shape:?} size {size}");
    }
}

/// Inputs for the fused ReLU: the usual values with every third one negated to −0.0 or made a
/// NaN now and then, so windows tie at zero, hold −0.0, or hold a NaN that the ReLU zeroes.
fn relu_inputs(n: usize, seed: u64) -> Vec<f32> {
    values(n, seed)
        .into_iter()
        .enumerate()
        .map(|(i, v)| match i % 7 {
            3 => -0.0,
            5 if i % 2 == 0 => f32::NAN,
            _ => v,
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// `(y, dx)` of `Σ pool(relu(x)) ⊙ r`, as bits.
fn run_relu(shape: [usize; 4], size: usize, own: bool) -> (Vec<u32>, Vec<u32>) {
    let [b, c, h, w] = shape;
    let x = tensor::<Ad, 4>(relu_inputs(b * c * h * w, 4), shape).require_grad();
    let y = if own {
        fedolf_kernels::relu_max_pool2d(x.clone(), size)
    } else {
        burn::tensor::module::max_pool2d(burn::tensor::activation::relu(x.clone()), [size; 2], [size; 2], [0, 0], [1, 1], false)
    };
    let r = tensor::<Ad, 4>(values(y.shape().num_elements(), 5), y.dims());
    let grads = (y.clone() * r).sum().backward();
    let y: Vec<f32> = y.inner().into_data().to_vec().unwrap();
    let dx: Vec<f32> = x.grad(&grads).unwrap().into_data().to_vec().unwrap();
    (bits(&y), bits(&dx))
}

#[test]
fn pooling_with_its_relu_and_the_gradient_equal_burns_bit_for_bit() {
    for (shape, size) in SHAPES {
        assert_eq!(run_relu(shape, size, true), run_relu(shape, size, false), "{shape:?} size {size}");
    }
}

#[test]
fn the_inner_backends_pooling_with_its_relu_equals_burns() {
    for (shape, size) in SHAPES {
        let [b, c, h, w] = shape;
        let x = tensor::<Flex, 4>(relu_inputs(b * c * h * w, 6), shape);
        let ours: Vec<f32> = fedolf_kernels::relu_max_pool2d(x.clone(), size).into_data().to_vec().unwrap();
        let relu = burn::tensor::activation::relu(x);
        let burns: Vec<f32> = burn::tensor::module::max_pool2d(relu, [size; 2], [size; 2], [0, 0], [1, 1], false).into_data().to_vec().unwrap();
        assert_eq!(bits(&ours), bits(&burns), "{shape:?} size {size}");
    }
}

//! Max pooling through the kernels against Burn's own (forward on both backends, and the
//! gradient `Autodiff` computes): pooling copies values, so the results must be equal.

use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn_flex::Flex;

type Ad = Autodiff<Flex>;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn tensor<B: Backend>(v: Vec<f32>, shape: [usize; 4]) -> Tensor<B, 4> {
    Tensor::from_data(TensorData::new(v, shape), &Default::default())
}

/// `(y, dx)` of `Σ pool(x) ⊙ r`.
fn run(shape: [usize; 4], size: usize, own: bool) -> (Vec<f32>, Vec<f32>) {
    let [b, c, h, w] = shape;
    let x = tensor::<Ad>(values(b * c * h * w, 1), shape).require_grad();
    let y = if own {
        fedolf_kernels::max_pool2d(x.clone(), size)
    } else {
        burn::tensor::module::max_pool2d(x.clone(), [size; 2], [size; 2], [0, 0], [1, 1], false)
    };
    let r = tensor::<Ad>(values(y.shape().num_elements(), 2), y.dims());
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
        let x = tensor::<Flex>(values(b * c * h * w, 3), shape);
        let ours: Vec<f32> = fedolf_kernels::max_pool2d(x.clone(), size).into_data().to_vec().unwrap();
        let burns: Vec<f32> = burn::tensor::module::max_pool2d(x, [size; 2], [size; 2], [0, 0], [1, 1], false).into_data().to_vec().unwrap();
        assert_eq!(ours, burns, "{shape:?} size {size}");
    }
}

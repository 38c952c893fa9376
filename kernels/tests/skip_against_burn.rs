//! The option-A shortcut through the kernels against the same shortcut in Burn's ops (a
//! stepped slice and a concatenation with zeros): forward on both backends, and the gradient
//! `Autodiff` computes where the shortcut's input also feeds another op (as in a residual
//! block, where Burn adds the two gradients). Only copies, so the results must be equal.

use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::Slice;
use burn_flex::Flex;

mod common;
use common::{tensor, values};

type Ad = Autodiff<Flex>;

fn burns<B: Backend>(x: Tensor<B, 4>, stride: usize, c_out: usize) -> Tensor<B, 4> {
    let st = stride as isize;
    let x = x.slice([Slice::from(..), Slice::from(..), Slice::from_range_stepped(.., st), Slice::from_range_stepped(.., st)]);
    let [b, c_in, h, w] = x.dims();
    if c_in == c_out {
        return x;
    }
    let zeros = Tensor::zeros([b, c_out - c_in, h, w], &x.device());
    Tensor::cat(vec![x, zeros], 1)
}

/// `(y, dx)` of `Σ skip(x) ⊙ r + Σ x ⊙ q`.
fn run(shape: [usize; 4], stride: usize, c_out: usize, own: bool) -> (Vec<f32>, Vec<f32>) {
    let [b, c, h, w] = shape;
    let x = tensor::<Ad, 4>(values(b * c * h * w, 1), shape).require_grad();
    let y = if own { fedolf_kernels::padded_skip(x.clone(), stride, c_out) } else { burns(x.clone(), stride, c_out) };
    let r = tensor::<Ad, 4>(values(y.shape().num_elements(), 2), y.dims());
    let q = tensor::<Ad, 4>(values(b * c * h * w, 3), shape);
    let grads = ((y.clone() * r).sum() + (x.clone() * q).sum()).backward();
    (y.inner().into_data().to_vec().unwrap(), x.grad(&grads).unwrap().into_data().to_vec().unwrap())
}

/// ResNet's two (16 → 32 on 32×32, 32 → 64 on 16×16, batch 3), odd sizes, a stride of 3, a
/// stride-1 pad, and a stride-2 subsample with no pad.
const SHAPES: [([usize; 4], usize, usize); 6] =
    [([3, 16, 32, 32], 2, 32), ([3, 32, 16, 16], 2, 64), ([2, 3, 7, 5], 2, 5), ([2, 4, 9, 8], 3, 6), ([2, 4, 6, 6], 1, 7), ([1, 5, 5, 6], 2, 5)];

#[test]
fn the_shortcut_and_its_gradient_equal_burns() {
    for (shape, stride, c_out) in SHAPES {
        let (ours, theirs) = (run(shape, stride, c_out, true), run(shape, stride, c_out, false));
        assert_eq!(ours.0, theirs.0, "{shape:?} stride {stride} → {c_out}: output");
        assert_eq!(ours.1, theirs.1, "{shape:?} stride {stride} → {c_out}: input gradient");
    }
}

#[test]
fn the_inner_backends_shortcut_equals_burns() {
    for (shape, stride, c_out) in SHAPES {
        let [b, c, h, w] = shape;
        let x = tensor::<Flex, 4>(values(b * c * h * w, 4), shape);
        let ours: Vec<f32> = fedolf_kernels::padded_skip(x.clone(), stride, c_out).into_data().to_vec().unwrap();
        let theirs: Vec<f32> = burns(x, stride, c_out).into_data().to_vec().unwrap();
        assert_eq!(ours, theirs, "{shape:?} stride {stride} → {c_out}");
    }
}

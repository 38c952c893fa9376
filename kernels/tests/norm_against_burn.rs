//! Training-mode BatchNorm through the kernel against the same formula in Burn's tensor ops
//! (forward, batch statistics, and the gradients Burn's autodiff derives for x, γ and β), and
//! bit-identical results for any number of threads.

use burn::backend::Autodiff;
use burn::prelude::*;
use burn_flex::Flex;

mod common;
use common::{tensor, values};

type Ad = Autodiff<Flex>;
const EPSILON: f64 = 1e-5;

/// [`values`] scaled and shifted.
fn spread(n: usize, seed: u64, scale: f32, offset: f32) -> Vec<f32> {
    values(n, seed).into_iter().map(|v| v * scale + offset).collect()
}

/// y, dx, dγ, dβ, mean, var of `Σ bn(x) ⊙ r`.
fn run(shape: [usize; 3], own: bool) -> [Vec<f32>; 6] {
    let [b, c, n] = shape;
    // Not centred at 0 and not unit scale, so the statistics matter.
    let x = tensor::<Ad, 3>(spread(b * c * n, 1, 3.0, 0.7), shape).require_grad();
    let gamma = tensor::<Ad, 1>(spread(c, 2, 0.5, 1.0), [c]).require_grad();
    let beta = tensor::<Ad, 1>(spread(c, 3, 0.5, 0.0), [c]).require_grad();
    let r = tensor::<Ad, 3>(spread(b * c * n, 4, 1.0, 0.0), shape);
    let (y, mean, var) = if own {
        let (y, (mean, var)) = fedolf_kernels::batch_norm_train(x.clone(), gamma.clone(), beta.clone(), EPSILON).expect("the CPU backend has the kernel");
        (y, mean, var)
    } else {
        let m = (b * n) as f64;
        // [b, c, n] -> [1, c, 1]
        let mean = x.clone().sum_dim(2).sum_dim(0).div_scalar(m);
        let centred = x.clone().sub(mean.clone());
        let var = centred.clone().square().sum_dim(2).sum_dim(0).div_scalar(m);
        let y = centred.div(var.clone().add_scalar(EPSILON).sqrt()).mul(gamma.clone().reshape([1, c, 1])).add(beta.clone().reshape([1, c, 1]));
        let host = |t: Tensor<Ad, 3>| t.into_data().to_vec::<f32>().unwrap();
        (y, host(mean), host(var))
    };
    let grads = (y.clone() * r).sum().backward();
    let read = |t: Tensor<Flex, 1>| t.into_data().to_vec::<f32>().unwrap();
    [
        y.inner().into_data().to_vec().unwrap(),
        x.grad(&grads).unwrap().into_data().to_vec().unwrap(),
        read(gamma.grad(&grads).unwrap()),
        read(beta.grad(&grads).unwrap()),
        mean,
        var,
    ]
}

const SHAPES: [[usize; 3]; 4] = [[2, 3, 17], [8, 16, 64], [5, 4, 1], [16, 2, 1024]];

#[test]
fn batch_norm_and_its_gradients_match_burns_formula() {
    let names = ["y", "dx", "dgamma", "dbeta", "mean", "var"];
    for shape in SHAPES {
        let (ours, reference) = (run(shape, true), run(shape, false));
        for ((name, a), b) in names.iter().zip(&ours).zip(&reference) {
            assert_eq!(a.len(), b.len(), "{name} {shape:?}");
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(worst <= 1e-4 * scale, "{name} {shape:?}: max |diff| {worst} against scale {scale}");
        }
    }
}

#[test]
fn batch_norm_is_bit_identical_for_any_thread_count() {
    let bits = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| run([9, 16, 100], true)).concat().iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
    };
    let one = bits(1);
    for threads in [2, 3, 8] {
        assert!(one == bits(threads), "{threads} threads differ from one");
    }
}

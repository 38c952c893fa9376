//! Training-mode BatchNorm through the kernel against the same formula in Burn's tensor ops
//! (forward, batch statistics, and the gradients Burn's autodiff derives for x, γ and β), with
//! and without the ReLU fused in, and bit-identical results for any number of threads.

use burn::backend::Autodiff;
use burn::prelude::*;
use burn_flex::Flex;
use fedolf_kernels::Then;

mod common;
use common::{tensor, values};

type Ad = Autodiff<Flex>;
const EPSILON: f64 = 1e-5;

/// [`values`] scaled and shifted.
fn spread(n: usize, seed: u64, scale: f32, offset: f32) -> Vec<f32> {
    values(n, seed).into_iter().map(|v| v * scale + offset).collect()
}

/// How `y` is computed from `x`.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    /// Burn's tensor ops.
    Burn,
    /// The kernel, then Burn's ReLU when `relu`.
    Kernel { relu: bool },
    /// The kernel with the ReLU fused in.
    Fused,
}

/// y, dx, dγ, dβ, mean, var of `Σ bn(x) ⊙ r` (of `Σ relu(bn(x)) ⊙ r` with a ReLU).
fn run(shape: [usize; 3], path: Path) -> [Vec<f32>; 6] {
    let [b, c, n] = shape;
    let (x, gamma, beta) = inputs(shape);
    let (y, mean, var) = if path != Path::Burn {
        let fused = path == Path::Fused;
        let then = if fused { Then::Relu } else { Then::Nothing };
        let (y, (mean, var)) = fedolf_kernels::batch_norm_train(x.clone(), gamma.clone(), beta.clone(), EPSILON, then).expect("the CPU backend has the kernel");
        let y = if path == (Path::Kernel { relu: true }) { burn::tensor::activation::relu(y) } else { y };
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
    let ([y, dx, dgamma, dbeta], _) = outputs(y, &x, &gamma, &beta);
    [y, dx, dgamma, dbeta, mean, var]
}

/// `x`, γ and β, tracked. Not centred at 0 and not unit scale, so the statistics matter.
fn inputs([b, c, n]: [usize; 3]) -> (Tensor<Ad, 3>, Tensor<Ad, 1>, Tensor<Ad, 1>) {
    (
        tensor::<Ad, 3>(spread(b * c * n, 1, 3.0, 0.7), [b, c, n]).require_grad(),
        tensor::<Ad, 1>(spread(c, 2, 0.5, 1.0), [c]).require_grad(),
        tensor::<Ad, 1>(spread(c, 3, 0.5, 0.0), [c]).require_grad(),
    )
}

/// y, dx, dγ, dβ of `Σ y ⊙ r` (fixed weights `r`), and the gradients for further reads.
fn outputs(y: Tensor<Ad, 3>, x: &Tensor<Ad, 3>, gamma: &Tensor<Ad, 1>, beta: &Tensor<Ad, 1>) -> ([Vec<f32>; 4], <Ad as burn::tensor::backend::AutodiffBackend>::Gradients) {
    let [b, c, n] = y.dims();
    let r = tensor::<Ad, 3>(spread(b * c * n, 4, 1.0, 0.0), [b, c, n]);
    let grads = (y.clone() * r).sum().backward();
    let read = |t: Tensor<Flex, 1>| t.into_data().to_vec::<f32>().unwrap();
    let values = [
        y.inner().into_data().to_vec().unwrap(),
        x.grad(&grads).unwrap().into_data().to_vec().unwrap(),
        read(gamma.grad(&grads).unwrap()),
        read(beta.grad(&grads).unwrap()),
    ];
    (values, grads)
}

const SHAPES: [[usize; 3]; 4] = [[2, 3, 17], [8, 16, 64], [5, 4, 1], [16, 2, 1024]];

#[test]
fn batch_norm_and_its_gradients_match_burns_formula() {
    let names = ["y", "dx", "dgamma", "dbeta", "mean", "var"];
    for shape in SHAPES {
        let (ours, reference) = (run(shape, Path::Kernel { relu: false }), run(shape, Path::Burn));
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
        pool.install(|| [run([9, 16, 100], Path::Kernel { relu: false }), run([9, 16, 100], Path::Fused)]).concat().concat().iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
    };
    let one = bits(1);
    for threads in [2, 3, 8] {
        assert!(one == bits(threads), "{threads} threads differ from one");
    }
}

/// The fused ReLU is ReLU's own forward and backward step, bit for bit: the same outputs and
/// the same gradients for x, γ and β, on shapes with and without a row tail, with β shifted so
/// that some channels are mostly cut off and others mostly pass.
#[test]
fn the_fused_relu_is_relus_own_step_bit_for_bit() {
    let names = ["y", "dx", "dgamma", "dbeta", "mean", "var"];
    for shape in SHAPES.into_iter().chain([[3, 5, 49], [4, 32, 16]]) {
        let (fused, apart) = (run(shape, Path::Fused), run(shape, Path::Kernel { relu: true }));
        for ((name, a), b) in names.iter().zip(&fused).zip(&apart) {
            let differ = a.iter().zip(b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
            assert_eq!(differ, 0, "{name} {shape:?}: {differ} of {} values differ", a.len());
        }
        let cut = fused[0].iter().filter(|v| **v == 0.0).count();
        assert!(cut > 0 && cut < fused[0].len(), "{shape:?}: the ReLU cut {cut} of {} outputs", fused[0].len());
    }
}

/// y, dx, dγ, dβ, d skip of `Σ relu(bn(x) + skip) ⊙ r`, the skip added in the kernel or after it.
fn run_add(shape: [usize; 3], fused: bool) -> [Vec<f32>; 5] {
    let [b, c, n] = shape;
    let (x, gamma, beta) = inputs(shape);
    let skip = tensor::<Ad, 3>(spread(b * c * n, 5, 1.5, 0.0), shape).require_grad();
    let y = if fused {
        fedolf_kernels::batch_norm_train(x.clone(), gamma.clone(), beta.clone(), EPSILON, Then::AddRelu(skip.clone())).expect("the CPU backend has the kernel").0
    } else {
        let y = fedolf_kernels::batch_norm_train(x.clone(), gamma.clone(), beta.clone(), EPSILON, Then::Nothing).expect("the CPU backend has the kernel").0;
        burn::tensor::activation::relu(y + skip.clone())
    };
    let ([y, dx, dgamma, dbeta], grads) = outputs(y, &x, &gamma, &beta);
    [y, dx, dgamma, dbeta, skip.grad(&grads).unwrap().into_data().to_vec().unwrap()]
}

/// A residual block's end fused (`relu(bn(x) + skip)` in one kernel) is the three steps apart,
/// bit for bit, the skip's gradient included.
#[test]
fn the_fused_residual_end_is_the_three_steps_bit_for_bit() {
    let names = ["y", "dx", "dgamma", "dbeta", "dskip"];
    for shape in SHAPES.into_iter().chain([[3, 5, 49]]) {
        let (fused, apart) = (run_add(shape, true), run_add(shape, false));
        for ((name, a), b) in names.iter().zip(&fused).zip(&apart) {
            assert_eq!(a.len(), b.len(), "{name} {shape:?}");
            let differ = a.iter().zip(b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
            assert_eq!(differ, 0, "{name} {shape:?}: {differ} of {} values differ", a.len());
        }
        let cut = fused[0].iter().filter(|v| **v == 0.0).count();
        assert!(cut > 0 && cut < fused[0].len(), "{shape:?}: the ReLU cut {cut} of {} outputs", fused[0].len());
    }
}

/// BatchNorm with fixed statistics (frozen layers outside the graph, evaluation) is Burn's
/// `x · scale + shift` and the ReLU or residual add after it, bit for bit; the backend with
/// autodiff is left to Burn's ops.
#[test]
fn fixed_statistics_are_burns_scale_and_shift_bit_for_bit() {
    for [b, c, n] in SHAPES.into_iter().chain([[3, 5, 49]]) {
        let x = tensor::<Flex, 3>(spread(b * c * n, 1, 3.0, 0.7), [b, c, n]);
        let scale = tensor::<Flex, 1>(spread(c, 2, 0.5, 1.0), [c]);
        let shift = tensor::<Flex, 1>(spread(c, 3, 0.5, 0.0), [c]);
        let skip = tensor::<Flex, 3>(spread(b * c * n, 5, 1.5, 0.0), [b, c, n]);
        let affine = x.clone().mul(scale.clone().reshape([1, c, 1])).add(shift.clone().reshape([1, c, 1]));
        let cases = [
            (Then::Nothing, affine.clone()),
            (Then::Relu, burn::tensor::activation::relu(affine.clone())),
            (Then::AddRelu(skip.clone()), burn::tensor::activation::relu(affine + skip.clone())),
        ];
        for (then, want) in cases {
            let label = format!("{:?} {:?}", then.as_ref().map(|_| "skip"), [b, c, n]);
            let got = fedolf_kernels::batch_norm_fixed(x.clone(), scale.clone(), shift.clone(), then).expect("the CPU backend has the kernel");
            let bits = |t: Tensor<Flex, 3>| t.into_data().to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
            assert!(bits(got) == bits(want), "{label}");
        }
    }
    let x = tensor::<Ad, 3>(values(24, 1), [2, 3, 4]);
    let (scale, shift) = (tensor::<Ad, 1>(values(3, 2), [3]), tensor::<Ad, 1>(values(3, 3), [3]));
    assert!(fedolf_kernels::batch_norm_fixed(x, scale, shift, Then::Relu).is_none(), "autodiff keeps Burn's ops");
}

//! The kernels against Burn's own convolution (forward, and the input, weight and bias
//! gradients its `Autodiff` computes), a finite-difference check, and bit-identical results
//! for any number of threads.

use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::ops::ConvOptions;
use burn_flex::Flex;

mod common;
use common::{tensor, values};

type Ad = Autodiff<Flex>;

#[derive(Debug, Clone, Copy)]
struct Case {
    batch: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    bias: bool,
}

impl Case {
    fn out(&self) -> [usize; 2] {
        [(self.h + 2 * self.pad - self.k) / self.stride + 1, (self.w + 2 * self.pad - self.k) / self.stride + 1]
    }
    fn options(&self) -> ConvOptions<2> {
        ConvOptions::new([self.stride; 2], [self.pad; 2], [1, 1], 1)
    }
}

struct Outputs {
    y: Vec<f32>,
    dx: Vec<f32>,
    dw: Vec<f32>,
    db: Option<Vec<f32>>,
}

/// Forward, then backward of `Σ y ⊙ r`, through `conv` on `Autodiff<Flex>`.
fn run(case: Case, own: bool) -> Outputs {
    let [ho, wo] = case.out();
    let x = tensor::<Ad, 4>(values(case.batch * case.c_in * case.h * case.w, 1), [case.batch, case.c_in, case.h, case.w]).require_grad();
    let w = tensor::<Ad, 4>(values(case.c_out * case.c_in * case.k * case.k, 2), [case.c_out, case.c_in, case.k, case.k]).require_grad();
    let b = case.bias.then(|| tensor::<Ad, 1>(values(case.c_out, 3), [case.c_out]).require_grad());
    let r = tensor::<Ad, 4>(values(case.batch * case.c_out * ho * wo, 4), [case.batch, case.c_out, ho, wo]);
    let y = if own {
        fedolf_kernels::conv2d(x.clone(), w.clone(), b.clone(), case.options())
    } else {
        burn::tensor::module::conv2d(x.clone(), w.clone(), b.clone(), case.options())
    };
    let grads = (y.clone() * r).sum().backward();
    let read = |t: Tensor<Flex, 4>| t.into_data().to_vec::<f32>().unwrap();
    Outputs {
        y: read(y.inner()),
        dx: read(x.grad(&grads).unwrap()),
        dw: read(w.grad(&grads).unwrap()),
        db: b.map(|b| b.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap()),
    }
}

/// `max |a − b| ≤ 1e-4 · max |b|`: relative to the reference's scale, since single
/// elements near zero carry no relative precision.
fn assert_close(what: &str, case: Case, ours: &[f32], reference: &[f32]) {
    assert_eq!(ours.len(), reference.len(), "{what} length, {case:?}");
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    let worst = ours.iter().zip(reference).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= 1e-4 * scale, "{what}: max |diff| {worst} against scale {scale}, {case:?}");
}

fn cases() -> Vec<Case> {
    let c = |batch, c_in, c_out, h, w, k, stride, pad, bias| Case { batch, c_in, c_out, h, w, k, stride, pad, bias };
    vec![
        c(1, 1, 3, 7, 7, 3, 1, 1, true),
        c(3, 3, 16, 9, 11, 3, 1, 1, false),
        c(5, 16, 16, 8, 8, 3, 2, 1, false),
        c(2, 3, 64, 12, 10, 5, 1, 2, true),
        c(3, 16, 64, 9, 7, 5, 2, 2, true),
        c(4, 64, 16, 6, 6, 1, 1, 0, false),
        c(3, 16, 64, 8, 8, 1, 2, 0, false),
        c(7, 1, 16, 28, 28, 5, 1, 0, true),
        c(2, 64, 64, 5, 9, 3, 1, 0, true),
        c(1, 3, 16, 4, 6, 3, 2, 2, true),
        c(9, 16, 16, 16, 16, 3, 1, 1, false),
        // Several tiles of output rows per sample (fedolf_kernels::cpu's `tiles`).
        c(2, 64, 16, 20, 20, 3, 1, 1, true),
        c(2, 32, 8, 40, 24, 5, 2, 2, false),
        // A weight gradient in two blocks of input channels (80 and 81: `dWᵀ` is 815 KiB).
        c(3, 161, 144, 5, 6, 3, 1, 1, true),
        // Winograd's F(2×2, 3×3) (`winograd.rs`: 3×3, stride 1, padding 1, wide layers): an odd
        // map (its last tiles cut) and an even one.
        c(2, 64, 192, 9, 7, 3, 1, 1, true),
        c(3, 128, 128, 8, 8, 3, 1, 1, false),
    ]
}

#[test]
fn the_cpu_backend_has_the_kernels() {
    // Without this every comparison below would compare Burn with itself.
    assert!(fedolf_kernels::has_own_kernels::<Ad>() && fedolf_kernels::has_own_kernels::<Flex>());
}

#[test]
fn forward_and_gradients_match_burns_reference() {
    for case in cases() {
        let (ours, reference) = (run(case, true), run(case, false));
        assert_close("forward", case, &ours.y, &reference.y);
        assert_close("input gradient", case, &ours.dx, &reference.dx);
        assert_close("weight gradient", case, &ours.dw, &reference.dw);
        if let (Some(a), Some(b)) = (&ours.db, &reference.db) {
            assert_close("bias gradient", case, a, b);
        }
    }
}

#[test]
fn the_column_matrix_path_matches_burns_reference_on_every_shape() {
    // What a CPU without AVX-512 runs for every convolution; on this one the direct kernels
    // take most shapes above, so the column path is checked on its own.
    use fedolf_kernels::{cpu, ConvGeometry};
    for case in cases() {
        let reference = run(case, false);
        let g = ConvGeometry::new([case.batch, case.c_in, case.h, case.w], [case.c_out, case.c_in, case.k, case.k], [case.stride; 2], [case.pad; 2]).unwrap();
        let [ho, wo] = case.out();
        let x = values(case.batch * case.c_in * case.h * case.w, 1);
        let w = values(case.c_out * case.c_in * case.k * case.k, 2);
        let b = case.bias.then(|| values(case.c_out, 3));
        // `run` backpropagates `Σ y ⊙ r`: dy is r.
        let dy = values(case.batch * case.c_out * ho * wo, 4);
        assert_close("column forward", case, &cpu::column_forward(&g, &x, &w, b.as_deref()), &reference.y);
        assert_close("column input gradient", case, &cpu::column_input_grad(&g, &w, &dy), &reference.dx);
        assert_close("column weight gradient", case, &cpu::column_weight_grad(&g, &x, &dy), &reference.dw);
    }
}

#[test]
fn the_frozen_forward_on_the_inner_backend_matches_burns() {
    for case in cases() {
        let x = tensor::<Flex, 4>(values(case.batch * case.c_in * case.h * case.w, 5), [case.batch, case.c_in, case.h, case.w]);
        let w = tensor::<Flex, 4>(values(case.c_out * case.c_in * case.k * case.k, 6), [case.c_out, case.c_in, case.k, case.k]);
        let b = case.bias.then(|| tensor::<Flex, 1>(values(case.c_out, 7), [case.c_out]));
        let ours = fedolf_kernels::conv2d(x.clone(), w.clone(), b.clone(), case.options());
        let reference = burn::tensor::module::conv2d(x, w, b, case.options());
        let read = |t: Tensor<Flex, 4>| t.into_data().to_vec::<f32>().unwrap();
        assert_close("inner forward", case, &read(ours), &read(reference));
    }
}

#[test]
fn gradients_match_finite_differences() {
    // L = Σ conv(x, w) ⊙ r is linear in x and in w, so a central difference is exact up to
    // rounding: a tight check of the kernels' own gradients, independent of Burn's.
    let case = Case { batch: 2, c_in: 3, c_out: 4, h: 6, w: 5, k: 3, stride: 2, pad: 1, bias: true };
    let [ho, wo] = case.out();
    let (xv, wv, bv, rv) = (
        values(case.batch * case.c_in * case.h * case.w, 1),
        values(case.c_out * case.c_in * 9, 2),
        values(case.c_out, 3),
        values(case.batch * case.c_out * ho * wo, 4),
    );
    let loss = |xv: &[f32], wv: &[f32], bv: &[f32]| -> f64 {
        let y = fedolf_kernels::conv2d(
            tensor::<Flex, 4>(xv.to_vec(), [case.batch, case.c_in, case.h, case.w]),
            tensor::<Flex, 4>(wv.to_vec(), [case.c_out, case.c_in, 3, 3]),
            Some(tensor::<Flex, 1>(bv.to_vec(), [case.c_out])),
            case.options(),
        );
        y.into_data().to_vec::<f32>().unwrap().iter().zip(&rv).map(|(a, b)| (*a as f64) * (*b as f64)).sum()
    };
    let analytic = run(case, true);
    let h = 0.25f32;
    let central = |param: usize, i: usize| {
        let (mut up, mut down) = ([xv.clone(), wv.clone(), bv.clone()], [xv.clone(), wv.clone(), bv.clone()]);
        up[param][i] += h;
        down[param][i] -= h;
        (loss(&up[0], &up[1], &up[2]) - loss(&down[0], &down[1], &down[2])) / (2.0 * h as f64)
    };
    for (param, grad) in [(0, &analytic.dx), (1, &analytic.dw), (2, analytic.db.as_ref().unwrap())] {
        for i in (0..grad.len()).step_by(7) {
            let fd = central(param, i);
            assert!((fd - grad[i] as f64).abs() <= 1e-4 * (1.0 + fd.abs()), "param {param} element {i}: analytic {} vs finite difference {fd}", grad[i]);
        }
    }
}

#[test]
fn results_are_bit_identical_for_any_thread_count() {
    // Several tiles per sample and an odd batch: 19 samples over 8 weight-gradient chunks; on
    // AVX-512 the first case runs the channel-blocked kernels (`direct`), the second the row
    // kernel (`rows`, forward and stride-1 input gradient), the third the direct kernels at
    // stride 2 with the input gradient through GEMM and `col2im`, the fourth Winograd's
    // (several samples a chunk).
    for case in [
        Case { batch: 19, c_in: 64, c_out: 32, h: 20, w: 20, k: 3, stride: 1, pad: 1, bias: true },
        Case { batch: 19, c_in: 16, c_out: 16, h: 21, w: 20, k: 3, stride: 1, pad: 1, bias: true },
        Case { batch: 19, c_in: 32, c_out: 64, h: 17, w: 16, k: 3, stride: 2, pad: 1, bias: true },
        Case { batch: 19, c_in: 64, c_out: 192, h: 9, w: 10, k: 3, stride: 1, pad: 1, bias: true },
    ] {
        let bits = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let out = pool.install(|| run(case, true));
            let all: Vec<u32> = [out.y, out.dx, out.dw, out.db.unwrap()].concat().iter().map(|v| v.to_bits()).collect();
            all
        };
        let one = bits(1);
        for threads in [2, 3, 8] {
            assert!(one == bits(threads), "{case:?}: {threads} threads differ from one");
        }
    }
}

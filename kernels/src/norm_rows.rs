//! BatchNorm's work on one row (one sample's pixels of one channel), optionally fused with the
//! ReLU that follows it: the row sums of the statistics and of the gradients, the normalised
//! output, the input gradient. Each has a portable form and an AVX-512 one chosen at run
//! time; both do the same operations in the same order per element (no fused multiply-add)
//! and sum in [`lanes`](crate::lanes)' fixed order, so they agree bit for bit.
//!
//! ReLU fused: `y = max(0, x·scale + shift)` (0 where that is not > 0, NaN included), and the
//! gradient arriving at BatchNorm is `dy` where that was > 0, else 0 — recomputed from `x`
//! in the backward pass, so the graph keeps no mask and no second map. A residual block's
//! second BatchNorm also adds the skip before its ReLU: `y = max(0, (x·scale + shift) + skip)`,
//! whose gate ([`gate`]) is the gradient of the skip and the one BatchNorm receives.

use std::mem::MaybeUninit;

use crate::lanes::{fold, tail, LANES};

/// `y = x · scale + shift`, per channel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Affine {
    pub scale: f32,
    pub shift: f32,
}

impl Affine {
    /// The output at `x`, through the ReLU when `relu`.
    fn at(self, x: f32, relu: bool) -> f32 {
        let y = x * self.scale + self.shift;
        if !relu || y > 0.0 {
            y
        } else {
            0.0
        }
    }

    /// `dy` gated by the ReLU at `x` (`dy` itself without one).
    fn gate(self, x: f32, dy: f32, relu: bool) -> f32 {
        if !relu || x * self.scale + self.shift > 0.0 {
            dy
        } else {
            0.0
        }
    }
}

/// The input gradient's per-channel terms: `dx = k · (d − mean_dy − (x − mean) · inv_std · mean_dgamma)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InputGradient {
    pub k: f32,
    pub mean: f32,
    pub inv_std: f32,
    pub mean_dy: f32,
    pub mean_dgamma: f32,
}

impl InputGradient {
    fn at(self, d: f32, x: f32) -> f32 {
        let x_hat = (x - self.mean) * self.inv_std;
        self.k * (d - self.mean_dy - x_hat * self.mean_dgamma)
    }
}

fn wide() -> bool {
    crate::direct::available()
}

/// `Σ (v − mean)²` over the row, in the fixed lane order.
pub(crate) fn centred_squares(row: &[f32], mean: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if wide() {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { avx512::centred_squares(row, mean) };
    }
    portable::centred_squares(row, mean)
}

/// `(Σ d, Σ d · (x − mean))` over the row, `d` being `dy` gated by the ReLU at `x` when `relu`.
pub(crate) fn gradient_sums(dy: &[f32], x: &[f32], mean: f32, affine: Affine, relu: bool) -> (f32, f32) {
    assert_eq!(dy.len(), x.len(), "batch-norm gradient row lengths");
    #[cfg(target_arch = "x86_64")]
    if wide() {
        // SAFETY: the CPU has AVX-512F; the rows have equal lengths.
        return unsafe { avx512::gradient_sums(dy, x, mean, affine, relu) };
    }
    portable::gradient_sums(dy, x, mean, affine, relu)
}

/// Writes every `y = affine(x)` of the row (through the ReLU when `relu`).
pub(crate) fn normalise(y: &mut [MaybeUninit<f32>], x: &[f32], affine: Affine, relu: bool) {
    assert_eq!(y.len(), x.len(), "batch-norm row lengths");
    #[cfg(target_arch = "x86_64")]
    if wide() {
        // SAFETY: the CPU has AVX-512F; the rows have equal lengths.
        return unsafe { avx512::normalise(y, x, affine, relu) };
    }
    portable::normalise(y, x, affine, relu)
}

/// Writes every `y = max(0, affine(x) + skip)` of the row.
pub(crate) fn normalise_add_relu(y: &mut [MaybeUninit<f32>], x: &[f32], skip: &[f32], affine: Affine) {
    assert!(y.len() == x.len() && skip.len() == x.len(), "batch-norm row lengths");
    #[cfg(target_arch = "x86_64")]
    if wide() {
        // SAFETY: the CPU has AVX-512F; the rows have equal lengths.
        return unsafe { avx512::normalise_add_relu(y, x, skip, affine) };
    }
    portable::normalise_add_relu(y, x, skip, affine)
}

/// Writes `dy` where `affine(x) + skip > 0`, else 0: the gradient of `max(0, affine(x) + skip)`
/// with respect to the skip and to the BatchNorm's output alike.
pub(crate) fn gate(out: &mut [MaybeUninit<f32>], dy: &[f32], x: &[f32], skip: &[f32], affine: Affine) {
    assert!(out.len() == x.len() && dy.len() == x.len() && skip.len() == x.len(), "batch-norm gradient row lengths");
    #[cfg(target_arch = "x86_64")]
    if wide() {
        // SAFETY: the CPU has AVX-512F; the rows have equal lengths.
        return unsafe { avx512::gate(out, dy, x, skip, affine) };
    }
    portable::gate(out, dy, x, skip, affine)
}

/// Writes every `dx` of the row.
pub(crate) fn input_gradient(dx: &mut [MaybeUninit<f32>], dy: &[f32], x: &[f32], affine: Affine, relu: bool, terms: InputGradient) {
    assert!(dx.len() == x.len() && dy.len() == x.len(), "batch-norm gradient row lengths");
    #[cfg(target_arch = "x86_64")]
    if wide() {
        // SAFETY: the CPU has AVX-512F; the rows have equal lengths.
        return unsafe { avx512::input_gradient(dx, dy, x, affine, relu, terms) };
    }
    portable::input_gradient(dx, dy, x, affine, relu, terms)
}

/// [`gradient_sums`] over the elements after the last whole vector, each sum in order.
fn tail_gradient_sums(dy: &[f32], x: &[f32], mean: f32, affine: Affine, relu: bool) -> (f32, f32) {
    let gated = || tail(dy).iter().zip(tail(x)).map(|(&d, &v)| (affine.gate(v, d, relu), v));
    (gated().map(|(d, _)| d).sum::<f32>(), gated().map(|(d, v)| d * (v - mean)).sum::<f32>())
}

pub(crate) mod portable {
    use super::*;

    pub(crate) fn centred_squares(row: &[f32], mean: f32) -> f32 {
        let mut lanes = [0.0f32; LANES];
        for chunk in row.chunks_exact(LANES) {
            for (lane, v) in lanes.iter_mut().zip(chunk) {
                *lane += (v - mean) * (v - mean);
            }
        }
        fold(lanes) + tail(row).iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()
    }

    pub(crate) fn gradient_sums(dy: &[f32], x: &[f32], mean: f32, affine: Affine, relu: bool) -> (f32, f32) {
        let (mut sums, mut dots) = ([0.0f32; LANES], [0.0f32; LANES]);
        for (dc, xc) in dy.chunks_exact(LANES).zip(x.chunks_exact(LANES)) {
            for i in 0..LANES {
                let d = affine.gate(xc[i], dc[i], relu);
                sums[i] += d;
                dots[i] += d * (xc[i] - mean);
            }
        }
        let (sum, dot) = tail_gradient_sums(dy, x, mean, affine, relu);
        (fold(sums) + sum, fold(dots) + dot)
    }

    pub(crate) fn normalise(y: &mut [MaybeUninit<f32>], x: &[f32], affine: Affine, relu: bool) {
        for (y, &x) in y.iter_mut().zip(x) {
            y.write(affine.at(x, relu));
        }
    }

    pub(crate) fn input_gradient(dx: &mut [MaybeUninit<f32>], dy: &[f32], x: &[f32], affine: Affine, relu: bool, terms: InputGradient) {
        for ((dx, &d), &x) in dx.iter_mut().zip(dy).zip(x) {
            dx.write(terms.at(affine.gate(x, d, relu), x));
        }
    }

    /// `affine(x) + skip`, the residual sum before its ReLU.
    fn sum(affine: Affine, x: f32, skip: f32) -> f32 {
        affine.at(x, false) + skip
    }

    pub(crate) fn normalise_add_relu(y: &mut [MaybeUninit<f32>], x: &[f32], skip: &[f32], affine: Affine) {
        for ((y, &x), &s) in y.iter_mut().zip(x).zip(skip) {
            let v = sum(affine, x, s);
            y.write(if v > 0.0 { v } else { 0.0 });
        }
    }

    pub(crate) fn gate(out: &mut [MaybeUninit<f32>], dy: &[f32], x: &[f32], skip: &[f32], affine: Affine) {
        for (((out, &d), &x), &s) in out.iter_mut().zip(dy).zip(x).zip(skip) {
            out.write(if sum(affine, x, s) > 0.0 { d } else { 0.0 });
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    use super::*;
    use crate::lanes::avx512::lanes;

    /// Whole vectors in a row of `len`.
    fn vectors(len: usize) -> usize {
        len / LANES
    }

    /// `y · scale + shift`, and the lanes where that is > 0 (ordered: false for NaN).
    #[target_feature(enable = "avx512f")]
    fn affine_and_mask(x: __m512, affine: Affine) -> (__m512, __mmask16) {
        let y = _mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(affine.scale)), _mm512_set1_ps(affine.shift));
        (y, _mm512_cmp_ps_mask::<_CMP_GT_OQ>(y, _mm512_setzero_ps()))
    }

    #[target_feature(enable = "avx512f")]
    pub(crate) fn centred_squares(row: &[f32], mean: f32) -> f32 {
        let (m, mut acc) = (_mm512_set1_ps(mean), _mm512_setzero_ps());
        for i in 0..vectors(row.len()) {
            // SAFETY: vector `i` lies inside the row.
            let c = _mm512_sub_ps(unsafe { _mm512_loadu_ps(row.as_ptr().add(i * LANES)) }, m);
            acc = _mm512_add_ps(acc, _mm512_mul_ps(c, c));
        }
        fold(lanes(acc)) + tail(row).iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()
    }

    #[target_feature(enable = "avx512f")]
    pub(crate) fn gradient_sums(dy: &[f32], x: &[f32], mean: f32, affine: Affine, relu: bool) -> (f32, f32) {
        let (m, mut sums, mut dots) = (_mm512_set1_ps(mean), _mm512_setzero_ps(), _mm512_setzero_ps());
        for i in 0..vectors(x.len()) {
            // SAFETY: vector `i` lies inside both rows (equal lengths).
            let (xv, mut d) = unsafe { (_mm512_loadu_ps(x.as_ptr().add(i * LANES)), _mm512_loadu_ps(dy.as_ptr().add(i * LANES))) };
            if relu {
                d = _mm512_maskz_mov_ps(affine_and_mask(xv, affine).1, d);
            }
            sums = _mm512_add_ps(sums, d);
            dots = _mm512_add_ps(dots, _mm512_mul_ps(d, _mm512_sub_ps(xv, m)));
        }
        let (sum, dot) = tail_gradient_sums(dy, x, mean, affine, relu);
        (fold(lanes(sums)) + sum, fold(lanes(dots)) + dot)
    }

    #[target_feature(enable = "avx512f")]
    pub(crate) fn normalise(y: &mut [MaybeUninit<f32>], x: &[f32], affine: Affine, relu: bool) {
        let whole = vectors(x.len());
        for i in 0..whole {
            // SAFETY: vector `i` lies inside both rows (equal lengths).
            unsafe {
                let (mut v, positive) = affine_and_mask(_mm512_loadu_ps(x.as_ptr().add(i * LANES)), affine);
                if relu {
                    v = _mm512_maskz_mov_ps(positive, v);
                }
                _mm512_storeu_ps(y.as_mut_ptr().add(i * LANES).cast::<f32>(), v);
            }
        }
        portable::normalise(&mut y[whole * LANES..], tail(x), affine, relu);
    }

    #[target_feature(enable = "avx512f")]
    pub(crate) fn input_gradient(dx: &mut [MaybeUninit<f32>], dy: &[f32], x: &[f32], affine: Affine, relu: bool, t: InputGradient) {
        let whole = vectors(x.len());
        let [k, mean, inv_std, mean_dy, mean_dgamma] = [t.k, t.mean, t.inv_std, t.mean_dy, t.mean_dgamma].map(|v| _mm512_set1_ps(v));
        for i in 0..whole {
            // SAFETY: vector `i` lies inside the three rows (equal lengths).
            unsafe {
                let (xv, mut d) = (_mm512_loadu_ps(x.as_ptr().add(i * LANES)), _mm512_loadu_ps(dy.as_ptr().add(i * LANES)));
                if relu {
                    d = _mm512_maskz_mov_ps(affine_and_mask(xv, affine).1, d);
                }
                let x_hat = _mm512_mul_ps(_mm512_sub_ps(xv, mean), inv_std);
                let v = _mm512_mul_ps(k, _mm512_sub_ps(_mm512_sub_ps(d, mean_dy), _mm512_mul_ps(x_hat, mean_dgamma)));
                _mm512_storeu_ps(dx.as_mut_ptr().add(i * LANES).cast::<f32>(), v);
            }
        }
        portable::input_gradient(&mut dx[whole * LANES..], tail(dy), tail(x), affine, relu, t);
    }

    /// Vector `i` of `affine(x) + skip`, and the lanes where it is > 0.
    #[target_feature(enable = "avx512f")]
    fn residual_sum(x: &[f32], skip: &[f32], i: usize, affine: Affine) -> (__m512, __mmask16) {
        // SAFETY (callers): vector `i` lies inside both rows.
        let (xv, sv) = unsafe { (_mm512_loadu_ps(x.as_ptr().add(i * LANES)), _mm512_loadu_ps(skip.as_ptr().add(i * LANES))) };
        let v = _mm512_add_ps(affine_and_mask(xv, affine).0, sv);
        (v, _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, _mm512_setzero_ps()))
    }

    #[target_feature(enable = "avx512f")]
    pub(crate) fn normalise_add_relu(y: &mut [MaybeUninit<f32>], x: &[f32], skip: &[f32], affine: Affine) {
        let whole = vectors(x.len());
        for i in 0..whole {
            let (v, positive) = residual_sum(x, skip, i, affine);
            // SAFETY: vector `i` lies inside `y` (equal lengths).
            unsafe { _mm512_storeu_ps(y.as_mut_ptr().add(i * LANES).cast::<f32>(), _mm512_maskz_mov_ps(positive, v)) };
        }
        portable::normalise_add_relu(&mut y[whole * LANES..], tail(x), tail(skip), affine);
    }

    #[target_feature(enable = "avx512f")]
    pub(crate) fn gate(out: &mut [MaybeUninit<f32>], dy: &[f32], x: &[f32], skip: &[f32], affine: Affine) {
        let whole = vectors(x.len());
        for i in 0..whole {
            let positive = residual_sum(x, skip, i, affine).1;
            // SAFETY: vector `i` lies inside `dy` and `out` (equal lengths).
            unsafe {
                let d = _mm512_loadu_ps(dy.as_ptr().add(i * LANES));
                _mm512_storeu_ps(out.as_mut_ptr().add(i * LANES).cast::<f32>(), _mm512_maskz_mov_ps(positive, d));
            }
        }
        portable::gate(&mut out[whole * LANES..], tail(dy), tail(x), tail(skip), affine);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::written;

    fn row(n: usize, seed: usize, offset: f32) -> Vec<f32> {
        (0..n).map(|i| (((i + seed) * 7919 % 997) as f32 - 498.0) * 3.1e-3 + offset).collect()
    }

    fn fill(n: usize, write: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<u32> {
        written(n, write).iter().map(|v| v.to_bits()).collect()
    }

    /// Every kernel's AVX-512 form against its portable one, bit for bit: rows with no tail,
    /// a tail only, both; with and without the ReLU.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_vector_rows_have_the_portable_rows_bits() {
        if !wide() {
            return;
        }
        let affine = Affine { scale: 1.7, shift: -0.2 };
        let terms = InputGradient { k: 0.9, mean: 0.1, inv_std: 1.3, mean_dy: 0.05, mean_dgamma: -0.3 };
        for n in [1, 7, 16, 33, 64, 100, 1024] {
            let (x, dy) = (row(n, 1, 0.1), row(n, 5, 0.0));
            // SAFETY (each `avx512::` call below): the CPU has AVX-512F; the rows have equal lengths.
            let squares = unsafe { avx512::centred_squares(&x, 0.3) };
            assert_eq!(squares.to_bits(), portable::centred_squares(&x, 0.3).to_bits(), "n = {n}");
            for relu in [false, true] {
                let (a, b) = (unsafe { avx512::gradient_sums(&dy, &x, 0.3, affine, relu) }, portable::gradient_sums(&dy, &x, 0.3, affine, relu));
                assert_eq!([a.0.to_bits(), a.1.to_bits()], [b.0.to_bits(), b.1.to_bits()], "sums n = {n} relu = {relu}");
                let y = fill(n, |y| unsafe { avx512::normalise(y, &x, affine, relu) });
                assert_eq!(y, fill(n, |y| portable::normalise(y, &x, affine, relu)), "y n = {n} relu = {relu}");
                let dx = fill(n, |dx| unsafe { avx512::input_gradient(dx, &dy, &x, affine, relu, terms) });
                assert_eq!(dx, fill(n, |dx| portable::input_gradient(dx, &dy, &x, affine, relu, terms)), "dx n = {n} relu = {relu}");
            }
            let skip = row(n, 11, -0.05);
            let y = fill(n, |y| unsafe { avx512::normalise_add_relu(y, &x, &skip, affine) });
            assert_eq!(y, fill(n, |y| portable::normalise_add_relu(y, &x, &skip, affine)), "y + skip n = {n}");
            let gated = fill(n, |g| unsafe { avx512::gate(g, &dy, &x, &skip, affine) });
            assert_eq!(gated, fill(n, |g| portable::gate(g, &dy, &x, &skip, affine)), "gate n = {n}");
        }
    }

    /// The ReLU gates by the affine output (with the skip added, by the sum): 0 and no gradient
    /// where it is ≤ 0 or NaN, on whole vectors (the AVX-512 form where the CPU has it) and
    /// on the tail alike.
    #[test]
    fn the_relu_gate_is_the_outputs_sign() {
        let affine = Affine { scale: 2.0, shift: -1.0 };
        // Affine outputs -1, 0, 0.5, NaN, 5, repeated past one whole vector.
        let x: Vec<f32> = [0.0, 0.5, 0.75, f32::NAN, 3.0].iter().copied().cycle().take(37).collect();
        let want = |i: usize| [0.0f32, 0.0, 0.5, 0.0, 5.0][i % 5];
        let y = written(x.len(), |y| normalise(y, &x, affine, true));
        assert!(y.iter().enumerate().all(|(i, &v)| v.to_bits() == want(i).to_bits()), "{y:?}");
        let (sum, _) = gradient_sums(&[1.0; 37], &x, 0.0, affine, true);
        assert_eq!(sum, 14.0);
        // With a skip of 1: sums 0, 1, 1.5, NaN, 6, so only the first and NaN are cut.
        let skip = vec![1.0; 37];
        let y = written(x.len(), |y| normalise_add_relu(y, &x, &skip, affine));
        assert!(y.iter().enumerate().all(|(i, &v)| v.to_bits() == [0.0f32, 1.0, 1.5, 0.0, 6.0][i % 5].to_bits()), "{y:?}");
        let gated = written(x.len(), |g| gate(g, &[2.0; 37], &x, &skip, affine));
        assert!(gated.iter().enumerate().all(|(i, &v)| v == if i % 5 == 0 || i % 5 == 3 { 0.0 } else { 2.0 }), "{gated:?}");
    }
}

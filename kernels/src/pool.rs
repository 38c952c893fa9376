//! Max pooling over non-overlapping `p×p` windows (stride `p`, no padding, floor mode — the
//! CNN's and AlexNet's pools) on NCHW `f32`, and its backward.
//!
//! `y[n, c, oy, ox] = max_{0≤i,j<p} x[n, c, oy·p + i, ox·p + j]`, the first maximum in
//! row-major window order winning ties and a NaN winning over numbers (as PyTorch and Burn).
//! The backward routes `dy` to the winner: `dx[argmax] = dy`, every other input 0. Windows do
//! not overlap, so each input receives at most one gradient and planes run in parallel with
//! no order to fix. (Flex's own pool goes through a generic 3-D path, ~20 % of a CNN step.)
//!
//! With `relu` the ReLU before the pool is fused in: `y = max over the window of max(x, 0)`
//! (Burn's `x.max(0.0)`, so a NaN input counts as 0), and a window whose `y` is not > 0 passes
//! no gradient (ReLU's backward, `dy · [out > 0]`). The same numbers as `pool(relu(x))`
//! without ReLU's two passes over the map on one thread (≈ 8 % of a CNN step at batch 16).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::output::written;

/// `x: [planes = batch·channels, height, width]` pooled by `size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeometry {
    pub planes: usize,
    pub height: usize,
    pub width: usize,
    pub size: usize,
}

impl PoolGeometry {
    /// `None` for an empty map or a window larger than it (left to Burn).
    pub fn new(x: [usize; 4], size: usize) -> Option<Self> {
        let [batch, channels, height, width] = x;
        let g = Self { planes: batch * channels, height, width, size };
        (size > 0 && g.planes > 0 && height >= size && width >= size).then_some(g)
    }

    pub fn out_height(&self) -> usize {
        self.height / self.size
    }

    pub fn out_width(&self) -> usize {
        self.width / self.size
    }

    fn in_plane(&self) -> usize {
        self.height * self.width
    }

    fn out_plane(&self) -> usize {
        self.out_height() * self.out_width()
    }
}

/// An `argmax` entry for a window that passes no gradient (its fused ReLU's output was 0).
const NO_GRADIENT: u32 = u32::MAX;

/// The pooled map (of `max(x, 0)` with `relu`), and with `argmax` the winner of each window as
/// an index into its plane ([`NO_GRADIENT`] where `relu` zeroed the window).
pub fn forward(g: &PoolGeometry, x: &[f32], argmax: Option<&mut Vec<u32>>, relu: bool) -> Vec<f32> {
    assert_eq!(x.len(), g.planes * g.in_plane(), "pool input length");
    assert!(g.in_plane() <= u32::MAX as usize, "a plane over 2³² pixels");
    let mut y = vec![0.0f32; g.planes * g.out_plane()];
    let mut scratch = Vec::new();
    // Only winners someone reads need the fused ReLU's marks.
    let mark = relu && argmax.is_some();
    let argmax = match argmax {
        Some(argmax) => argmax,
        None => &mut scratch,
    };
    argmax.clear();
    argmax.resize(y.len(), 0);
    let (in_plane, out_plane) = (g.in_plane(), g.out_plane());
    y.par_chunks_mut(out_plane).zip(argmax.par_chunks_mut(out_plane)).zip(x.par_chunks(in_plane)).for_each(|((y_p, a_p), x_p)| {
        pool_plane(g, x_p, y_p, a_p, relu);
        if mark {
            // `y` is a ReLU's output here: never NaN, so `≤ 0` is ReLU's "not > 0".
            for (y, a) in y_p.iter().zip(a_p.iter_mut()) {
                if *y <= 0.0 {
                    *a = NO_GRADIENT;
                }
            }
        }
    });
    y
}

/// One plane: the models' 2×2 windows sixteen at a time on AVX-512 (chosen at run time; the
/// same winners and bits as the portable loop), any other size with the portable loop.
fn pool_plane(g: &PoolGeometry, x: &[f32], y: &mut [f32], argmax: &mut [u32], relu: bool) {
    #[cfg(target_arch = "x86_64")]
    if g.size == 2 && crate::direct::available() {
        // SAFETY: the CPU has AVX-512F (checked above).
        return unsafe { avx512::plane_2x2(g, x, y, argmax, relu) };
    }
    portable_plane(g, x, y, argmax, relu)
}

/// One plane, an output row at a time: the row's running maxima live in `y` and `argmax`
/// while the window rows stream past, so the inner loop is a plain pass over an input row.
fn portable_plane(g: &PoolGeometry, x: &[f32], y: &mut [f32], argmax: &mut [u32], relu: bool) {
    let (size, out_w) = (g.size, g.out_width());
    for (oy, (best_row, at_row)) in y.chunks_exact_mut(out_w).zip(argmax.chunks_exact_mut(out_w)).enumerate() {
        best_row.fill(f32::NEG_INFINITY);
        for (ox, at) in at_row.iter_mut().enumerate() {
            *at = (oy * size * g.width + ox * size) as u32;
        }
        for i in 0..size {
            let start = (oy * size + i) * g.width;
            let row = &x[start..start + out_w * size];
            for (ox, ((best, at), window)) in best_row.iter_mut().zip(at_row.iter_mut()).zip(row.chunks_exact(size)).enumerate() {
                // In registers across the window (through memory each compare would wait on
                // the previous store); selects, not branches: the winner is unpredictable.
                let (mut b, mut a) = (*best, *at);
                for (j, &v) in window.iter().enumerate() {
                    let v = if relu { v.max(0.0) } else { v };
                    // Row-major window order; the first maximum wins ties, a NaN wins numbers.
                    let take = v > b || (v.is_nan() && !b.is_nan());
                    b = if take { v } else { b };
                    a = if take { (start + ox * size + j) as u32 } else { a };
                }
                (*best, *at) = (b, a);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::PoolGeometry;
    use crate::lanes::first;

    /// The window order's winner is the maximum of the key (is NaN, value, −index): the first
    /// NaN if there is one, else the first of the largest. That maximum can be taken in any
    /// grouping, so each window is reduced top row against bottom row first (the bottom one
    /// never wins a tie: it comes later), then left column against right, a tie going to
    /// the smaller index (the left column's winner may come from the bottom row).
    #[target_feature(enable = "avx512f")]
    pub(super) fn plane_2x2(g: &PoolGeometry, x: &[f32], y: &mut [f32], argmax: &mut [u32], relu: bool) {
        let (w, out_w) = (g.width, g.out_width());
        assert!(x.len() >= g.height * w && y.len() >= g.out_height() * out_w && argmax.len() >= y.len());
        let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
        let below = _mm512_set1_epi32(w as i32);
        let used = 2 * out_w;
        for oy in 0..g.out_height() {
            for c0 in (0..used).step_by(32) {
                let cols = (used - c0).min(32);
                let (left, right) = (first(cols.min(16)), first(cols.saturating_sub(16)));
                let at = 2 * oy * w + c0;
                // SAFETY: a masked load reads only its unmasked lanes, columns c0.. below
                // `used` ≤ w of rows 2·oy and 2·oy + 1 < height; the pointers are only formed
                // (wrapping), never read, past them.
                let load = |m: __mmask16, i: usize| {
                    let v = unsafe { _mm512_maskz_loadu_ps(m, x.as_ptr().wrapping_add(i)) };
                    // `max(v, 0)` returns its second operand for a NaN or two zeros: Burn's
                    // `v.max(0.0)` (a NaN counts as 0; checked bit for bit against Burn).
                    if relu { _mm512_max_ps(v, _mm512_setzero_ps()) } else { v }
                };
                let index = _mm512_add_epi32(_mm512_set1_epi32(at as i32), lane);
                let index_right = _mm512_add_epi32(index, _mm512_set1_epi32(16));
                let (v0, i0) = taller(load(left, at), load(left, at + w), index, below);
                let (v1, i1) = taller(load(right, at + 16), load(right, at + w + 16), index_right, below);
                let (ev, ov) = (_mm512_permutex2var_ps(v0, even, v1), _mm512_permutex2var_ps(v0, odd, v1));
                let (ei, oi) = (_mm512_permutex2var_epi32(i0, even, i1), _mm512_permutex2var_epi32(i0, odd, i1));
                let (en, on) = (nan(ev), nan(ov));
                let tie = ((on & en) | _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(ov, ev)) & _mm512_cmplt_epu32_mask(oi, ei);
                let take = (on & !en) | _mm512_cmp_ps_mask::<_CMP_GT_OQ>(ov, ev) | tie;
                let out = first(cols / 2);
                let o = oy * out_w + c0 / 2;
                // SAFETY: the stored lanes are outputs o .. o + cols/2 of row oy, inside `y`
                // and `argmax` (asserted above).
                unsafe {
                    _mm512_mask_storeu_ps(y.as_mut_ptr().add(o), out, _mm512_mask_blend_ps(take, ev, ov));
                    _mm512_mask_storeu_epi32(argmax.as_mut_ptr().add(o) as *mut i32, out, _mm512_mask_blend_epi32(take, ei, oi));
                }
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    fn nan(v: __m512) -> __mmask16 {
        _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v)
    }

    /// Top row against bottom row: the bottom wins when larger, or a NaN over a number.
    #[target_feature(enable = "avx512f")]
    fn taller(top: __m512, bottom: __m512, index: __m512i, below: __m512i) -> (__m512, __m512i) {
        let take = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(bottom, top) | (nan(bottom) & !nan(top));
        (_mm512_mask_blend_ps(take, top, bottom), _mm512_mask_blend_epi32(take, index, _mm512_add_epi32(index, below)))
    }
}

/// `dx`: each window's gradient on its winner, zero elsewhere (and on a [`NO_GRADIENT`]
/// window's inputs).
pub fn backward(g: &PoolGeometry, argmax: &[u32], dy: &[f32]) -> Vec<f32> {
    assert_eq!(dy.len(), g.planes * g.out_plane(), "pool output-gradient length");
    assert_eq!(argmax.len(), dy.len(), "pool argmax length");
    // Each plane zeroed by its own thread: one allocation zeroed up front is a pass on one.
    written(g.planes * g.in_plane(), |dx| {
        dx.par_chunks_mut(g.in_plane()).zip(dy.par_chunks(g.out_plane())).zip(argmax.par_chunks(g.out_plane())).for_each(|((dx_p, dy_p), a_p)| {
            dx_p.fill(MaybeUninit::new(0.0));
            for (&d, &a) in dy_p.iter().zip(a_p) {
                if a != NO_GRADIENT {
                    dx_p[a as usize] = MaybeUninit::new(d);
                }
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_go_to_the_first_and_nan_wins() {
        let g = PoolGeometry::new([1, 1, 2, 4], 2).unwrap();
        // windows: [1, 3 | 3, 0] and [NaN, 2 | 5, 5]
        let x = [1.0, 3.0, f32::NAN, 2.0, 3.0, 0.0, 5.0, 5.0];
        let mut argmax = Vec::new();
        let y = forward(&g, &x, Some(&mut argmax), false);
        assert_eq!(y[0], 3.0);
        assert!(y[1].is_nan());
        assert_eq!(argmax, vec![1, 2]);
        assert_eq!(backward(&g, &argmax, &[10.0, 20.0]), vec![0.0, 10.0, 20.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn the_fused_relu_zeroes_and_stops_the_gradient() {
        let g = PoolGeometry::new([1, 1, 2, 4], 2).unwrap();
        // windows: [−1, −3 | NaN, −0] (all zero after the ReLU) and [−2, 2 | 5, 4]
        let x = [-1.0, -3.0, -2.0, 2.0, f32::NAN, -0.0, 5.0, 4.0];
        let mut argmax = Vec::new();
        let y = forward(&g, &x, Some(&mut argmax), true);
        assert_eq!(y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), vec![0.0f32.to_bits(), 5.0f32.to_bits()]);
        assert_eq!(argmax, vec![NO_GRADIENT, 6]);
        assert_eq!(backward(&g, &argmax, &[10.0, 20.0]), vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 20.0, 0.0]);
    }

    /// The 2×2 vector path picks the portable loop's winners and values, bit for bit: ties
    /// (values from a small set, 0.0 against −0.0), NaNs, odd sizes and widths past a vector.
    #[test]
    fn the_vector_windows_have_the_portable_winners() {
        if !crate::direct::available() {
            return;
        }
        let palette = [1.0, 2.0, -0.0, 0.0, f32::NAN, 3.0, -1.0];
        let mut seed = 12345u64;
        for (height, width) in [(2, 2), (3, 5), (4, 8), (7, 7), (8, 16), (14, 14), (16, 31), (5, 32), (6, 33), (4, 34), (3, 65), (32, 32)] {
            for (trial, relu) in (0..40).map(|t| (t / 2, t % 2 == 1)) {
                let x: Vec<f32> = (0..height * width)
                    .map(|_| {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        let r = (seed >> 33) as usize;
                        // Every other trial draws from the palette only: many ties and NaNs.
                        if trial % 2 == 0 { palette[r % palette.len()] } else { (r % 1000) as f32 * 0.01 - 5.0 }
                    })
                    .collect();
                let g = PoolGeometry::new([1, 1, height, width], 2).unwrap();
                let n = g.out_height() * g.out_width();
                let (mut y_p, mut a_p, mut y_v, mut a_v) = (vec![7.0; n], vec![9; n], vec![7.0; n], vec![9; n]);
                portable_plane(&g, &x, &mut y_p, &mut a_p, relu);
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `available` checked AVX-512F.
                unsafe {
                    avx512::plane_2x2(&g, &x, &mut y_v, &mut a_v, relu)
                };
                assert_eq!(a_v, a_p, "{height}×{width}, trial {trial}, relu {relu}: winners");
                let bits = |y: &[f32]| y.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&y_v), bits(&y_p), "{height}×{width}, trial {trial}, relu {relu}: values");
            }
        }
    }
}

//! The stride-1 forward convolution computed directly on AVX-512 with the output row in the
//! register: sixteen neighbouring output pixels of one channel per vector, for the layers the
//! channel-blocked kernel (`direct`) leaves to GEMM — few output channels (ResNet's 16-channel
//! stage and its input gradient) or few input channels (the stems) — and for rows of 16
//! pixels or more, where it is faster than `direct` (ResNet's 32-channel stage).
//!
//! The weight gradient of the same shapes (kernels 3 or 5 wide) is vectorised the same way:
//! `C` output channels × one kernel row's taps accumulate 16 columns a vector over the sample,
//! then each accumulator's lanes are summed.
//!
//! `y[b, co, oh, ow] = bias[co] + Σ_ci Σ_ky Σ_kx w[co, ci, ky, kx] · xp[b, ci, oh + ky, ow + kx]`
//! with `xp` the zero-padded input. A register block is 8 output channels × 32 output pixels
//! (one row of up to 32, or two rows of up to 16): per tap the input row is two contiguous
//! vector loads, shared by the 8 channels, and each channel's weight one broadcast — 10 loads
//! for 16 FMAs, where `direct` with a single 16-channel block needs one broadcast per FMA.
//! Row tails are masked, so any width runs. The weights are repacked once per call into
//! `[co / 8][ci][ky][kx][8]`. Each output is its bias followed by its taps in (ci, ky, kx)
//! order — one fixed sequence whatever the thread count, as everywhere in this crate — and the
//! output is written straight into NCHW, with no transposition.

use crate::chunks::sum_over_sample_chunks;
use crate::direct::{available, pack_weights, pad_sample, per_padded_sample};
use crate::geometry::ConvGeometry;

/// Output channels per register block (one broadcast weight each).
const CHANNELS: usize = 8;
/// Lanes of one vector: neighbouring output pixels of one row.
const LANES: usize = 16;

/// Whether this machine runs the row kernel and `g` is a shape it is for: stride 1, whole
/// blocks of 8 output channels, a real spatial kernel, and at most 16 output channels, fewer
/// than 16 input channels, or rows of 16 pixels or more under at most 64 output channels.
/// Measured with `fedolf bench conv` against the column matrix and the channel-blocked kernel
/// (`direct`, which `cpu::forward` asks after this one; experiments/results/speed-cpu.md):
/// 1.35–1.45× the column matrix on ResNet's 16 → 16 forward and input gradient, about even on
/// the stems; 1.2–1.3× `direct` on ResNet's 32 → 32 on 16 × 16 (whole vectors of one row, where
/// `direct` stores each pixel's 16 channels lane by lane). Rows of 8 (the 64-channel stage) half
/// fill a vector and stay with `direct`, as do wider layers (AlexNet's).
pub(crate) fn applies(g: &ConvGeometry) -> bool {
    let shape = g.c_out <= 16 || g.c_in < 16 || (g.out_width >= LANES && g.c_out <= 64);
    available() && g.stride == [1, 1] && g.c_out % CHANNELS == 0 && shape && g.kernel[0] * g.kernel[1] > 1
}

/// `y[b] = conv(x[b], w) + bias`, `[batch, c_out, ho, wo]`; only where [`applies`] holds.
pub(crate) fn forward(g: &ConvGeometry, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    assert!(applies(g), "the row convolution does not apply to {g:?}");
    // `[c_out / 8][c_in][kh][kw][8]`: a block's 8 weights of one tap side by side.
    let packed = pack_weights(g, w, CHANNELS);
    per_padded_sample(g, x, |xp, y_b| {
        // SAFETY: `applies` checked that the CPU has AVX-512F; the slices have the lengths
        // `sample` indexes (asserted there).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            avx512::sample(g, xp, &packed, bias, y_b)
        }
    })
}

/// Whether the row kernel can compute `g`'s weight gradient: the shapes [`applies`] takes, with
/// kernels 3 or 5 wide (8 or 4 output channels × the kernel's columns in registers).
/// `cpu::weight_grad` asks `direct` first, whose weight gradient is the faster one wherever
/// it applies (16 to 64 outputs from 16 inputs or more): this one computes the stems'.
pub(crate) fn weight_grad_applies(g: &ConvGeometry) -> bool {
    applies(g) && matches!(g.kernel[1], 3 | 5)
}

/// `dW[co, ci, ky, kx] = Σ_b Σ_oh Σ_ow dy[b, co, oh, ow] · xp[b, ci, oh + ky, ow + kx]`; only
/// where [`weight_grad_applies`] holds. Per sample, a block of output channels × one kernel
/// row's taps accumulates 16 columns a vector over every output pixel, and each accumulator's
/// 16 lanes are then added into `dw`. The samples are summed as `cpu::weight_grad` sums them
/// ([`sum_over_sample_chunks`]), so the result does not depend on the thread count.
pub(crate) fn weight_grad(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert!(weight_grad_applies(g), "the row weight gradient does not apply to {g:?}");
    sum_over_sample_chunks(g.batch, g.weight_len(), Vec::new, |xp, samples, dw| {
        for b in samples {
            pad_sample(g, &x[b * g.in_sample()..][..g.in_sample()], xp);
            let dy_b = &dy[b * g.out_sample()..][..g.out_sample()];
            // SAFETY: `weight_grad_applies` checked AVX-512F; `weight_sample` asserts the lengths.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                avx512::weight_sample(g, xp, dy_b, dw)
            }
        }
    })
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use super::{CHANNELS, LANES};
    use crate::direct::padded;
    use crate::geometry::ConvGeometry;
    use crate::lanes::within;

    /// Where one register block reads and writes: output channels from `co`, output rows from
    /// `oh`, columns from `ow`, and which lanes of each vector are inside the row.
    #[derive(Clone, Copy)]
    struct At<const V: usize> {
        co: usize,
        oh: usize,
        ow: usize,
        masks: [__mmask16; V],
    }

    /// One sample, 8 channels at a time: rows of more than 16 pixels as one row of 32 columns a
    /// block, narrower rows two at a time (a last odd row alone).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn sample(g: &ConvGeometry, xp: &[f32], packed: &[f32], bias: Option<&[f32]>, y_b: &mut [MaybeUninit<f32>]) {
        let (hp, wp) = padded(g);
        assert!(xp.len() == g.c_in * hp * wp && packed.len() == g.weight_len() && y_b.len() == g.out_sample());
        assert!(bias.is_none_or(|b| b.len() == g.c_out));
        let wo = g.out_width;
        for co in (0..g.c_out).step_by(CHANNELS) {
            // SAFETY (every call below): the block's channels, rows and unmasked columns lie
            // inside the output, and every tap they read inside the padded sample.
            if wo > LANES {
                for oh in 0..g.out_height {
                    for ow in (0..wo).step_by(2 * LANES) {
                        let at = At { co, oh, ow, masks: [within(ow, 0..wo), within(ow + LANES, 0..wo)] };
                        unsafe { block::<1, 2>(g, xp, packed, bias, y_b, at) };
                    }
                }
            } else {
                let masks = [within(0, 0..wo)];
                let mut oh = 0;
                while oh + 2 <= g.out_height {
                    unsafe { block::<2, 1>(g, xp, packed, bias, y_b, At { co, oh, ow: 0, masks }) };
                    oh += 2;
                }
                if oh < g.out_height {
                    unsafe { block::<1, 1>(g, xp, packed, bias, y_b, At { co, oh, ow: 0, masks }) };
                }
            }
        }
    }

    /// 8 channels × `R` rows × `V` vectors of 16 columns, accumulated in `8·R·V` registers
    /// over every (ci, ky, kx), then stored (masked) into the sample's NCHW output.
    #[target_feature(enable = "avx512f")]
    unsafe fn block<const R: usize, const V: usize>(g: &ConvGeometry, xp: &[f32], packed: &[f32], bias: Option<&[f32]>, y_b: &mut [MaybeUninit<f32>], at: At<V>) {
        let (hp, wp) = padded(g);
        let [kh, kw] = g.kernel;
        let taps = g.col_rows();
        let mut acc = [[[_mm512_setzero_ps(); V]; R]; CHANNELS];
        if let Some(bias) = bias {
            for (c, rows) in acc.iter_mut().enumerate() {
                *rows = [[_mm512_set1_ps(bias[at.co + c]); V]; R];
            }
        }
        let x = xp.as_ptr();
        // SAFETY: this block's 8 channels of packed weights start here.
        let w = unsafe { packed.as_ptr().add((at.co / CHANNELS) * taps * CHANNELS) };
        for ci in 0..g.c_in {
            for ky in 0..kh {
                for kx in 0..kw {
                    let tap = (ci * kh + ky) * kw + kx;
                    let mut xv = [[_mm512_setzero_ps(); V]; R];
                    for (r, row) in xv.iter_mut().enumerate() {
                        for (v, lanes) in row.iter_mut().enumerate() {
                            // SAFETY: row `oh + r + ky < hp` of channel `ci`; the unmasked
                            // lanes' columns `ow + 16v + lane + kx ≤ wo − 1 + kw − 1 < wp`.
                            *lanes = unsafe { _mm512_maskz_loadu_ps(at.masks[v], x.add((ci * hp + at.oh + r + ky) * wp + at.ow + v * LANES + kx)) };
                        }
                    }
                    for (c, rows) in acc.iter_mut().enumerate() {
                        // SAFETY: tap `tap` of channel `c` of the block, inside `packed`.
                        let wv = unsafe { _mm512_set1_ps(*w.add(tap * CHANNELS + c)) };
                        for (r, row) in rows.iter_mut().enumerate() {
                            for (v, sum) in row.iter_mut().enumerate() {
                                *sum = _mm512_fmadd_ps(wv, xv[r][v], *sum);
                            }
                        }
                    }
                }
            }
        }
        let y = y_b.as_mut_ptr().cast::<f32>();
        for (c, rows) in acc.iter().enumerate() {
            for (r, row) in rows.iter().enumerate() {
                for (v, sum) in row.iter().enumerate() {
                    let at_y = ((at.co + c) * g.out_height + at.oh + r) * g.out_width + at.ow + v * LANES;
                    // SAFETY: the unmasked lanes are columns of row `oh + r` of channel `co + c`.
                    unsafe { _mm512_mask_storeu_ps(y.add(at_y), at.masks[v], *sum) };
                }
            }
        }
    }

    /// One sample's `dW` terms added into `dw` (`[c_out, c_in, kh, kw]`): for every block of
    /// output channels, input channel and kernel row, [`tap_row`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weight_sample(g: &ConvGeometry, xp: &[f32], dy_b: &[f32], dw: &mut [f32]) {
        let (hp, wp) = padded(g);
        assert!(xp.len() == g.c_in * hp * wp && dy_b.len() == g.out_sample() && dw.len() == g.weight_len());
        let channels = if g.kernel[1] == 3 { CHANNELS } else { CHANNELS / 2 };
        for co in (0..g.c_out).step_by(channels) {
            for ci in 0..g.c_in {
                for ky in 0..g.kernel[0] {
                    // SAFETY: the block's channels and taps lie inside `dw`, and every pixel
                    // they read inside `xp` and `dy_b`.
                    unsafe {
                        match g.kernel[1] {
                            3 => tap_row::<CHANNELS, 3>(g, xp, dy_b, dw, [co, ci, ky]),
                            5 => tap_row::<{ CHANNELS / 2 }, 5>(g, xp, dy_b, dw, [co, ci, ky]),
                            other => unreachable!("a kernel {other} wide"),
                        }
                    }
                }
            }
        }
    }

    /// `C` output channels from `co` × the `K` taps of kernel row `ky` of input channel `ci`:
    /// `C·K` accumulators of 16 columns, over every output row and column block (masked at the
    /// row's end), then each one's lanes summed into its `dw` element.
    #[target_feature(enable = "avx512f")]
    unsafe fn tap_row<const C: usize, const K: usize>(g: &ConvGeometry, xp: &[f32], dy_b: &[f32], dw: &mut [f32], [co, ci, ky]: [usize; 3]) {
        let (hp, wp) = padded(g);
        let (wo, pixels) = (g.out_width, g.out_pixels());
        let mut acc = [[_mm512_setzero_ps(); K]; C];
        let (x, d) = (xp.as_ptr(), dy_b.as_ptr());
        for oh in 0..g.out_height {
            // SAFETY: row `oh + ky < hp` of channel `ci`.
            let row = unsafe { x.add((ci * hp + oh + ky) * wp) };
            for ow in (0..wo).step_by(LANES) {
                let m = within(ow, 0..wo);
                let mut xv = [_mm512_setzero_ps(); K];
                for (k, v) in xv.iter_mut().enumerate() {
                    // SAFETY: the unmasked lanes' columns `ow + lane + k ≤ wo − 1 + kw − 1 < wp`.
                    *v = unsafe { _mm512_maskz_loadu_ps(m, row.add(ow + k)) };
                }
                for (c, sums) in acc.iter_mut().enumerate() {
                    // SAFETY: the unmasked lanes are pixels of row `oh` of channel `co + c`.
                    let dv = unsafe { _mm512_maskz_loadu_ps(m, d.add((co + c) * pixels + oh * wo + ow)) };
                    for (k, sum) in sums.iter_mut().enumerate() {
                        *sum = _mm512_fmadd_ps(dv, xv[k], *sum);
                    }
                }
            }
        }
        let [kh, kw] = g.kernel;
        for (c, sums) in acc.iter().enumerate() {
            for (k, sum) in sums.iter().enumerate() {
                dw[(((co + c) * g.c_in + ci) * kh + ky) * kw + k] += _mm512_reduce_add_ps(*sum);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::{assert_forward_is_the_definition, assert_weight_grad_is_the_definition};

    #[test]
    fn the_row_convolution_is_the_definition() {
        if !available() {
            eprintln!("no AVX-512 on this CPU: the row convolution is not used here");
            return;
        }
        // Rows wider than 16 (one or two column blocks, masked tails of 16, 12, 8, 1 and 15
        // columns: widths 32, 28, 40, 17, 31) and up to 16 (pairs of rows and an odd last row:
        // 16, 8, 5, 15), 8 to 64 outputs, 1–16 inputs, paddings 0–2, 3×3, 5×5 and 1×3, with
        // and without a bias.
        let shapes = [
            ([2, 16, 32, 32], [16, 16, 3, 3], [1, 1]),
            ([2, 3, 32, 32], [16, 3, 3, 3], [1, 1]),
            ([3, 1, 28, 28], [8, 1, 5, 5], [2, 2]),
            ([1, 5, 9, 40], [16, 5, 3, 3], [0, 0]),
            ([2, 4, 7, 17], [8, 4, 1, 3], [0, 1]),
            ([2, 16, 16, 16], [16, 16, 3, 3], [1, 1]),
            ([1, 6, 9, 8], [8, 6, 3, 3], [1, 1]),
            ([2, 2, 5, 5], [16, 2, 5, 5], [2, 2]),
            ([1, 3, 6, 31], [64, 3, 3, 3], [1, 1]),
            ([2, 8, 7, 15], [16, 8, 3, 3], [1, 1]),
            ([2, 32, 16, 16], [32, 32, 3, 3], [1, 1]),
            ([1, 48, 5, 20], [64, 48, 3, 3], [1, 1]),
        ];
        let geometries: Vec<_> = shapes.map(|(x, w, padding)| ConvGeometry::new(x, w, [1, 1], padding).unwrap()).into();
        assert!(geometries.iter().all(applies));
        assert_forward_is_the_definition(&geometries, forward);
    }

    #[test]
    fn the_row_weight_gradient_is_the_definition() {
        if !available() {
            return;
        }
        // 3- and 5-wide kernels (8 and 4 channels a block), masked column tails (widths 32, 28,
        // 17, 31, 5), several sample chunks (batches 3–9), 8 to 64 outputs, 1–16 inputs.
        let shapes = [
            ([5, 16, 32, 32], [16, 16, 3, 3], [1, 1]),
            ([9, 3, 12, 28], [16, 3, 3, 3], [1, 1]),
            ([3, 1, 28, 28], [32, 1, 5, 5], [2, 2]),
            ([4, 5, 9, 17], [8, 5, 3, 3], [0, 0]),
            ([3, 3, 6, 31], [64, 3, 5, 3], [2, 1]),
            ([4, 2, 5, 5], [8, 2, 3, 5], [1, 2]),
        ];
        let geometries: Vec<_> = shapes.map(|(x, w, padding)| ConvGeometry::new(x, w, [1, 1], padding).unwrap()).into();
        assert!(geometries.iter().all(weight_grad_applies));
        assert_weight_grad_is_the_definition(&geometries, weight_grad);
    }

    #[test]
    fn shapes_outside_its_range_go_elsewhere() {
        let g = |c_in, c_out, k, s| ConvGeometry::new([1, c_in, 8, 8], [c_out, c_in, k, k], [s, s], [1, 1]).unwrap();
        if available() {
            assert!(applies(&g(16, 16, 3, 1)), "ResNet's 16-channel stage");
        }
        assert!(!applies(&g(16, 16, 3, 2)), "stride 2");
        assert!(!applies(&g(16, 32, 3, 1)), "32 outputs on rows of 8: the channel-blocked kernel");
        if available() {
            let wide = ConvGeometry::new([1, 32, 16, 16], [32, 32, 3, 3], [1, 1], [1, 1]).unwrap();
            assert!(applies(&wide), "ResNet's 32-channel stage: rows of 16");
            let alexnet = ConvGeometry::new([1, 64, 16, 16], [192, 64, 3, 3], [1, 1], [1, 1]).unwrap();
            assert!(!applies(&alexnet), "192 outputs: GEMM");
        }
        assert!(!applies(&g(16, 12, 3, 1)), "channels not in whole blocks of 8");
        assert!(!applies(&g(16, 16, 1, 1)), "1×1");
        let seven = ConvGeometry::new([1, 16, 8, 8], [16, 16, 7, 7], [1, 1], [3, 3]).unwrap();
        assert!(!weight_grad_applies(&seven), "a kernel 7 wide: more accumulators than registers");
    }
}

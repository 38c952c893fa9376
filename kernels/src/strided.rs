//! The input gradient of a 3×3, stride-2, padding-1 convolution (the ResNets' downsampling
//! convolutions) computed directly on AVX-512, without the column matrix and its scatter-add
//! `col2im`, which ran at 25–40 % of the peak on these shapes.
//!
//! `dx[b, ci, ih, iw] = Σ_co Σ_{kh, kw} w[co, ci, kh, kw] · dy[b, co, oh, ow]` over the taps
//! with `ih = 2·oh − 1 + kh`, `iw = 2·ow − 1 + kw`. By the parity of `ih` only some rows of
//! the kernel reach it: an even row `2a` only `kh = 1` (from `oh = a`), an odd row `2a + 1`
//! `kh = 2` (from `oh = a`) and `kh = 0` (from `oh = a + 1`); the same for columns. So a pair
//! of output columns `2u, 2u + 1` reads `dy` columns `u` and `u + 1` alone: column `u` feeds
//! `kw = 1` of the even one and `kw = 2` of the odd one, column `u + 1` `kw = 0` of the odd
//! one. A register block holds 16 input channels × a strip of such pairs; each broadcast of
//! `dy` feeds three taps. `dy` is padded by one zero row and column at the end, so no tap
//! needs a bounds check.
//!
//! Each element sums, in `co` order, its taps in `kh`, then `kw` order — one fixed sequence
//! whatever the thread count. Chosen at run time (`applies`); elsewhere `cpu::input_grad`
//! keeps GEMM and `col2im`.

use rayon::prelude::*;

use crate::geometry::ConvGeometry;
use crate::output::written;

/// Input channels per register.
const LANES: usize = 16;

/// Whether this machine runs the kernel and `g` is its shape: 3×3, stride 2, padding 1, input
/// channels in whole registers, at least 16 output channels (fewer and `col2im` is cheap).
pub(crate) fn applies(g: &ConvGeometry) -> bool {
    crate::direct::available() && g.kernel == [3, 3] && g.stride == [2, 2] && g.padding == [1, 1] && g.c_in % LANES == 0 && g.c_out >= 16
}

/// `[c_out, c_in, 3, 3]` → `[c_in / 16][c_out][9][16]`: one vector of 16 input channels per
/// output channel and tap.
fn pack(g: &ConvGeometry, w: &[f32]) -> Vec<f32> {
    let mut packed = vec![0.0f32; w.len()];
    for co in 0..g.c_out {
        for ci in 0..g.c_in {
            for t in 0..9 {
                packed[(((ci / LANES) * g.c_out + co) * 9 + t) * LANES + ci % LANES] = w[(co * g.c_in + ci) * 9 + t];
            }
        }
    }
    packed
}

/// Height and width of `dy` padded by one zero row and column at the end.
fn padded(g: &ConvGeometry) -> (usize, usize) {
    (g.out_height + 1, g.out_width + 1)
}

/// `dx`, `[batch, c_in, h, w]`; only where [`applies`] holds.
pub(crate) fn input_grad(g: &ConvGeometry, w: &[f32], dy: &[f32]) -> Vec<f32> {
    assert!(applies(g), "the stride-2 input gradient does not apply to {g:?}");
    assert_eq!(w.len(), g.weight_len(), "conv weight length");
    assert_eq!(dy.len(), g.batch * g.out_sample(), "conv output-gradient length");
    let packed = pack(g, w);
    let (hp, wp) = padded(g);
    written(g.batch * g.in_sample(), |dx| {
        dx.par_chunks_mut(g.in_sample()).zip(dy.par_chunks(g.out_sample())).for_each_init(Vec::new, |dyp: &mut Vec<f32>, (dx_b, dy_b)| {
            // The borders (last row and column) are zeroed once, when the scratch is sized;
            // every sample overwrites the interior alone.
            if dyp.len() != g.c_out * hp * wp {
                dyp.clear();
                dyp.resize(g.c_out * hp * wp, 0.0);
            }
            for (co, plane) in dy_b.chunks_exact(g.out_pixels()).enumerate() {
                for (r, row) in plane.chunks_exact(g.out_width).enumerate() {
                    dyp[(co * hp + r) * wp..][..g.out_width].copy_from_slice(row);
                }
            }
            // SAFETY: `applies` checked AVX-512F; `sample` asserts the lengths it indexes.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                avx512::sample(g, dyp, &packed, dx_b)
            }
        })
    })
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use super::{padded, LANES};
    use crate::geometry::ConvGeometry;
    use crate::lanes::avx512::transpose as transpose16;

    /// Column pairs per register block: with two channel blocks 2 × 4 pairs (16 accumulators,
    /// 8 output columns: one 16 × 16 transpose to store), one block alone 8 pairs.
    const PAIRS: usize = 4;

    /// `pair_kernel::<pairs, N>` for a strip known only at run time.
    macro_rules! strips {
        ($pairs:expr, $n:literal, $args:tt; $($u:literal)+) => {
            match $pairs {
                $($u => pair_kernel::<$u, $n> $args,)+
                other => unreachable!("a strip of {other} column pairs"),
            }
        };
    }

    /// One sample: channel blocks two at a time (a last odd one alone), every row of `dx`,
    /// strips of column pairs.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn sample(g: &ConvGeometry, dyp: &[f32], packed: &[f32], dx_b: &mut [MaybeUninit<f32>]) {
        let (hp, wp) = padded(g);
        assert!(dyp.len() == g.c_out * hp * wp && packed.len() == g.weight_len() && dx_b.len() == g.in_sample());
        let blocks = g.c_in / LANES;
        let pairs = g.width.div_ceil(2);
        let mut block = 0;
        while block < blocks {
            let pair = blocks - block >= 2;
            let widest = if pair { PAIRS } else { 2 * PAIRS };
            for ih in 0..g.height {
                let mut u = 0;
                while u < pairs {
                    let strip = (pairs - u).min(widest);
                    // SAFETY: the strip's pairs read `dy` columns `u ..= u + strip ≤
                    // out_width` of rows `ih / 2 + {0, 1} ≤ out_height`, inside `dyp`; the
                    // blocks lie inside `packed` and `dx_b`.
                    unsafe {
                        if pair {
                            strips!(strip, 2, (g, dyp, packed, dx_b, ih, u, block); 1 2 3 4);
                        } else {
                            strips!(strip, 1, (g, dyp, packed, dx_b, ih, u, block); 1 2 3 4 5 6 7 8);
                        }
                    }
                    u += strip;
                }
            }
            block += if pair { 2 } else { 1 };
        }
    }

    /// Output row `ih`, columns `2u ..< 2(u + U)` (those inside the row), channel blocks
    /// `block ..< block + N`: `acc[n][2p]` and `acc[n][2p + 1]` are pair `p`'s even and odd
    /// column.
    #[target_feature(enable = "avx512f")]
    unsafe fn pair_kernel<const U: usize, const N: usize>(g: &ConvGeometry, dyp: &[f32], packed: &[f32], dx_b: &mut [MaybeUninit<f32>], ih: usize, u: usize, block: usize) {
        let (hp, wp) = padded(g);
        let a = ih / 2;
        // (kh, dy row) for this parity of `ih`, in kh order.
        let rows: &[(usize, usize)] = if ih % 2 == 0 { &[(1, a)] } else { &[(0, a + 1), (2, a)] };
        let mut acc = [[[_mm512_setzero_ps(); 2]; U]; N];
        let p = packed.as_ptr();
        for co in 0..g.c_out {
            for &(kh, r) in rows {
                // SAFETY: row `r ≤ out_height` of channel `co`, from column `u`.
                let row = unsafe { dyp.as_ptr().add((co * hp + r) * wp + u) };
                let mut wv = [[_mm512_setzero_ps(); 3]; N];
                for (n, taps) in wv.iter_mut().enumerate() {
                    for (kw, v) in taps.iter_mut().enumerate() {
                        // SAFETY: tap (kh, kw) of output channel `co` in block `block + n`.
                        *v = unsafe { _mm512_loadu_ps(p.add((((block + n) * g.c_out + co) * 9 + kh * 3 + kw) * LANES)) };
                    }
                }
                // Pair `q` takes, in kw order: column `q + 1` at kw = 0 (odd column only),
                // column `q` at kw = 1 (even) and kw = 2 (odd).
                for q in 0..U {
                    // SAFETY: columns `u + q` and `u + q + 1 ≤ out_width`, inside the row.
                    let (here, next) = unsafe { (_mm512_set1_ps(*row.add(q)), _mm512_set1_ps(*row.add(q + 1))) };
                    for n in 0..N {
                        acc[n][q][1] = _mm512_fmadd_ps(wv[n][0], next, acc[n][q][1]);
                        acc[n][q][0] = _mm512_fmadd_ps(wv[n][1], here, acc[n][q][0]);
                        acc[n][q][1] = _mm512_fmadd_ps(wv[n][2], here, acc[n][q][1]);
                    }
                }
            }
        }
        // SAFETY: the row, the blocks and the columns kept lie inside `dx_b`.
        unsafe { store::<U, N>(g, dx_b, ih, 2 * u, block, &acc) };
    }

    /// `acc` into row `ih` of the sample's NCHW `dx` from column `first`, dropping columns
    /// past the row's end (an odd width's last pair). Two blocks of four whole pairs (8
    /// columns × 32 channels) are one 16 × 16 transpose and two half stores a channel, one
    /// block of eight (16 columns × 16 channels) one transpose and a store a channel.
    #[target_feature(enable = "avx512f")]
    unsafe fn store<const U: usize, const N: usize>(g: &ConvGeometry, dx_b: &mut [MaybeUninit<f32>], ih: usize, first: usize, block: usize, acc: &[[[__m512; 2]; U]; N]) {
        let plane = g.height * g.width;
        let at = ih * g.width + first;
        let columns = (g.width - first).min(2 * U);
        if U == 4 && N == 2 && columns == 8 {
            let t = transpose16(std::array::from_fn(|i| acc[i / 8][(i % 8) / 2][i % 2]));
            let x = dx_b.as_mut_ptr().cast::<f32>();
            for (j, v) in t.iter().enumerate() {
                let low = (block * LANES + j) * plane + at;
                let high = ((block + 1) * LANES + j) * plane + at;
                // SAFETY: columns `first .. first + 8` of both channels' rows lie inside `dx`;
                // the high store's unmasked lanes 8..16 land on `high .. high + 8`.
                unsafe {
                    _mm512_mask_storeu_ps(x.add(low), 0x00FF, *v);
                    _mm512_mask_storeu_ps(x.add(high - 8), 0xFF00, *v);
                }
            }
            return;
        }
        if U == 8 && N == 1 && columns == 16 {
            let t = transpose16(std::array::from_fn(|i| acc[0][i / 2][i % 2]));
            let x = dx_b.as_mut_ptr().cast::<f32>();
            for (j, v) in t.iter().enumerate() {
                // SAFETY: columns `first .. first + 16` of channel `block·16 + j`'s row.
                unsafe { _mm512_storeu_ps(x.add((block * LANES + j) * plane + at), *v) };
            }
            return;
        }
        let mut lanes = [0.0f32; LANES];
        for (n, pairs) in acc.iter().enumerate() {
            for (c, v) in pairs.iter().flatten().take(columns).enumerate() {
                // SAFETY: `lanes` holds 16 floats.
                unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), *v) };
                for (lane, value) in lanes.iter().enumerate() {
                    dx_b[((block + n) * LANES + lane) * plane + at + c].write(*value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::assert_input_grad_is_the_definition;

    #[test]
    fn the_stride_2_input_gradient_is_the_definition() {
        if !crate::direct::available() {
            eprintln!("no AVX-512 on this CPU: the stride-2 input gradient is not used here");
            return;
        }
        // Pairs of channel blocks and an odd block alone (16, 48 inputs), whole strips of
        // four pairs and shorter ones, odd heights and widths (a last column without its odd
        // partner), batches of 1–3.
        let shapes = [
            ([2, 16, 32, 32], [32, 16, 3, 3]),
            ([3, 32, 16, 16], [64, 32, 3, 3]),
            ([1, 48, 9, 7], [16, 48, 3, 3]),
            ([2, 32, 11, 13], [24, 32, 3, 3]),
            ([3, 64, 2, 1], [16, 64, 3, 3]),
        ];
        let geometries: Vec<_> = shapes.map(|(x, w)| ConvGeometry::new(x, w, [2, 2], [1, 1]).unwrap()).into();
        assert!(geometries.iter().all(applies));
        assert_input_grad_is_the_definition(&geometries, input_grad);
    }

    #[test]
    fn other_shapes_keep_col2im() {
        let g = |c_in, c_out, k, s, p| ConvGeometry::new([1, c_in, 8, 8], [c_out, c_in, k, k], [s, s], [p, p]).unwrap();
        assert!(!applies(&g(16, 32, 3, 1, 1)), "stride 1");
        assert!(!applies(&g(16, 32, 5, 2, 2)), "5×5");
        assert!(!applies(&g(16, 32, 3, 2, 0)), "unpadded");
        assert!(!applies(&g(24, 32, 3, 2, 1)), "inputs not in whole registers");
        assert!(!applies(&g(16, 8, 3, 2, 1)), "few outputs");
    }
}

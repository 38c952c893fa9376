//! One sample's column matrix, its transpose and its adjoint, a tile of output rows at a time.
//!
//! The column matrix of a sample is `[c_in·kh·kw, ho·wo]`: row `(ci, ky, kx)` holds, for every
//! output pixel `(oy, ox)`, the input pixel `x[ci, oy·s + ky − p, ox·s + kx − p]` (zero where
//! that falls in the padding). The convolution is then `Y = W · col` with `W` read as
//! `[c_out, c_in·kh·kw]`, straight from NCHW with no layout change.
//!
//! Every function here builds or consumes only the columns of the output rows `rows`
//! (`[oy0, oy1)`): the kernels walk a sample tile by tile so the buffer stays in cache
//! instead of streaming a whole sample's matrix (590 kB for ResNet's stage 1) through memory.

use std::ops::Range;

use crate::geometry::ConvGeometry;

/// Output indices `o` in `[lo, hi)` whose input index `o·s + k − p` lands inside `[0, len)`.
fn valid_outputs(out_len: usize, in_len: usize, k: usize, s: usize, p: usize) -> (usize, usize) {
    // o·s + k ≥ p  ⇔  o ≥ ceil((p − k) / s)
    let lo = if p > k { (p - k).div_ceil(s) } else { 0 };
    // o·s + k − p ≤ len − 1  ⇔  o ≤ (len − 1 + p − k) / s
    let hi = match (in_len + p).checked_sub(k + 1) {
        Some(top) => (top / s + 1).min(out_len),
        None => 0,
    };
    (lo.min(hi), hi)
}

/// Writes the columns of output rows `rows` of one sample `x: [c_in, h, w]` into
/// `col: [c_in·kh·kw, |rows|·wo]`.
pub fn im2col(g: &ConvGeometry, x: &[f32], rows: Range<usize>, col: &mut [f32]) {
    if g.stride == [1, 1] && g.out_width == g.width {
        return im2col_same_width(g, x, rows, col);
    }
    let hw = g.height * g.width;
    let pixels = rows.len() * g.out_width;
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [ph, pw] = g.padding;
    debug_assert_eq!(x.len(), g.in_sample());
    debug_assert_eq!(col.len(), g.col_rows() * pixels);
    for (row, dst) in col.chunks_exact_mut(pixels).enumerate() {
        let (ci, ky, kx) = (row / (kh * kw), row / kw % kh, row % kw);
        let plane = &x[ci * hw..(ci + 1) * hw];
        let (oy_lo, oy_hi) = valid_outputs(g.out_height, g.height, ky, sh, ph);
        let (ox_lo, ox_hi) = valid_outputs(g.out_width, g.width, kx, sw, pw);
        for (oy, out_row) in rows.clone().zip(dst.chunks_exact_mut(g.out_width)) {
            if oy < oy_lo || oy >= oy_hi {
                out_row.fill(0.0);
                continue;
            }
            let src = &plane[(oy * sh + ky - ph) * g.width..][..g.width];
            out_row[..ox_lo].fill(0.0);
            out_row[ox_hi..].fill(0.0);
            let first = ox_lo * sw + kx - pw;
            if sw == 1 {
                out_row[ox_lo..ox_hi].copy_from_slice(&src[first..first + (ox_hi - ox_lo)]);
            } else {
                for (d, s) in out_row[ox_lo..ox_hi].iter_mut().zip(src[first..].iter().step_by(sw)) {
                    *d = *s;
                }
            }
        }
    }
}

/// [`im2col`] for stride 1 and an output as wide as the input ("same" padding, every 3×3
/// and 5×5 layer of the paper's models). Then output pixel `d` of row `(ci, ky, kx)` reads
/// input pixel `d + (ky − ph)·w + (kx − pw)` of plane `ci`: the whole tile is one shifted
/// copy, after which the columns that wrapped around a row edge are zeroed. One `memcpy`
/// per row of the column matrix instead of one per output row (8–32 floats each).
fn im2col_same_width(g: &ConvGeometry, x: &[f32], rows: Range<usize>, col: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if g.c_in >= MASKED_MIN_INPUT_CHANNELS && crate::direct::available() {
        // SAFETY: the CPU has AVX-512F (checked above).
        return unsafe { avx512::im2col_same_width(g, x, rows, col) };
    }
    portable_same_width(g, x, rows, col)
}

/// Below this many input channels the masks (built once per tile, shared by every channel)
/// cost about what they save: the 3-channel stems keep the copies.
const MASKED_MIN_INPUT_CHANNELS: usize = 16;

fn portable_same_width(g: &ConvGeometry, x: &[f32], rows: Range<usize>, col: &mut [f32]) {
    let (hw, wo) = (g.height * g.width, g.out_width);
    let pixels = rows.len() * wo;
    let [kh, kw] = g.kernel;
    let [ph, pw] = g.padding;
    for (row, dst) in col.chunks_exact_mut(pixels).enumerate() {
        let (ci, ky, kx) = (row / (kh * kw), row / kw % kh, row % kw);
        let plane = &x[ci * hw..(ci + 1) * hw];
        let (oy_lo, oy_hi) = valid_outputs(g.out_height, g.height, ky, 1, ph);
        let (ox_lo, ox_hi) = valid_outputs(wo, g.width, kx, 1, pw);
        // Output rows of the tile that read inside the map: [a, b).
        // (Clamped into the tile: a tile can lie wholly above or below the rows this tap
        // reads, e.g. a one-row tile under a padding of 2.)
        let a = oy_lo.clamp(rows.start, rows.end);
        let b = oy_hi.clamp(a, rows.end);
        dst[..(a - rows.start) * wo].fill(0.0);
        dst[(b - rows.start) * wo..].fill(0.0);
        if a == b {
            continue;
        }
        // Output pixel d (in the sample) reads input pixel d + shift.
        let shift = (ky as isize - ph as isize) * g.width as isize + (kx as isize - pw as isize);
        let first = ((a * wo) as isize).max(-shift) as usize;
        let last = ((b * wo) as isize).min(hw as isize - shift) as usize;
        let (from, to) = ((first as isize + shift) as usize, (last as isize + shift) as usize);
        dst[first - rows.start * wo..last - rows.start * wo].copy_from_slice(&plane[from..to]);
        for oy in a..b {
            let out_row = &mut dst[(oy - rows.start) * wo..][..wo];
            out_row[..ox_lo].fill(0.0);
            out_row[ox_hi..].fill(0.0);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::valid_outputs;
    use crate::geometry::ConvGeometry;
    use crate::lanes::{first, within};

    /// [`super::portable_same_width`] as masked vector loads: lane `d` of a row `(ci, ky, kx)`
    /// reads input pixel `d + shift(ky, kx)` where that lies inside the map, and is zero
    /// elsewhere — a mask that depends on the tap alone, so it is built once per tile and
    /// used by every input channel. (AlexNet's 8×8 maps: the copies and edge fills were
    /// 8–16 floats each.)
    #[target_feature(enable = "avx512f")]
    pub(super) fn im2col_same_width(g: &ConvGeometry, x: &[f32], rows: Range<usize>, col: &mut [f32]) {
        let (hw, wo) = (g.height * g.width, g.out_width);
        let pixels = rows.len() * wo;
        let [kh, kw] = g.kernel;
        let [ph, pw] = g.padding;
        assert!(x.len() >= g.c_in * hw && col.len() >= g.col_rows() * pixels && wo == g.width);
        if pixels == 0 {
            return;
        }
        let vectors = pixels.div_ceil(16);
        // Lanes whose output column reads inside the map, per kernel column.
        let mut columns = vec![0u16; kw * vectors];
        for kx in 0..kw {
            let (lo, hi) = valid_outputs(wo, g.width, kx, 1, pw);
            let mut ox = 0;
            for d in 0..pixels {
                if (lo..hi).contains(&ox) {
                    columns[kx * vectors + d / 16] |= 1 << (d % 16);
                }
                ox = if ox + 1 == wo { 0 } else { ox + 1 };
            }
        }
        // Per tap: its shift, and each vector's lanes inside both the rows and the columns.
        let mut masks = vec![0u16; kh * kw * vectors];
        let mut shifts = vec![0isize; kh * kw];
        for ky in 0..kh {
            let (lo, hi) = valid_outputs(g.out_height, g.height, ky, 1, ph);
            let a = lo.clamp(rows.start, rows.end);
            let b = hi.clamp(a, rows.end);
            let inside = (a - rows.start) * wo..(b - rows.start) * wo;
            for kx in 0..kw {
                let t = ky * kw + kx;
                shifts[t] = (ky as isize - ph as isize) * g.width as isize + (kx as isize - pw as isize);
                for v in 0..vectors {
                    masks[t * vectors + v] = within(v * 16, inside.clone()) & columns[kx * vectors + v];
                }
            }
        }
        let last = first(pixels - (vectors - 1) * 16);
        let base = (rows.start * wo) as isize;
        for ci in 0..g.c_in {
            let plane = x.as_ptr().wrapping_add(ci * hw);
            for t in 0..kh * kw {
                let src = plane.wrapping_offset(base + shifts[t]);
                let dst = (ci * kh * kw + t) * pixels;
                for v in 0..vectors {
                    // SAFETY: a masked load reads only its unmasked lanes, each an input pixel
                    // of plane ci (`masks`); the stores are lanes of row (ci, t) of `col`,
                    // whose length is asserted above (the last vector stores `pixels` mod 16).
                    unsafe {
                        let value = _mm512_maskz_loadu_ps(masks[t * vectors + v], src.wrapping_add(v * 16));
                        let store = if v + 1 == vectors { last } else { 0xFFFF };
                        _mm512_mask_storeu_ps(col.as_mut_ptr().add(dst + v * 16), store, value);
                    }
                }
            }
        }
    }
}

/// Writes the transposed columns of output rows `rows`, `out: [|rows|·wo, c_in·kh·kw]`: one
/// row per output pixel, its receptive field contiguous. The weight gradient multiplies by
/// this layout: GEMM reads it without repacking, where through [`im2col`]'s layout it ran at
/// 10–20 GFLOP/s on the ResNet stage-1 shapes (measured: 9.6 against 173 GFLOP/s for one
/// 16×144×1024 product).
pub fn im2row(g: &ConvGeometry, x: &[f32], rows: Range<usize>, out: &mut [f32]) {
    // The paper's kernels are 1, 3 and 5 wide: a compile-time width turns each row segment
    // into a few register moves instead of a `memcpy` call per 3 floats.
    match g.kernel[1] {
        1 => im2row_width::<1>(g, x, rows, out),
        3 => im2row_width::<3>(g, x, rows, out),
        5 => im2row_width::<5>(g, x, rows, out),
        _ => im2row_width::<0>(g, x, rows, out),
    }
}

/// [`im2row`] for kernels `KW` wide (`KW = 0`: any width, read from `g`).
fn im2row_width<const KW: usize>(g: &ConvGeometry, x: &[f32], rows: Range<usize>, out: &mut [f32]) {
    let hw = g.height * g.width;
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [ph, pw] = g.padding;
    let k = g.col_rows();
    debug_assert_eq!(x.len(), g.in_sample());
    debug_assert_eq!(out.len(), k * rows.len() * g.out_width);
    for (pixel, dst) in out.chunks_exact_mut(k).enumerate() {
        let (oy, ox) = (rows.start + pixel / g.out_width, pixel % g.out_width);
        // Kernel columns whose input column lies inside the map: [kx_lo, kx_hi).
        let left = ox * sw;
        let kx_lo = pw.saturating_sub(left).min(kw);
        let kx_hi = (g.width + pw).saturating_sub(left).min(kw).max(kx_lo);
        for (ci, field) in dst.chunks_exact_mut(kh * kw).enumerate() {
            let plane = &x[ci * hw..(ci + 1) * hw];
            for (ky, seg) in field.chunks_exact_mut(kw).enumerate() {
                let iy = oy * sh + ky;
                if iy < ph || iy - ph >= g.height {
                    seg.fill(0.0);
                    continue;
                }
                let src = &plane[(iy - ph) * g.width..][..g.width];
                if KW != 0 && kx_lo == 0 && kx_hi == KW {
                    let from: &[f32; KW] = src[left - pw..left - pw + KW].try_into().expect("KW wide");
                    let to: &mut [f32; KW] = seg.try_into().expect("KW wide");
                    *to = *from;
                    continue;
                }
                seg[..kx_lo].fill(0.0);
                seg[kx_hi..].fill(0.0);
                if kx_hi > kx_lo {
                    let first = left + kx_lo - pw;
                    seg[kx_lo..kx_hi].copy_from_slice(&src[first..first + (kx_hi - kx_lo)]);
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds every entry of `col: [c_in·kh·kw, |rows|·wo]` onto the
/// input pixel it was read from, in `dx: [c_in, h, w]`. The order of the additions is fixed
/// by the loops and the caller's tile order, so the result does not depend on threads.
pub fn col2im_add(g: &ConvGeometry, col: &[f32], rows: Range<usize>, dx: &mut [f32]) {
    let hw = g.height * g.width;
    let pixels = rows.len() * g.out_width;
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [ph, pw] = g.padding;
    debug_assert_eq!(dx.len(), g.in_sample());
    debug_assert_eq!(col.len(), g.col_rows() * pixels);
    for (row, src) in col.chunks_exact(pixels).enumerate() {
        let (ci, ky, kx) = (row / (kh * kw), row / kw % kh, row % kw);
        let plane = &mut dx[ci * hw..(ci + 1) * hw];
        let (oy_lo, oy_hi) = valid_outputs(g.out_height, g.height, ky, sh, ph);
        let (ox_lo, ox_hi) = valid_outputs(g.out_width, g.width, kx, sw, pw);
        for oy in oy_lo.max(rows.start)..oy_hi.min(rows.end) {
            let at = (oy - rows.start) * g.out_width;
            let from = &src[at + ox_lo..at + ox_hi];
            let first = ox_lo * sw + kx - pw;
            let dst = &mut plane[(oy * sh + ky - ph) * g.width..][..g.width];
            if sw == 1 {
                for (d, s) in dst[first..first + from.len()].iter_mut().zip(from) {
                    *d += *s;
                }
            } else {
                for (d, s) in dst[first..].iter_mut().step_by(sw).zip(from) {
                    *d += *s;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn im2row_is_the_transpose_of_im2col() {
        for (c, h, w, k, s, p) in [(2, 5, 7, 3, 1, 1), (3, 6, 6, 3, 2, 1), (1, 9, 8, 5, 2, 2), (4, 4, 4, 1, 2, 0), (2, 3, 3, 5, 1, 2)] {
            let g = ConvGeometry::new([1, c, h, w], [2, c, k, k], [s, s], [p, p]).unwrap();
            let x: Vec<f32> = (0..g.in_sample()).map(|i| i as f32 + 1.0).collect();
            let (kk, pixels) = (g.col_rows(), g.out_pixels());
            let (mut col, mut rows) = (vec![f32::NAN; kk * pixels], vec![f32::NAN; kk * pixels]);
            im2col(&g, &x, 0..g.out_height, &mut col);
            im2row(&g, &x, 0..g.out_height, &mut rows);
            for r in 0..kk {
                for q in 0..pixels {
                    assert_eq!(col[r * pixels + q].to_bits(), rows[q * kk + r].to_bits(), "{g:?} row {r} pixel {q}");
                }
            }
        }
    }

    #[test]
    fn tiles_of_rows_assemble_the_whole_matrix() {
        let g = ConvGeometry::new([1, 3, 9, 7], [2, 3, 3, 3], [2, 2], [1, 1]).unwrap();
        let x: Vec<f32> = (0..g.in_sample()).map(|i| i as f32 - 20.0).collect();
        let (k, wo) = (g.col_rows(), g.out_width);
        let mut whole = vec![0.0; k * g.out_pixels()];
        im2col(&g, &x, 0..g.out_height, &mut whole);
        let (mut dx_whole, mut dx_tiles) = (vec![0.0; g.in_sample()], vec![0.0; g.in_sample()]);
        col2im_add(&g, &whole, 0..g.out_height, &mut dx_whole);
        for rows in [0..2, 2..3, 3..g.out_height] {
            let mut tile = vec![f32::NAN; k * rows.len() * wo];
            im2col(&g, &x, rows.clone(), &mut tile);
            for r in 0..k {
                let from_whole = &whole[r * g.out_pixels() + rows.start * wo..][..rows.len() * wo];
                assert_eq!(&tile[r * rows.len() * wo..][..rows.len() * wo], from_whole, "row {r} tile {rows:?}");
            }
            col2im_add(&g, &tile, rows, &mut dx_tiles);
        }
        assert_eq!(dx_whole, dx_tiles);
    }

    /// The masked vector path writes the portable copies' matrix, tile by tile, bit for bit
    /// (paddings wider than a tap, maps narrower and wider than a vector, odd tiles).
    #[test]
    fn the_masked_columns_are_the_copies() {
        if !crate::direct::available() {
            return;
        }
        for (c, h, w, k, p) in [(16, 8, 8, 3, 1), (17, 5, 7, 3, 1), (16, 16, 16, 3, 1), (20, 9, 33, 5, 2), (16, 3, 3, 5, 2), (16, 6, 5, 1, 0)] {
            let g = ConvGeometry::new([1, c, h, w], [4, c, k, k], [1, 1], [p, p]).unwrap();
            assert_eq!(g.out_width, w);
            let x: Vec<f32> = (0..g.in_sample()).map(|i| i as f32 * 0.5 - 7.0).collect();
            for rows in [0..g.out_height, 0..1, 1..g.out_height.min(4), g.out_height - 1..g.out_height] {
                let n = g.col_rows() * rows.len() * g.out_width;
                let (mut wide, mut plain) = (vec![f32::NAN; n], vec![f32::NAN; n]);
                portable_same_width(&g, &x, rows.clone(), &mut plain);
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `available` checked AVX-512F.
                unsafe {
                    avx512::im2col_same_width(&g, &x, rows.clone(), &mut wide)
                };
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&wide), bits(&plain), "{g:?} rows {rows:?}");
            }
        }
    }

    #[test]
    fn valid_outputs_match_a_direct_scan() {
        for (len, k, s, p) in [(5, 3, 1, 1), (5, 3, 2, 1), (7, 5, 2, 2), (4, 1, 2, 0), (3, 5, 1, 2), (6, 3, 3, 0)] {
            let out = (len + 2 * p - k) / s + 1;
            for offset in 0..k {
                let (lo, hi) = valid_outputs(out, len, offset, s, p);
                let direct: Vec<usize> = (0..out).filter(|o| o * s + offset >= p && o * s + offset - p < len).collect();
                assert_eq!((lo..hi).collect::<Vec<_>>(), direct, "len {len} k {k} offset {offset} s {s} p {p}");
            }
        }
    }
}

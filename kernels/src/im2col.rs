//! One sample's column matrix and its adjoint.
//!
//! The column matrix of a sample is `[c_in·kh·kw, ho·wo]`: row `(ci, ky, kx)` holds, for every
//! output pixel `(oy, ox)`, the input pixel `x[ci, oy·s + ky − p, ox·s + kx − p]` (zero where
//! that falls in the padding). The convolution is then `Y = W · col` with `W` read as
//! `[c_out, c_in·kh·kw]`, straight from NCHW with no layout change.

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

/// Writes the column matrix of one sample `x: [c_in, h, w]` into `col: [c_in·kh·kw, ho·wo]`.
pub fn im2col(g: &ConvGeometry, x: &[f32], col: &mut [f32]) {
    let (hw, pixels) = (g.height * g.width, g.out_pixels());
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
        for (oy, out_row) in dst.chunks_exact_mut(g.out_width).enumerate() {
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

/// The adjoint of [`im2col`]: adds every entry of `col: [c_in·kh·kw, ho·wo]` onto the input
/// pixel it was read from, in `dx: [c_in, h, w]` (which the caller zeroed). The order of the
/// additions is fixed by the loops, so the result does not depend on threads.
pub fn col2im_add(g: &ConvGeometry, col: &[f32], dx: &mut [f32]) {
    let (hw, pixels) = (g.height * g.width, g.out_pixels());
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
        for oy in oy_lo..oy_hi {
            let from = &src[oy * g.out_width + ox_lo..oy * g.out_width + ox_hi];
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

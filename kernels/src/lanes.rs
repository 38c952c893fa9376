//! Sums in one fixed order: 16 interleaved partial sums (lane `j` adds elements `j`, `j + 16`,
//! …), folded pairwise at the end, then the tail that fills no whole vector. The same bits on
//! every machine and thread count, and an order one AVX-512 register keeps exactly, so the
//! vector path (chosen at run time) and the portable one agree bit for bit.

pub(crate) const LANES: usize = 16;

/// A lane mask (one bit per lane of a 16-float vector) of its first `n` (≤ 16) lanes.
pub(crate) fn first(n: usize) -> u16 {
    debug_assert!(n <= LANES);
    ((1u32 << n) - 1) as u16
}

/// The lanes of the vector starting at element `start` whose elements fall in `range`.
pub(crate) fn within(start: usize, range: std::ops::Range<usize>) -> u16 {
    let lo = range.start.saturating_sub(start).min(LANES);
    let hi = range.end.saturating_sub(start).min(LANES);
    first(hi) & !first(lo)
}

/// The 16 partial sums folded pairwise (`lanes[i] += lanes[i + w]` for w = 8, 4, 2, 1).
pub(crate) fn fold(mut lanes: [f32; LANES]) -> f32 {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            lanes[i] += lanes[i + width];
        }
    }
    lanes[0]
}

/// The elements after the last whole vector, summed in order.
pub(crate) fn tail(values: &[f32]) -> &[f32] {
    &values[values.len() / LANES * LANES..]
}

/// `Σ values` in the fixed order.
pub(crate) fn sum(values: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::direct::available() {
        // SAFETY: the CPU has AVX-512F (checked above).
        return unsafe { avx512::sum(values) };
    }
    portable_sum(values)
}

pub(crate) fn portable_sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    for chunk in values.chunks_exact(LANES) {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += *v;
        }
    }
    fold(lanes) + tail(values).iter().sum::<f32>()
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    use super::{fold, tail, LANES};

    /// The lanes of `v` as an array, for [`fold`].
    #[target_feature(enable = "avx512f")]
    pub(crate) fn lanes(v: __m512) -> [f32; LANES] {
        let mut out = [0.0f32; LANES];
        // SAFETY: `out` holds 16 floats.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), v) };
        out
    }

    /// The 16 × 16 matrix whose rows are `r`, transposed: output `j` holds element `j` of every
    /// row. Three rounds of shuffles (64 in all, against 256 scalar loads and stores): pairs of
    /// rows interleaved by element, then by pairs of elements, then 128-bit quarters exchanged.
    #[target_feature(enable = "avx512f")]
    pub(crate) fn transpose(r: [__m512; LANES]) -> [__m512; LANES] {
        // a[2i], a[2i + 1]: rows 2i and 2i + 1 interleaved, low and high halves of each quarter.
        let mut a = [_mm512_setzero_ps(); LANES];
        for i in 0..LANES / 2 {
            a[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            a[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        // b[4g + k], quarter q: element 4q + k of rows 4g .. 4g + 3.
        let pairs = |x: __m512, y: __m512, high: bool| {
            let (x, y) = (_mm512_castps_pd(x), _mm512_castps_pd(y));
            _mm512_castpd_ps(if high { _mm512_unpackhi_pd(x, y) } else { _mm512_unpacklo_pd(x, y) })
        };
        let mut b = [_mm512_setzero_ps(); LANES];
        for g in 0..4 {
            let [a0, a1, a2, a3] = [a[4 * g], a[4 * g + 1], a[4 * g + 2], a[4 * g + 3]];
            b[4 * g] = pairs(a0, a2, false);
            b[4 * g + 1] = pairs(a0, a2, true);
            b[4 * g + 2] = pairs(a1, a3, false);
            b[4 * g + 3] = pairs(a1, a3, true);
        }
        // Output 4q + k: quarter q of b[k], b[4 + k], b[8 + k], b[12 + k].
        let mut out = [_mm512_setzero_ps(); LANES];
        for k in 0..4 {
            let [b0, b1, b2, b3] = [b[k], b[4 + k], b[8 + k], b[12 + k]];
            let (c0, c1) = (_mm512_shuffle_f32x4::<0x44>(b0, b1), _mm512_shuffle_f32x4::<0xEE>(b0, b1));
            let (c2, c3) = (_mm512_shuffle_f32x4::<0x44>(b2, b3), _mm512_shuffle_f32x4::<0xEE>(b2, b3));
            out[k] = _mm512_shuffle_f32x4::<0x88>(c0, c2);
            out[4 + k] = _mm512_shuffle_f32x4::<0xDD>(c0, c2);
            out[8 + k] = _mm512_shuffle_f32x4::<0x88>(c1, c3);
            out[12 + k] = _mm512_shuffle_f32x4::<0xDD>(c1, c3);
        }
        out
    }

    #[target_feature(enable = "avx512f")]
    pub(crate) fn sum(values: &[f32]) -> f32 {
        let mut acc = _mm512_setzero_ps();
        for chunk in values.chunks_exact(LANES) {
            // SAFETY: a chunk holds 16 floats.
            acc = _mm512_add_ps(acc, unsafe { _mm512_loadu_ps(chunk.as_ptr()) });
        }
        fold(lanes(acc)) + tail(values).iter().sum::<f32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transpose_moves_every_element_to_its_mirror() {
        if !crate::direct::available() {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::*;
            let m: Vec<f32> = (0..LANES * LANES).map(|i| i as f32).collect();
            // SAFETY: `available` checked AVX-512F; each row is 16 floats of `m`.
            let rows = std::array::from_fn(|i| unsafe { _mm512_loadu_ps(m.as_ptr().add(i * LANES)) });
            let t = unsafe { avx512::transpose(rows) };
            for (j, column) in t.iter().enumerate() {
                let column = unsafe { avx512::lanes(*column) };
                for (i, v) in column.iter().enumerate() {
                    assert_eq!(*v, m[i * LANES + j], "element ({i}, {j})");
                }
            }
        }
    }

    #[test]
    fn the_vector_sum_has_the_portable_sums_bits() {
        if !crate::direct::available() {
            return;
        }
        for n in [0, 1, 15, 16, 17, 64, 100, 1024, 1031] {
            let values: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1000) as f32 - 480.5) * 1.37e-3).collect();
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `available` checked AVX-512F.
            let wide = unsafe { avx512::sum(&values) };
            assert_eq!(wide.to_bits(), portable_sum(&values).to_bits(), "n = {n}");
        }
    }
}

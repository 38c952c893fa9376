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

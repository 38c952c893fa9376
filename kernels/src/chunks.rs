//! The weight gradients' sum over the batch, in an order fixed by the batch size alone, so a
//! run is bit-identical for any thread count (`cpu.rs`' GEMM path and `direct.rs` share it).

use std::ops::Range;

use rayon::prelude::*;

/// The weight gradient's sum over samples is split into at most this many chunks, each with
/// its own `[c_out, c_in·kh·kw]` partial: more chunks, more parallelism and more memory.
const WEIGHT_GRAD_CHUNKS: usize = 8;

/// `Σ_b` of per-sample terms of length `len`, as the weight gradients sum it: the batch split
/// into `min(batch, WEIGHT_GRAD_CHUNKS)` ranges fixed by the batch size alone, each range's
/// partial accumulated by `add(scratch, samples, partial)` in parallel (scratch from `scratch`,
/// one per thread), then the partials added in range order, element stretches in parallel —
/// the same bits for any thread count.
pub(crate) fn sum_over_sample_chunks<S: Send>(
    batch: usize,
    len: usize,
    scratch: impl Fn() -> S + Send + Sync,
    add: impl Fn(&mut S, Range<usize>, &mut [f32]) + Send + Sync,
) -> Vec<f32> {
    let chunks = batch.clamp(1, WEIGHT_GRAD_CHUNKS);
    let partials: Vec<Vec<f32>> = (0..chunks)
        .into_par_iter()
        .map_init(scratch, |s, i| {
            let mut partial = vec![0.0f32; len];
            add(s, i * batch / chunks..(i + 1) * batch / chunks, &mut partial);
            partial
        })
        .collect();
    let mut parts = partials.into_iter();
    let mut sum = parts.next().unwrap_or_else(|| vec![0.0; len]);
    let rest: Vec<Vec<f32>> = parts.collect();
    // Every element adds the partials in range order whichever thread takes its stretch; on
    // one thread this sum was 0.7 % of an AlexNet step's samples with the other core idle.
    sum.par_chunks_mut(SUM_STRETCH).enumerate().for_each(|(i, stretch)| {
        for part in &rest {
            for (d, p) in stretch.iter_mut().zip(&part[i * SUM_STRETCH..]) {
                *d += *p;
            }
        }
    });
    sum
}

/// Elements per task of the partials' sum: 64 KiB of each partial.
const SUM_STRETCH: usize = 16 * 1024;

//! Kernel outputs allocated without a zero fill: every kernel that fills one writes each of its
//! elements exactly once, so the fill was a wasted pass over memory (2–5 % of a ResNet step).

use std::mem::MaybeUninit;

/// A `Vec` of `n` elements, each written by `fill` (which must write all of them). In this
/// crate's unit tests the memory starts as NaN, so an element a kernel fails to write shows
/// up in their comparisons against the definition.
pub(crate) fn written(n: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(n);
    #[cfg(test)]
    v.spare_capacity_mut()[..n].fill(MaybeUninit::new(f32::NAN));
    fill(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: every caller's `fill` writes each element of the slice it is given (norm rows:
    // whole vectors, then the tail; convolutions: every output row, channel block and strip;
    // the shortcut: every carried row and the zero channels; the pool's gradient: each plane
    // zeroed, then its winners).
    unsafe { v.set_len(n) };
    v
}

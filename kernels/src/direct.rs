//! The forward convolution computed directly, without a column matrix, on AVX-512: sixteen
//! output channels in one register, a strip of output pixels of one row held in registers
//! while the kernel taps of a pass of input channels stream past (passes small enough that
//! their weights stay in L1; a strip's partial sums wait in a scratch between passes).
//!
//! `y[b, co, oh, ow] = bias[co] + Σ_ci Σ_ky Σ_kx w[co, ci, ky, kx] · xp[b, ci, oh·s + ky, ow·s + kx]`
//! with `xp` the zero-padded input. The weights are repacked once per call into
//! `[co / 16][ci][ky][kx][16]` (one aligned vector per tap and channel block); each sample is
//! padded into a reused buffer, so no tap needs a bounds check. Each output element is the
//! bias followed by its products in (ci, ky, kx) order — one fixed sequence whatever the
//! thread count or the passes, as everywhere in this crate. Stride 2 costs nothing extra: the
//! input is read by broadcasts, one scalar per tap and pixel, never by contiguous vectors.
//!
//! Chosen at run time (`applies`): on a CPU without AVX-512, and for shapes where GEMM on the
//! column matrix is faster (see `applies`), `cpu::forward` keeps im2col.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::chunks::sum_over_sample_chunks;
use crate::geometry::ConvGeometry;
use crate::output::written;

/// Output channels per register.
const LANES: usize = 16;
/// Output pixels of one row per register block (the strip's accumulators: `STRIP` × the
/// channel blocks at once, at most 2 × 8 = 16 of the 32 vector registers).
const STRIP: usize = 8;

/// Whether this machine runs the direct kernel and `g` is a shape it is for: at least 32 output
/// channels in whole registers, at least 16 input channels (fewer and the taps are too few to
/// hide the stores) and a real spatial kernel (1×1 convolutions are a plain GEMM already).
/// Measured with `fedolf bench conv` against the column matrix (experiments/results/speed-cpu.md):
/// 1.2–1.9× faster on the ResNet stages of 32 and 64 channels and on the CNN's 32 → 64 layer;
/// slower with 16 outputs (one block shares no broadcast between blocks: 0.76×). On AlexNet's
/// wide layers GEMM was faster on the Intel VM (306–340 GFLOP/s forward against 400–430);
/// since the strips skip the padding's kernel rows and the weight gradient adds groups of
/// samples, the direct kernels are 4–10 % faster than GEMM on every AlexNet layer with ≥ 16
/// inputs on the Zen 4 (forward, input and weight gradient), an AlexNet step 4–5 %.
pub(crate) fn applies(g: &ConvGeometry) -> bool {
    available() && g.c_out % LANES == 0 && g.c_out >= 2 * LANES && g.c_in >= 16 && g.kernel[0] * g.kernel[1] > 1
}

/// Whether this machine runs the direct weight gradient and `g` is a shape it is for: those of
/// [`applies`], and 16 output channels (one block of 16 taps × 16 channels in registers:
/// `fedolf bench conv`, ResNet's 16 → 16 on 32 × 32, 0.00223–0.00225 s against the row
/// kernel's 0.00248–0.00249 s).
pub(crate) fn weight_grad_applies(g: &ConvGeometry) -> bool {
    applies(g) || (available() && g.c_out == LANES && g.c_in >= 16 && g.kernel[0] * g.kernel[1] > 1)
}

/// Samples whose weight-gradient terms one register block adds before storing its sums: enough
/// for 256 output pixels (4 of the 64-channel stage's 8 × 8 maps), so the block's load, store
/// and setup are paid once per group, not once per small map. The samples are added in order,
/// so the sums are the same bits as one sample at a time.
fn samples_per_group(g: &ConvGeometry) -> usize {
    256usize.div_ceil(g.out_pixels()).clamp(1, 8)
}

pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Where element `(co, t)` of a `[c_out][taps]` bank lies in its packed form
/// `[c_out / block][taps][block]` (the weights going in, this kernel's weight gradient coming
/// out; `block` is 16 here, 8 in `rows`).
fn packed_at(co: usize, t: usize, taps: usize, block: usize) -> usize {
    ((co / block) * taps + t) * block + co % block
}

/// `[c_out, c_in, kh, kw]` → `[c_out / block][c_in][kh][kw][block]`.
pub(crate) fn pack_weights(g: &ConvGeometry, w: &[f32], block: usize) -> Vec<f32> {
    let taps = g.col_rows();
    let mut packed = vec![0.0f32; w.len()];
    for (co, row) in w.chunks_exact(taps).enumerate() {
        let first = packed_at(co, 0, taps, block);
        for (p, v) in packed[first..].iter_mut().step_by(block).zip(row) {
            *p = *v;
        }
    }
    packed
}

/// The padded height and width.
pub(crate) fn padded(g: &ConvGeometry) -> (usize, usize) {
    (g.height + 2 * g.padding[0], g.width + 2 * g.padding[1])
}

/// Copy one sample into `xp`, `[c_in][hp][wp]` with zero borders. `xp` is one thread's scratch
/// for one call, so it only ever holds samples of `g`: the borders are zeroed when it is first
/// sized, and every later sample overwrites the interior alone.
pub(crate) fn pad_sample(g: &ConvGeometry, x_b: &[f32], xp: &mut Vec<f32>) {
    let (hp, wp) = padded(g);
    if xp.len() != g.c_in * hp * wp {
        xp.clear();
        xp.resize(g.c_in * hp * wp, 0.0);
    }
    pad_into(g, x_b, xp);
}

/// [`pad_sample`]'s copy of the interior into `xp` (one padded sample), whose borders are zero.
fn pad_into(g: &ConvGeometry, x_b: &[f32], xp: &mut [f32]) {
    let (hp, wp) = padded(g);
    let [ph, pw] = g.padding;
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: AVX-512F checked; `rows_into` asserts the lengths.
        return unsafe { avx512::rows_into(g, x_b, xp) };
    }
    for ci in 0..g.c_in {
        for r in 0..g.height {
            let from = &x_b[(ci * g.height + r) * g.width..][..g.width];
            xp[(ci * hp + r + ph) * wp + pw..][..g.width].copy_from_slice(from);
        }
    }
}

/// The `[batch, c_out, ho, wo]` output of a direct forward kernel: samples in parallel, each
/// padded into its thread's scratch, then `sample(xp, y_b)` (this file's and `rows`' kernels).
pub(crate) fn per_padded_sample(g: &ConvGeometry, x: &[f32], sample: impl Fn(&[f32], &mut [MaybeUninit<f32>]) + Send + Sync) -> Vec<f32> {
    written(g.batch * g.out_sample(), |y| {
        y.par_chunks_mut(g.out_sample()).zip(x.par_chunks(g.in_sample())).for_each_init(Vec::new, |xp, (y_b, x_b)| {
            pad_sample(g, x_b, xp);
            sample(xp, y_b);
        })
    })
}

/// `y[b] = conv(x[b], w) + bias`, `[batch, c_out, ho, wo]`; only where [`applies`] holds.
pub(crate) fn forward(g: &ConvGeometry, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    assert!(applies(g), "the direct convolution does not apply to {g:?}");
    let packed = pack_weights(g, w, LANES);
    per_padded_sample(g, x, |xp, y_b| {
        // SAFETY: `applies` checked that the CPU has AVX-512F; the slices have the lengths
        // `sample` indexes (asserted there).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            avx512::sample(g, xp, &packed, bias, y_b)
        }
    })
}

/// `dW = Σ_b Σ_p dy[b, :, p] ⊗ xp[b, taps at p]`, `[c_out, c_in, kh, kw]`; only where
/// [`weight_grad_applies`] holds. The samples are summed as `cpu::weight_grad` sums them
/// ([`sum_over_sample_chunks`]: fixed ranges, each in sample and pixel order), so the result
/// does not depend on the thread count. Per sample the output gradient is transposed to
/// `[pixel][c_out]` (16 channels a vector; 16 × 16 tiles in registers) and the input padded; a
/// register block of 8 taps × 2 channel blocks (16 taps × a block alone) then accumulates over
/// every pixel.
pub(crate) fn weight_grad(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert!(weight_grad_applies(g), "the direct weight gradient does not apply to {g:?}");
    let (taps, pixels) = (g.col_rows(), g.out_pixels());
    let (hp, wp) = padded(g);
    let padded_len = g.c_in * hp * wp;
    let group = samples_per_group(g);
    let packed = sum_over_sample_chunks(g.batch, g.weight_len(), || (Vec::new(), Vec::new()), |(xp, dyt), samples, dw| {
        // One thread's scratch for `group` samples, sized (and its borders zeroed) once, as in
        // `pad_sample`; `transpose` writes every element of `dyt`.
        if xp.len() != group * padded_len {
            xp.clear();
            xp.resize(group * padded_len, 0.0);
            dyt.resize(group * g.out_sample(), 0.0);
        }
        for start in samples.clone().step_by(group) {
            let count = (samples.end - start).min(group);
            for (i, b) in (start..start + count).enumerate() {
                pad_into(g, &x[b * g.in_sample()..][..g.in_sample()], &mut xp[i * padded_len..][..padded_len]);
                let dy_b = &dy[b * g.out_sample()..][..g.out_sample()];
                // SAFETY: `weight_grad_applies` checked AVX-512F; `transpose` asserts the lengths.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    avx512::transpose(dy_b, pixels, &mut dyt[i * g.out_sample()..][..g.out_sample()])
                };
            }
            // SAFETY: as above; `weight_sample` asserts the lengths.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                avx512::weight_sample(g, &xp[..count * padded_len], &dyt[..count * g.out_sample()], count, dw)
            }
        }
    });
    let mut dw = vec![0.0f32; g.weight_len()];
    for (co, row) in dw.chunks_exact_mut(taps).enumerate() {
        let first = packed_at(co, 0, taps, LANES);
        for (d, p) in row.iter_mut().zip(packed[first..].iter().step_by(LANES)) {
            *d = *p;
        }
    }
    dw
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use super::{padded, LANES, STRIP};
    use crate::geometry::ConvGeometry;
    use crate::lanes::avx512::transpose as transpose16;
    use crate::lanes::first;

    /// [`super::pad_sample`]'s interior copy as vector moves: each input row is a few vectors
    /// (ResNet's 8, 16 and 32 pixels: one or two), where `copy_from_slice` called `memcpy` once
    /// a row (`fedolf bench conv`: 64 → 64 on 8×8, rows of 8, −3 to −4 % forward, dX and dW;
    /// the 16- and 32-pixel rows within noise).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rows_into(g: &ConvGeometry, x_b: &[f32], xp: &mut [f32]) {
        let (hp, wp) = padded(g);
        let [ph, pw] = g.padding;
        assert!(x_b.len() == g.in_sample() && xp.len() == g.c_in * hp * wp);
        let (w, whole) = (g.width, g.width / LANES * LANES);
        let tail = first(w - whole);
        for ci in 0..g.c_in {
            for r in 0..g.height {
                // SAFETY: row `r` of channel `ci` in `x_b`, and its place inside the padding
                // in `xp`; the tail's masked lanes stay inside the row.
                unsafe {
                    let from = x_b.as_ptr().add((ci * g.height + r) * w);
                    let to = xp.as_mut_ptr().add((ci * hp + r + ph) * wp + pw);
                    for c in (0..whole).step_by(LANES) {
                        _mm512_storeu_ps(to.add(c), _mm512_loadu_ps(from.add(c)));
                    }
                    if whole < w {
                        _mm512_mask_storeu_ps(to.add(whole), tail, _mm512_maskz_loadu_ps(tail, from.add(whole)));
                    }
                }
            }
        }
    }

    /// `strip_kernel::<strip, N>` for a strip width known only at run time.
    macro_rules! strips {
        ($strip:expr, $n:literal, $args:tt; $($u:literal)+) => {
            match $strip {
                $($u => strip_kernel::<$u, $n> $args,)+
                other => unreachable!("a strip of {other} pixels"),
            }
        };
    }

    /// Where one register block reads and writes: output row `oh`, the strip from column
    /// `ow`, channel blocks from `block`, over input channels `ci`; whether it starts from the
    /// bias (the first pass of input channels) and ends in the output (the last), or else
    /// continues from and into `partial`.
    #[derive(Clone, Copy)]
    struct At {
        oh: usize,
        ow: usize,
        block: usize,
        ci: (usize, usize),
        first: bool,
        last: bool,
    }

    /// Weight vectors a pass over a sample's rows reads (75 KiB): every input channel of
    /// ResNet's layers in one pass, passes only for wider inputs or 5×5 kernels.
    const PASS_VECTORS: usize = 1200;

    /// Input channels per pass: the fewest passes whose weights (`kh · kw · blocks` vectors a
    /// channel) fit [`PASS_VECTORS`], balanced. Each pass costs every strip a load and a store
    /// of its accumulators, and that per-strip work is most of what the kernel loses to the
    /// probe, so the passes are long: on the Zen 4 (32 KiB L1), ResNet's 64 → 64 forward on
    /// one thread read 84–85 % of the probe in passes of 16 channels (20 KiB of weights, as
    /// first chosen on a machine with a 48 KiB L1) and 88–93 % in one pass, its 32 → 64 at
    /// stride 2 82 % and 84–85 % (experiments/results/speed-cpu.md).
    fn pass(g: &ConvGeometry, blocks: usize) -> usize {
        let widest = (PASS_VECTORS / (g.kernel[0] * g.kernel[1] * blocks)).max(1);
        g.c_in.div_ceil(g.c_in.div_ceil(widest))
    }

    /// One sample: two channel blocks at a time (a last odd block alone); for each, the input
    /// channels in passes of [`pass`], and for each pass every output row, strip by strip.
    /// A pass's partial sums wait in `partial` (`[block][pixel][16]`) for the next.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn sample(g: &ConvGeometry, xp: &[f32], packed: &[f32], bias: Option<&[f32]>, y_b: &mut [MaybeUninit<f32>]) {
        let (hp, wp) = padded(g);
        assert!(xp.len() == g.c_in * hp * wp && packed.len() == g.weight_len() && y_b.len() == g.out_sample());
        assert!(bias.is_none_or(|b| b.len() == g.c_out));
        let blocks = g.c_out / LANES;
        let mut partial = Vec::new();
        let mut block = 0;
        while block < blocks {
            let pair = blocks - block >= 2;
            // A block alone gets twice the strip: the same 16 accumulators.
            let widest = if pair { STRIP } else { 2 * STRIP };
            let per_pass = pass(g, if pair { 2 } else { 1 });
            if per_pass < g.c_in && partial.is_empty() {
                partial.resize(g.out_sample(), 0.0);
            }
            for c0 in (0..g.c_in).step_by(per_pass) {
                let ci = (c0, (c0 + per_pass).min(g.c_in));
                for oh in 0..g.out_height {
                    let mut ow = 0;
                    while ow < g.out_width {
                        let strip = (g.out_width - ow).min(widest);
                        let at = At { oh, ow, block, ci, first: c0 == 0, last: ci.1 == g.c_in };
                        // SAFETY: the strip and blocks lie inside the output, and every tap
                        // they read inside the padded sample; `partial` holds `out_sample`
                        // floats whenever a range is not both first and last.
                        unsafe {
                            if pair {
                                strips!(strip, 2, (g, xp, packed, bias, y_b, &mut partial, at); 1 2 3 4 5 6 7 8);
                            } else {
                                strips!(strip, 1, (g, xp, packed, bias, y_b, &mut partial, at); 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
                            }
                        }
                        ow += strip;
                    }
                }
            }
            block += if pair { 2 } else { 1 };
        }
    }

    /// `U` output pixels × `N` channel blocks of 16, accumulated in `U·N` registers over the
    /// input channels `at.ci` and every (ky, kx), then written to the sample's NCHW output
    /// (the last range) or to `partial`.
    #[target_feature(enable = "avx512f")]
    unsafe fn strip_kernel<const U: usize, const N: usize>(g: &ConvGeometry, xp: &[f32], packed: &[f32], bias: Option<&[f32]>, y_b: &mut [MaybeUninit<f32>], partial: &mut [f32], at: At) {
        let (hp, wp) = padded(g);
        let [kh, kw] = g.kernel;
        let [sh, sw] = g.stride;
        let taps = g.col_rows();
        let pixels = g.out_pixels();
        let first_pixel = at.oh * g.out_width + at.ow;
        let mut acc = [[_mm512_setzero_ps(); U]; N];
        if !at.first {
            for (n, row) in acc.iter_mut().enumerate() {
                for (u, v) in row.iter_mut().enumerate() {
                    // SAFETY: pixel `first_pixel + u` of block `at.block + n`, inside `partial`.
                    *v = unsafe { _mm512_loadu_ps(partial.as_ptr().add(((at.block + n) * pixels + first_pixel + u) * LANES)) };
                }
            }
        } else if let Some(bias) = bias {
            for (n, row) in acc.iter_mut().enumerate() {
                // SAFETY: block `at.block + n` is a whole block of the `c_out` biases.
                let b = unsafe { _mm512_loadu_ps(bias.as_ptr().add((at.block + n) * LANES)) };
                *row = [b; U];
            }
        }
        // Pointers bumped tap by tap and row by row: the taps of a pass lie in (ci, ky, kx)
        // order in every block of `packed`, one vector each, `taps` vectors apart per block.
        let block_stride = taps * LANES;
        // SAFETY: tap `ci.0·kh·kw` of block `at.block`, and row `oh·sh` of channel `ci.0` from
        // column `ow·sw`, inside `packed` and `xp`.
        let mut wt = unsafe { packed.as_ptr().add((at.block * taps + at.ci.0 * kh * kw) * LANES) };
        let mut channel = unsafe { xp.as_ptr().add((at.ci.0 * hp + at.oh * sh) * wp + at.ow * sw) };
        // Kernel rows `top..bottom` read the input; the others read only the zero padding
        // (the first and last output rows of a 3 × 3, one in twelve taps on 8 × 8 maps) and
        // would add `w · 0`, so they are skipped. The rest keep their (ci, ky, kx) order.
        let top = g.padding[0].saturating_sub(at.oh * sh).min(kh);
        let bottom = (g.padding[0] + g.height).saturating_sub(at.oh * sh).clamp(top, kh);
        for _ in at.ci.0..at.ci.1 {
            let mut row = channel.wrapping_add(top * wp);
            let mut tap = wt.wrapping_add(top * kw * LANES);
            for _ in top..bottom {
                for kx in 0..kw {
                    // SAFETY: the tap's vector of blocks `at.block + n`, inside `packed`.
                    let wv: [__m512; N] = std::array::from_fn(|n| unsafe { _mm512_loadu_ps(tap.add(n * block_stride)) });
                    tap = tap.wrapping_add(LANES);
                    for u in 0..U {
                        // SAFETY: row `oh·sh + ky < hp` of the channel; the strip's last tap,
                        // column `(ow + U − 1)·sw + kw − 1`, is `< wp`.
                        let xv = unsafe { _mm512_set1_ps(*row.add(u * sw + kx)) };
                        for n in 0..N {
                            acc[n][u] = _mm512_fmadd_ps(wv[n], xv, acc[n][u]);
                        }
                    }
                }
                row = row.wrapping_add(wp);
            }
            wt = wt.wrapping_add(kh * kw * LANES);
            channel = channel.wrapping_add(hp * wp);
        }
        if at.last {
            // SAFETY: the strip and blocks lie inside the output.
            unsafe { store(g, y_b, at, &acc) };
        } else {
            for (n, row) in acc.iter().enumerate() {
                for (u, v) in row.iter().enumerate() {
                    // SAFETY: as for the loads above.
                    unsafe { _mm512_storeu_ps(partial.as_mut_ptr().add(((at.block + n) * pixels + first_pixel + u) * LANES), *v) };
                }
            }
        }
    }

    /// Taps per register block of the weight gradient (× 2 channel blocks: 16 accumulators; a
    /// block alone takes twice as many).
    const TAPS: usize = 8;

    /// `tap_kernel::<taps, N>` for a tap count known only at run time.
    macro_rules! tap_blocks {
        ($taps:expr, $n:literal, $args:tt; $($t:literal)+) => {
            match $taps {
                $($t => tap_kernel::<$t, $n> $args,)+
                other => unreachable!("a block of {other} taps"),
            }
        };
    }

    /// `dy_b` (`[c_out][pixels]`, `c_out` a multiple of 16) into `dyt` (`[pixels][c_out]`): 16
    /// channels × 16 pixels a tile through [`transpose`], the pixels after the last whole tile
    /// one by one.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose(dy_b: &[f32], pixels: usize, dyt: &mut [f32]) {
        let c_out = dy_b.len() / pixels;
        assert!(c_out % LANES == 0 && dy_b.len() == c_out * pixels && dyt.len() == dy_b.len());
        let whole = pixels / LANES * LANES;
        for co in (0..c_out).step_by(LANES) {
            for p in (0..whole).step_by(LANES) {
                // SAFETY: row `co + i` holds pixels `p .. p + 16` (`p + 16 ≤ pixels`).
                let rows = std::array::from_fn(|i| unsafe { _mm512_loadu_ps(dy_b.as_ptr().add((co + i) * pixels + p)) });
                for (j, v) in transpose16(rows).iter().enumerate() {
                    // SAFETY: pixel `p + j`'s channels `co .. co + 16`.
                    unsafe { _mm512_storeu_ps(dyt.as_mut_ptr().add((p + j) * c_out + co), *v) };
                }
            }
            for p in whole..pixels {
                for i in 0..LANES {
                    dyt[p * c_out + co + i] = dy_b[(co + i) * pixels + p];
                }
            }
        }
    }

    /// The contribution of `samples` consecutive samples to the packed weight gradient `dw`
    /// (`[c_out/16][taps][16]`), from their transposed output gradients `dyt` (each
    /// `[pixel][c_out]`) and padded inputs `xp`, one after the other in each.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weight_sample(g: &ConvGeometry, xp: &[f32], dyt: &[f32], samples: usize, dw: &mut [f32]) {
        let (hp, wp) = padded(g);
        assert!(xp.len() == samples * g.c_in * hp * wp && dyt.len() == samples * g.out_sample() && dw.len() == g.weight_len());
        let (blocks, taps) = (g.c_out / LANES, g.col_rows());
        let mut block = 0;
        while block < blocks {
            let pair = blocks - block >= 2;
            let mut tap = 0;
            while tap < taps {
                let count = (taps - tap).min(if pair { TAPS } else { 2 * TAPS });
                // SAFETY: the taps and blocks lie inside `dw`, and every pixel they read
                // inside `xp` and `dyt`.
                unsafe {
                    if pair {
                        tap_blocks!(count, 2, (g, xp, dyt, samples, dw, tap, block); 1 2 3 4 5 6 7 8);
                    } else {
                        tap_blocks!(count, 1, (g, xp, dyt, samples, dw, tap, block); 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
                    }
                }
                tap += count;
            }
            block += if pair { 2 } else { 1 };
        }
    }

    /// `T` taps from `tap` × `N` channel blocks from `block`: their partial sums loaded from
    /// `dw`, every output pixel's `dy` (N vectors) times the tap's input value (a broadcast)
    /// added in pixel order, stored back.
    #[target_feature(enable = "avx512f")]
    unsafe fn tap_kernel<const T: usize, const N: usize>(g: &ConvGeometry, xp: &[f32], dyt: &[f32], samples: usize, dw: &mut [f32], tap: usize, block: usize) {
        let (hp, wp) = padded(g);
        let [kh, kw] = g.kernel;
        let [sh, sw] = g.stride;
        let taps = g.col_rows();
        // Where each tap reads, relative to the output pixel's top-left input.
        let mut from = [xp.as_ptr(); T];
        for (t, f) in from.iter_mut().enumerate() {
            let (ci, k) = ((tap + t) / (kh * kw), (tap + t) % (kh * kw));
            // SAFETY: inside `xp`: channel `ci`, row `ky`, column `kx` of the padded sample.
            *f = unsafe { xp.as_ptr().add((ci * hp + k / kw) * wp + k % kw) };
        }
        let mut acc = [[_mm512_setzero_ps(); T]; N];
        for (n, row) in acc.iter_mut().enumerate() {
            for (t, v) in row.iter_mut().enumerate() {
                // SAFETY: tap `tap + t` of block `block + n`, inside `dw`.
                *v = unsafe { _mm512_loadu_ps(dw.as_ptr().add(((block + n) * taps + tap + t) * LANES)) };
            }
        }
        let d = dyt.as_ptr();
        // Sample by sample, each one's pixels in order: the order of one sample at a time.
        for s in 0..samples {
            let (sample_pixel, sample_at) = (s * g.out_pixels(), s * g.c_in * hp * wp);
            for oh in 0..g.out_height {
                for ow in 0..g.out_width {
                    let p = sample_pixel + oh * g.out_width + ow;
                    let at = sample_at + oh * sh * wp + ow * sw;
                    let mut dv = [_mm512_setzero_ps(); N];
                    for (n, v) in dv.iter_mut().enumerate() {
                        // SAFETY: pixel `p`, block `block + n`, inside `dyt`.
                        *v = unsafe { _mm512_loadu_ps(d.add(p * g.c_out + (block + n) * LANES)) };
                    }
                    for t in 0..T {
                        // SAFETY: the tap's input at this pixel of sample `s`: row
                        // `oh·sh + ky < hp`, column `ow·sw + kx < wp`.
                        let xv = unsafe { _mm512_set1_ps(*from[t].add(at)) };
                        for n in 0..N {
                            acc[n][t] = _mm512_fmadd_ps(dv[n], xv, acc[n][t]);
                        }
                    }
                }
            }
        }
        for (n, row) in acc.iter().enumerate() {
            for (t, v) in row.iter().enumerate() {
                // SAFETY: as for the loads above.
                unsafe { _mm512_storeu_ps(dw.as_mut_ptr().add(((block + n) * taps + tap + t) * LANES), *v) };
            }
        }
    }

    /// `acc[n][u]`, the 16 channels of block `at.block + n` at pixel `at.ow + u` of row
    /// `at.oh`, into the sample's NCHW output. A whole strip of two blocks (8 pixels × 32
    /// channels, the common case) is one 16 × 16 [`transpose16`]: its output `j` holds channel
    /// `j` of the first block at the 8 pixels, then of the second, stored as two masked halves.
    /// Other strips go lane by lane.
    #[target_feature(enable = "avx512f")]
    unsafe fn store<const U: usize, const N: usize>(g: &ConvGeometry, y_b: &mut [MaybeUninit<f32>], at: At, acc: &[[__m512; U]; N]) {
        let pixels = g.out_pixels();
        let first = at.oh * g.out_width + at.ow;
        if U == STRIP && N == 2 {
            let columns = transpose16(std::array::from_fn(|i| acc[i / U][i % U]));
            let y = y_b.as_mut_ptr().cast::<f32>();
            for (j, v) in columns.iter().enumerate() {
                let low = (at.block * LANES + j) * pixels + first;
                let high = ((at.block + 1) * LANES + j) * pixels + first;
                // SAFETY: pixels `first .. first + 8` of both channels' rows lie inside the
                // output; the high store's unmasked lanes 8..16 land on `high .. high + 8`
                // (`high ≥ 16·pixels > 8`, so its base lies inside the output too).
                unsafe {
                    _mm512_mask_storeu_ps(y.add(low), 0x00FF, *v);
                    _mm512_mask_storeu_ps(y.add(high - U), 0xFF00, *v);
                }
            }
            return;
        }
        let mut lanes = [0.0f32; LANES];
        for (n, row) in acc.iter().enumerate() {
            for (u, v) in row.iter().enumerate() {
                // SAFETY: `lanes` holds 16 floats.
                unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), *v) };
                let pixel = first + u;
                for (lane, value) in lanes.iter().enumerate() {
                    y_b[((at.block + n) * LANES + lane) * pixels + pixel].write(*value);
                }
            }
        }
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::{assert_forward_is_the_definition, assert_weight_grad_is_the_definition};

    #[test]
    fn the_direct_convolution_is_the_definition() {
        if !available() {
            eprintln!("no AVX-512 on this CPU: the direct convolution is not used here");
            return;
        }
        // Strips of 8 and shorter remainders, pairs of channel blocks and an odd block alone
        // (48 outputs: a strip of 16), strides 1 and 2, paddings 0–2, 3×3 and 5×5, with and
        // without a bias; input channels in one pass (16 to 64), in passes of 20 (40 inputs
        // under a 5×5 kernel) and of 47, 47 and 46 (140).
        let shapes = [
            ([1, 40, 7, 9], [64, 40, 5, 5], [1, 1], [2, 2]),
            // Wider than 64 outputs (AlexNet's layers): 7 blocks, 3 pairs and one alone.
            ([2, 32, 5, 6], [112, 32, 3, 3], [1, 1], [1, 1]),
            ([1, 140, 6, 5], [32, 140, 3, 3], [1, 1], [1, 1]),
            ([2, 40, 6, 9], [32, 40, 3, 3], [1, 1], [1, 1]),
            ([2, 16, 32, 32], [32, 16, 3, 3], [1, 1], [1, 1]),
            ([3, 16, 13, 11], [32, 16, 3, 3], [2, 2], [1, 1]),
            ([2, 32, 9, 7], [48, 32, 3, 3], [1, 1], [0, 0]),
            ([1, 24, 12, 15], [64, 24, 5, 5], [2, 1], [2, 2]),
            ([2, 64, 8, 8], [64, 64, 3, 3], [1, 1], [1, 1]),
        ];
        let geometries: Vec<_> = shapes.map(|(x, w, stride, padding)| ConvGeometry::new(x, w, stride, padding).unwrap()).into();
        assert!(geometries.iter().all(applies));
        assert_forward_is_the_definition(&geometries, forward);
    }

    #[test]
    fn the_direct_weight_gradient_is_the_definition() {
        if !available() {
            return;
        }
        // Tap blocks of 8 and a shorter remainder (16·9 = 144 = 18·8; 24·25 = 600 = 75·8;
        // 20·9 = 180 = 22·8 + 4; an odd block: blocks of 16), pairs and an odd block, strides 1 and 2, 3–5 sample chunks
        // (one a sample, below 8); 40 samples of 9 × 9 maps: 8 chunks of 5, each a group of 4
        // samples (`samples_per_group`) and a group of 1.
        let shapes = [
            ([40, 16, 9, 9], [32, 16, 3, 3], [1, 1], [1, 1]),
            ([5, 16, 12, 12], [32, 16, 3, 3], [1, 1], [1, 1]),
            ([3, 16, 6, 6], [96, 16, 3, 3], [1, 1], [1, 1]),
            ([4, 20, 9, 7], [48, 20, 3, 3], [2, 2], [1, 1]),
            ([3, 24, 10, 9], [64, 24, 5, 5], [1, 2], [2, 0]),
            // 16 outputs: one block, 16 taps a register block (144 = 9·16; 180 = 11·16 + 4).
            ([3, 16, 9, 11], [16, 16, 3, 3], [1, 1], [1, 1]),
            ([2, 20, 8, 8], [16, 20, 3, 3], [2, 2], [1, 1]),
        ];
        let geometries: Vec<_> = shapes.map(|(x, w, stride, padding)| ConvGeometry::new(x, w, stride, padding).unwrap()).into();
        assert!(geometries.iter().all(weight_grad_applies));
        assert_eq!(samples_per_group(&geometries[0]), 4);
        assert_weight_grad_is_the_definition(&geometries, weight_grad);
    }

    #[test]
    fn shapes_outside_its_range_keep_the_column_matrix() {
        let g = |c_in, c_out, k| ConvGeometry::new([1, c_in, 8, 8], [c_out, c_in, k, k], [1, 1], [1, 1]).unwrap();
        assert!(!applies(&g(3, 32, 3)), "a stem");
        assert!(!applies(&g(16, 16, 3)), "one block of outputs");
        if available() {
            assert!(weight_grad_applies(&g(16, 16, 3)), "one block of outputs: the weight gradient");
        }
        assert!(!weight_grad_applies(&g(3, 16, 3)), "a stem's weight gradient");
        assert!(!weight_grad_applies(&g(16, 16, 1)), "a 1×1 weight gradient");
        assert!(!applies(&g(16, 24, 3)), "channels not in whole registers");
        assert_eq!(applies(&g(192, 384, 3)), available(), "AlexNet's widest layer");
        assert!(!applies(&g(16, 16, 1)), "1×1");
    }
}

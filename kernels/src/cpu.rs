//! The convolution and its three gradients on NCHW `f32` slices, for the CPU.
//!
//! Per sample `b` (the column matrix `col_b = im2col(x_b)`, see `im2col.rs`):
//! - forward  `Y_b = W · col_b (+ bias)`                 `[c_out, ho·wo]`
//! - input    `dX_b = col2im(Wᵀ · dY_b)`                 `[c_in, h, w]`
//! - weight   `dW = Σ_b dY_b · col_bᵀ`                   `[c_out, c_in·kh·kw]`
//!   (accumulated as `dWᵀ` one L2-sized block of input channels at a time, or, where the
//!   receptive field is smaller than the filter count, with `col_bᵀ` built directly as one
//!   row per output pixel, `im2row`)
//! - bias     `db[c] = Σ_b Σ_p dY_b[c, p]`
//!
//! `forward`, `input_grad` and `weight_grad` hand the wide 3×3 stride-1 layers to Winograd's
//! F(2×2, 3×3) (`winograd.rs`) and the shapes they suit to the direct AVX-512 kernels
//! (`direct.rs`, `rows.rs`); the `column_*` functions are the column-matrix path
//! alone, which every other shape takes on a CPU without AVX-512.
//!
//! Samples run in parallel on the current rayon pool, each with its own column buffer, a
//! tile of output rows at a time (see `tiles`); the GEMMs inside run single-threaded. Every output element is computed by one fixed sequence
//! of operations whatever the number of threads — the weight gradient's sum over samples is
//! split into chunks fixed by the batch size alone and the chunks are added in order — so a
//! run is bit-identical for any `federation.workers`.

use std::ops::Range;

use rayon::prelude::*;

use crate::chunks::sum_over_sample_chunks;
use crate::direct;
use crate::rows;
use crate::strided;
use crate::winograd;
use crate::geometry::ConvGeometry;
use crate::im2col::{col2im_add, im2col, im2row};
use crate::output::written;
use crate::product::{matmul, matmul_fresh, matmul_strided, View};

/// Column-matrix elements per tile: a tile's buffer (≤ 256 kB) stays in a core's L2 while
/// GEMM reads it, instead of streaming a whole sample's matrix through memory.
const TILE_ELEMS: usize = 64 * 1024;
/// But never fewer output pixels than this per tile: GEMM's AVX-512 microkernel covers 64
/// rows, and narrower products waste most of it.
const MIN_TILE_PIXELS: usize = 128;

/// The sample's output rows, split into tiles of whole rows. Fixed by the geometry alone, so
/// every thread count walks the same tiles in the same order.
fn tiles(g: &ConvGeometry) -> impl Iterator<Item = Range<usize>> + '_ {
    let pixels = (TILE_ELEMS / g.col_rows()).max(MIN_TILE_PIXELS);
    let rows = pixels.div_ceil(g.out_width).clamp(1, g.out_height);
    (0..g.out_height).step_by(rows).map(move |start| start..(start + rows).min(g.out_height))
}

fn check_lengths(g: &ConvGeometry, x: &[f32], w: &[f32]) {
    assert_eq!(x.len(), g.batch * g.in_sample(), "conv input length");
    assert_eq!(w.len(), g.weight_len(), "conv weight length");
}

/// `y[b] = conv(x[b], W) + bias`, `[batch, c_out, ho, wo]` row-major: the direct kernels
/// where this CPU and shape have them, else [`column_forward`].
pub fn forward(g: &ConvGeometry, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    check_lengths(g, x, w);
    if winograd::applies(g) {
        return winograd::forward(g, x, w, bias);
    }
    // Where both apply (stride 1, rows of 16 or more, 32–64 outputs) the row kernel is faster.
    if rows::applies(g) {
        return rows::forward(g, x, w, bias);
    }
    if direct::applies(g) {
        return direct::forward(g, x, w, bias);
    }
    column_forward(g, x, w, bias)
}

/// `y[b] = W · im2col(x[b]) + bias` through the column matrix and GEMM, for every shape: the
/// path of a CPU without AVX-512 (tested on every shape on any CPU, `tests/against_burn.rs`).
pub fn column_forward(g: &ConvGeometry, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    check_lengths(g, x, w);
    let (k, pixels, wo) = (g.col_rows(), g.out_pixels(), g.out_width);
    written(g.batch * g.out_sample(), |y| {
        y.par_chunks_mut(g.out_sample()).zip(x.par_chunks(g.in_sample())).for_each_init(Vec::new, |col, (y_b, x_b)| {
            // Each element is its bias (when there is one) followed by its products, as in
            // the direct kernels; without a bias GEMM writes every element of `y_b` once.
            if let Some(bias) = bias {
                for (row, &b) in y_b.chunks_exact_mut(pixels).zip(bias) {
                    row.iter_mut().for_each(|v| {
                        v.write(b);
                    });
                }
            }
            if g.is_pointwise() {
                // The sample's `[c_in, h·w]` map is its column matrix.
                matmul_fresh(g.c_out, pixels, k, y_b, pixels, bias.is_some(), View::rows(w, k), View::rows(x_b, pixels));
                return;
            }
            for rows in tiles(g) {
                let n = rows.len() * wo;
                col.resize(k * n, 0.0);
                im2col(g, x_b, rows.clone(), col);
                // Y_b[:, tile] (+)= W · col_tile
                matmul_fresh(g.c_out, n, k, &mut y_b[rows.start * wo..], pixels, bias.is_some(), View::rows(w, k), View::rows(col, n));
            }
        })
    })
}

/// Which gradients the caller needs (a frozen input or weight needs none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub input: bool,
    pub weight: bool,
    pub bias: bool,
}

/// The gradients asked for, each row-major in its tensor's shape.
#[derive(Debug, Default)]
pub struct Grads {
    pub input: Option<Vec<f32>>,
    pub weight: Option<Vec<f32>>,
    pub bias: Option<Vec<f32>>,
}

pub fn backward(g: &ConvGeometry, x: &[f32], w: &[f32], dy: &[f32], wanted: Wanted) -> Grads {
    check_lengths(g, x, w);
    assert_eq!(dy.len(), g.batch * g.out_sample(), "conv output-gradient length");
    Grads {
        input: wanted.input.then(|| input_grad(g, w, dy)),
        weight: wanted.weight.then(|| weight_grad(g, x, dy)),
        bias: wanted.bias.then(|| bias_grad(g, dy)),
    }
}

/// `dx[b] = col2im(Wᵀ · dy[b])`, `[batch, c_in, h, w]`.
///
/// At stride 1 this is itself a convolution — of `dy` with the filters flipped in space and
/// input/output channels swapped, padded by `k − 1 − p` — so it runs as [`forward`], whose
/// column matrix is one shifted copy per row (`im2col_same_width`), instead of the
/// scatter-add `col2im` (ResNet20: `col2im` alone was 11 % of a step).
pub fn input_grad(g: &ConvGeometry, w: &[f32], dy: &[f32]) -> Vec<f32> {
    // The 3×3 stride-2 downsampling convolutions: directly, one row of pairs at a time.
    if strided::applies(g) {
        return strided::input_grad(g, w, dy);
    }
    input_grad_through(g, w, dy, forward)
}

/// [`input_grad`] with the stride-1 case through [`column_forward`]: a CPU without AVX-512.
pub fn column_input_grad(g: &ConvGeometry, w: &[f32], dy: &[f32]) -> Vec<f32> {
    input_grad_through(g, w, dy, column_forward)
}

type Forward = fn(&ConvGeometry, &[f32], &[f32], Option<&[f32]>) -> Vec<f32>;

fn input_grad_through(g: &ConvGeometry, w: &[f32], dy: &[f32], forward: Forward) -> Vec<f32> {
    assert_eq!(w.len(), g.weight_len(), "conv weight length");
    assert_eq!(dy.len(), g.batch * g.out_sample(), "conv output-gradient length");
    if let Some((flipped, w_flipped)) = as_forward_convolution(g, w) {
        return forward(&flipped, dy, &w_flipped, None);
    }
    let (k, pixels, wo) = (g.col_rows(), g.out_pixels(), g.out_width);
    let mut dx = vec![0.0f32; g.batch * g.in_sample()];
    let wt = View::transposed(w, k);
    dx.par_chunks_mut(g.in_sample()).zip(dy.par_chunks(g.out_sample())).for_each_init(Vec::new, |dcol, (dx_b, dy_b)| {
        if g.is_pointwise() {
            matmul(k, pixels, g.c_out, dx_b, pixels, false, wt, View::rows(dy_b, pixels));
            return;
        }
        for rows in tiles(g) {
            let n = rows.len() * wo;
            dcol.resize(k * n, 0.0);
            // dcol_tile = Wᵀ · dY_b[:, tile]
            let dy_tile = View { data: &dy_b[rows.start * wo..], rs: pixels, cs: 1 };
            matmul(k, n, g.c_out, dcol, n, false, wt, dy_tile);
            col2im_add(g, dcol, rows, dx_b);
        }
    });
    dx
}

/// Fewer input channels than this and the flipped convolution's product has too few rows
/// for GEMM (`fedolf bench conv`: the CNN's 1 → 32 input gradient took 3.9 ms that way
/// against 0.1–0.2 ms through `col2im`; AlexNet's 3 → 64, 16 against 2–4 ms). Only the
/// bench asks for these: a first layer's input is the data, which needs no gradient.
const FLIPPED_MIN_INPUT_CHANNELS: usize = 16;

/// The stride-1 input gradient as a forward convolution of `dy`: its geometry and filters
/// `W'[ci, co, ky, kx] = W[co, ci, kh−1−ky, kw−1−kx]`. `None` at other strides, where the
/// padding exceeds `k − 1`, or for fewer than [`FLIPPED_MIN_INPUT_CHANNELS`] inputs.
fn as_forward_convolution(g: &ConvGeometry, w: &[f32]) -> Option<(ConvGeometry, Vec<f32>)> {
    let [kh, kw] = g.kernel;
    let [ph, pw] = g.padding;
    if g.stride != [1, 1] || ph >= kh || pw >= kw || g.c_in < FLIPPED_MIN_INPUT_CHANNELS {
        return None;
    }
    let flipped = ConvGeometry::new([g.batch, g.c_out, g.out_height, g.out_width], [g.c_in, g.c_out, kh, kw], [1, 1], [kh - 1 - ph, kw - 1 - pw])?;
    debug_assert_eq!((flipped.out_height, flipped.out_width), (g.height, g.width));
    let mut w_flipped = vec![0.0f32; w.len()];
    // [c_out, c_in, kh, kw] -> [c_in, c_out, kh, kw], each kernel rotated by 180°
    for co in 0..g.c_out {
        for ci in 0..g.c_in {
            let from = &w[(co * g.c_in + ci) * kh * kw..][..kh * kw];
            let to = &mut w_flipped[(ci * g.c_out + co) * kh * kw..][..kh * kw];
            for (t, f) in to.iter_mut().zip(from.iter().rev()) {
                *t = *f;
            }
        }
    }
    Some((flipped, w_flipped))
}

/// Whether the weight gradient reads `im2col`'s layout and accumulates `dWᵀ` (most layers)
/// rather than the transposed column matrix (`im2row`) into `dW`. Measured with
/// `fedolf bench conv` on AVX-512, both ways: `im2row` wins only where the receptive field is
/// smaller than the filter count — the first layers: AlexNet's 3×3×3 → 64 (172 against
/// 36–47 GFLOP/s), the CNN's 1×5×5 → 32 (118–135 against 63–90) — and loses elsewhere
/// (ResNet's 3×3×3 → 16: 47–68 against 72–86; 16×3×3 → 16: 77–94 against 91–103), where
/// building `im2row` costs more than GEMM saves.
fn weight_grad_reads_im2col(g: &ConvGeometry) -> bool {
    g.col_rows() >= g.c_out
}

/// `dW = Σ_b dy[b] ⋆ x[b]`, `[c_out, c_in, kh, kw]`: the direct kernels where this CPU and
/// shape have them, else [`column_weight_grad`].
pub fn weight_grad(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    if winograd::applies(g) {
        return winograd::weight_grad(g, x, dy);
    }
    if direct::weight_grad_applies(g) {
        return direct::weight_grad(g, x, dy);
    }
    if rows::weight_grad_applies(g) {
        return rows::weight_grad(g, x, dy);
    }
    column_weight_grad(g, x, dy)
}

/// `dW = Σ_b dy[b] · im2col(x[b])ᵀ` through the column matrix and GEMM, for every shape: the
/// path of a CPU without AVX-512.
pub fn column_weight_grad(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), g.batch * g.in_sample(), "conv input length");
    assert_eq!(dy.len(), g.batch * g.out_sample(), "conv output-gradient length");
    let (k, pixels, len, wo) = (g.col_rows(), g.out_pixels(), g.weight_len(), g.out_width);
    if weight_grad_reads_im2col(g) {
        return weight_grad_in_channel_blocks(g, x, dy);
    }
    // dW += dY_b[:, tile] · rows_tile, each chunk summing its samples in sample and tile order.
    sum_over_sample_chunks(g.batch, len, Vec::new, |buf, samples, dw| {
        for b in samples {
            let x_b = &x[b * g.in_sample()..(b + 1) * g.in_sample()];
            let dy_b = &dy[b * g.out_sample()..(b + 1) * g.out_sample()];
            for rows in tiles(g) {
                let n = rows.len() * wo;
                buf.resize(k * n, 0.0);
                let dy_tile = View { data: &dy_b[rows.start * wo..], rs: pixels, cs: 1 };
                im2row(g, x_b, rows.clone(), buf);
                matmul(g.c_out, k, n, dw, k, true, dy_tile, View::rows(buf, k));
            }
        }
    })
}

/// The slice of `dWᵀ` one block of input channels accumulates into while every sample of a
/// chunk adds to it (a core's L2 is 2 MB here). Measured with `fedolf bench conv` on
/// AlexNet's 8×8 layers: 768 KiB −5 to −9 % against one block; 384 KiB no better than one
/// block, 192 KiB slower (narrower products).
const DW_BLOCK_BYTES: usize = 768 * 1024;

/// Balanced blocks of input channels whose rows of `dWᵀ` (`kh·kw` per channel, `c_out` wide)
/// fit [`DW_BLOCK_BYTES`].
fn channel_blocks(g: &ConvGeometry) -> Vec<Range<usize>> {
    let per_channel = g.kernel[0] * g.kernel[1] * g.c_out * std::mem::size_of::<f32>();
    let blocks = (g.c_in * per_channel).div_ceil(DW_BLOCK_BYTES).clamp(1, g.c_in);
    (0..blocks).map(|i| i * g.c_in / blocks..(i + 1) * g.c_in / blocks).collect()
}

/// [`weight_grad`] through `im2col`'s layout, into `dWᵀ` one block of input channels at a
/// time: the block's rows of the accumulator stay in L2 while every sample of the chunk adds
/// to them, instead of the whole `dWᵀ` (2.6 MB for AlexNet's 192 → 384) passing through
/// memory once per sample. The column matrix's rows for channels `[c0, c1)` are the column
/// matrix of those channels alone, so a block is `im2col` of a slice of the input. Each
/// element still sums its samples, then its tiles, in order: the bits do not change.
fn weight_grad_in_channel_blocks(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (k, pixels, len, wo) = (g.col_rows(), g.out_pixels(), g.weight_len(), g.out_width);
    let (taps, hw) = (g.kernel[0] * g.kernel[1], g.height * g.width);
    // Each block with the geometry of its channels alone, made once for every chunk.
    let blocks: Vec<(Range<usize>, ConvGeometry)> = channel_blocks(g)
        .into_iter()
        .map(|channels| {
            let c = channels.len();
            let sub = ConvGeometry::new([1, c, g.height, g.width], [g.c_out, c, g.kernel[0], g.kernel[1]], g.stride, g.padding)
                .expect("a block of a valid convolution's input channels is valid");
            (channels, sub)
        })
        .collect();
    let dw = sum_over_sample_chunks(g.batch, len, Vec::new, |buf, samples, dw| {
        for (channels, sub) in &blocks {
            let c = channels.len();
            let dw_block = &mut dw[channels.start * taps * g.c_out..channels.end * taps * g.c_out];
            for b in samples.clone() {
                let x_b = &x[b * g.in_sample()..][channels.start * hw..channels.end * hw];
                let dy_b = &dy[b * g.out_sample()..(b + 1) * g.out_sample()];
                for rows in tiles(g) {
                    let n = rows.len() * wo;
                    buf.resize(c * taps * n, 0.0);
                    im2col(sub, x_b, rows.clone(), buf);
                    // dWᵀ[block] [c·kh·kw × c_out] += (dY_b[:, tile] · col_tile[block]ᵀ)ᵀ
                    let dy_tile = View { data: &dy_b[rows.start * wo..], rs: pixels, cs: 1 };
                    matmul_strided(g.c_out, c * taps, n, dw_block, [1, g.c_out], true, dy_tile, View::transposed(buf, n));
                }
            }
        }
    });
    // [k, c_out] -> [c_out, k], a stretch of output channels per task (on one thread this
    // was 0.45 % of an AlexNet step's samples with the other core idle).
    let mut out = vec![0.0f32; len];
    out.par_chunks_mut(TRANSPOSE_ROWS * k).enumerate().for_each(|(i, rows)| {
        let co0 = i * TRANSPOSE_ROWS;
        for (r, row) in dw.chunks_exact(g.c_out).enumerate() {
            for (j, v) in row[co0..].iter().take(rows.len() / k).enumerate() {
                rows[j * k + r] = *v;
            }
        }
    });
    out
}

/// Output channels per task of `dWᵀ`'s transpose.
const TRANSPOSE_ROWS: usize = 16;

/// `db[c] = Σ_b (Σ_p dy[b, c, p])`: each sample's row summed first, then the samples in order.
pub fn bias_grad(g: &ConvGeometry, dy: &[f32]) -> Vec<f32> {
    let pixels = g.out_pixels();
    (0..g.c_out)
        .into_par_iter()
        .map(|c| {
            (0..g.batch)
                .map(|b| crate::lanes::sum(&dy[(b * g.c_out + c) * pixels..][..pixels]))
                .sum()
        })
        .collect()
}

/// Runs one small product on every thread of the current rayon pool. GEMM gives each thread,
/// on its first product, a packing buffer the size of the L2 cache that it keeps for good; a
/// memory measurement warms every thread first so that no measured step pays for it, whichever
/// thread the scheduler hands a product to.
pub fn warm_thread_buffers() {
    // Large enough for GEMM's packed path (small products skip the buffer).
    const N: usize = 128;
    rayon::broadcast(|_| {
        let (a, b) = (vec![1.0f32; N * N], vec![1.0f32; N * N]);
        let mut c = vec![0.0f32; N * N];
        matmul(N, N, N, &mut c, N, false, View::rows(&a, N), View::rows(&b, N));
    });
}

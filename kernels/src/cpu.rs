//! The convolution and its three gradients on NCHW `f32` slices, for the CPU.
//!
//! Per sample `b` (the column matrix `col_b = im2col(x_b)`, see `im2col.rs`):
//! - forward  `Y_b = W · col_b (+ bias)`                 `[c_out, ho·wo]`
//! - input    `dX_b = col2im(Wᵀ · dY_b)`                 `[c_in, h, w]`
//! - weight   `dW = Σ_b dY_b · col_bᵀ`                   `[c_out, c_in·kh·kw]`
//!   (with `col_bᵀ` built directly as one row per output pixel, `im2row`)
//! - bias     `db[c] = Σ_b Σ_p dY_b[c, p]`
//!
//! Samples run in parallel on the current rayon pool, each with its own column buffer; the
//! GEMMs inside run single-threaded. Every output element is computed by one fixed sequence
//! of operations whatever the number of threads — the weight gradient's sum over samples is
//! split into chunks fixed by the batch size alone and the chunks are added in order — so a
//! run is bit-identical for any `federation.workers`.

use rayon::prelude::*;

use crate::geometry::ConvGeometry;
use crate::im2col::{col2im_add, im2col, im2row};

/// The weight gradient's sum over samples is split into at most this many chunks, each with
/// its own `[c_out, c_in·kh·kw]` partial: more chunks, more parallelism and more memory.
const WEIGHT_GRAD_CHUNKS: usize = 8;

/// A row-major view of a matrix inside a slice: element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    fn rows(data: &'a [f32], cols: usize) -> Self {
        Self { data, rs: cols, cs: 1 }
    }

    /// The transpose of a row-major `[rows, cols]` matrix, without moving it.
    fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self { data, rs: 1, cs: cols }
    }

    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// `dst[m×n] = lhs[m×k] · rhs[k×n]`, or `dst += …` when `accumulate`; `dst` row-major.
fn matmul(m: usize, n: usize, k: usize, dst: &mut [f32], accumulate: bool, lhs: View, rhs: View) {
    assert!(dst.len() >= m * n && lhs.fits(m, k) && rhs.fits(k, n), "matmul operands out of bounds");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    // SAFETY: the assert above keeps every element gemm reads or writes inside the slices;
    // `dst` is exclusively borrowed and cannot alias the shared `lhs` and `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// The sample's column matrix: the sample itself for a pointwise convolution, else `buf`
/// filled by im2col.
fn columns<'a>(g: &ConvGeometry, x_b: &'a [f32], buf: &'a mut Vec<f32>) -> &'a [f32] {
    if g.is_pointwise() {
        return x_b;
    }
    buf.resize(g.col_rows() * g.out_pixels(), 0.0);
    im2col(g, x_b, buf);
    buf
}

fn check_lengths(g: &ConvGeometry, x: &[f32], w: &[f32]) {
    assert_eq!(x.len(), g.batch * g.in_sample(), "conv input length");
    assert_eq!(w.len(), g.weight_len(), "conv weight length");
}

/// `y[b] = W · im2col(x[b]) + bias`, `[batch, c_out, ho, wo]` row-major.
pub fn forward(g: &ConvGeometry, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    check_lengths(g, x, w);
    let (k, pixels) = (g.col_rows(), g.out_pixels());
    let mut y = vec![0.0f32; g.batch * g.out_sample()];
    if y.is_empty() {
        return y;
    }
    y.par_chunks_mut(g.out_sample()).zip(x.par_chunks(g.in_sample().max(1))).for_each_init(Vec::new, |buf, (y_b, x_b)| {
        let col = columns(g, x_b, buf);
        if let Some(bias) = bias {
            for (row, &b) in y_b.chunks_exact_mut(pixels).zip(bias) {
                row.fill(b);
            }
        }
        matmul(g.c_out, pixels, k, y_b, bias.is_some(), View::rows(w, k), View::rows(col, pixels));
    });
    y
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
pub fn input_grad(g: &ConvGeometry, w: &[f32], dy: &[f32]) -> Vec<f32> {
    let (k, pixels) = (g.col_rows(), g.out_pixels());
    let mut dx = vec![0.0f32; g.batch * g.in_sample()];
    if dx.is_empty() || dy.is_empty() {
        return dx;
    }
    let wt = View::transposed(w, k);
    dx.par_chunks_mut(g.in_sample()).zip(dy.par_chunks(g.out_sample())).for_each_init(Vec::new, |dcol, (dx_b, dy_b)| {
        if g.is_pointwise() {
            matmul(k, pixels, g.c_out, dx_b, false, wt, View::rows(dy_b, pixels));
        } else {
            dcol.resize(k * pixels, 0.0);
            matmul(k, pixels, g.c_out, dcol, false, wt, View::rows(dy_b, pixels));
            col2im_add(g, dcol, dx_b);
        }
    });
    dx
}

/// `dW = Σ_b dy[b] · im2col(x[b])ᵀ`, `[c_out, c_in, kh, kw]`.
pub fn weight_grad(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (k, pixels, len) = (g.col_rows(), g.out_pixels(), g.weight_len());
    let chunks = g.batch.min(WEIGHT_GRAD_CHUNKS);
    if chunks == 0 || len == 0 {
        return vec![0.0; len];
    }
    // Chunk `i` sums samples [i·batch/chunks, (i+1)·batch/chunks), in sample order.
    let partials: Vec<Vec<f32>> = (0..chunks)
        .into_par_iter()
        .map_init(Vec::new, |buf, i| {
            let mut dw = vec![0.0f32; len];
            for b in i * g.batch / chunks..(i + 1) * g.batch / chunks {
                let x_b = &x[b * g.in_sample()..(b + 1) * g.in_sample()];
                let dy_b = &dy[b * g.out_sample()..(b + 1) * g.out_sample()];
                buf.resize(k * pixels, 0.0);
                im2row(g, x_b, buf);
                matmul(g.c_out, k, pixels, &mut dw, true, View::rows(dy_b, pixels), View::rows(buf, k));
            }
            dw
        })
        .collect();
    let mut parts = partials.into_iter();
    let mut dw = parts.next().expect("at least one chunk");
    for part in parts {
        for (d, p) in dw.iter_mut().zip(&part) {
            *d += *p;
        }
    }
    dw
}

/// `db[c] = Σ_b (Σ_p dy[b, c, p])`: each sample's row summed first, then the samples in order.
pub fn bias_grad(g: &ConvGeometry, dy: &[f32]) -> Vec<f32> {
    let pixels = g.out_pixels();
    (0..g.c_out)
        .into_par_iter()
        .map(|c| {
            (0..g.batch)
                .map(|b| dy[(b * g.c_out + c) * pixels..][..pixels].iter().sum::<f32>())
                .sum()
        })
        .collect()
}

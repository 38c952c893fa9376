//! BatchNorm with batch statistics (training), forward and backward in one pass each over
//! NCHW `f32` viewed as `[b, c, n = h·w]` (Ioffe & Szegedy, ICML 2015, Alg. 1 and its
//! gradient):
//!
//! - `μ_c = Σ x / m`, `σ²_c = Σ (x − μ)² / m` (biased), `m = b·n`, `x̂ = (x − μ) / √(σ² + ε)`
//! - `y = γ_c · x̂ + β_c`
//! - `dβ_c = Σ dy`, `dγ_c = Σ dy · x̂`, `dx = γ_c / √(σ² + ε) · (dy − dβ_c / m − x̂ · dγ_c / m)`
//!
//! Channels run in parallel; within a channel every sum has one fixed order (16 lanes per
//! row, rows in sample order), so the bits do not depend on the thread count. The graph keeps
//! only `x` (Burn's formula keeps the centred map and several per-row statistics too).

use rayon::prelude::*;

use crate::cpu::lane_sum;

/// `[batch, channels, pixels per channel]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormShape {
    pub batch: usize,
    pub channels: usize,
    pub pixels: usize,
}

impl NormShape {
    fn len(&self) -> usize {
        self.batch * self.channels * self.pixels
    }

    /// The rows `[n]` of channel `c`, one per sample.
    fn rows<'a>(&self, data: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
        let (stride, n, start) = (self.channels * self.pixels, self.pixels, c * self.pixels);
        (0..self.batch).map(move |b| &data[b * stride + start..][..n])
    }
}

/// Per channel: the mean and biased variance.
pub fn statistics(s: &NormShape, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(x.len(), s.len(), "batch-norm input length");
    let m = (s.batch * s.pixels) as f32;
    (0..s.channels)
        .into_par_iter()
        .map(|c| {
            let mean = s.rows(x, c).map(lane_sum).sum::<f32>() / m;
            let var = s.rows(x, c).map(|row| lane_sum_squares(row, mean)).sum::<f32>() / m;
            (mean, var)
        })
        .unzip()
}

/// `Σ (v − mean)²` in the fixed lane order of [`lane_sum`].
fn lane_sum_squares(row: &[f32], mean: f32) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [0.0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += (v - mean) * (v - mean);
        }
    }
    lane_sum(&lanes) + tail
}

/// `y = γ · (x − μ) / √(σ² + ε) + β`.
pub fn forward(s: &NormShape, x: &[f32], mean: &[f32], var: &[f32], gamma: &[f32], beta: &[f32], epsilon: f32) -> Vec<f32> {
    assert_eq!(x.len(), s.len(), "batch-norm input length");
    let mut y = vec![0.0f32; s.len()];
    y.par_chunks_mut(s.pixels).zip(x.par_chunks(s.pixels)).enumerate().for_each(|(row, (y_row, x_row))| {
        let c = row % s.channels;
        let scale = gamma[c] / (var[c] + epsilon).sqrt();
        let shift = beta[c] - mean[c] * scale;
        for (y, x) in y_row.iter_mut().zip(x_row) {
            *y = x * scale + shift;
        }
    });
    y
}

/// `(dx, dγ, dβ)`.
#[allow(clippy::too_many_arguments)]
pub fn backward(s: &NormShape, x: &[f32], dy: &[f32], mean: &[f32], var: &[f32], gamma: &[f32], epsilon: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert!(x.len() == s.len() && dy.len() == s.len(), "batch-norm gradient lengths");
    let m = (s.batch * s.pixels) as f32;
    let inv_std: Vec<f32> = var.iter().map(|v| 1.0 / (v + epsilon).sqrt()).collect();
    // dβ_c = Σ dy, dγ_c = Σ dy · x̂
    let (dbeta, dgamma): (Vec<f32>, Vec<f32>) = (0..s.channels)
        .into_par_iter()
        .map(|c| {
            let dbeta = s.rows(dy, c).map(lane_sum).sum::<f32>();
            let dot = s.rows(dy, c).zip(s.rows(x, c)).map(|(dy_row, x_row)| lane_dot_centred(dy_row, x_row, mean[c])).sum::<f32>();
            (dbeta, dot * inv_std[c])
        })
        .unzip();
    let mut dx = vec![0.0f32; s.len()];
    dx.par_chunks_mut(s.pixels).zip(dy.par_chunks(s.pixels).zip(x.par_chunks(s.pixels))).enumerate().for_each(|(row, (dx_row, (dy_row, x_row)))| {
        let c = row % s.channels;
        let (k, mean_dy, mean_dgamma) = (gamma[c] * inv_std[c], dbeta[c] / m, dgamma[c] / m);
        for ((dx, dy), x) in dx_row.iter_mut().zip(dy_row).zip(x_row) {
            let x_hat = (x - mean[c]) * inv_std[c];
            *dx = k * (dy - mean_dy - x_hat * mean_dgamma);
        }
    });
    (dx, dgamma, dbeta)
}

/// `Σ dy · (x − mean)` in the fixed lane order of [`lane_sum`].
fn lane_dot_centred(dy: &[f32], x: &[f32], mean: f32) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [0.0f32; LANES];
    let (dy_chunks, x_chunks) = (dy.chunks_exact(LANES), x.chunks_exact(LANES));
    let tail: f32 = dy_chunks.remainder().iter().zip(x_chunks.remainder()).map(|(d, v)| d * (v - mean)).sum();
    for (dc, xc) in dy_chunks.zip(x_chunks) {
        for ((lane, d), v) in lanes.iter_mut().zip(dc).zip(xc) {
            *lane += d * (v - mean);
        }
    }
    lane_sum(&lanes) + tail
}

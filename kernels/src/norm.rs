//! BatchNorm with batch statistics (training), forward and backward in one pass each over
//! NCHW `f32` viewed as `[b, c, n = h·w]` (Ioffe & Szegedy, ICML 2015, Alg. 1 and its
//! gradient):
//!
//! - `μ_c = Σ x / m`, `σ²_c = Σ (x − μ)² / m` (biased), `m = b·n`, `x̂ = (x − μ) / √(σ² + ε)`
//! - `y = γ_c · x̂ + β_c`
//! - `dβ_c = Σ dy`, `dγ_c = Σ dy · x̂`, `dx = γ_c / √(σ² + ε) · (dy − dβ_c / m − x̂ · dγ_c / m)`
//!
//! With `relu` the ReLU that follows is fused in: `y = max(0, γ_c · x̂ + β_c)`, and `dy` is
//! zeroed where that was not > 0 before the gradient above (the same numbers as ReLU's own
//! backward step, without its pass over the map or the map it keeps). With a `skip` as well
//! (a residual block's end), `y = max(0, γ_c · x̂ + β_c + skip)`: the gated `dy` is the skip's
//! gradient and the one the formulas above receive.
//!
//! Channels run in parallel; within a channel every sum has one fixed order (16 lanes per
//! row, rows in sample order), so the bits do not depend on the thread count. The graph keeps
//! only `x` (Burn's formula keeps the centred map and several per-row statistics too).

use rayon::prelude::*;

use crate::lanes;
use crate::norm_rows::{self, Affine, InputGradient};
use crate::output::written;

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
            let mean = s.rows(x, c).map(lanes::sum).sum::<f32>() / m;
            let var = s.rows(x, c).map(|row| norm_rows::centred_squares(row, mean)).sum::<f32>() / m;
            (mean, var)
        })
        .unzip()
}

/// Channel `c`'s `γ / √(σ² + ε)` and `β − μ · scale`.
fn affine(c: usize, mean: &[f32], var: &[f32], gamma: &[f32], beta: &[f32], epsilon: f32) -> Affine {
    let scale = gamma[c] / (var[c] + epsilon).sqrt();
    Affine { scale, shift: beta[c] - mean[c] * scale }
}

/// What follows the normalisation inside the kernel; `S` is the skip (a slice here, a
/// backend's tensor in the extension).
#[derive(Debug, Clone, Copy)]
pub enum Then<S> {
    Nothing,
    Relu,
    /// `relu(y + skip)`, `skip` shaped like `x`.
    AddRelu(S),
}

impl<S> Then<S> {
    pub fn relu(&self) -> bool {
        !matches!(self, Then::Nothing)
    }

    /// The same step with `f` applied to the skip.
    pub fn map<T>(self, f: impl FnOnce(S) -> T) -> Then<T> {
        match self {
            Then::Nothing => Then::Nothing,
            Then::Relu => Then::Relu,
            Then::AddRelu(skip) => Then::AddRelu(f(skip)),
        }
    }

    pub fn as_ref(&self) -> Then<&S> {
        match self {
            Then::Nothing => Then::Nothing,
            Then::Relu => Then::Relu,
            Then::AddRelu(skip) => Then::AddRelu(skip),
        }
    }
}

/// `y = γ · (x − μ) / √(σ² + ε) + β`, then `then`.
#[allow(clippy::too_many_arguments)]
pub fn forward(s: &NormShape, x: &[f32], mean: &[f32], var: &[f32], gamma: &[f32], beta: &[f32], epsilon: f32, then: Then<&[f32]>) -> Vec<f32> {
    apply(s, x, |c| affine(c, mean, var, gamma, beta, epsilon), then)
}

/// `y = x · scale_c + shift_c`, then `then`: BatchNorm whose statistics are fixed (running
/// statistics, frozen layers and evaluation), with `scale = γ / √(σ² + ε)` and
/// `shift = β − μ · scale` computed by the caller.
pub fn scale_shift(s: &NormShape, x: &[f32], scale: &[f32], shift: &[f32], then: Then<&[f32]>) -> Vec<f32> {
    assert!(scale.len() == s.channels && shift.len() == s.channels, "batch-norm scale and shift lengths");
    apply(s, x, |c| Affine { scale: scale[c], shift: shift[c] }, then)
}

/// Each row's affine map (channel `c`'s from `at(c)`), then `then`.
fn apply(s: &NormShape, x: &[f32], at: impl Fn(usize) -> Affine + Sync, then: Then<&[f32]>) -> Vec<f32> {
    assert_eq!(x.len(), s.len(), "batch-norm input length");
    written(s.len(), |y| {
        y.par_chunks_mut(s.pixels).zip(x.par_chunks(s.pixels)).enumerate().for_each(|(row, (y_row, x_row))| {
            let affine = at(row % s.channels);
            match then {
                Then::AddRelu(skip) => norm_rows::normalise_add_relu(y_row, x_row, &skip[row * s.pixels..][..s.pixels], affine),
                _ => norm_rows::normalise(y_row, x_row, affine, then.relu()),
            }
        })
    })
}

/// The gradients of [`forward`]: `dx`, `dγ`, `dβ`, and the skip's with [`Then::AddRelu`].
pub struct Gradients {
    pub x: Vec<f32>,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub skip: Option<Vec<f32>>,
}

/// The gradients of [`forward`] with the same `then`; `beta` only locates the ReLU.
#[allow(clippy::too_many_arguments)]
pub fn gradients(s: &NormShape, x: &[f32], dy: &[f32], statistics: (&[f32], &[f32]), (gamma, beta): (&[f32], &[f32]), epsilon: f32, then: Then<&[f32]>) -> Gradients {
    let Then::AddRelu(skip) = then else {
        let (x, gamma, beta) = backward(s, x, dy, statistics, (gamma, beta), epsilon, then.relu());
        return Gradients { x, gamma, beta, skip: None };
    };
    assert!(skip.len() == s.len() && dy.len() == s.len(), "batch-norm gradient lengths");
    let (mean, var) = statistics;
    let gated = written(s.len(), |out| {
        out.par_chunks_mut(s.pixels).enumerate().for_each(|(row, out_row)| {
            let at = row * s.pixels;
            let affine = affine(row % s.channels, mean, var, gamma, beta, epsilon);
            norm_rows::gate(out_row, &dy[at..][..s.pixels], &x[at..][..s.pixels], &skip[at..][..s.pixels], affine);
        })
    });
    let (dx, dgamma, dbeta) = backward(s, x, &gated, statistics, (gamma, beta), epsilon, false);
    Gradients { x: dx, gamma: dgamma, beta: dbeta, skip: Some(gated) }
}

/// `(dx, dγ, dβ)` of [`forward`] followed by nothing or by a ReLU (`relu`).
fn backward(
    s: &NormShape,
    x: &[f32],
    dy: &[f32],
    (mean, var): (&[f32], &[f32]),
    (gamma, beta): (&[f32], &[f32]),
    epsilon: f32,
    relu: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert!(x.len() == s.len() && dy.len() == s.len(), "batch-norm gradient lengths");
    let m = (s.batch * s.pixels) as f32;
    let inv_std: Vec<f32> = var.iter().map(|v| 1.0 / (v + epsilon).sqrt()).collect();
    let at = |c: usize| affine(c, mean, var, gamma, beta, epsilon);
    // dβ_c = Σ dy, dγ_c = Σ dy · x̂
    let (dbeta, dgamma): (Vec<f32>, Vec<f32>) = (0..s.channels)
        .into_par_iter()
        .map(|c| {
            let sums: Vec<(f32, f32)> = s.rows(dy, c).zip(s.rows(x, c)).map(|(dy_row, x_row)| norm_rows::gradient_sums(dy_row, x_row, mean[c], at(c), relu)).collect();
            let dbeta = sums.iter().map(|(sum, _)| sum).sum::<f32>();
            let dot = sums.iter().map(|(_, dot)| dot).sum::<f32>();
            (dbeta, dot * inv_std[c])
        })
        .unzip();
    let dx = written(s.len(), |dx| {
        dx.par_chunks_mut(s.pixels).zip(dy.par_chunks(s.pixels).zip(x.par_chunks(s.pixels))).enumerate().for_each(|(row, (dx_row, (dy_row, x_row)))| {
            let c = row % s.channels;
            let terms = InputGradient { k: gamma[c] * inv_std[c], mean: mean[c], inv_std: inv_std[c], mean_dy: dbeta[c] / m, mean_dgamma: dgamma[c] / m };
            norm_rows::input_gradient(dx_row, dy_row, x_row, at(c), relu, terms);
        })
    });
    (dx, dgamma, dbeta)
}

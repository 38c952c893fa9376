//! The losses of the multi-exit methods, over `n` exits' logits `z_1..z_n` (shallowest
//! first, the deepest last). They live with local training, which calls them through
//! [`Objective`](crate::local::objective::Objective); the method files
//! (`strategy/depthfl.rs`, `strategy/scalefl.rs`) say when each applies and with what weights.
//!
//! DepthFL (Kim et al., ICLR 2023), mutual self-distillation:
//! `L = Σ_i [ CE(z_i, y) + (w_t / (n − 1)) Σ_{j≠i} KL(softmax(z_j).detach ‖ softmax(z_i)) ]`
//! (no KD term when n = 1).
//!
//! ScaleFL (Ilhan et al., CVPR 2023), depth-weighted exits with KD from the deepest:
//! `L = [ Σ_{j<n} j·(CE(z_j, y) + γT²·KL(softmax(z_n/T).detach ‖ softmax(z_j/T))) + n·CE(z_n, y) ] / (n(n+1)/2)`.
//!
//! The KL is averaged over the batch (PyTorch's `batchmean`).

use burn::prelude::*;

use crate::local::loss_terms::{cross_entropy, distillation_kl};

/// DepthFL's mutual self-distillation over `outputs` (shallowest first), `weight` = `w_t`.
/// # Shapes
/// each output `[b, classes]`, labels `[b]` `-> [1]`
pub fn mutual_distillation_loss<B: Backend>(outputs: &[Tensor<B, 2>], y: Tensor<B, 1, Int>, weight: f32) -> Tensor<B, 1> {
    let n = outputs.len();
    let mut total: Option<Tensor<B, 1>> = None;
    for (i, z_i) in outputs.iter().enumerate() {
        let mut term = cross_entropy(z_i.clone(), y.clone());
        if n > 1 {
            for (_, z_j) in outputs.iter().enumerate().filter(|(j, _)| *j != i) {
                term = term + distillation_kl(z_j.clone(), z_i.clone(), 1.0) * (weight / (n - 1) as f32);
            }
        }
        total = Some(match total {
            Some(t) => t + term,
            None => term,
        });
    }
    total.expect("a model has an output")
}

/// ScaleFL's depth-weighted exits over `outputs` (shallowest first); `gamma = 0` turns KD off.
/// # Shapes
/// each output `[b, classes]`, labels `[b]` `-> [1]`
pub fn scaled_exits_loss<B: Backend>(outputs: &[Tensor<B, 2>], y: Tensor<B, 1, Int>, gamma: f32, temperature: f32) -> Tensor<B, 1> {
    let n = outputs.len();
    let deepest = outputs.last().expect("a model has an output");
    let mut total = cross_entropy(deepest.clone(), y.clone()) * n as f32;
    for (j, z) in outputs[..n - 1].iter().enumerate() {
        let mut term = cross_entropy(z.clone(), y.clone());
        if gamma > 0.0 {
            term = term + distillation_kl(deepest.clone(), z.clone(), temperature) * (gamma * temperature * temperature);
        }
        total = total + term * (j + 1) as f32;
    }
    total / (n * (n + 1) / 2) as f32
}

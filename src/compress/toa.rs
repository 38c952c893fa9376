//! TOA — Tensor Operation Approximation on the download path (FedOLF paper §III-C, Alg. 2;
//! Adelman & Silberstein, "Faster neural network training with approximate tensor
//! operations", NeurIPS 2021).
//!
//! For each frozen layer `q < l − 1` (all but the last frozen one) with `H_q` tensors (conv
//! filters / FC neurons; a residual block's inner conv1 filters), the server keeps
//! `k_q = ⌊s·H_q⌋` of them, drawn with probability proportional to their Frobenius norm
//! (paper Eq. 3):  `p_j = ‖W_q[j]‖_F / Σ_i ‖W_q[i]‖_F`,
//! sends `W_q[S]` (with bias and BN entries) and layer q+1's input slices `W_{q+1}[:, S]`, each
//! multiplied by `α_j`:
//! - `paper`: weighted sampling without replacement, `α_j = 1` (the paper's Alg. 2);
//! - `crs`: `k` draws with replacement, `α_j = c_j / (k·p_j)` (unbiased column-row sampling);
//! - `bernoulli`: keep j with `π_j = min(1, k·p_j)`, `α_j = 1/π_j` (unbiased, E|S| ≤ k);
//! - `topk`: the `k` largest norms, `α_j = 1`.
//!
//! `α` is folded into layer q+1's weights: BN and ReLU sit between q and q+1 and act per
//! channel, so dropping channels commutes with them. The last frozen layer keeps its outputs,
//! so the active layers see full shapes. TOA needs `l ≥ 2`; with fewer frozen layers the
//! prefix goes down unchanged.
//!
//! Choices: `k_q` is at least 1 (a layer never vanishes). In `bernoulli` mode an empty draw
//! keeps the single most probable tensor. Norms come from the server's full weights before
//! any slicing.

use burn::prelude::*;
use fedolf_models::{LayeredNet, ModelError, ToaSite};
use rand::Rng;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::runtime::rng::{draw_by_cumulative, running_sums};
use crate::tensor::params::layer_numel;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToaMode {
    Paper,
    Crs,
    Bernoulli,
    Topk,
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum ToaError {
    #[error("toa.s = {0} is outside (0, 1]; s is the fraction of tensors kept per frozen layer")]
    BadScale(f64),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Validated TOA settings: `s ∈ (0, 1]` (`s = 1` means no TOA).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ToaSettings {
    s: f64,
    mode: ToaMode,
}

impl ToaSettings {
    pub fn new(s: f64, mode: ToaMode) -> Result<Self, ToaError> {
        if !(s.is_finite() && s > 0.0 && s <= 1.0) {
            return Err(ToaError::BadScale(s));
        }
        Ok(Self { s, mode })
    }

    pub fn mode(&self) -> ToaMode {
        self.mode
    }

    pub fn is_active(&self) -> bool {
        self.s < 1.0
    }
}

/// `k_q = max(1, ⌊s·H_q⌋)`.
pub fn kept_count(s: f64, tensors: usize) -> usize {
    ((s * tensors as f64).floor() as usize).clamp(1, tensors.max(1))
}

/// The tensors kept in one layer and their estimator scales.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Ascending tensor indices.
    pub indices: Vec<usize>,
    /// `α_j` for each kept index.
    pub alpha: Vec<f32>,
}

/// Norm-proportional probabilities; uniform when every norm is zero.
pub fn norm_probabilities(norms: &[f32]) -> Vec<f64> {
    let total: f64 = norms.iter().map(|&n| n.max(0.0) as f64).sum();
    if total <= 0.0 || !total.is_finite() {
        return vec![1.0 / norms.len() as f64; norms.len()];
    }
    norms.iter().map(|&n| n.max(0.0) as f64 / total).collect()
}

/// Draw `k` of the tensors whose norms are given.
pub fn select<R: Rng>(norms: &[f32], k: usize, mode: ToaMode, rng: &mut R) -> Selection {
    let h = norms.len();
    let k = k.clamp(1, h);
    let p = norm_probabilities(norms);
    let mut chosen: Vec<(usize, f32)> = match mode {
        ToaMode::Paper => {
            // Efraimidis–Spirakis: the k largest keys ln(u)/p_j are a weighted draw without
            // replacement.
            let mut keys: Vec<(f64, usize)> = p
                .iter()
                .enumerate()
                .map(|(j, &pj)| {
                    let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                    (if pj > 0.0 { u.ln() / pj } else { f64::NEG_INFINITY }, j)
                })
                .collect();
            keys.sort_by(|a, b| b.0.total_cmp(&a.0));
            keys.into_iter().take(k).map(|(_, j)| (j, 1.0)).collect()
        }
        ToaMode::Topk => {
            let mut order: Vec<usize> = (0..h).collect();
            order.sort_by(|&a, &b| norms[b].total_cmp(&norms[a]));
            order.into_iter().take(k).map(|j| (j, 1.0)).collect()
        }
        ToaMode::Crs => {
            let cumulative = running_sums(&p);
            let mut counts = vec![0usize; h];
            for _ in 0..k {
                counts[draw_by_cumulative(&cumulative, rng)] += 1;
            }
            counts
                .iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(|(j, &c)| (j, (c as f64 / (k as f64 * p[j])) as f32))
                .collect()
        }
        ToaMode::Bernoulli => {
            let pi: Vec<f64> = p.iter().map(|&pj| (k as f64 * pj).min(1.0)).collect();
            let mut kept: Vec<(usize, f32)> = pi
                .iter()
                .enumerate()
                .filter(|(_, &q)| q > 0.0 && rng.random::<f64>() < q)
                .map(|(j, &q)| (j, (1.0 / q) as f32))
                .collect();
            if kept.is_empty() {
                let j = (0..h).max_by(|&a, &b| pi[a].total_cmp(&pi[b])).unwrap_or(0);
                kept.push((j, (1.0 / pi[j].max(f64::MIN_POSITIVE)) as f32));
            }
            kept
        }
    };
    chosen.sort_by_key(|&(j, _)| j);
    Selection { indices: chosen.iter().map(|&(j, _)| j).collect(), alpha: chosen.iter().map(|&(_, a)| a).collect() }
}

/// What TOA did to one client's frozen prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ToaReport {
    /// Elements of the frozen layers in full (weights, biases, BN affine + running stats).
    pub frozen_full_elems: usize,
    /// Elements actually sent after sparsification.
    pub frozen_sent_elems: usize,
}

impl ToaReport {
    pub fn sent_fraction(&self) -> f64 {
        if self.frozen_full_elems == 0 {
            1.0
        } else {
            self.frozen_sent_elems as f64 / self.frozen_full_elems as f64
        }
    }
}

/// Sparsify a frozen prefix (layers `[0, l)` of the global model, already a client copy).
/// Layers `0..l−1` are sampled; layer `l−1` keeps its outputs.
pub fn sparsify_prefix<B: Backend, R: Rng>(
    prefix: LayeredNet<B>,
    settings: ToaSettings,
    rng: &mut R,
) -> Result<(LayeredNet<B>, ToaReport), ToaError> {
    let full: usize = prefix.layers.iter().map(layer_numel).sum();
    let l = prefix.num_layers();
    if !settings.is_active() || l < 2 {
        return Ok((prefix, ToaReport { frozen_full_elems: full, frozen_sent_elems: full }));
    }
    // All draws come from the server's unsliced weights.
    let mut plans = Vec::new();
    let mut device = None;
    for q in 0..l - 1 {
        let layer = &prefix.layers[q];
        let Some(norms) = layer.toa_norms() else { continue };
        device = Some(norms.device());
        let norms: Vec<f32> = norms.into_data().convert::<f32>().into_vec().unwrap_or_default();
        let k = kept_count(settings.s, norms.len());
        plans.push((q, layer.toa_site(), norms.len(), select(&norms, k, settings.mode, rng)));
    }
    let mut net = prefix;
    let mut layers: Vec<_> = std::mem::take(&mut net.layers).into_iter().map(Some).collect();
    for (q, site, h, sel) in plans {
        let device = device.clone().expect("a non-empty prefix has a device");
        let idx = Tensor::<B, 1, Int>::from_data(
            TensorData::new(sel.indices.iter().map(|&j| j as i64).collect::<Vec<_>>(), [sel.indices.len()]),
            &device,
        );
        let alpha = Tensor::<B, 1>::from_data(TensorData::new(sel.alpha.clone(), [sel.alpha.len()]), &device);
        match site {
            ToaSite::Outputs => {
                let layer = layers[q].take().expect("each layer is taken once per site");
                layers[q] = Some(layer.toa_keep_outputs(&idx)?);
                let next = layers[q + 1].take().expect("each layer is taken once per site");
                layers[q + 1] = Some(next.toa_scale_inputs(&idx, &alpha, h)?);
            }
            ToaSite::Inner => {
                let layer = layers[q].take().expect("each layer is taken once per site");
                layers[q] = Some(layer.toa_sparsify_inner(&idx, &alpha)?);
            }
            ToaSite::None => {}
        }
    }
    net.layers = layers.into_iter().map(|l| l.expect("every layer is put back")).collect();
    let sent = net.layers.iter().map(layer_numel).sum();
    Ok((net, ToaReport { frozen_full_elems: full, frozen_sent_elems: sent }))
}

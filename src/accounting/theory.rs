//! Theoretical memory of one training step, FedOLF paper Eq. (23) (after [12]):
//!
//! `m(w) = Σ_q m_AM(W_q) + m_G(W_q) + m_W(W_q)`
//!
//! over the layers in the autodiff graph: activation maps (batch × the layer's intermediate
//! maps, plus the input map of the first layer in the graph, which backward keeps for that
//! layer's weight gradient), gradients (trainable parameters) and weights; frozen layers
//! outside the graph count their weights only. Optimizer state (SGD momentum: one buffer per trained
//! parameter) is not in Eq. 23 and is reported separately. 4 bytes per f32.

use fedolf_models::LayerInfo;

use crate::local::roles::LayerRole;

const F32: u64 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TheoreticalMemory {
    pub activations: u64,
    pub weights: u64,
    pub gradients: u64,
    /// Momentum buffers (outside Eq. 23).
    pub optimizer: u64,
}

impl TheoreticalMemory {
    /// Eq. 23's total in bytes (activations + gradients + weights).
    pub fn eq23(&self) -> u64 {
        self.activations + self.gradients + self.weights
    }

    /// What one training step adds on top of the resident weights: Eq. 23's activations and
    /// gradients, plus the momentum buffers.
    pub fn transient(&self) -> u64 {
        self.activations + self.gradients + self.optimizer
    }

    /// Component-wise mean (integer bytes), e.g. over random-freezing draws.
    pub fn mean(all: &[Self]) -> Self {
        let n = all.len().max(1) as u64;
        let sum = |f: fn(&Self) -> u64| all.iter().map(f).sum::<u64>() / n;
        Self { activations: sum(|m| m.activations), weights: sum(|m| m.weights), gradients: sum(|m| m.gradients), optimizer: sum(|m| m.optimizer) }
    }
}

pub fn theoretical_memory(infos: &[LayerInfo], roles: &[LayerRole], batch: usize, momentum: bool) -> TheoreticalMemory {
    let mut m = TheoreticalMemory::default();
    let first_in_graph = roles.iter().position(|r| !matches!(r, LayerRole::FrozenNoGraph | LayerRole::Skipped));
    for (i, (info, role)) in infos.iter().zip(roles).enumerate() {
        if *role == LayerRole::Skipped {
            continue; // not on the client
        }
        let params = info.trainable_params as u64 * F32;
        m.weights += params + info.buffer_elems as u64 * F32;
        let in_graph = *role != LayerRole::FrozenNoGraph;
        if Some(i) == first_in_graph {
            m.activations += (batch * info.input.elems()) as u64 * F32;
        }
        if in_graph {
            m.activations += (batch * info.activation_elems) as u64 * F32;
        }
        if matches!(role, LayerRole::Trained | LayerRole::FrozenGradDiscarded) {
            m.gradients += params;
        }
        if *role == LayerRole::Trained && momentum {
            m.optimizer += params;
        }
    }
    m
}

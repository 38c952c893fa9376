//! A client's local loss over its model's outputs (one logit tensor per exit reached,
//! shallowest first; the deepest last). Single-exit methods use plain cross-entropy; the
//! multi-exit methods' losses, with their papers' formulas, are in [`exit_losses`].

use burn::prelude::*;

use crate::local::exit_losses;
use crate::local::loss_terms::cross_entropy;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Objective {
    /// Cross-entropy of the deepest output.
    CrossEntropy,
    /// DepthFL's mutual self-distillation between exits with weight `w_t`.
    MutualDistillation { weight: f32 },
    /// ScaleFL's depth-weighted exits with knowledge distillation from the deepest one, of
    /// weight `gamma` (0 before KD starts).
    ScaledExits { gamma: f32, temperature: f32 },
}

impl Objective {
    /// The batch loss (a one-element tensor).
    pub fn loss<B: Backend>(self, mut outputs: Vec<Tensor<B, 2>>, y: Tensor<B, 1, Int>) -> Tensor<B, 1> {
        match self {
            Self::CrossEntropy => cross_entropy(outputs.pop().expect("a model has an output"), y),
            Self::MutualDistillation { weight } => exit_losses::mutual_distillation_loss(&outputs, y, weight),
            Self::ScaledExits { gamma, temperature } => exit_losses::scaled_exits_loss(&outputs, y, gamma, temperature),
        }
    }
}

//! A client's local loss over its model's outputs (one logit tensor per exit reached,
//! shallowest first; the deepest last). Single-exit methods use plain cross-entropy; the
//! multi-exit methods' losses, with their papers' formulas, are in [`exit_losses`].

use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::local::exit_losses;

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

/// Mean cross-entropy over the batch.
/// # Shapes
/// logits `[b, classes]`, labels `[b]` `-> [1]`
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, y: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    CrossEntropyLossConfig::new().init::<B>(&logits.device()).forward(logits, y)
}

/// `KL(softmax(t/T) ‖ softmax(z/T))` averaged over the batch, the teacher `t` detached (no
/// gradient flows into it).
/// # Shapes
/// teacher, student `[b, classes]` `-> [1]`
pub fn distillation_kl<B: Backend>(teacher: Tensor<B, 2>, student: Tensor<B, 2>, temperature: f32) -> Tensor<B, 1> {
    let batch = student.dims()[0].max(1) as f32;
    let log_p = log_softmax(teacher.detach() / temperature, 1);
    let log_q = log_softmax(student / temperature, 1);
    (log_p.clone().exp() * (log_p - log_q)).sum() / batch
}

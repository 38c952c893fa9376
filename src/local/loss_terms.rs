//! The terms the local losses are made of: cross-entropy and the distillation KL.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;

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

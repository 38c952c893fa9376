//! The backend extension for training-mode BatchNorm, the pattern of `extension.rs`: on
//! `Autodiff<B>` one graph node with the input, γ and β as parents, whose backward step
//! calls `B`'s gradient kernel.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;

/// Per-channel batch statistics, on the host: the mean and the biased variance.
pub type BatchStatistics = (Vec<f32>, Vec<f32>);

/// A backend with its own training-mode BatchNorm.
pub trait NormKernels: Backend {
    /// `x: [b, c, n]`, `gamma`, `beta`: `[c]` → `y: [b, c, n]` normalised with the batch's
    /// statistics, and those statistics (for the running averages). `None` where the kernels
    /// do not take these tensors: the caller uses Burn's ops.
    fn batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> Option<(FloatTensor<Self>, BatchStatistics)>;
}

/// The inner backend's part: the forward and the gradients on its own tensors.
pub trait NormGradientKernels: Backend {
    fn batch_norm_supported(x: &FloatTensor<Self>, gamma: &FloatTensor<Self>, beta: &FloatTensor<Self>) -> bool;
    fn batch_norm_forward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, BatchStatistics);
    /// `dy: [b, c, n]` → `[dx, dγ, dβ]`, each only where `wanted`.
    fn batch_norm_gradients(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        statistics: &BatchStatistics,
        epsilon: f64,
        wanted: [bool; 3],
    ) -> [Option<FloatTensor<Self>>; 3];
}

#[derive(Debug)]
struct NormBackward;

/// The checkpointed input and γ, the batch statistics, ε.
#[derive(Debug, Clone)]
struct NormState {
    x: NodeId,
    gamma: NodeId,
    statistics: Arc<BatchStatistics>,
    epsilon: f64,
}

impl<B: NormGradientKernels> Backward<B, 3> for NormBackward {
    type State = NormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let dy = grads.consume::<B>(&ops.node);
        let state = ops.state;
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(state.x);
        let gamma = checkpointer.retrieve_node_output::<FloatTensor<B>>(state.gamma);
        let wanted = ops.parents.each_ref().map(Option::is_some);
        let computed = B::batch_norm_gradients(x, gamma, dy, &state.statistics, state.epsilon, wanted);
        for (parent, grad) in ops.parents.iter().zip(computed) {
            if let (Some(node), Some(grad)) = (parent, grad) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: NormGradientKernels, C: CheckpointStrategy> NormKernels for Autodiff<B, C> {
    fn batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> Option<(FloatTensor<Self>, BatchStatistics)> {
        if !B::batch_norm_supported(&x.primitive, &gamma.primitive, &beta.primitive) {
            return None;
        }
        let parents = [x.node.clone(), gamma.node.clone(), beta.node.clone()];
        Some(match NormBackward.prepare::<C>(parents).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let (x_state, gamma_state) = (prep.checkpoint(&x), prep.checkpoint(&gamma));
                let (y, statistics) = B::batch_norm_forward(x.primitive, gamma.primitive, beta.primitive, epsilon);
                let state = NormState { x: x_state, gamma: gamma_state, statistics: Arc::new(statistics.clone()), epsilon };
                (prep.finish(state, y), statistics)
            }
            OpsKind::UnTracked(prep) => {
                let (y, statistics) = B::batch_norm_forward(x.primitive, gamma.primitive, beta.primitive, epsilon);
                (prep.finish(y), statistics)
            }
        })
    }
}

//! The backend extension for training-mode BatchNorm, the pattern of `extension.rs`: on
//! `Autodiff<B>` one graph node with the input, γ and β (and a residual block's skip, when the
//! kernel adds it) as parents, whose backward step calls `B`'s gradient kernel.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;

use crate::norm::Then;

/// Per-channel batch statistics, on the host: the mean and the biased variance.
pub type BatchStatistics = (Vec<f32>, Vec<f32>);

/// A backend with its own training-mode BatchNorm.
pub trait NormKernels: Backend {
    /// `x: [b, c, n]`, `gamma`, `beta`: `[c]` → `y: [b, c, n]` normalised with the batch's
    /// statistics, then `then` (a skip shaped like `x`), and those statistics (for the running
    /// averages). `None` where the kernels do not take these tensors: the caller uses Burn's ops.
    fn batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        then: Then<FloatTensor<Self>>,
    ) -> Option<(FloatTensor<Self>, BatchStatistics)>;
}

/// The inner backend's part: the forward and the gradients on its own tensors.
pub trait NormGradientKernels: Backend {
    fn batch_norm_supported(x: &FloatTensor<Self>, gamma: &FloatTensor<Self>, beta: &FloatTensor<Self>, then: Then<&FloatTensor<Self>>) -> bool;
    fn batch_norm_forward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        then: Then<FloatTensor<Self>>,
    ) -> (FloatTensor<Self>, BatchStatistics);
    /// `dy: [b, c, n]` → `[dx, dγ, dβ, d skip]` of the forward with the same `then`, each only
    /// where `wanted` (the skip's only with [`Then::AddRelu`]).
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_gradients(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        statistics: &BatchStatistics,
        epsilon: f64,
        then: Then<FloatTensor<Self>>,
        wanted: [bool; 4],
    ) -> [Option<FloatTensor<Self>>; 4];
}

/// The node without a skip (x, γ, β) and with one (x, γ, β, skip).
#[derive(Debug)]
struct NormBackward;
#[derive(Debug)]
struct NormAddBackward;

/// The checkpointed input, γ, β and skip, the batch statistics, ε, and what followed.
#[derive(Debug, Clone)]
struct NormState {
    x: NodeId,
    gamma: NodeId,
    beta: NodeId,
    statistics: Arc<BatchStatistics>,
    epsilon: f64,
    then: Then<NodeId>,
}

/// The backward step of either node: the gradients its parents want, registered.
fn step<B: NormGradientKernels, const N: usize>(ops: Ops<NormState, N>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
    let dy = grads.consume::<B>(&ops.node);
    let state = ops.state;
    let mut retrieve = |id: NodeId| checkpointer.retrieve_node_output::<FloatTensor<B>>(id);
    let (x, gamma, beta) = (retrieve(state.x), retrieve(state.gamma), retrieve(state.beta));
    let then = state.then.map(&mut retrieve);
    let mut wanted = [false; 4];
    for (want, parent) in wanted.iter_mut().zip(&ops.parents) {
        *want = parent.is_some();
    }
    let computed = B::batch_norm_gradients(x, gamma, beta, dy, &state.statistics, state.epsilon, then, wanted);
    for (parent, grad) in ops.parents.iter().zip(computed) {
        if let (Some(node), Some(grad)) = (parent, grad) {
            grads.register::<B>(node.id, grad);
        }
    }
}

impl<B: NormGradientKernels> Backward<B, 3> for NormBackward {
    type State = NormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        step::<B, 3>(ops, grads, checkpointer);
    }
}

impl<B: NormGradientKernels> Backward<B, 4> for NormAddBackward {
    type State = NormState;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        step::<B, 4>(ops, grads, checkpointer);
    }
}

impl<B: NormGradientKernels, C: CheckpointStrategy> NormKernels for Autodiff<B, C> {
    fn batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        then: Then<FloatTensor<Self>>,
    ) -> Option<(FloatTensor<Self>, BatchStatistics)> {
        if !B::batch_norm_supported(&x.primitive, &gamma.primitive, &beta.primitive, then.as_ref().map(|s| &s.primitive)) {
            return None;
        }
        let forward = |then: Then<FloatTensor<Self>>| B::batch_norm_forward(x.primitive.clone(), gamma.primitive.clone(), beta.primitive.clone(), epsilon, then.map(|s| s.primitive));
        let state = |checkpoint: &mut dyn FnMut(&FloatTensor<Self>) -> NodeId, then: &Then<FloatTensor<Self>>, statistics: &BatchStatistics| NormState {
            x: checkpoint(&x),
            gamma: checkpoint(&gamma),
            beta: checkpoint(&beta),
            statistics: Arc::new(statistics.clone()),
            epsilon,
            then: then.as_ref().map(|s| checkpoint(s)),
        };
        let skip = match &then {
            Then::AddRelu(skip) => Some(skip.clone()),
            _ => None,
        };
        Some(match skip {
            Some(skip) => record::<B, C, _, 4>(NormAddBackward, [&x, &gamma, &beta, &skip], then, forward, state),
            None => record::<B, C, _, 3>(NormBackward, [&x, &gamma, &beta], then, forward, state),
        })
    }
}

/// `kind`'s node over `parents`: the forward run once, and with a graph to record, the state
/// its backward step reads.
fn record<B, C, K, const N: usize>(
    kind: K,
    parents: [&FloatTensor<Autodiff<B, C>>; N],
    then: Then<FloatTensor<Autodiff<B, C>>>,
    forward: impl FnOnce(Then<FloatTensor<Autodiff<B, C>>>) -> (FloatTensor<B>, BatchStatistics),
    state: impl FnOnce(&mut dyn FnMut(&FloatTensor<Autodiff<B, C>>) -> NodeId, &Then<FloatTensor<Autodiff<B, C>>>, &BatchStatistics) -> NormState,
) -> (FloatTensor<Autodiff<B, C>>, BatchStatistics)
where
    B: NormGradientKernels,
    C: CheckpointStrategy,
    K: Backward<B, N, State = NormState>,
{
    match kind.prepare::<C>(parents.map(|t| t.node.clone())).compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            let (y, statistics) = forward(then.clone());
            let state = state(&mut |t| prep.checkpoint(t), &then, &statistics);
            (prep.finish(state, y), statistics)
        }
        OpsKind::UnTracked(prep) => {
            let (y, statistics) = forward(then);
            (prep.finish(y), statistics)
        }
    }
}

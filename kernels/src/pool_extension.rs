//! The backend extension for max pooling (with or without the ReLU before it), the same
//! pattern as the convolution's (`extension.rs`): the op on the backend, and on `Autodiff<B>`
//! a backward step that keeps the window winners instead of Burn's index tensor.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{ActivationOps, FloatTensor, ModuleOps};

/// A backend with its own max pooling over non-overlapping `size×size` windows.
pub trait PoolKernels: Backend {
    /// `x: [b, c, h, w]` → `[b, c, h/size, w/size]` (floor), of `relu(x)` with `relu`.
    fn max_pool2d_windows(x: FloatTensor<Self>, size: usize, relu: bool) -> FloatTensor<Self>;
}

/// What the backward step keeps: the winner of each window (an index into its plane).
#[derive(Debug, Clone)]
pub struct PoolArgmax {
    /// `[b, c, h, w]` of the pooled input.
    pub input: [usize; 4],
    pub size: usize,
    pub index: Arc<Vec<u32>>,
}

/// A backend that also computes the pool's gradient itself (the inner backend of an
/// `Autodiff`).
pub trait PoolGradientKernels: PoolKernels {
    /// Whether [`Self::max_pool2d_with_argmax`] takes this input; the others go to Burn.
    fn max_pool2d_supported(x: &FloatTensor<Self>, size: usize) -> bool;
    fn max_pool2d_with_argmax(x: FloatTensor<Self>, size: usize, relu: bool) -> (FloatTensor<Self>, PoolArgmax);
    /// `dy: [b, c, h/size, w/size]` → `dx: [b, c, h, w]`.
    fn max_pool2d_backward(argmax: &PoolArgmax, dy: FloatTensor<Self>) -> FloatTensor<Self>;
}

#[derive(Debug)]
struct MaxPoolBackward;

impl<B: PoolGradientKernels> Backward<B, 1> for MaxPoolBackward {
    type State = PoolArgmax;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let dy = grads.consume::<B>(&ops.node);
        let [parent] = ops.parents;
        if let Some(node) = parent {
            grads.register::<B>(node.id, B::max_pool2d_backward(&ops.state, dy));
        }
    }
}

impl<B: PoolGradientKernels, C: CheckpointStrategy> PoolKernels for Autodiff<B, C> {
    fn max_pool2d_windows(x: FloatTensor<Self>, size: usize, relu: bool) -> FloatTensor<Self> {
        if !B::max_pool2d_supported(&x.primitive, size) {
            let x = if relu { <Self as ActivationOps<Self>>::relu(x) } else { x };
            return <Self as ModuleOps<Self>>::max_pool2d(x, [size; 2], [size; 2], [0, 0], [1, 1], false);
        }
        match MaxPoolBackward.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (y, argmax) = B::max_pool2d_with_argmax(x.primitive, size, relu);
                prep.finish(argmax, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::max_pool2d_windows(x.primitive, size, relu)),
        }
    }
}

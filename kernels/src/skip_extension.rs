//! The backend extension for the option-A shortcut (`skip.rs`), the pattern of
//! `pool_extension.rs`: the op on the backend, and on `Autodiff<B>` a backward step that calls
//! `B`'s gradient, keeping only the shape (the op copies; its gradient needs no input).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;

use crate::skip::SkipShape;

/// A backend with its own option-A shortcut.
pub trait SkipKernels: Backend {
    /// `x: [b, c_in, h, w]` → `[b, c_out, ⌈h/stride⌉, ⌈w/stride⌉]`: `x` subsampled, zero
    /// channels above `c_in`. `None` where the kernels do not take `x`: the caller uses Burn's
    /// ops.
    fn padded_skip(x: FloatTensor<Self>, stride: usize, c_out: usize) -> Option<FloatTensor<Self>>;
}

/// The inner backend's part: the shape it takes, the forward and the gradient.
pub trait SkipGradientKernels: SkipKernels {
    fn padded_skip_shape(x: &FloatTensor<Self>, stride: usize, c_out: usize) -> Option<SkipShape>;
    /// `dy: [b, c_out, ⌈h/s⌉, ⌈w/s⌉]` → `dx: [b, c_in, h, w]`.
    fn padded_skip_backward(shape: &SkipShape, dy: FloatTensor<Self>) -> FloatTensor<Self>;
}

#[derive(Debug)]
struct SkipBackward;

impl<B: SkipGradientKernels> Backward<B, 1> for SkipBackward {
    type State = SkipShape;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let dy = grads.consume::<B>(&ops.node);
        let [parent] = ops.parents;
        if let Some(node) = parent {
            grads.register::<B>(node.id, B::padded_skip_backward(&ops.state, dy));
        }
    }
}

impl<B: SkipGradientKernels, C: CheckpointStrategy> SkipKernels for Autodiff<B, C> {
    fn padded_skip(x: FloatTensor<Self>, stride: usize, c_out: usize) -> Option<FloatTensor<Self>> {
        let shape = B::padded_skip_shape(&x.primitive, stride, c_out)?;
        let y = B::padded_skip(x.primitive, stride, c_out)?;
        Some(match SkipBackward.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(shape, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        })
    }
}

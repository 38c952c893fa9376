//! The backend extension that carries the kernels into Burn (the pattern of Burn's
//! custom-kernel examples): a trait on `Backend` with the op, implemented for the CPU backend
//! with `cpu.rs`, and for `Autodiff<B>` by running `B`'s forward and registering a backward
//! step that calls `B`'s gradients. Burn's own `Autodiff` conv would instead call the inner
//! backend's `conv2d_x_backward` / `conv2d_weight_backward`, which Flex leaves to Burn's
//! generic fallback (a convolution over batch/channel-swapped copies).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{ConvOptions, FloatTensor};

use crate::cpu::Wanted;

/// A backend with its own 2-D convolution forward.
pub trait ConvKernels: Backend {
    /// `x: [b, c_in, h, w]`, `weight: [c_out, c_in, kh, kw]`, `bias: [c_out]` →
    /// `[b, c_out, ho, wo]`, with symmetric zero padding `options.padding`.
    fn conv2d_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        options: &ConvOptions<2>,
    ) -> FloatTensor<Self>;
}

/// The gradients a backward step asked for, as the backend's tensors.
pub struct ConvGradients<B: Backend> {
    pub input: Option<FloatTensor<B>>,
    pub weight: Option<FloatTensor<B>>,
    pub bias: Option<FloatTensor<B>>,
}

/// A backend that also computes the convolution's gradients itself (the inner backend of an
/// `Autodiff`).
pub trait ConvGradientKernels: ConvKernels {
    /// `dy: [b, c_out, ho, wo]` → the gradients `wanted` asks for.
    fn conv2d_gradients(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        options: &ConvOptions<2>,
        wanted: Wanted,
    ) -> ConvGradients<Self>;
}

/// The backward step of one convolution; `N` = 2 parents (input, weight) or 3 (+ bias).
#[derive(Debug)]
struct ConvBackward;

impl<B: ConvGradientKernels, const N: usize> Backward<B, N> for ConvBackward {
    /// The checkpointed input and weight, and the options.
    type State = (NodeId, NodeId, ConvOptions<2>);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let dy = grads.consume::<B>(&ops.node);
        let (x_state, weight_state, options) = ops.state;
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_state);
        let weight = checkpointer.retrieve_node_output::<FloatTensor<B>>(weight_state);
        let tracked = |i: usize| ops.parents.get(i).is_some_and(Option::is_some);
        let wanted = Wanted { input: tracked(0), weight: tracked(1), bias: tracked(2) };
        let computed = B::conv2d_gradients(x, weight, dy, &options, wanted);
        for (parent, grad) in ops.parents.iter().zip([computed.input, computed.weight, computed.bias]) {
            if let (Some(node), Some(grad)) = (parent, grad) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: ConvGradientKernels, C: CheckpointStrategy> ConvKernels for Autodiff<B, C> {
    fn conv2d_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        options: &ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let forward = |x, w, b| B::conv2d_forward(x, w, b, options);
        match bias {
            Some(bias) => match ConvBackward.prepare::<C>([x.node.clone(), weight.node.clone(), bias.node.clone()]).compute_bound().stateful() {
                OpsKind::Tracked(mut prep) => {
                    let state = (prep.checkpoint(&x), prep.checkpoint(&weight), options.clone());
                    prep.finish(state, forward(x.primitive, weight.primitive, Some(bias.primitive)))
                }
                OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive, weight.primitive, Some(bias.primitive))),
            },
            None => match ConvBackward.prepare::<C>([x.node.clone(), weight.node.clone()]).compute_bound().stateful() {
                OpsKind::Tracked(mut prep) => {
                    let state = (prep.checkpoint(&x), prep.checkpoint(&weight), options.clone());
                    prep.finish(state, forward(x.primitive, weight.primitive, None))
                }
                OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive, weight.primitive, None)),
            },
        }
    }
}

//! Early-exit classifiers for the multi-exit methods (DepthFL, Kim et al., ICLR 2023; ScaleFL,
//! Ilhan et al., CVPR 2023), with the smallest head DepthFL's design allows: on a ResNet,
//! stride-2 conv-BN-ReLU steps up to the final stage's width, then global average pool +
//! linear; on the CNN / AlexNet, pool + linear (a linear layer where the features are already
//! flat). An exit hangs after a depth `after` of the main layers (1-based: after layer
//! `after − 1`); it is an ordinary part of the model — its tensors travel and aggregate like
//! any layer's — and a net built without exits holds none, so methods without them see the
//! model unchanged.

use burn::prelude::*;

use crate::conv_unit::ConvUnit;
use crate::dense_unit::DenseUnit;
use crate::features::Features;
use crate::residual::PooledHead;
use crate::slicing;

#[derive(Module, Debug)]
pub enum ExitKind<B: Backend> {
    /// Global average pool + linear (CNN / AlexNet feature maps).
    Pooled(PooledHead<B>),
    /// A linear classifier on flat features (AlexNet after its first FC layer).
    Linear(DenseUnit<B>),
    /// Stride-2 conv-BN-ReLU steps to the final width, then pool + linear (ResNets).
    Strided(StridedExit<B>),
}

#[derive(Module, Debug)]
pub struct StridedExit<B: Backend> {
    pub steps: Vec<ConvUnit<B>>,
    pub head: PooledHead<B>,
}

#[derive(Module, Debug)]
pub struct ExitHead<B: Backend> {
    pub kind: ExitKind<B>,
    /// The depth it follows: the output of main layer `after − 1` flows in.
    pub after: usize,
}

impl<B: Backend> ExitHead<B> {
    /// Pool + linear on `channels` feature maps.
    pub fn pooled(after: usize, channels: usize, classes: usize, device: &B::Device) -> Self {
        Self { kind: ExitKind::Pooled(PooledHead::new(channels, classes, device)), after }
    }

    /// A linear classifier on `features` flat inputs.
    pub fn linear(after: usize, features: usize, classes: usize, device: &B::Device) -> Self {
        Self { kind: ExitKind::Linear(DenseUnit::new(features, classes, false, device)), after }
    }

    /// Stride-2 3×3 conv-BN-ReLU steps doubling `channels` until `final_channels`, then pool +
    /// linear (no steps when the width is already final).
    pub fn strided(after: usize, channels: usize, final_channels: usize, classes: usize, device: &B::Device) -> Self {
        let mut steps = Vec::new();
        let mut c = channels;
        while c < final_channels {
            let next = (2 * c).min(final_channels);
            steps.push(ConvUnit::strided([c, next], 3, 2, 1, true, None, device));
            c = next;
        }
        Self { kind: ExitKind::Strided(StridedExit { steps, head: PooledHead::new(c, classes, device) }), after }
    }

    /// # Shapes
    /// `[b, c, h, w]` (or flat `[b, d]` for a linear exit) `-> [b, classes]`
    pub fn forward(&self, x: Features<B>) -> Tensor<B, 2> {
        match (&self.kind, x) {
            (ExitKind::Linear(u), x) => u.forward(x.into_flat()),
            (ExitKind::Pooled(h), Features::Map(x)) => h.forward(x),
            (ExitKind::Strided(e), Features::Map(x)) => e.head.forward(e.steps.iter().fold(x, |h, step| step.forward(h))),
            (_, Features::Flat(_)) => unreachable!("pooled exits are only built after feature maps"),
        }
    }

    /// Keep input channels `idx` of a space of `full` channels (a width sub-model: ScaleFL);
    /// the head's own channels stay whole, as HeteroFL keeps its FC layers.
    pub fn slice_input(mut self, idx: &Tensor<B, 1, Int>, full: usize) -> Self {
        self.kind = match self.kind {
            ExitKind::Pooled(mut h) => {
                h.fc = slicing::linear_keep_inputs(h.fc, idx, full);
                ExitKind::Pooled(h)
            }
            ExitKind::Linear(mut u) => {
                u.linear = slicing::linear_keep_inputs(u.linear, idx, full);
                ExitKind::Linear(u)
            }
            ExitKind::Strided(mut e) => {
                match e.steps.first_mut() {
                    Some(step) => step.conv = slicing::conv_keep_inputs(step.conv.clone(), idx),
                    None => e.head.fc = slicing::linear_keep_inputs(e.head.fc, idx, full),
                }
                ExitKind::Strided(e)
            }
        };
        self
    }
}

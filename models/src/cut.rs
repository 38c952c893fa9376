//! A width sub-model's cut through one layer: the channel indices it keeps of each of the
//! layer's channel spaces (see `spaces.rs`). Layers slice their weights by it.

use burn::prelude::*;

/// Kept channel indices per space, and each layer's view of them.
#[derive(Debug, Clone)]
pub struct LayerCut<B: Backend> {
    /// Kept input channels and the space's full size (to locate a flatten's column groups).
    pub input: Option<(Tensor<B, 1, Int>, usize)>,
    pub inner: Option<Tensor<B, 1, Int>>,
    pub output: Option<Tensor<B, 1, Int>>,
}

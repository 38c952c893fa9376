use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

/// What flows between layers: feature maps `[batch, channels, height, width]` until the
/// classifier flattens them to `[batch, features]`.
#[derive(Debug, Clone)]
pub enum Features<B: Backend> {
    Map(Tensor<B, 4>),
    Flat(Tensor<B, 2>),
}

impl<B: Backend> Features<B> {
    /// `[batch, c, h, w] -> [batch, c·h·w]` (NCHW order, so channel j owns columns
    /// `j·hw .. (j+1)·hw`); flat features pass through.
    pub fn into_flat(self) -> Tensor<B, 2> {
        match self {
            Self::Map(x) => x.flatten(1, 3),
            Self::Flat(x) => x,
        }
    }

    pub fn dims(&self) -> Vec<usize> {
        match self {
            Self::Map(x) => x.dims().to_vec(),
            Self::Flat(x) => x.dims().to_vec(),
        }
    }
}

impl<B: AutodiffBackend> Features<B> {
    /// Leave the autodiff graph: the frozen prefix runs on the inner backend.
    pub fn inner(self) -> Features<B::InnerBackend> {
        match self {
            Self::Map(x) => Features::Map(x.inner()),
            Self::Flat(x) => Features::Flat(x.inner()),
        }
    }

    /// Re-enter the autodiff graph as a leaf (no history behind it).
    pub fn from_inner(x: Features<B::InnerBackend>) -> Self {
        match x {
            Features::Map(x) => Self::Map(Tensor::from_inner(x)),
            Features::Flat(x) => Self::Flat(Tensor::from_inner(x)),
        }
    }
}

//! The parameter-free "option A" shortcut of the CIFAR ResNets (He et al., CVPR 2016, §4.2):
//! where a block changes the channel count, the skip is the identity subsampled by the
//! block's stride, with zero channels padded for the increased dimension.
//!
//! Input channel `j` lands on output channel `j` (the zeros are the channels above `c_in`).
//! Width sub-models keep any subset of the input and output channel spaces, so the skip is
//! stored as pairs `(local input channel → local output channel)`: slicing keeps the pairs
//! whose both ends survive and renumbers them. The zero-padded channels are ordinary members
//! of the stage's output space.

use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaddedSkip {
    pub stride: usize,
    pub out_channels: usize,
    /// Local input channel carried by the skip, ascending.
    pub sources: Vec<usize>,
    /// The local output channel each source lands on (same length as `sources`).
    pub targets: Vec<usize>,
}

impl PaddedSkip {
    pub fn new(c_in: usize, c_out: usize, stride: usize) -> Self {
        let carried = c_in.min(c_out);
        Self { stride, out_channels: c_out, sources: (0..carried).collect(), targets: (0..carried).collect() }
    }

    /// # Shapes
    /// `[b, c_in, h, w] -> subsample [b, c_in, ⌈h/s⌉, ⌈w/s⌉] -> pad [b, c_out, ⌈h/s⌉, ⌈w/s⌉]`
    pub fn forward<B: Backend>(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let c_in = x.dims()[1];
        let is_prefix = self.sources.len() == c_in && self.sources.iter().enumerate().all(|(i, &s)| s == i) && self.targets.iter().enumerate().all(|(i, &t)| t == i);
        if is_prefix {
            return fedolf_kernels::padded_skip(x, self.stride, self.out_channels);
        }
        // Subsampled with no channels added, through the same op.
        let x = fedolf_kernels::padded_skip(x, self.stride, c_in);
        let [b, _, h, w] = x.dims();
        let device = x.device();
        let index = |v: &[usize]| Tensor::<B, 1, Int>::from_data(TensorData::new(v.iter().map(|&i| i as i64).collect::<Vec<_>>(), [v.len()]), &device);
        let carried = x.select(1, index(&self.sources)); // [b, k, h, w]
        Tensor::zeros([b, self.out_channels, h, w], &device).select_assign(1, index(&self.targets), carried, IndexingUpdateOp::Add)
    }

    /// Keep input channels `inputs` and output channels `outputs` (local indices, ascending).
    pub fn slice(self, inputs: Option<&[usize]>, outputs: Option<&[usize]>) -> Self {
        let position = |kept: Option<&[usize]>, i: usize| match kept {
            Some(k) => k.iter().position(|&j| j == i),
            None => Some(i),
        };
        let (sources, targets) = self
            .sources
            .iter()
            .zip(&self.targets)
            .filter_map(|(&s, &t)| Some((position(inputs, s)?, position(outputs, t)?)))
            .unzip();
        Self { stride: self.stride, out_channels: outputs.map_or(self.out_channels, <[usize]>::len), sources, targets }
    }
}

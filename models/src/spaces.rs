//! Channel spaces (ARCHITECTURE.md, "Vocabulary"): sets of channel indices that must be
//! sliced the same way everywhere they appear. A ResNet stage is one space (identity skips
//! tie the stem / block outputs and shortcuts together); each residual block's inner
//! conv1→conv2 channels are their own space; a CNN/AlexNet layer's outputs are a space; the
//! image channels and the class outputs belong to no space and are never sliced.

use burn::prelude::*;

use crate::layer::Layer;
use crate::net::LayeredNet;

/// Which spaces a layer's input, inner and output channels belong to (`None` = never sliced).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LayerSpaces {
    pub input: Option<usize>,
    pub inner: Option<usize>,
    pub output: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceLayout {
    /// Full channel count of each space.
    pub sizes: Vec<usize>,
    /// Whether each space is a hidden FC layer's neurons (else conv channels). HeteroFL
    /// prunes conv spaces only.
    pub is_fc: Vec<bool>,
    pub layers: Vec<LayerSpaces>,
}

impl<B: Backend> LayeredNet<B> {
    /// The channel spaces of this net, by walking its layers input side first.
    pub fn channel_spaces(&self) -> SpaceLayout {
        let mut sizes = Vec::new();
        let mut is_fc = Vec::new();
        let mut new_space = |size: usize, fc: bool, sizes: &mut Vec<usize>| {
            sizes.push(size);
            is_fc.push(fc);
            Some(sizes.len() - 1)
        };
        let mut current: Option<usize> = None; // the space of the features flowing in
        let last = self.layers.len().saturating_sub(1);
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let input = current;
            let spaces = match layer {
                Layer::Conv(u) => LayerSpaces { input, inner: None, output: new_space(u.conv.weight.dims()[0], false, &mut sizes) },
                Layer::Dense(u) => {
                    let output = if i == last { None } else { new_space(u.linear.weight.dims()[1], true, &mut sizes) };
                    LayerSpaces { input, inner: None, output }
                }
                Layer::Mlp(u) => LayerSpaces { input, inner: new_space(u.hidden.weight.dims()[1], true, &mut sizes), output: None },
                Layer::Stem(u) => {
                    let output = new_space(u.conv.weight.dims()[0], false, &mut sizes);
                    LayerSpaces { input, inner: new_space(u.block.inner_channels(), false, &mut sizes), output }
                }
                Layer::Block(u) => {
                    let inner = new_space(u.inner_channels(), false, &mut sizes);
                    // An identity skip ties output to input; a block that changes shape
                    // (projection, or option A's zero-padded channels) starts a new space.
                    let reshapes = u.shortcut.is_some() || u.padded_skip.is_some();
                    let output = if reshapes { new_space(u.conv2.weight.dims()[0], false, &mut sizes) } else { input };
                    LayerSpaces { input, inner, output }
                }
                Layer::Head(_) => LayerSpaces { input, inner: None, output: None },
            };
            current = spaces.output;
            layers.push(spaces);
        }
        SpaceLayout { sizes, is_fc, layers }
    }
}

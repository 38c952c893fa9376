//! CIFAR ResNets (He et al., CVPR 2016, §4.2): depth 6n+2, three stages of n basic blocks with
//! 16, 32, 64 channels; stages 2 and 3 start with a stride-2 block. Shortcuts as in §4.2:
//! option A (identity, subsampled, zero-padded channels; no parameters) by default, giving
//! the paper's 0.27 M (ResNet20) and 0.66 M (ResNet44) parameters; option B (1×1 conv + BN
//! projection) is selectable (`model.shortcut = "b"`).
//! ResNet20: n = 3; ResNet44: n = 7.
//!
//! Freezing units, as the FedOLF paper counts them: residual blocks, with the stem convolution
//! fused into block 1, then the pooled classifier as the last unit —
//! N = 3n + 1 (ResNet20: 10; ResNet44: 22).

use burn::prelude::*;

use crate::cnn::check_input;
use crate::error::ModelError;
use crate::layer::Layer;
use crate::net::LayeredNet;
use crate::residual::{BasicBlock, PooledHead, Shortcut, StemUnit};

#[derive(Debug, Clone)]
pub struct ResNetConfig {
    pub input: [usize; 3],
    pub num_classes: usize,
    pub blocks_per_stage: usize,
    pub widths: [usize; 3],
    pub shortcut: Shortcut,
}

impl ResNetConfig {
    pub fn resnet20(input: [usize; 3], num_classes: usize) -> Self {
        Self { input, num_classes, blocks_per_stage: 3, widths: [16, 32, 64], shortcut: Shortcut::A }
    }

    pub fn resnet44(input: [usize; 3], num_classes: usize) -> Self {
        Self { input, num_classes, blocks_per_stage: 7, widths: [16, 32, 64], shortcut: Shortcut::A }
    }

    pub fn with_shortcut(mut self, shortcut: Shortcut) -> Self {
        self.shortcut = shortcut;
        self
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<LayeredNet<B>, ModelError> {
        check_input("resnet", self.input, 4, self.num_classes)?;
        let [w1, w2, w3] = self.widths;
        let mut layers = vec![Layer::Stem(StemUnit::new(self.input[0], w1, device))];
        for _ in 1..self.blocks_per_stage {
            layers.push(Layer::Block(BasicBlock::new(w1, w1, 1, self.shortcut, device)));
        }
        for (c_in, c_out) in [(w1, w2), (w2, w3)] {
            layers.push(Layer::Block(BasicBlock::new(c_in, c_out, 2, self.shortcut, device)));
            for _ in 1..self.blocks_per_stage {
                layers.push(Layer::Block(BasicBlock::new(c_out, c_out, 1, self.shortcut, device)));
            }
        }
        layers.push(Layer::Head(PooledHead::new(w3, self.num_classes, device)));
        Ok(LayeredNet::from_layers(layers, self.input, self.num_classes))
    }
}

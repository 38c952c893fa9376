//! AlexNet (Krizhevsky et al., NeurIPS 2012) in its common CIFAR form, as used by the FedOLF
//! paper on CIFAR-10: five 3×3 conv layers (64, 192, 384, 256, 256 filters; max-pool after the
//! 1st, 2nd and 5th) and two FC layers (512 hidden, then the classes).
//!
//! Freezing units (N = 7): each conv layer, each FC layer. With these widths, TOA at s = 0.25
//! and 4 frozen layers sends 16.3% of the frozen parameters, the paper's "≈16%" (Fig. 13).
//! The hidden FC width (512) is this project's choice: the paper does not state it.

use burn::prelude::*;

use crate::cnn::check_input;
use crate::conv_unit::ConvUnit;
use crate::dense_unit::DenseUnit;
use crate::error::ModelError;
use crate::layer::Layer;
use crate::net::LayeredNet;

#[derive(Debug, Clone)]
pub struct AlexNetConfig {
    pub input: [usize; 3],
    pub num_classes: usize,
    pub channels: [usize; 5],
    pub hidden: usize,
}

impl AlexNetConfig {
    pub fn new(input: [usize; 3], num_classes: usize) -> Self {
        Self { input, num_classes, channels: [64, 192, 384, 256, 256], hidden: 512 }
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<LayeredNet<B>, ModelError> {
        check_input("alexnet", self.input, 8, self.num_classes)?;
        let [c, h, w] = self.input;
        let ch = self.channels;
        let pools = [Some(2), Some(2), None, None, Some(2)];
        let mut layers = Vec::new();
        let mut c_in = c;
        for (c_out, pool) in ch.into_iter().zip(pools) {
            layers.push(Layer::Conv(ConvUnit::new([c_in, c_out], 3, 1, false, pool, device)));
            c_in = c_out;
        }
        // Three 2×2 pools (floor): [c5, h/8, w/8] flattened.
        let flat = ch[4] * (h / 2 / 2 / 2) * (w / 2 / 2 / 2);
        layers.push(Layer::Dense(DenseUnit::new(flat, self.hidden, true, device)));
        layers.push(Layer::Dense(DenseUnit::new(self.hidden, self.num_classes, false, device)));
        Ok(LayeredNet::from_layers(layers, self.input, self.num_classes))
    }
}

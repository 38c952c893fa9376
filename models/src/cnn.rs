//! The EMNIST CNN of the FedOLF paper (§V: "two convolution layers and one fully-connected
//! (FC) classifier"), the default:
//! conv5×5(32) → ReLU → maxpool2 → conv5×5(64) → ReLU → maxpool2 → FC(classes).
//!
//! With `hidden > 0` (`model.cnn_hidden = 512`) it is the CNN of FedAvg (McMahan et al.,
//! AISTATS 2017), which has a 512-unit hidden FC layer before the classifier:
//! … → maxpool2 → FC(512) → ReLU → FC(classes).
//!
//! Freezing units (N = 3): conv block 1, conv block 2, the classifier (one linear, or both
//! linears of the FedAvg variant).

use burn::prelude::*;

use crate::conv_unit::ConvUnit;
use crate::dense_unit::{DenseUnit, MlpHead};
use crate::error::ModelError;
use crate::layer::Layer;
use crate::net::LayeredNet;

#[derive(Debug, Clone)]
pub struct CnnConfig {
    pub input: [usize; 3],
    pub num_classes: usize,
    pub channels: [usize; 2],
    /// Hidden FC width before the classifier; 0 = none (the FedOLF paper's CNN).
    pub hidden: usize,
}

impl CnnConfig {
    pub fn new(input: [usize; 3], num_classes: usize) -> Self {
        Self { input, num_classes, channels: [32, 64], hidden: 0 }
    }

    pub fn with_hidden(mut self, hidden: usize) -> Self {
        self.hidden = hidden;
        self
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<LayeredNet<B>, ModelError> {
        check_input("cnn", self.input, 4, self.num_classes)?;
        let [c, h, w] = self.input;
        let [c1, c2] = self.channels;
        // 'same' 5×5 convs, two 2×2 pools: [c, h, w] -> [c2, h/4, w/4].
        let flat = c2 * (h / 2 / 2) * (w / 2 / 2);
        let layers = vec![
            Layer::Conv(ConvUnit::new([c, c1], 5, 2, false, Some(2), device)),
            Layer::Conv(ConvUnit::new([c1, c2], 5, 2, false, Some(2), device)),
            match self.hidden {
                0 => Layer::Dense(DenseUnit::new(flat, self.num_classes, false, device)),
                hidden => Layer::Mlp(MlpHead::new(flat, hidden, self.num_classes, device)),
            },
        ];
        Ok(LayeredNet::from_layers(layers, self.input, self.num_classes))
    }
}

/// Reject inputs whose pooling chain would reach zero size.
pub(crate) fn check_input(
    model: &'static str,
    input: [usize; 3],
    min_side: usize,
    num_classes: usize,
) -> Result<(), ModelError> {
    if num_classes < 2 {
        return Err(ModelError::TooFewClasses(num_classes));
    }
    if input[0] == 0 || input[1] < min_side || input[2] < min_side {
        return Err(ModelError::InputTooSmall {
            model,
            input,
            reason: format!("needs at least 1 channel and {min_side}×{min_side} pixels"),
        });
    }
    Ok(())
}

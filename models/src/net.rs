//! [`LayeredNet`]: an ordered list of freezable layers plus the input shape it was built for.

use burn::prelude::*;

use crate::error::ModelError;
use crate::features::Features;
use crate::layer::Layer;
use crate::shape::{FeatureShape, LayerInfo};

#[derive(Module, Debug)]
pub struct LayeredNet<B: Backend> {
    pub layers: Vec<Layer<B>>,
    pub input_channels: usize,
    pub input_height: usize,
    pub input_width: usize,
    pub num_classes: usize,
}

impl<B: Backend> LayeredNet<B> {
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn input_shape(&self) -> [usize; 3] {
        [self.input_channels, self.input_height, self.input_width]
    }

    /// Full forward pass.
    /// # Shapes
    /// `[b, c, h, w] -> [b, num_classes]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.layers
            .iter()
            .fold(Features::Map(x), |h, layer| layer.forward(h))
            .into_flat()
    }

    /// Run layers `from..to` only.
    pub fn forward_range(&self, x: Features<B>, from: usize, to: usize) -> Result<Features<B>, ModelError> {
        if from > to || to > self.layers.len() {
            return Err(ModelError::BadRange { from, to, num_layers: self.layers.len() });
        }
        Ok(self.layers[from..to].iter().fold(x, |h, layer| layer.forward(h)))
    }

    /// Per-layer shapes and activation sizes for this net's input shape (per sample).
    pub fn layer_infos(&self) -> Vec<LayerInfo> {
        let mut shape = FeatureShape::Map {
            channels: self.input_channels,
            height: self.input_height,
            width: self.input_width,
        };
        self.layers
            .iter()
            .map(|layer| {
                let info = layer.info(shape);
                shape = info.output;
                info
            })
            .collect()
    }

    /// Set HeteroFL's Scaler on every conv output (the channels HeteroFL prunes): `1/r` while
    /// a width-r sub-model trains, `1` otherwise. FC layers stay at full width in HeteroFL,
    /// so their outputs are never scaled.
    pub fn set_scaler(&mut self, scale: f32) {
        for layer in &mut self.layers {
            match layer {
                Layer::Conv(u) => u.scale = scale,
                Layer::Stem(u) => {
                    u.scale = scale;
                    u.block.scale = scale;
                }
                Layer::Block(u) => u.scale = scale,
                Layer::Dense(_) | Layer::Mlp(_) | Layer::Head(_) => {}
            }
        }
    }

    /// Set the running-statistics momentum of every BatchNorm (static BN uses `1/(t+1)` on
    /// batch t, which makes the running value the plain mean of the batch statistics).
    pub fn set_bn_momentum(&mut self, momentum: f64) {
        fn block<B: Backend>(b: &mut crate::residual::BasicBlock<B>, m: f64) {
            b.bn1.momentum = m;
            b.bn2.momentum = m;
            if let Some(p) = &mut b.shortcut {
                p.bn.momentum = m;
            }
        }
        for layer in &mut self.layers {
            match layer {
                Layer::Conv(u) => {
                    if let Some(bn) = &mut u.bn {
                        bn.momentum = momentum;
                    }
                }
                Layer::Stem(u) => {
                    u.bn.momentum = momentum;
                    block(&mut u.block, momentum);
                }
                Layer::Block(u) => block(u, momentum),
                Layer::Dense(_) | Layer::Mlp(_) | Layer::Head(_) => {}
            }
        }
    }

    /// Whether any layer has BatchNorm.
    pub fn has_batch_norm(&self) -> bool {
        self.layers.iter().any(|l| matches!(l, Layer::Stem(_) | Layer::Block(_)) || matches!(l, Layer::Conv(u) if u.bn.is_some()))
    }

    /// Split into the prefix `[0, l)` and the suffix `[l, N)`; each part keeps the metadata,
    /// and local indices restart at 0 in the suffix.
    pub fn split_at(mut self, l: usize) -> Result<(Self, Self), ModelError> {
        if l > self.layers.len() {
            return Err(ModelError::BadRange { from: 0, to: l, num_layers: self.layers.len() });
        }
        let suffix_layers = self.layers.split_off(l);
        let suffix = Self { layers: suffix_layers, ..self.meta_clone() };
        Ok((self, suffix))
    }

    /// Inverse of [`split_at`](Self::split_at).
    pub fn join(mut prefix: Self, suffix: Self) -> Self {
        prefix.layers.extend(suffix.layers);
        prefix
    }

    fn meta_clone(&self) -> Self {
        Self {
            layers: Vec::new(),
            input_channels: self.input_channels,
            input_height: self.input_height,
            input_width: self.input_width,
            num_classes: self.num_classes,
        }
    }

    pub(crate) fn from_layers(layers: Vec<Layer<B>>, input: [usize; 3], num_classes: usize) -> Self {
        Self {
            layers,
            input_channels: input[0],
            input_height: input[1],
            input_width: input[2],
            num_classes,
        }
    }
}

//! [`LayeredNet`]: an ordered list of freezable layers plus the input shape it was built for.

use burn::prelude::*;

use crate::error::ModelError;
use crate::exit::ExitHead;
use crate::features::Features;
use crate::layer::Layer;
use crate::shape::{ConvShape, FeatureShape, LayerInfo};

#[derive(Module, Debug)]
pub struct LayeredNet<B: Backend> {
    pub layers: Vec<Layer<B>>,
    /// Early exits (multi-exit methods only; empty otherwise), ordered by depth. They belong
    /// to the part of a split that holds the layers after the split point.
    pub exits: Vec<ExitHead<B>>,
    /// The full model's depth N (a depth-truncated client copy keeps it, to know that its
    /// last layer is not the classifier).
    pub full_depth: usize,
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

    /// Attach an exit after each depth in `depths` (1 ≤ d < N, the classifier is the exit at
    /// N): see [`ExitHead`] for the head each position gets.
    pub fn with_exits(mut self, depths: &[usize], device: &B::Device) -> Result<Self, ModelError> {
        let n = self.layers.len();
        let infos = self.layer_infos();
        let residual = self.layers.iter().any(|l| matches!(l, Layer::Block(_) | Layer::Stem(_)));
        let final_width = match self.layers.last() {
            Some(Layer::Head(h)) => h.fc.weight.dims()[0],
            _ => 0,
        };
        let mut depths = depths.to_vec();
        depths.sort_unstable();
        depths.dedup();
        for d in depths {
            if d == 0 || d >= n {
                return Err(ModelError::BadExit { depth: d, num_layers: n });
            }
            let exit = match infos[d - 1].output {
                FeatureShape::Map { channels, .. } if residual => ExitHead::strided(d, channels, final_width.max(channels), self.num_classes, device),
                FeatureShape::Map { channels, .. } => ExitHead::pooled(d, channels, self.num_classes, device),
                FeatureShape::Flat(features) => ExitHead::linear(d, features, self.num_classes, device),
            };
            self.exits.push(exit);
        }
        Ok(self)
    }

    /// Every output of a multi-exit forward pass, shallowest first: one logit tensor per
    /// exit reached, then the classifier's logits when `final_logits`. `depths[i]` is the
    /// global depth after local layer `i` (a split or depth-truncated copy holds a part).
    /// # Shapes
    /// `[b, ..] -> Vec<[b, num_classes]>`
    pub fn forward_with_exits(&self, x: Features<B>, depths: &[usize], final_logits: bool) -> Vec<Tensor<B, 2>> {
        let mut outputs = Vec::with_capacity(self.exits.len() + 1);
        let mut h = x;
        for (layer, &depth) in self.layers.iter().zip(depths) {
            h = layer.forward(h);
            for exit in self.exits.iter().filter(|e| e.after == depth) {
                outputs.push(exit.forward(h.clone()));
            }
        }
        if final_logits {
            outputs.push(h.into_flat());
        }
        outputs
    }

    /// The full model's outputs at every exit and the classifier (shallowest first).
    /// # Shapes
    /// `[b, c, h, w] -> Vec<[b, num_classes]>`
    pub fn forward_all_exits(&self, x: Tensor<B, 4>) -> Vec<Tensor<B, 2>> {
        let depths: Vec<usize> = (1..=self.layers.len()).collect();
        self.forward_with_exits(Features::Map(x), &depths, true)
    }

    /// Run layers `from..to` only.
    pub fn forward_range(&self, x: Features<B>, from: usize, to: usize) -> Result<Features<B>, ModelError> {
        if from > to || to > self.layers.len() {
            return Err(ModelError::BadRange { from, to, num_layers: self.layers.len() });
        }
        Ok(self.layers[from..to].iter().fold(x, |h, layer| layer.forward(h)))
    }

    /// Per-layer shapes and activation sizes for this net's input shape (per sample).
    /// Every convolution of a forward pass, input side first.
    pub fn conv_shapes(&self) -> Vec<ConvShape> {
        self.layers.iter().zip(self.layer_infos()).flat_map(|(layer, info)| layer.conv_shapes(info.input)).collect()
    }

    /// Multiply-adds of each layer's forward pass for one sample: its convolutions', and for a
    /// layer without any (dense units, the classifier) its trainable parameters' count — its
    /// weights, one multiply-add each, plus its biases (≤ 1 % more).
    pub fn layer_macs(&self) -> Vec<usize> {
        self.layers
            .iter()
            .zip(self.layer_infos())
            .map(|(layer, info)| {
                let convs = layer.conv_shapes(info.input);
                if convs.is_empty() {
                    info.trainable_params
                } else {
                    convs.iter().map(ConvShape::macs).sum()
                }
            })
            .collect()
    }

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
        let exits = std::mem::take(&mut self.exits);
        let suffix = Self { layers: suffix_layers, exits, ..self.meta_clone() };
        Ok((self, suffix))
    }

    /// Inverse of [`split_at`](Self::split_at).
    pub fn join(mut prefix: Self, suffix: Self) -> Self {
        prefix.layers.extend(suffix.layers);
        prefix.exits.extend(suffix.exits);
        prefix
    }

    fn meta_clone(&self) -> Self {
        Self {
            layers: Vec::new(),
            exits: Vec::new(),
            full_depth: self.full_depth,
            input_channels: self.input_channels,
            input_height: self.input_height,
            input_width: self.input_width,
            num_classes: self.num_classes,
        }
    }

    pub(crate) fn from_layers(layers: Vec<Layer<B>>, input: [usize; 3], num_classes: usize) -> Self {
        Self {
            full_depth: layers.len(),
            layers,
            exits: Vec::new(),
            input_channels: input[0],
            input_height: input[1],
            input_width: input[2],
            num_classes,
        }
    }
}

/// Shape of one sample's features between layers (batch dimension excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureShape {
    Map { channels: usize, height: usize, width: usize },
    Flat(usize),
}

impl FeatureShape {
    pub fn elems(self) -> usize {
        match self {
            Self::Map { channels, height, width } => channels * height * width,
            Self::Flat(n) => n,
        }
    }

    /// Channel count (feature maps) or neuron count (flat): the "tensors" TOA slices on.
    pub fn channels(self) -> usize {
        match self {
            Self::Map { channels, .. } => channels,
            Self::Flat(n) => n,
        }
    }

    pub(crate) fn map(channels: usize, height: usize, width: usize) -> Self {
        Self::Map { channels, height, width }
    }
}

/// Static facts about one layer for a given input shape (per sample), used for the paper's
/// theoretical memory (Eq. 23) and for byte accounting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    pub input: FeatureShape,
    pub output: FeatureShape,
    /// Elements of every intermediate map the layer produces for one sample (conv, BN, ReLU,
    /// pool, add outputs): what an autodiff graph keeps for the backward pass.
    pub activation_elems: usize,
    /// Trainable parameters (weights, biases, BN affine).
    pub trainable_params: usize,
    /// Non-trainable state that still travels (BN running mean/var).
    pub buffer_elems: usize,
}

/// Output side of a convolution or pooling window along one axis (PyTorch's floor rule).
pub(crate) fn conv_out(size: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (size + 2 * padding).saturating_sub(kernel) / stride + 1
}

/// One convolution a layer runs, per sample: its input map, its filter bank
/// `[c_out, c_in, kh, kw]`, and its stride and (symmetric) padding. What `fedolf bench conv`
/// times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvShape {
    /// `[c_in, h, w]`
    pub input: [usize; 3],
    pub weight: [usize; 4],
    pub stride: usize,
    pub padding: usize,
}

impl ConvShape {
    /// Multiply-adds for one sample: `c_in · kh · kw` for each of the `c_out` maps' pixels.
    pub fn macs(&self) -> usize {
        let [_, h, w] = self.input;
        let [c_out, c_in, kh, kw] = self.weight;
        c_out * c_in * kh * kw * conv_out(h, kh, self.stride, self.padding) * conv_out(w, kw, self.stride, self.padding)
    }
}

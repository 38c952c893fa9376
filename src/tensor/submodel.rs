//! Width sub-models (ARCHITECTURE.md, "Vocabulary": sub-model extract / embed, MWA): a client keeps a
//! subset of every channel space; `extract` slices the global model to it, `embed` scatters
//! the trained sub-model back to global coordinates as `(values, 0/1 mask)` for MWA.
//!
//! One rounding rule everywhere: kept channels `= max(1, ⌈r·C⌉)`. Image channels and class
//! outputs are never sliced.
//!
//! `embed` is built from `extract` itself: an "index model" — a copy of the global model
//! whose every tensor holds its own flat element indices — is extracted with the same spec,
//! so each local element carries the global position it came from. The two directions
//! cannot disagree.

use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;
use fedolf_models::{LayerCut, LayeredNet, SpaceLayout};
use rand::seq::index::sample;
use rand::Rng;

use crate::tensor::params::{read_model, write_model, LayerParams, NamedTensor, ParamError};

/// `max(1, ⌈r·C⌉)`.
pub fn kept_channels(r: f64, channels: usize) -> usize {
    ((r * channels as f64).ceil() as usize).clamp(1, channels.max(1))
}

/// Kept channel indices (ascending) for every space of a model.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WidthSpec {
    pub kept: Vec<Vec<usize>>,
    /// Multiplier on hidden-layer outputs while the sub-model trains (HeteroFL's Scaler,
    /// `1/r`); 1 = none.
    pub scaler: f32,
    /// FjORD's ordered dropout: each mini-batch trains the `p`-prefix of the global channel
    /// counts, `p` drawn uniformly from these (empty = train the whole sub-model).
    pub per_batch_ratios: Vec<f64>,
}

impl WidthSpec {
    /// The first `⌈r·C⌉` channels of every space (FjORD).
    pub fn prefix(layout: &SpaceLayout, r: f64) -> Self {
        Self::prefix_except(layout, r, &vec![false; layout.sizes.len()])
    }

    /// HeteroFL: the first `⌈r·C⌉` channels of every conv space; hidden FC spaces stay
    /// whole (the first FC layer's input columns follow the conv channels kept).
    pub fn prefix_conv(layout: &SpaceLayout, r: f64) -> Self {
        Self::prefix_except(layout, r, &layout.is_fc)
    }

    /// SLT: every space that the first `full_layers` layers produce (their outputs and
    /// inner channels) stays whole; every other space keeps its `⌈r·C⌉`-prefix. A residual
    /// stage space produced by a full-width block therefore stays whole in later blocks too
    /// (identity skips tie them); those blocks' inner spaces narrow.
    pub fn prefix_after(layout: &SpaceLayout, full_layers: usize, r: f64) -> Self {
        let mut whole = vec![false; layout.sizes.len()];
        for spaces in layout.layers.iter().take(full_layers) {
            for s in [spaces.inner, spaces.output].into_iter().flatten() {
                whole[s] = true;
            }
        }
        Self::prefix_except(layout, r, &whole)
    }

    /// The `⌈r·C⌉`-prefix of every space, except the spaces marked `whole`, kept entire.
    fn prefix_except(layout: &SpaceLayout, r: f64, whole: &[bool]) -> Self {
        let kept = layout.sizes.iter().zip(whole).map(|(&c, &w)| (0..if w { c } else { kept_channels(r, c) }).collect()).collect();
        Self { kept, scaler: 1.0, per_batch_ratios: Vec::new() }
    }

    /// Feddrop: a uniformly random subset of `⌈r·C⌉` channels per space, drawn once per space
    /// (so residual skips stay aligned).
    pub fn random<R: Rng>(layout: &SpaceLayout, r: f64, rng: &mut R) -> Self {
        let kept = layout
            .sizes
            .iter()
            .map(|&c| {
                let mut v = sample(rng, c, kept_channels(r, c)).into_vec();
                v.sort_unstable();
                v
            })
            .collect();
        Self { kept, scaler: 1.0, per_batch_ratios: Vec::new() }
    }

    /// With HeteroFL's Scaler: conv outputs divided by `r` in training.
    pub fn with_scaler(mut self, r: f64) -> Self {
        self.scaler = (1.0 / r) as f32;
        self
    }

    pub fn is_full(&self, layout: &SpaceLayout) -> bool {
        self.kept.iter().zip(&layout.sizes).all(|(k, &c)| k.len() == c)
    }

    /// `None` when it keeps every channel (a plan's full width), else itself.
    pub fn unless_full(self, layout: &SpaceLayout) -> Option<Self> {
        (!self.is_full(layout)).then_some(self)
    }
}

/// `[i64]` index tensor of `idx` (for `select` / `scatter`).
pub(crate) fn index_tensor<B: Backend>(idx: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::from_data(TensorData::new(idx.iter().map(|&i| i as i64).collect::<Vec<_>>(), [idx.len()]), device)
}

/// Slice `net` to the channels of `spec`.
pub fn extract<B: Backend>(mut net: LayeredNet<B>, layout: &SpaceLayout, spec: &WidthSpec, device: &B::Device) -> LayeredNet<B> {
    let idx: Vec<Tensor<B, 1, Int>> = spec.kept.iter().map(|k| index_tensor(k, device)).collect();
    let layers = std::mem::take(&mut net.layers);
    net.layers = layers
        .into_iter()
        .zip(&layout.layers)
        .map(|(layer, spaces)| {
            let cut = LayerCut {
                input: spaces.input.map(|s| (idx[s].clone(), layout.sizes[s])),
                inner: spaces.inner.map(|s| idx[s].clone()),
                output: spaces.output.map(|s| idx[s].clone()),
            };
            layer.slice(&cut)
        })
        .collect();
    // An exit reads the features of the layer it follows, sliced like that layer's output.
    let exits = std::mem::take(&mut net.exits);
    net.exits = exits
        .into_iter()
        .map(|exit| match exit.after.checked_sub(1).and_then(|l| layout.layers.get(l)).and_then(|s| s.output) {
            Some(space) => exit.slice_input(&idx[space], layout.sizes[space]),
            None => exit,
        })
        .collect();
    net
}

/// For every tensor of the sub-model of `spec`: the global flat index of each element.
/// `global` must be a copy the caller owns (its tensors are overwritten with indices).
pub fn embedding_indices<B: Backend>(
    mut global: LayeredNet<B>,
    layout: &SpaceLayout,
    spec: &WidthSpec,
    device: &B::Device,
) -> Result<Vec<Vec<Tensor<B, 1, Int>>>, ParamError> {
    let indexed: Vec<Option<LayerParams<B>>> = read_model(&global)
        .into_iter()
        .map(|layer| {
            Some(
                layer
                    .into_iter()
                    .map(|t| {
                        let n = t.numel();
                        // f32 holds integers exactly up to 2^24; the largest tensor here is ~2M.
                        let value = Tensor::<B, 1, Int>::arange(0..n as i64, device).float();
                        NamedTensor { name: t.name, shape: t.shape, value }
                    })
                    .collect(),
            )
        })
        .collect();
    global = write_model(global, &indexed)?;
    let local = extract(global, layout, spec, device);
    Ok(read_model(&local).into_iter().map(|layer| layer.into_iter().map(|t| t.value.round().int()).collect()).collect())
}

/// Scatter a trained sub-model into global coordinates: per layer, the tensors (zeros where
/// not held) and their 0/1 masks.
pub fn embed<B: Backend>(
    local: &[LayerParams<B>],
    indices: &[Vec<Tensor<B, 1, Int>>],
    global: &[LayerParams<B>],
) -> Vec<(LayerParams<B>, Vec<Tensor<B, 1>>)> {
    local.iter().zip(indices).zip(global).map(|((loc, idx), glob)| embed_layer(loc, idx, glob)).collect()
}

/// [`embed`] for one layer: `indices` and `global` are that layer's entries.
pub fn embed_layer<B: Backend>(local: &LayerParams<B>, indices: &[Tensor<B, 1, Int>], global: &LayerParams<B>) -> (LayerParams<B>, Vec<Tensor<B, 1>>) {
    let mut values = Vec::with_capacity(global.len());
    let mut masks = Vec::with_capacity(global.len());
    for ((l, i), g) in local.iter().zip(indices).zip(global) {
        let zeros = g.value.zeros_like();
        values.push(NamedTensor {
            name: g.name.clone(),
            shape: g.shape.clone(),
            value: zeros.clone().scatter(0, i.clone(), l.value.clone(), IndexingUpdateOp::Add),
        });
        masks.push(zeros.scatter(0, i.clone(), l.value.ones_like(), IndexingUpdateOp::Add));
    }
    (values, masks)
}

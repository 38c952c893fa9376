//! Masked weighted averaging (MWA) of named tensors — the server rule of FedOLF and of the
//! width baselines (BASELINES.md, "Shared vocabulary"):
//!
//! `θ ← Σ_k w_k M_k ⊙ θ̃_k / Σ_k w_k M_k` where the denominator is > 0, else `θ_old`.
//!
//! FedOLF's layer-wise rule (paper Alg. 1; DESIGN.md step 7) is the whole-layer-mask case:
//! `θ_l ← Σ_{k∈S_l} n_k θ_{k,l} / Σ_{k∈S_l} n_k`, a layer nobody trained keeps its value.
//! These are pure functions: they read tensors and return new ones.

use burn::prelude::*;
use thiserror::Error;

use crate::params::{LayerParams, NamedTensor};

#[derive(Debug, Error, Clone, PartialEq)]
pub enum AggregateError {
    #[error("upload {upload}: tensor `{name}` has shape {got:?}, the global tensor is {expected:?}")]
    ShapeMismatch { upload: usize, name: String, expected: Vec<usize>, got: Vec<usize> },
    #[error("upload {upload}: tensor {position} is `{got}`, the global tensor is `{expected}`")]
    NameMismatch { upload: usize, position: usize, expected: String, got: String },
    #[error("upload {upload} holds {got} tensors, the global layer has {expected}")]
    CountMismatch { upload: usize, expected: usize, got: usize },
    #[error("upload {upload} has weight {weight}; weights must be finite and > 0")]
    BadWeight { upload: usize, weight: f64 },
    #[error("upload {upload}: mask for `{name}` has {got} elements, the tensor has {expected}")]
    MaskMismatch { upload: usize, name: String, expected: usize, got: usize },
    #[error("layer {layer} is out of range for a model with {num_layers} layers")]
    LayerOutOfRange { layer: usize, num_layers: usize },
}

/// One client's contribution to one group of tensors.
#[derive(Debug, Clone)]
pub struct Upload<'a, B: Backend> {
    /// `w_k` (`n_k`, the client's sample count, by default).
    pub weight: f64,
    pub tensors: &'a [NamedTensor<B>],
    /// 0/1 element masks in global coordinates, one per tensor; `None` = the whole tensor.
    pub masks: Option<&'a [Tensor<B, 1>]>,
}

/// MWA of `uploads` over `old`; see the module doc for the formula.
pub fn masked_weighted_average<B: Backend>(
    old: &[NamedTensor<B>],
    uploads: &[Upload<'_, B>],
) -> Result<Vec<NamedTensor<B>>, AggregateError> {
    for (k, up) in uploads.iter().enumerate() {
        check_upload(old, k, up)?;
    }
    if uploads.is_empty() {
        return Ok(old.to_vec());
    }
    let out = old
        .iter()
        .enumerate()
        .map(|(i, global)| {
            let all_whole = uploads.iter().all(|u| u.masks.is_none());
            let value = if all_whole {
                // Whole-tensor masks: the denominator is the scalar Σ w_k (> 0 by validation).
                let total: f64 = uploads.iter().map(|u| u.weight).sum();
                let sum = uploads
                    .iter()
                    .map(|u| u.tensors[i].value.clone() * (u.weight / total) as f32)
                    .reduce(|a, b| a + b)
                    .expect("uploads is not empty");
                sum
            } else {
                let device = global.value.device();
                let mut num = Tensor::<B, 1>::zeros([global.numel()], &device);
                let mut den = Tensor::<B, 1>::zeros([global.numel()], &device);
                for u in uploads {
                    let mask = match u.masks {
                        Some(m) => m[i].clone(),
                        None => Tensor::ones([global.numel()], &device),
                    };
                    let wm = mask * u.weight as f32;
                    num = num + u.tensors[i].value.clone() * wm.clone();
                    den = den + wm;
                }
                let held = den.clone().greater_elem(0.0);
                // Division is guarded: where nobody held an element, keep θ_old.
                let safe_den = den.clone().mask_fill(held.clone().bool_not(), 1.0);
                global.value.clone().mask_where(held, num / safe_den)
            };
            NamedTensor { name: global.name.clone(), shape: global.shape.clone(), value }
        })
        .collect();
    Ok(out)
}

fn check_upload<B: Backend>(old: &[NamedTensor<B>], k: usize, up: &Upload<'_, B>) -> Result<(), AggregateError> {
    if !(up.weight.is_finite() && up.weight > 0.0) {
        return Err(AggregateError::BadWeight { upload: k, weight: up.weight });
    }
    if up.tensors.len() != old.len() {
        return Err(AggregateError::CountMismatch { upload: k, expected: old.len(), got: up.tensors.len() });
    }
    for (position, (g, t)) in old.iter().zip(up.tensors).enumerate() {
        if g.name != t.name {
            return Err(AggregateError::NameMismatch { upload: k, position, expected: g.name.clone(), got: t.name.clone() });
        }
        if g.shape != t.shape {
            return Err(AggregateError::ShapeMismatch { upload: k, name: g.name.clone(), expected: g.shape.clone(), got: t.shape.clone() });
        }
    }
    if let Some(masks) = up.masks {
        if masks.len() != old.len() {
            return Err(AggregateError::CountMismatch { upload: k, expected: old.len(), got: masks.len() });
        }
        for (g, m) in old.iter().zip(masks) {
            if m.dims()[0] != g.numel() {
                return Err(AggregateError::MaskMismatch { upload: k, name: g.name.clone(), expected: g.numel(), got: m.dims()[0] });
            }
        }
    }
    Ok(())
}

/// What one client sends up: the layers it trained, each as named tensors.
#[derive(Debug, Clone)]
pub struct LayerUpload<B: Backend> {
    pub weight: f64,
    /// `(layer index, tensors)` for each trained layer.
    pub layers: Vec<(usize, LayerParams<B>)>,
    /// Element masks in global coordinates, parallel to `layers` (width sub-models);
    /// `None` = whole layers (FedOLF and the other layer-wise methods).
    pub masks: Option<Vec<Vec<Tensor<B, 1>>>>,
}

impl<B: Backend> LayerUpload<B> {
    pub fn whole(weight: f64, layers: Vec<(usize, LayerParams<B>)>) -> Self {
        Self { weight, layers, masks: None }
    }

    pub fn masked(weight: f64, layers: Vec<(usize, LayerParams<B>)>, masks: Vec<Vec<Tensor<B, 1>>>) -> Self {
        Self { weight, layers, masks: Some(masks) }
    }
}

/// FedOLF's layer-wise aggregation: for every layer, MWA over the clients that uploaded it
/// (whole-layer masks, or the element masks of width sub-models). Returns `Some(new tensors)` for layers someone trained, `None` for layers
/// nobody trained (they keep their value).
pub fn aggregate_layerwise<B: Backend>(
    global: &[LayerParams<B>],
    uploads: &[LayerUpload<B>],
) -> Result<Vec<Option<LayerParams<B>>>, AggregateError> {
    let num_layers = global.len();
    for up in uploads {
        if let Some((layer, _)) = up.layers.iter().find(|(l, _)| *l >= num_layers) {
            return Err(AggregateError::LayerOutOfRange { layer: *layer, num_layers });
        }
    }
    (0..num_layers)
        .map(|l| {
            let contributions: Vec<Upload<'_, B>> = uploads
                .iter()
                .filter_map(|up| {
                    let pos = up.layers.iter().position(|(i, _)| *i == l)?;
                    Some(Upload {
                        weight: up.weight,
                        tensors: up.layers[pos].1.as_slice(),
                        masks: up.masks.as_ref().map(|m| m[pos].as_slice()),
                    })
                })
                .collect();
            if contributions.is_empty() {
                Ok(None)
            } else {
                masked_weighted_average(&global[l], &contributions).map(Some)
            }
        })
        .collect()
}

//! Masked weighted averaging (MWA) of named tensors — the server rule of FedOLF and of the
//! width baselines (ARCHITECTURE.md, "Vocabulary"):
//!
//! `θ ← Σ_k w_k M_k ⊙ θ̃_k / Σ_k w_k M_k` where the denominator is > 0, else `θ_old`.
//!
//! FedOLF's layer-wise rule (paper Alg. 1; ARCHITECTURE.md, "A round", step 7) is the whole-layer-mask case:
//! `θ_l ← Σ_{k∈S_l} n_k θ_{k,l} / Σ_{k∈S_l} n_k`, a layer nobody trained keeps its value.
//! These are pure functions: they read tensors and return new ones.

use burn::prelude::*;
use thiserror::Error;

use crate::tensor::params::{LayerParams, NamedTensor};

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
    // One arithmetic for every case, so that whole-tensor uploads and element masks of all
    // ones give bit-identical results (a full-width sub-model must train exactly like
    // FedAvg): each element is `Σ_k θ̃_k · s_k` with the f32 share `s_k = (w_k M_k) / Σ_j
    // w_j M_j`, summed in upload order. With whole tensors `s_k` is one host f32 division
    // per upload; with masks it is the same IEEE division element by element.
    let all_whole = uploads.iter().all(|u| u.masks.is_none());
    let weights: Vec<f32> = uploads.iter().map(|u| u.weight as f32).collect();
    let total: f32 = weights.iter().copied().reduce(|a, b| a + b).expect("uploads is not empty");
    let out = old
        .iter()
        .enumerate()
        .map(|(i, global)| {
            let value = if all_whole {
                uploads
                    .iter()
                    .zip(&weights)
                    .map(|(u, w)| u.tensors[i].value.clone() * (w / total))
                    .reduce(|a, b| a + b)
                    .expect("uploads is not empty")
            } else {
                let device = global.value.device();
                let weighted: Vec<Tensor<B, 1>> = uploads
                    .iter()
                    .zip(&weights)
                    .map(|(u, w)| match u.masks {
                        Some(m) => m[i].clone() * *w,
                        None => Tensor::full([global.numel()], *w, &device),
                    })
                    .collect();
                let den = weighted.iter().cloned().reduce(|a, b| a + b).expect("uploads is not empty");
                let held = den.clone().greater_elem(0.0);
                // Division is guarded: where nobody held an element, keep θ_old.
                let safe_den = den.mask_fill(held.clone().bool_not(), 1.0);
                let sum = uploads
                    .iter()
                    .zip(weighted)
                    .map(|(u, wm)| u.tensors[i].value.clone() * (wm / safe_den.clone()))
                    .reduce(|a, b| a + b)
                    .expect("uploads is not empty");
                global.value.clone().mask_where(held, sum)
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

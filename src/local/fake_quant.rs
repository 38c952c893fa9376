//! Fake int8 quantization (CoCoFL, Pfeiffer et al., TMLR 2023, its optional quantized frozen
//! layers, per tensor and symmetric). A weight tensor `w` becomes
//! `ŵ = clamp(round(w/Δ), −127, 127)·Δ` with `Δ = max|w| / 127`: at most 255 distinct
//! values, `|ŵ − w| ≤ Δ/2`. Only conv / linear weights (rank ≥ 2) are quantized; biases and
//! BatchNorm entries stay float, as they do when BN is folded into an int8 conv.

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fedolf_models::Layer;

use crate::local::roles::LayerRole;
use crate::local::training::LocalModel;
use crate::tensor::params::{read_layer, write_layer, NamedTensor, ParamError};

/// Quantize-dequantize one tensor to symmetric int8 levels.
pub fn fake_int8<B: Backend>(t: Tensor<B, 1>) -> Tensor<B, 1> {
    let max = t.clone().abs().max().into_scalar().elem::<f32>();
    if !(max > 0.0 && max.is_finite()) {
        return t; // all zeros: already exact; non-finite: left for divergence checks to report
    }
    let step = max / 127.0;
    t.div_scalar(step).round().clamp(-127.0, 127.0).mul_scalar(step)
}

/// A layer with every weight tensor (rank ≥ 2) fake-quantized; `index` names it in errors.
pub fn fake_int8_layer<B: Backend>(layer: Layer<B>, index: usize) -> Result<Layer<B>, ParamError> {
    let params: Vec<NamedTensor<B>> = read_layer(&layer)
        .into_iter()
        .map(|t| if t.shape.len() >= 2 { NamedTensor { value: fake_int8(t.value), ..t } } else { t })
        .collect();
    write_layer(layer, index, &params)
}

/// Fake-quantize every frozen layer of a client's model (both outside the graph and passing
/// gradients inside it); trained layers stay float.
pub fn fake_int8_frozen<B: AutodiffBackend>(mut local: LocalModel<B>) -> Result<LocalModel<B>, ParamError> {
    let layers = std::mem::take(&mut local.no_graph.layers);
    local.no_graph.layers = layers.into_iter().enumerate().map(|(i, l)| fake_int8_layer(l, i)).collect::<Result<_, _>>()?;
    let layers = std::mem::take(&mut local.graph.layers);
    local.graph.layers = layers
        .into_iter()
        .zip(&local.graph_index)
        .map(|(l, &i)| if local.roles[i] == LayerRole::Trained { Ok(l) } else { fake_int8_layer(l, i) })
        .collect::<Result<_, _>>()?;
    Ok(local)
}

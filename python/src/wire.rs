//! Tensors across the Python boundary: `(layer, name, shape, bytes)` tuples, the bytes being
//! the row-major values as little-endian f32 (`np.frombuffer(b, "<f4").reshape(shape)` on the
//! Python side). No numpy crate: bytes and shapes are all either side needs.

use fedolf::tensor::host::{HostLayer, HostTensor};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::FedolfError;

/// One tensor as Python sees it.
pub type WireTensor<'py> = (usize, String, Vec<usize>, Bound<'py, PyBytes>);

/// Layers (each with its index) as a flat list of tensors, layer by layer, in visit order.
pub fn to_wire<'py>(py: Python<'py>, layers: &[(usize, HostLayer)]) -> Vec<WireTensor<'py>> {
    layers
        .iter()
        .flat_map(|(l, tensors)| tensors.iter().map(move |t| (*l, t)))
        .map(|(l, t)| {
            let bytes: Vec<u8> = t.values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (l, t.name.clone(), t.shape.clone(), PyBytes::new(py, &bytes))
        })
        .collect()
}

/// A whole model (layer `i` at position `i`) as wire tensors.
pub fn model_to_wire<'py>(py: Python<'py>, model: &[HostLayer]) -> Vec<WireTensor<'py>> {
    let indexed: Vec<(usize, HostLayer)> = model.iter().cloned().enumerate().collect();
    to_wire(py, &indexed)
}

/// Wire tensors back into layers: consecutive tensors of one layer index form that layer
/// (`what` names the argument in errors).
pub fn from_wire(tensors: &[WireTensor<'_>], what: &str) -> PyResult<Vec<(usize, HostLayer)>> {
    let mut layers: Vec<(usize, HostLayer)> = Vec::new();
    for (l, name, shape, bytes) in tensors {
        let bytes = bytes.as_bytes();
        let numel: usize = shape.iter().product();
        if bytes.len() != numel * 4 {
            return Err(FedolfError::new_err(format!(
                "{what}: layer {l} tensor `{name}` has shape {shape:?} ({numel} values) but {} bytes; expected {} (little-endian f32)",
                bytes.len(),
                numel * 4
            )));
        }
        let values = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let tensor = HostTensor { name: name.clone(), shape: shape.clone(), values };
        match layers.last_mut() {
            Some((last, layer)) if last == l => layer.push(tensor),
            Some((last, _)) if *last > *l => {
                return Err(FedolfError::new_err(format!("{what}: layer {l} comes after layer {last}; send layers in ascending order")));
            }
            _ => layers.push((*l, vec![tensor])),
        }
    }
    Ok(layers)
}

/// Wire tensors of a whole model: every layer `0..n` present, in order.
pub fn model_from_wire(tensors: &[WireTensor<'_>], n: usize, what: &str) -> PyResult<Vec<HostLayer>> {
    let layers = from_wire(tensors, what)?;
    let indices: Vec<usize> = layers.iter().map(|(l, _)| *l).collect();
    if indices != (0..n).collect::<Vec<_>>() {
        return Err(FedolfError::new_err(format!("{what}: a whole model of {n} entries is needed, got layers {indices:?}")));
    }
    Ok(layers.into_iter().map(|(_, layer)| layer).collect())
}

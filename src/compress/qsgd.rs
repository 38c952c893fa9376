//! QSGD (Alistarh et al., "QSGD: Communication-efficient SGD via gradient quantization and
//! encoding", NeurIPS 2017), used as the FedOLF paper's comparison for TOA (Fig. 15): the
//! frozen layers' download is quantized; clients run them on the dequantized weights.
//!
//! Per bucket `v` of `d` values (default 128): `Q(v)_i = ‖v‖₂ · sgn(v_i) · ξ_i`, with
//! `a_i = |v_i| / ‖v‖₂`, `ℓ = ⌊a_i·s⌋` and `ξ_i = (ℓ+1)/s` with probability `a_i·s − ℓ`,
//! else `ℓ/s` — so `E[Q(v)] = v`. With `b` bits per value (1 sign + `b − 1` magnitude),
//! `s = 2^{b−1} − 1` levels. Bytes sent: `⌈n·b / 8⌉ + 4·⌈n / d⌉` (values + one f32 norm per
//! bucket).
//!
//! Only weights are quantized: BatchNorm running means and variances (buffers) travel in
//! f32 and are counted at 4 bytes each — a quantized variance can round to zero and blow up
//! the normalisation.

use burn::prelude::*;
use fedolf_models::LayeredNet;
use rand::Rng;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::tensor::params::{read_layer, write_layer, NamedTensor, ParamError};

#[derive(Debug, Error, Clone, PartialEq)]
pub enum QsgdError {
    #[error("qsgd.bits = {0}: must be in 2..=16 (1 sign bit + at least 1 magnitude bit)")]
    BadBits(u32),
    #[error("qsgd.bucket = 0: buckets must hold at least one value")]
    ZeroBucket,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QsgdSettings {
    bits: u32,
    bucket: usize,
}

impl QsgdSettings {
    pub fn new(bits: u32, bucket: usize) -> Result<Self, QsgdError> {
        if !(2..=16).contains(&bits) {
            return Err(QsgdError::BadBits(bits));
        }
        if bucket == 0 {
            return Err(QsgdError::ZeroBucket);
        }
        Ok(Self { bits, bucket })
    }

    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Quantization levels `s = 2^{b−1} − 1`.
    pub fn levels(&self) -> u32 {
        (1 << (self.bits - 1)) - 1
    }

    /// Bytes to send `n` values.
    pub fn bytes(&self, n: usize) -> u64 {
        (n as u64 * self.bits as u64).div_ceil(8) + 4 * (n as u64).div_ceil(self.bucket as u64)
    }
}

/// Quantize and dequantize `values` in place (what the client ends up computing with).
pub fn quantize_dequantize<R: Rng>(values: &mut [f32], settings: QsgdSettings, rng: &mut R) {
    let s = settings.levels() as f64;
    for bucket in values.chunks_mut(settings.bucket) {
        let norm = bucket.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt();
        if norm == 0.0 || !norm.is_finite() {
            continue;
        }
        for v in bucket.iter_mut() {
            let a = (*v as f64).abs() / norm;
            let scaled = a * s;
            let low = scaled.floor();
            let level = if rng.random::<f64>() < scaled - low { low + 1.0 } else { low };
            *v = (norm * (*v as f64).signum() * level / s) as f32;
        }
    }
}

/// Quantize every weight tensor of a frozen prefix (the client's copy; buffers stay exact)
/// and report the bytes sent.
/// Values travel through the host here: this is the transport step.
pub fn quantize_prefix<B: Backend, R: Rng>(mut net: LayeredNet<B>, settings: QsgdSettings, rng: &mut R) -> Result<(LayeredNet<B>, u64), ParamError> {
    let mut bytes = 0;
    let layers = std::mem::take(&mut net.layers);
    let mut out = Vec::with_capacity(layers.len());
    for (i, layer) in layers.into_iter().enumerate() {
        let params: Vec<NamedTensor<B>> = read_layer(&layer)
            .into_iter()
            .map(|t| {
                if t.is_buffer() {
                    bytes += 4 * t.numel() as u64;
                    return t;
                }
                let device = t.value.device();
                let mut values: Vec<f32> = t.value.into_data().convert::<f32>().into_vec().unwrap_or_default();
                bytes += settings.bytes(values.len());
                quantize_dequantize(&mut values, settings, rng);
                let n = values.len();
                NamedTensor { name: t.name, shape: t.shape, value: Tensor::from_data(TensorData::new(values, [n]), &device) }
            })
            .collect();
        out.push(write_layer(layer, i, &params)?);
    }
    net.layers = out;
    Ok((net, bytes))
}

//! Host copies: the only things that cross between the server thread and client workers.
//! Device tensors never do (CubeCL 0.10 gives each thread its own stream, and a tensor used
//! on another thread's stream is unsafe), so weights, uploads and data travel as `Vec`s and
//! each side builds its own tensors from them.

use burn::prelude::*;
use fedolf_datasets::ImageSet;

use crate::tensor::aggregate::LayerUpload;
use crate::tensor::params::{LayerParams, NamedTensor};

/// One named tensor on the host, flattened row-major (`shape -> [numel]`).
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

pub type HostLayer = Vec<HostTensor>;

/// `batch` images of `[c, h, w]` with pixels drawn from U[0, 1) by `rng` on the host, so the
/// synthetic inputs of the speed and memory measurements are the same bits on every device.
/// # Shapes
/// `-> [batch, c, h, w]`
pub fn synthetic_images<R: rand::Rng>(batch: usize, [c, h, w]: [usize; 3], rng: &mut R) -> TensorData {
    let pixels: Vec<f32> = (0..batch * c * h * w).map(|_| rng.random::<f32>()).collect();
    TensorData::new(pixels, [batch, c, h, w])
}

/// A rank-1 tensor's values on the host as f32, whatever the backend's float type.
pub fn values_of<B: Backend>(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().expect("converted to f32 just above")
}

fn tensor_of<B: Backend>(values: &[f32], device: &B::Device) -> Tensor<B, 1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

pub fn layer_to_host<B: Backend>(layer: LayerParams<B>) -> HostLayer {
    layer.into_iter().map(|t| HostTensor { name: t.name, shape: t.shape, values: values_of(t.value) }).collect()
}

pub fn layer_to_device<B: Backend>(layer: &[HostTensor], device: &B::Device) -> LayerParams<B> {
    layer
        .iter()
        .map(|t| NamedTensor { name: t.name.clone(), shape: t.shape.clone(), value: tensor_of(&t.values, device) })
        .collect()
}

pub fn model_to_host<B: Backend>(model: Vec<LayerParams<B>>) -> Vec<HostLayer> {
    model.into_iter().map(layer_to_host).collect()
}

/// Every layer on `device`, ready for `write_model`.
pub fn model_to_device<B: Backend>(model: &[HostLayer], device: &B::Device) -> Vec<Option<LayerParams<B>>> {
    model.iter().map(|layer| Some(layer_to_device(layer, device))).collect()
}

/// A client's upload on the host (see [`LayerUpload`]).
#[derive(Debug, Clone, PartialEq)]
pub struct HostUpload {
    pub weight: f64,
    pub layers: Vec<(usize, HostLayer)>,
    /// Width sub-models: 0/1 element masks in global coordinates, parallel to `layers`.
    pub masks: Option<Vec<Vec<Vec<f32>>>>,
}

impl HostUpload {
    pub fn from_device<B: Backend>(upload: LayerUpload<B>) -> Self {
        Self {
            weight: upload.weight,
            layers: upload.layers.into_iter().map(|(l, p)| (l, layer_to_host(p))).collect(),
            masks: upload.masks.map(|m| m.into_iter().map(|layer| layer.into_iter().map(values_of).collect()).collect()),
        }
    }

    /// The first uploaded tensor (`layer <i>: <name>`) holding NaN or ±inf, if any.
    pub fn first_nonfinite(&self) -> Option<String> {
        self.layers
            .iter()
            .flat_map(|(l, tensors)| tensors.iter().map(move |t| (l, t)))
            .find(|(_, t)| t.values.iter().any(|v| !v.is_finite()))
            .map(|(l, t)| format!("layer {l}: {}", t.name))
    }

    pub fn to_device<B: Backend>(&self, device: &B::Device) -> LayerUpload<B> {
        LayerUpload {
            weight: self.weight,
            layers: self.layers.iter().map(|(l, p)| (*l, layer_to_device(p, device))).collect(),
            masks: self.masks.as_ref().map(|m| m.iter().map(|layer| layer.iter().map(|v| tensor_of(v, device)).collect()).collect()),
        }
    }
}

/// A split's images normalised per channel with the training statistics, on the host; each
/// client puts only its own samples on its device.
#[derive(Debug, Clone)]
pub struct HostSplit {
    /// `[n, c, h, w]`, row-major.
    pixels: Vec<f32>,
    labels: Vec<i64>,
    shape: [usize; 3],
}

impl HostSplit {
    pub fn new(set: &ImageSet, stats: &[(f32, f32)]) -> Self {
        let [c, h, w] = set.shape;
        let hw = h * w;
        let pixels = set
            .pixels
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let (mean, std) = stats[(i / hw) % c];
                (p as f32 / 255.0 - mean) / std
            })
            .collect();
        Self { pixels, labels: set.labels.iter().map(|&l| l as i64).collect(), shape: set.shape }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The whole split on `device`: images `[n, c, h, w]`, labels `[n]`.
    pub fn to_device<B: Backend>(&self, device: &B::Device) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
        let [c, h, w] = self.shape;
        let n = self.len();
        (
            // [n·c·h·w] -> [n, c, h, w]
            Tensor::from_data(TensorData::new(self.pixels.clone(), [n, c, h, w]), device),
            Tensor::from_data(TensorData::new(self.labels.clone(), [n]), device),
        )
    }

    /// The samples `indices` (in that order) on `device`: images `[k, c, h, w]`, labels `[k]`.
    pub fn subset_to_device<B: Backend>(&self, indices: &[usize], device: &B::Device) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
        let [c, h, w] = self.shape;
        let size = c * h * w;
        let pixels: Vec<f32> = indices.iter().flat_map(|&i| &self.pixels[i * size..(i + 1) * size]).copied().collect();
        let labels: Vec<i64> = indices.iter().map(|&i| self.labels[i]).collect();
        (
            // [k·c·h·w] -> [k, c, h, w]
            Tensor::from_data(TensorData::new(pixels, [indices.len(), c, h, w]), device),
            Tensor::from_data(TensorData::new(labels, [indices.len()]), device),
        )
    }
}

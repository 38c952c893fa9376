//! Evaluation of a global model on a split held on the server's device.

use burn::prelude::*;
use fedolf_models::LayeredNet;

use crate::tensor::host::HostSplit;

/// Images per forward pass when the server evaluates a model or recomputes its BatchNorm
/// statistics (no gradients are kept, so it sets only the server's peak, not a result).
pub const EVAL_BATCH: usize = 500;

/// A split's tensors on the device, normalised per channel with the training statistics.
pub struct DeviceSplit<B: Backend> {
    pub images: Tensor<B, 4>,
    pub labels: Tensor<B, 1, Int>,
}

impl<B: Backend> DeviceSplit<B> {
    pub fn new(split: &HostSplit, device: &B::Device) -> Self {
        let (images, labels) = split.to_device(device);
        Self { images, labels }
    }

    pub fn len(&self) -> usize {
        self.labels.dims()[0]
    }
}

/// A multi-exit model on a split, in batches: the deepest output's top-1 accuracy and mean
/// cross-entropy, and the top-1 accuracy of the mean of every output's logits.
pub fn evaluate_exits<B: Backend>(net: &LayeredNet<B>, split: &DeviceSplit<B>, batch: usize) -> (f64, f64, Option<f64>) {
    let n = split.len();
    let device = split.images.device();
    let loss_fn = burn::nn::loss::CrossEntropyLossConfig::new().init::<B>(&device);
    let (mut deepest_hits, mut ensemble_hits, mut loss_sum) = (0i64, 0i64, 0.0f64);
    for start in (0..n).step_by(batch) {
        let len = batch.min(n - start);
        // [n, c, h, w] -> [len, c, h, w]
        let x = split.images.clone().narrow(0, start, len);
        let y = split.labels.clone().narrow(0, start, len);
        let outputs = net.forward_all_exits(x);
        let count = outputs.len() as f32;
        let deepest = outputs.last().expect("the classifier is an output").clone();
        // mean over exits: Vec<[len, classes]> -> [len, classes]
        let ensemble = outputs.into_iter().reduce(|a, b| a + b).expect("at least one output") / count;
        let hits = |logits: Tensor<B, 2>| logits.argmax(1).reshape([len]).equal(y.clone()).int().sum().into_scalar().elem::<i64>();
        deepest_hits += hits(deepest.clone());
        ensemble_hits += hits(ensemble);
        loss_sum += loss_fn.forward(deepest, y.clone()).into_scalar().elem::<f64>() * len as f64;
    }
    let n = n.max(1) as f64;
    (deepest_hits as f64 / n, loss_sum / n, Some(ensemble_hits as f64 / n))
}

/// Top-1 accuracy (fraction) and mean cross-entropy of `net` on a split, in batches.
pub fn evaluate<B: Backend>(net: &LayeredNet<B>, split: &DeviceSplit<B>, batch: usize) -> (f64, f64) {
    let n = split.len();
    let device = split.images.device();
    let loss_fn = burn::nn::loss::CrossEntropyLossConfig::new().init::<B>(&device);
    let mut correct: Option<Tensor<B, 1, Int>> = None;
    let mut loss_sum: Option<Tensor<B, 1>> = None;
    for start in (0..n).step_by(batch) {
        let len = batch.min(n - start);
        // [n, c, h, w] -> [len, c, h, w]
        let x = split.images.clone().narrow(0, start, len);
        let y = split.labels.clone().narrow(0, start, len);
        let logits = net.forward(x);
        let hits = logits.clone().argmax(1).reshape([len]).equal(y.clone()).int().sum();
        let loss = loss_fn.forward(logits, y) * len as f32;
        correct = Some(match correct { Some(c) => c + hits, None => hits });
        loss_sum = Some(match loss_sum { Some(s) => s + loss, None => loss });
    }
    let correct = correct.map_or(0, |c| c.into_scalar().elem::<i64>());
    let loss = loss_sum.map_or(0.0, |s| s.into_scalar().elem::<f64>());
    (correct as f64 / n.max(1) as f64, loss / n.max(1) as f64)
}

//! Per-step speed of local training (`fedolf bench speed`): the median wall time of one SGD
//! step of a model at a batch size with its first `l` layers frozen, on any backend.

use std::time::Instant;

use burn::optim::Optimizer;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fedolf_models::{LayeredNet, ModelError, ModelKind, ModelOptions};

use crate::local::error::LocalError;
use crate::local::training::{LocalModel, SgdSettings};
use crate::tensor::host::synthetic_images;
use crate::runtime::rng::{stream, Purpose};

#[derive(Debug, Clone, PartialEq)]
pub struct StepSpec {
    pub model: ModelKind,
    pub input: [usize; 3],
    pub classes: usize,
    pub batch: usize,
    /// Layers frozen outside the graph (FedOLF's prefix).
    pub frozen: usize,
    /// Untimed steps first (allocator and kernel caches warm up).
    pub warmup: usize,
    pub repeats: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SpeedError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Freeze(#[from] LocalError),
    #[error("repeats must be at least 1")]
    NoRepeats,
}

/// The SGD settings every speed measurement uses (the paper's: lr 0.01, momentum 0.9).
pub const BENCH_SGD: SgdSettings = SgdSettings { lr: 0.01, momentum: 0.9, weight_decay: 0.0 };

/// Median seconds of one SGD step (forward, backward, update, loss read back to the host so a
/// GPU has finished) with one optimizer across the steps, on random data.
pub fn median_step_seconds<B: AutodiffBackend>(spec: &StepSpec, device: &B::Device) -> Result<f64, SpeedError> {
    if spec.repeats == 0 {
        return Err(SpeedError::NoRepeats);
    }
    let mut stepper = stepper::<B>(spec, device)?;
    for _ in 0..spec.warmup {
        stepper.step();
    }
    let mut times: Vec<f64> = (0..spec.repeats).map(|_| stepper.step()).collect();
    Ok(median(&mut times))
}

/// One model of a [`StepSpec`] at its batch, ready to take timed SGD steps one at a time (so a
/// benchmark can alternate them with another framework's), each on the same random batch with
/// one optimizer across the steps.
pub struct Stepper<B: AutodiffBackend, O> {
    model: Option<LocalModel<B>>,
    optim: O,
    x: Tensor<B::InnerBackend, 4>,
    y: Tensor<B::InnerBackend, 1, Int>,
}

/// The [`Stepper`] of `spec` on `device`: its weights and batch from the same seeded streams as
/// every measurement before.
pub fn stepper<B: AutodiffBackend>(spec: &StepSpec, device: &B::Device) -> Result<Stepper<B, impl Optimizer<LayeredNet<B>, B>>, SpeedError> {
    let net = spec.model.init_on_host::<B, _>(spec.input, spec.classes, &ModelOptions::default(), &[], &mut stream(1, Purpose::Init, 0, 0), device)?;
    let x = Tensor::<B::InnerBackend, 4>::from_data(synthetic_images(spec.batch, spec.input, &mut stream(1, Purpose::SyntheticBatch, 0, 0)), device);
    let labels: Vec<i64> = (0..spec.batch).map(|i| (i % spec.classes) as i64).collect();
    let y = Tensor::<B::InnerBackend, 1, Int>::from_data(TensorData::new(labels, [spec.batch]), device);
    let model = LocalModel::ordered(&net, spec.frozen)?;
    Ok(Stepper { model: Some(model), optim: crate::local::training::sgd_optimizer::<B>(&BENCH_SGD), x, y })
}

impl<B: AutodiffBackend, O: Optimizer<LayeredNet<B>, B>> Stepper<B, O> {
    /// One step; its wall seconds, the loss read back to the host (a GPU has finished).
    pub fn step(&mut self) -> f64 {
        let started = Instant::now();
        let model = self.model.take().expect("a stepper holds its model between steps");
        let (next, loss) = model.step(&mut self.optim, BENCH_SGD.lr, self.x.clone(), self.y.clone());
        let _ = loss.into_scalar();
        self.model = Some(next);
        started.elapsed().as_secs_f64()
    }
}

/// Floating-point operations of one step as [`median_step_seconds`] runs it, from each layer's
/// forward multiply-adds per sample (`LayeredNet::layer_macs`): 2 per multiply-add, × `batch`;
/// a frozen layer (`< frozen`) runs its forward only, the first trained layer its forward and
/// weight gradient (its input, the data or the frozen prefix's output, needs no gradient), every
/// later one its forward, weight and input gradients. Element-wise work (BatchNorm, ReLU,
/// pooling, the update) is left out: it is memory-bound, and small beside these.
pub fn step_flops(layer_macs: &[usize], batch: usize, frozen: usize) -> f64 {
    layer_macs
        .iter()
        .enumerate()
        .map(|(i, &macs)| {
            let passes = match i.cmp(&frozen) {
                std::cmp::Ordering::Less => 1,
                std::cmp::Ordering::Equal => 2,
                std::cmp::Ordering::Greater => 3,
            };
            2.0 * (passes * macs * batch) as f64
        })
        .sum()
}

/// The middle value (mean of the two middle values for an even count); `times` non-empty.
pub fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    let n = times.len();
    if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    }
}

/// Fedolf's time ÷ the other framework's, each turn's pair divided first, then the median:
/// two calls taken back to back share the machine's speed of that moment, so a slow stretch of
/// this VM (it drifts by 20 % within seconds) cancels in each pair instead of moving one
/// side's median. `None` without pairs.
pub fn paired_ratio(ours: &[f64], theirs: &[f64]) -> Option<f64> {
    assert_eq!(ours.len(), theirs.len(), "paired timings");
    let mut ratios: Vec<f64> = ours.iter().zip(theirs).map(|(o, t)| o / t).collect();
    (!ratios.is_empty()).then(|| median(&mut ratios))
}

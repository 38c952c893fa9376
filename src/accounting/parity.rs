//! Device parity: the same seeded weights and batch through the CPU backend and another
//! device (wgpu, CUDA), compared tensor by tensor. The wgpu tests (`tests/wgpu_parity.rs`)
//! and `fedolf bench parity --device …` (the GPU check) both run these.
//!
//! Tolerance (why): the backends sum in different orders (tiled GPU matmuls and reductions vs
//! the CPU's gemm and fixed lane sums), so f32 results agree to rounding, not to the bit. A
//! tensor passes when `max |a − b| ≤ ATOL + RTOL · max |b|` with [`ATOL`] = 1e-5 and [`RTOL`] =
//! 1e-4: after one SGD step at lr 0.01 rounding moves a weight by far less than 1e-5, while
//! a wrong kernel (a sign, a transposed weight, a missed bias) misses by orders of magnitude.
//! Initial weights are drawn on the host and must be bit-identical.

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fedolf_models::{Features, LayeredNet, ModelError, ModelKind, ModelOptions};

use crate::runtime::backend::CpuBackend;
use crate::local::error::LocalError;
use crate::local::training::{LocalModel, SgdSettings};
use crate::tensor::host::synthetic_images;
use crate::tensor::params::read_model;
use crate::runtime::rng::{stream, Purpose};
use crate::compress::toa::{sparsify_prefix, ToaError, ToaMode, ToaSettings};

pub const ATOL: f32 = 1e-5;
pub const RTOL: f32 = 1e-4;
const SGD: SgdSettings = SgdSettings { lr: 0.01, momentum: 0.9, weight_decay: 0.0 };

#[derive(Debug, thiserror::Error)]
pub enum ParityError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Freeze(#[from] LocalError),
    #[error(transparent)]
    Toa(#[from] ToaError),
}

/// One model's step: its input, classes, batch and frozen prefix.
#[derive(Debug, Clone, Copy)]
pub struct StepCase {
    pub model: ModelKind,
    pub input: [usize; 3],
    pub classes: usize,
    pub batch: usize,
    pub frozen: usize,
}

/// Small cases of the three paper models, each with nothing frozen and with a frozen prefix.
/// Small because of lavapipe: Burn's wgpu kernels (no autotune) run a CNN step at batch 8 in
/// ~3 s and an AlexNet step at batch 4 in ~30 s there, and a storage buffer holds at most
/// 128 MiB.
pub const SMALL_CASES: [StepCase; 6] = [
    StepCase { model: ModelKind::Cnn, input: [1, 28, 28], classes: 10, batch: 8, frozen: 0 },
    StepCase { model: ModelKind::Cnn, input: [1, 28, 28], classes: 10, batch: 8, frozen: 1 },
    StepCase { model: ModelKind::AlexNet, input: [3, 32, 32], classes: 10, batch: 2, frozen: 0 },
    StepCase { model: ModelKind::AlexNet, input: [3, 32, 32], classes: 10, batch: 2, frozen: 3 },
    StepCase { model: ModelKind::ResNet20, input: [3, 32, 32], classes: 100, batch: 2, frozen: 0 },
    StepCase { model: ModelKind::ResNet20, input: [3, 32, 32], classes: 100, batch: 2, frozen: 4 },
];

/// How far a device's results are from the CPU's, as fractions of the tolerance (≤ 1 passes).
#[derive(Debug, Clone, PartialEq)]
pub struct Agreement {
    /// The worst tensor's `max |Δ| / (ATOL + RTOL · max |cpu|)`.
    pub worst: f32,
    /// Its name (`layer i: name`), or what else differed (a shape, a count).
    pub worst_at: String,
}

impl Agreement {
    pub fn passes(&self) -> bool {
        self.worst.is_finite() && self.worst <= 1.0
    }
}

/// Host copy of every tensor: `(name, shape, values)` per layer.
pub type HostModel = Vec<Vec<(String, Vec<usize>, Vec<f32>)>>;

fn host_model<B: Backend>(net: &LayeredNet<B>) -> HostModel {
    read_model(net)
        .into_iter()
        .map(|layer| layer.into_iter().map(|t| (t.name, t.shape, values(t.value))).collect())
        .collect()
}

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().expect("converted to f32 just above")
}

fn ratio(device: &[f32], cpu: &[f32]) -> f32 {
    let scale = cpu.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = device.iter().zip(cpu).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    // NaN anywhere makes the ratio NaN, which never passes.
    let nan = device.iter().chain(cpu).any(|v| !v.is_finite());
    if nan {
        f32::NAN
    } else {
        diff / (ATOL + RTOL * scale)
    }
}

/// Every tensor of `device` against `cpu`: names and shapes equal, values within tolerance.
pub fn compare_models(device: &HostModel, cpu: &HostModel) -> Agreement {
    let mut out = Agreement { worst: 0.0, worst_at: String::new() };
    if device.len() != cpu.len() {
        return Agreement { worst: f32::INFINITY, worst_at: format!("{} layers vs {} on the CPU", device.len(), cpu.len()) };
    }
    for (i, (d, c)) in device.iter().zip(cpu).enumerate() {
        if d.len() != c.len() {
            return Agreement { worst: f32::INFINITY, worst_at: format!("layer {i}: {} tensors vs {} on the CPU", d.len(), c.len()) };
        }
        for ((dn, ds, dv), (cn, cs, cv)) in d.iter().zip(c) {
            if dn != cn || ds != cs {
                return Agreement { worst: f32::INFINITY, worst_at: format!("layer {i}: `{dn}` {ds:?} vs `{cn}` {cs:?} on the CPU") };
            }
            let r = ratio(dv, cv);
            if r.is_nan() {
                return Agreement { worst: r, worst_at: format!("layer {i}: {dn} holds NaN or inf") };
            }
            if r > out.worst {
                out = Agreement { worst: r, worst_at: format!("layer {i}: {dn}") };
            }
        }
    }
    out
}

/// One SGD step of a [`StepCase`] on the CPU and on `device`.
#[derive(Debug, Clone)]
pub struct StepParity {
    pub case: StepCase,
    /// The host-drawn initial weights were bit-identical on both.
    pub same_start: bool,
    /// The frozen layers were bit-identical to the start after the step, on the device.
    pub frozen_untouched: bool,
    pub loss_cpu: f32,
    pub loss_device: f32,
    /// The frozen prefix's output (inner backend, no graph).
    pub prefix: f32,
    /// Every tensor after the step.
    pub weights: Agreement,
}

impl StepParity {
    pub fn loss_ratio(&self) -> f32 {
        ratio(&[self.loss_device], &[self.loss_cpu])
    }

    pub fn passes(&self) -> bool {
        self.same_start && self.frozen_untouched && self.loss_ratio() <= 1.0 && self.prefix <= 1.0 && self.weights.passes()
    }
}

struct StepOn {
    start: HostModel,
    frozen_untouched: bool,
    loss: f32,
    prefix_out: Vec<f32>,
    after: HostModel,
}

fn step_on<B: AutodiffBackend>(case: &StepCase, device: &B::Device) -> Result<StepOn, ParityError> {
    let net: LayeredNet<B> = case.model.init_on_host(case.input, case.classes, &ModelOptions::default(), &[], &mut stream(3, Purpose::Init, 0, 0), device)?;
    let start = host_model(&net);
    let x = Tensor::<B::InnerBackend, 4>::from_data(synthetic_images(case.batch, case.input, &mut stream(5, Purpose::SyntheticBatch, 0, 0)), device);
    let labels: Vec<i64> = (0..case.batch).map(|i| ((i * 7 + 3) % case.classes) as i64).collect();
    let y = Tensor::<B::InnerBackend, 1, Int>::from_data(TensorData::new(labels, [case.batch]), device);
    let local = LocalModel::ordered(&net, case.frozen)?;
    let prefix_out = match local.prefix_forward(x.clone()) {
        Features::Map(h) => values(h),
        Features::Flat(h) => values(h),
    };
    let (local, loss) = local.fresh_step(x, y, &SGD);
    let loss = values(loss)[0];
    let after = host_model(&local.join().valid());
    let frozen_untouched = after[..case.frozen] == start[..case.frozen];
    Ok(StepOn { start, frozen_untouched, loss, prefix_out, after })
}

/// `case` on the CPU backend and on `device` (backend `D`), compared.
pub fn step_parity<D: AutodiffBackend>(case: &StepCase, device: &D::Device) -> Result<StepParity, ParityError> {
    let cpu = step_on::<CpuBackend>(case, &Default::default())?;
    let dev = step_on::<D>(case, device)?;
    Ok(StepParity {
        case: *case,
        same_start: cpu.start == dev.start,
        frozen_untouched: dev.frozen_untouched,
        loss_cpu: cpu.loss,
        loss_device: dev.loss,
        prefix: ratio(&dev.prefix_out, &cpu.prefix_out),
        weights: compare_models(&dev.after, &cpu.after),
    })
}

/// TOA on AlexNet's 4-layer frozen prefix (s = 0.5) on the CPU and on `device`, from the
/// same weights and draw: the same elements sent, the same channels kept, values within
/// tolerance. Returns the agreement and whether the sent counts matched.
pub fn toa_parity<D: AutodiffBackend>(mode: ToaMode, device: &D::Device) -> Result<(Agreement, bool), ParityError> {
    fn sparse<B: AutodiffBackend>(mode: ToaMode, device: &B::Device) -> Result<(HostModel, usize), ParityError> {
        let net: LayeredNet<B> = ModelKind::AlexNet.init_on_host([3, 32, 32], 10, &ModelOptions::default(), &[], &mut stream(11, Purpose::Init, 0, 0), device)?;
        let (prefix, _) = net.valid().split_at(4)?;
        let (sparse, report) = sparsify_prefix(prefix, ToaSettings::new(0.5, mode)?, &mut stream(1, Purpose::Toa, 0, 0))?;
        Ok((host_model(&sparse), report.frozen_sent_elems))
    }
    let (cpu, cpu_sent) = sparse::<CpuBackend>(mode, &Default::default())?;
    let (dev, dev_sent) = sparse::<D>(mode, device)?;
    Ok((compare_models(&dev, &cpu), cpu_sent == dev_sent))
}

//! Measured vs theoretical memory of one training step for every freezing mode and frozen
//! count (paper Figs. 2, 10, 11, 14, 17), on random inputs of the model's input shape.

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fedolf_models::{LayeredNet, ModelKind, ModelOptions};

use crate::local::error::LocalError;
use crate::local::training::{LocalModel, SgdSettings};
use crate::local::roles::{layer_roles, FreezeMode};
use crate::tensor::host::synthetic_images;
use crate::runtime::memory::CountingAllocator;
use crate::runtime::rng::{stream, Purpose};
use crate::accounting::theory::{theoretical_memory, TheoreticalMemory};
use crate::compress::toa::{sparsify_prefix, ToaMode, ToaSettings};

#[derive(Debug, Clone)]
pub struct MemorySpec {
    pub model: ModelKind,
    pub options: ModelOptions,
    pub input: [usize; 3],
    pub classes: usize,
    pub batch: usize,
    pub frozen: Vec<usize>,
    /// Random-freezing draws averaged per frozen count.
    pub random_draws: usize,
    /// TOA scales measured with ordered freezing (at `l ≥ 2`).
    pub toa_scales: Vec<f64>,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MemoryRow {
    /// `ordered`, `random`, `tinyfel`, `none`, or `toa-<s>`.
    pub mode: String,
    pub frozen: usize,
    /// Peak heap (CPU) or device memory in use (GPU) during the step above what the client
    /// held before it (the transient part: activations, gradients, optimizer state).
    pub measured_bytes: u64,
    /// What the client holds before the step: its model copy (the TOA-sparsified prefix
    /// included, see `LocalModel::resident_bytes`) and the input batch.
    pub resident_bytes: u64,
    pub theory: TheoreticalMemory,
}

impl MemoryRow {
    pub fn measured_mb(&self) -> f64 {
        self.measured_bytes as f64 / 1e6
    }

    /// The absolute peak, as `torch.cuda.max_memory_allocated` reports it: resident +
    /// transient.
    pub fn absolute_bytes(&self) -> u64 {
        self.resident_bytes + self.measured_bytes
    }

    pub fn absolute_mb(&self) -> f64 {
        self.absolute_bytes() as f64 / 1e6
    }

    pub fn theoretical_mb(&self) -> f64 {
        self.theory.eq23() as f64 / 1e6
    }

    pub fn ratio(&self) -> f64 {
        self.measured_bytes as f64 / self.theory.eq23().max(1) as f64
    }
}

const SGD: SgdSettings = SgdSettings { lr: 0.01, momentum: 0.9, weight_decay: 0.0 };

/// Measure every mode at every frozen count; `on_row` sees each row as it is measured.
pub fn probe_memory<B: AutodiffBackend>(
    spec: &MemorySpec,
    device: &B::Device,
    alloc: &CountingAllocator,
    on_row: &mut dyn FnMut(&MemoryRow),
) -> Result<Vec<MemoryRow>, LocalError> {
    let global: LayeredNet<B> = spec.model.init_on_host(spec.input, spec.classes, &spec.options, &[], &mut stream(spec.seed, Purpose::Init, 0, 0), device)?;
    let infos = global.layer_infos();
    let n = global.num_layers();
    if let Some(&l) = spec.frozen.iter().find(|&&l| l >= n) {
        return Err(LocalError::TooManyFrozen { frozen: l, num_layers: n });
    }
    let x_host = synthetic_images(spec.batch, spec.input, &mut stream(spec.seed, Purpose::SyntheticBatch, 0, 0));
    let labels: Vec<i64> = (0..spec.batch).map(|i| (i % spec.classes) as i64).collect();
    let y_host = TensorData::new(labels, [spec.batch]);

    let mut rows = Vec::new();
    let measure = |mode: FreezeMode, label: String, l: usize, toa: Option<ToaSettings>, draw: u64| -> Result<(Measured, TheoreticalMemory), LocalError> {
        let mut rng = stream(spec.seed, Purpose::MemoryProbe, l as u64, draw);
        let roles = layer_roles(mode, n, l, &mut rng)?;
        // Built before the step and counted apart: what the client holds (its model copy,
        // the sparsified prefix, the batch) vs what one training step adds on top.
        let mut local = LocalModel::from_roles(&global, &roles)?;
        if let Some(settings) = toa {
            local.no_graph = sparsify_prefix(local.no_graph, settings, &mut rng)?.0;
        }
        let x = Tensor::<B::InnerBackend, 4>::from_data(x_host.clone(), device);
        let y = Tensor::<B::InnerBackend, 1, Int>::from_data(y_host.clone(), device);
        let resident = local.resident_bytes() + (x_host.as_bytes().len() + y_host.as_bytes().len()) as u64;
        let peak = match crate::runtime::backend::device_bytes_in_use(device) {
            // The CPU: the counting allocator's peak above the heap before the step.
            None => alloc.measure(|| local.single_step(x, y, &SGD)).1,
            // A GPU: the stream's bytes in use at the step's peak above those before it.
            Some(_) => {
                let _ = B::sync(device);
                let before = crate::runtime::backend::device_bytes_in_use(device).unwrap_or(0);
                let (_, peak) = local.single_step_device_peak(x, y, &SGD);
                peak.unwrap_or(before).saturating_sub(before) as usize
            }
        };
        log::debug!("{label} l={l} draw={draw}: resident {resident} B, step {peak} B");
        Ok((Measured { transient: peak as u64, resident }, theoretical_memory(&infos, &roles, spec.batch, true)))
    };
    // Warm-up: thread pools and one-time buffers are not part of any mode's cost. GEMM's
    // per-thread packing buffer first: a full step can leave a thread without a product (the
    // direct kernels take most shapes), and a later mode's step would then pay its 0.5–1 MB.
    fedolf_kernels::cpu::warm_thread_buffers();
    measure(FreezeMode::None, "warm-up".into(), 0, None, 0)?;

    let mut push = |row: MemoryRow, rows: &mut Vec<MemoryRow>| {
        on_row(&row);
        rows.push(row);
    };
    let row = |mode: String, frozen: usize, m: Measured, theory| MemoryRow { mode, frozen, measured_bytes: m.transient, resident_bytes: m.resident, theory };
    let (m, theory) = measure(FreezeMode::None, "none".into(), 0, None, 0)?;
    push(row("none".into(), 0, m, theory), &mut rows);
    for &l in &spec.frozen {
        for mode in [FreezeMode::Ordered, FreezeMode::TinyFel] {
            let (m, theory) = measure(mode, mode.name().into(), l, None, 0)?;
            push(row(mode.name().into(), l, m, theory), &mut rows);
        }
        let draws = spec.random_draws.max(1);
        let mut measured = Vec::with_capacity(draws);
        let mut theories = Vec::with_capacity(draws);
        for d in 0..draws as u64 {
            let (m, t) = measure(FreezeMode::Random, "random".into(), l, None, d)?;
            measured.push(m);
            theories.push(t);
        }
        let mean = |f: fn(&Measured) -> u64| measured.iter().map(f).sum::<u64>() / draws as u64;
        let m = Measured { transient: mean(|m| m.transient), resident: mean(|m| m.resident) };
        push(row("random".into(), l, m, TheoreticalMemory::mean(&theories)), &mut rows);
        if l >= 2 {
            for &s in &spec.toa_scales {
                let settings = ToaSettings::new(s, ToaMode::Paper)?;
                let label = format!("toa-{s}");
                let (m, theory) = measure(FreezeMode::Ordered, label.clone(), l, Some(settings), 0)?;
                push(row(label, l, m, theory), &mut rows);
            }
        }
    }
    Ok(rows)
}

/// One step's two measured parts (see [`MemoryRow`]).
#[derive(Debug, Clone, Copy)]
struct Measured {
    transient: u64,
    resident: u64,
}

/// `measured_mb` is the peak above the resident bytes; `absolute_mb` adds them back.
pub fn memory_csv(rows: &[MemoryRow]) -> String {
    let mut out = String::from("mode,frozen,measured_mb,absolute_mb,theoretical_mb,ratio,activations_mb,weights_mb,gradients_mb,optimizer_mb\n");
    for r in rows {
        let mb = |b: u64| b as f64 / 1e6;
        out.push_str(&format!(
            "{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3}\n",
            r.mode,
            r.frozen,
            r.measured_mb(),
            r.absolute_mb(),
            r.theoretical_mb(),
            r.ratio(),
            mb(r.theory.activations),
            mb(r.theory.weights),
            mb(r.theory.gradients),
            mb(r.theory.optimizer)
        ));
    }
    out
}

//! The simulation round loop (DESIGN.md, "FedOLF round"), readable top to bottom:
//! sample clients → plan each → split + TOA → local training → upload active layers →
//! the strategy's merge → evaluate every `eval_every` rounds. Everything a method does
//! differently is a [`Strategy`] hook; this loop names no method.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use fedolf_datasets::{DataError, Dataset, DatasetKind};
use fedolf_models::ModelError;
use thiserror::Error;

use crate::aggregate::AggregateError;
use crate::backend::DeviceKind;
use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::config::{Config, NonFinite};
use crate::federation::{round_record, Federation};
use crate::freeze::FreezeError;
use crate::memory::CountingAllocator;
use crate::params::ParamError;
use crate::qsgd::QsgdError;
use crate::toa::ToaError;
use crate::workers::{WorkerError, WorkerLayout, Workers};

pub const BYTES_PER_PARAM: u64 = 4;

#[derive(Debug, Error)]
pub enum SimError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] ModelError),
    // `error`, not `source`: the message already carries it, and a source would print twice.
    #[error("round {round}, client {client}: {error}")]
    Client { round: usize, client: usize, error: FreezeError },
    #[error(transparent)]
    Freeze(#[from] FreezeError),
    #[error(transparent)]
    Toa(#[from] ToaError),
    #[error(transparent)]
    Aggregate(#[from] AggregateError),
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error(transparent)]
    Qsgd(#[from] QsgdError),
    #[error("round {round}, client {client}: {error}")]
    OrderedDropout { round: usize, client: usize, error: crate::ordered_dropout::OrderedDropoutError },
    #[error("config field `{field}`: {problem}")]
    Config { field: &'static str, problem: String },
    #[error(transparent)]
    Workers(#[from] WorkerError),
    #[error("round {round}: the global model's test loss is {loss} (diverged; lower train.lr)")]
    Diverged { round: usize, loss: f64 },
    #[error("round {round}, client {client}: the upload's tensor `{tensor}` holds NaN or infinite values (diverged; lower train.lr, or set train.nonfinite = \"skip\")")]
    NonFinite { round: usize, client: usize, tensor: String },
    #[error("interrupted; the checkpoint holds the {round} rounds completed")]
    Interrupted { round: usize },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("resume: {0}")]
    Resume(String),
}

/// Where a run starts and what can stop it.
#[derive(Default)]
pub struct RunStart<'a> {
    /// Continue after the checkpoint in this run folder (same config and seed).
    pub resume: Option<&'a Path>,
    /// Set (by a signal handler) to stop: clients not yet started are abandoned, the last
    /// completed round is checkpointed, and the run returns [`SimError::Interrupted`].
    pub stop: Option<&'a AtomicBool>,
}

/// One client's round (one row of `clients.csv`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClientRecord {
    pub round: usize,
    pub client: usize,
    pub cluster: usize,
    pub frozen: usize,
    pub samples: usize,
    pub bytes_down: u64,
    pub bytes_up: u64,
    pub compute_s: f64,
    /// Absolute peak of the client's heap during local training (CPU only): what it held
    /// when training began (its model copy, the compressed prefix included) plus the peak of
    /// what training added — the paper's `torch.cuda.max_memory_allocated`.
    pub peak_mem_mb: Option<f64>,
    /// The peak of what local training added above the resident model (CPU only).
    pub peak_extra_mb: Option<f64>,
    pub train_loss: f64,
    /// `federation.capacity = "memory"`: the client's budget this round and the predicted
    /// peak of the plan it trained.
    #[serde(default)]
    pub budget_mb: Option<f64>,
    #[serde(default)]
    pub predicted_mb: Option<f64>,
}

/// One round's measurements (one row of `rounds.csv`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RoundRecord {
    pub round: usize,
    /// Test accuracy as a fraction, on evaluation rounds.
    pub accuracy: Option<f64>,
    /// Multi-exit methods: accuracy of the mean of every exit's logits.
    pub accuracy_ensemble: Option<f64>,
    pub test_loss: Option<f64>,
    /// Mean local training loss over the round's clients.
    pub train_loss: f64,
    pub clients: usize,
    /// Clients whose training diverged or whose upload held NaN/inf, left out of the merge
    /// (`train.nonfinite = "skip"`).
    #[serde(default)]
    pub skipped_clients: usize,
    /// `federation.capacity = "memory"`: sampled clients whose budget fits no plan (they sat
    /// the round out).
    #[serde(default)]
    pub unfit_clients: usize,
    pub bytes_down: u64,
    pub bytes_up: u64,
    /// Of `bytes_down`, the frozen layers' share (after TOA).
    pub frozen_bytes_down: u64,
    /// Sum of the clients' local training seconds.
    pub compute_s: f64,
    pub wall_s: f64,
    /// Mean over clients of the absolute peak heap during local training (CPU only).
    pub peak_mem_mb: Option<f64>,
    /// Mean over clients of the peak heap above the resident model (CPU only).
    pub peak_extra_mb: Option<f64>,
    pub energy_compute_j: f64,
    pub energy_comm_j: f64,
    pub per_client: Vec<ClientRecord>,
}

/// What a run is about to do, for the log header.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub dataset_source: String,
    pub train_size: usize,
    pub test_size: usize,
    pub num_layers: usize,
    pub model_params: usize,
    /// Layers each cluster freezes (weakest first); `None` = it changes per round (SLT stages).
    pub cluster_frozen: Option<Vec<usize>>,
    /// Clients trained at once, and kernel threads each.
    pub workers: WorkerLayout,
    /// Memory budgets: the predictor's measured ratios per frozen count.
    pub calibration: Option<crate::budget::Calibration>,
}

/// Receives progress as the run goes (progress bars, incremental result files).
pub trait RoundObserver {
    /// Memory budgets: one probe measurement of the peak predictor's calibration (before
    /// [`Self::on_start`]).
    fn on_calibration(&mut self, _row: &crate::budget::ProbeRow, _of: usize) {}
    fn on_start(&mut self, _info: &RunInfo) {}
    fn on_round(&mut self, _record: &RoundRecord) -> std::io::Result<()> {
        Ok(())
    }
    /// A resumed run's records so far (before its first new round).
    fn on_resume(&mut self, _records: &[RoundRecord]) -> std::io::Result<()> {
        Ok(())
    }
    /// A checkpoint to store (every `checkpoint_every` rounds, at the end, on interruption).
    fn on_checkpoint(&mut self, _checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        Ok(())
    }
}

/// Read the dataset the config names, applying its size limits.
pub fn load_dataset(cfg: &Config) -> Result<Dataset, SimError> {
    let kind = DatasetKind::parse(&cfg.data.dataset)?;
    let dir = (!cfg.data.data_dir.is_empty()).then(|| Path::new(&cfg.data.data_dir));
    let mut ds = fedolf_datasets::load(kind, dir)?;
    if cfg.data.train_limit > 0 {
        ds.train.truncate(cfg.data.train_limit);
    }
    if cfg.data.test_limit > 0 {
        ds.test.truncate(cfg.data.test_limit);
    }
    Ok(ds)
}

/// Run the experiment `cfg` on backend `B` from round 1.
pub fn run<B: AutodiffBackend>(
    cfg: &Config,
    dataset: &Dataset,
    device: &B::Device,
    memory: Option<&CountingAllocator>,
    observer: &mut dyn RoundObserver,
) -> Result<Vec<RoundRecord>, SimError> {
    run_from::<B>(cfg, dataset, device, memory, observer, RunStart::default())
}

/// Run the experiment `cfg` on backend `B` from `start` (a checkpoint, or round 1).
pub fn run_from<B: AutodiffBackend>(
    cfg: &Config,
    dataset: &Dataset,
    device: &B::Device,
    memory: Option<&CountingAllocator>,
    observer: &mut dyn RoundObserver,
    start: RunStart<'_>,
) -> Result<Vec<RoundRecord>, SimError> {
    let worker_layout = WorkerLayout::new(cfg.federation.workers, cfg.device != DeviceKind::Cpu);
    let workers = Workers::new(worker_layout)?;
    let mut fed = Federation::<B>::new(cfg, dataset, device)?;

    // Resume: the checkpoint's model, strategy state and records replace the fresh ones (the
    // strategy's inputs depend only on shapes, not on the weights).
    let mut records = Vec::with_capacity(cfg.federation.rounds);
    let mut first_round = 1;
    if let Some(run_dir) = start.resume {
        let ckpt = Checkpoint::read(run_dir, &fed.host_global(), fed.num_layers)?;
        if ckpt.round > cfg.federation.rounds {
            return Err(SimError::Resume(format!("the checkpoint holds {} rounds, the run has {}", ckpt.round, cfg.federation.rounds)));
        }
        fed.set_global(&ckpt.model)?;
        fed.strategy.restore_state(ckpt.strategy_state).map_err(SimError::Resume)?;
        if let Some(calibration) = ckpt.calibration {
            fed.use_calibration(calibration);
        }
        first_round = ckpt.round + 1;
        records = ckpt.records;
    }
    // Memory budgets: calibrate the peak predictor (unless the checkpoint held it), then
    // let every worker make its one-time allocations.
    if fed.calibration().is_none() {
        let levels = fed.levels;
        fed.calibrate(memory, &mut |row| observer.on_calibration(row, levels))?;
    }
    fed.warm_up(&workers, memory)?;
    observer.on_start(&fed.info(&dataset.source, worker_layout));
    if start.resume.is_some() {
        observer.on_resume(&records).map_err(|e| DataError::Io { path: "results".into(), source: e })?;
    }
    let stopped = || start.stop.is_some_and(|s| s.load(Ordering::SeqCst));
    let skip_nonfinite = cfg.train.nonfinite == NonFinite::Skip;
    for round in first_round..=cfg.federation.rounds {
        let wall = Instant::now();
        // 1. Sample C_t and plan each client (with memory budgets, the largest plan that
        // fits each one's budget; those that fit none sit the round out).
        let round_plans = fed.plan_round(round)?;
        let plans = round_plans.plans;

        // 2–6. Each sampled client trains on a worker from a host copy of the global model;
        // results come back in client order, so the run is the same for any worker count.
        let host_global = fed.host_global();
        let starts: Vec<Option<Vec<_>>> = plans.iter().map(|p| fed.client_start(p, &host_global)).collect();
        let clients = fed.client_round(round, memory);
        let mut largest_first: Vec<usize> = (0..plans.len()).collect();
        largest_first.sort_by_key(|&i| std::cmp::Reverse(fed.parts[plans[i].client].len()));
        let results = workers.run_scheduled(&largest_first, |i| {
            if stopped() {
                return Err(SimError::Interrupted { round: round - 1 });
            }
            clients.run::<B>(&plans[i], starts[i].as_deref().unwrap_or(&host_global), &fed.parts[plans[i].client], device)
        });
        let mut uploads = Vec::with_capacity(plans.len());
        let mut per_client = Vec::with_capacity(plans.len());
        let mut merged_plans = Vec::with_capacity(plans.len());
        let mut skipped = 0;
        for (result, plan) in results.into_iter().zip(&plans) {
            let result = match result {
                Err(SimError::Interrupted { .. }) => continue,
                Err(SimError::Client { error: FreezeError::Diverged { .. }, .. }) if skip_nonfinite => {
                    skipped += 1;
                    continue;
                }
                other => other?,
            };
            // A NaN or inf never reaches the global model.
            if let Some(tensor) = result.upload.first_nonfinite() {
                if skip_nonfinite {
                    skipped += 1;
                    continue;
                }
                return Err(SimError::NonFinite { round, client: plan.client, tensor });
            }
            uploads.push(result.upload);
            per_client.push((result.record, result.frozen_bytes));
            merged_plans.push(plan.clone());
        }
        if stopped() {
            // The round is abandoned: the global model is still round − 1's.
            observer.on_checkpoint(&fed.checkpoint(round - 1, records))?;
            return Err(SimError::Interrupted { round: round - 1 });
        }

        // 7. Merge (layers nobody trained keep their value).
        fed.merge(&uploads, &merged_plans)?;

        // 8. Evaluate what the strategy names, after its pre-evaluation step.
        let evaluation = fed.evaluate_round(round)?;
        let mut record = round_record(round, evaluation, wall.elapsed().as_secs_f64(), &fed.energy, per_client);
        record.skipped_clients = skipped;
        record.unfit_clients = round_plans.sat_out.len();
        observer.on_round(&record).map_err(|e| DataError::Io { path: "results".into(), source: e })?;
        records.push(record);
        if (cfg.checkpoint_every > 0 && round % cfg.checkpoint_every == 0) || round == cfg.federation.rounds {
            observer.on_checkpoint(&fed.checkpoint(round, records.clone()))?;
        }
    }
    Ok(records)
}

pub use crate::strategy::recompute_bn_statistics;

//! The simulation round loop (ARCHITECTURE.md, "A round"), readable top to bottom:
//! sample clients → plan each → split + TOA → local training → upload active layers →
//! the strategy's merge → evaluate every `eval_every` rounds. Everything a method does
//! differently is a [`Strategy`] hook; this loop names no method.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use fedolf_datasets::Dataset;

use crate::config::Config;
use crate::engine::error::SimError;
use crate::engine::federation::{Federation, RunInfo};
use crate::engine::round_end::RoundEnd;
use crate::io::checkpoint::{Checkpoint, CheckpointError};
use crate::accounting::budget::ProbeRow;
use crate::records::RoundRecord;
use crate::runtime::backend::DeviceKind;
use crate::runtime::memory::CountingAllocator;
use crate::runtime::workers::{WorkerLayout, Workers};

/// Where a run starts and what can stop it.
#[derive(Default)]
pub struct RunStart<'a> {
    /// Continue after the checkpoint in this run folder (same config and seed).
    pub resume: Option<&'a Path>,
    /// Set (by a signal handler) to stop: clients not yet started are abandoned, the last
    /// completed round is checkpointed, and the run returns [`SimError::Interrupted`].
    pub stop: Option<&'a AtomicBool>,
}

/// Receives progress as the run goes (progress bars, incremental result files).
pub trait RoundObserver {
    /// Memory budgets: one probe measurement of the peak predictor's calibration (before
    /// [`Self::on_start`]).
    fn on_calibration(&mut self, _row: &ProbeRow, _of: usize) {}
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

    // Resume after the run folder's checkpoint; with memory budgets calibrate the peak
    // predictor (unless the checkpoint held it), then let every worker make its one-time
    // allocations.
    let capacities = fed.setup.capacities;
    let mut records = fed.start(start.resume, memory, &mut |row| observer.on_calibration(row, capacities))?;
    let first_round = records.len() + 1;
    fed.warm_up(&workers, memory)?;
    observer.on_start(&fed.info(&dataset.source, worker_layout));
    if start.resume.is_some() {
        observer.on_resume(&records).map_err(SimError::Results)?;
    }
    let stopped = || start.stop.is_some_and(|s| s.load(Ordering::SeqCst));
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
        let clients = fed.round_context(round, memory);
        let mut largest_first: Vec<usize> = (0..plans.len()).collect();
        largest_first.sort_by_key(|&i| std::cmp::Reverse(fed.parts[plans[i].client].len()));
        let results = workers.run_scheduled(&largest_first, |i| {
            if stopped() {
                return Err(SimError::Interrupted { round: round - 1 });
            }
            clients.run::<B>(&plans[i], starts[i].as_deref().unwrap_or(&host_global), &fed.parts[plans[i].client], device)
        });
        let mut round_end = RoundEnd::new(round, cfg.train.nonfinite, round_plans.sat_out.len());
        for (result, plan) in results.into_iter().zip(plans) {
            match result {
                Ok(result) => round_end.accept(plan, result.upload, result.record, result.frozen_bytes)?,
                Err(SimError::Interrupted { .. }) => continue,
                Err(error) => round_end.failed(error)?,
            }
        }
        if stopped() {
            // The round is abandoned: the global model is still round − 1's.
            observer.on_checkpoint(&fed.checkpoint(round - 1, records))?;
            return Err(SimError::Interrupted { round: round - 1 });
        }

        // 7–8. Merge (layers nobody trained keep their value), then evaluate what the
        // strategy names, after its pre-evaluation step.
        let record = round_end.finish(&mut fed, wall.elapsed().as_secs_f64())?;
        observer.on_round(&record).map_err(SimError::Results)?;
        records.push(record);
        if cfg.checkpoint_due(round) {
            observer.on_checkpoint(&fed.checkpoint(round, records.clone()))?;
        }
    }
    Ok(records)
}


//! The end of a round, one path for the simulator and the Flower server: each client's
//! result is accepted, or skipped when it is not finite (`train.nonfinite = "skip"`); then
//! the strategy merges what was accepted (step 7), the global model is evaluated on
//! evaluation rounds (step 8), and the round's record is totalled from its clients' records.

use std::collections::BTreeMap;

use burn::tensor::backend::AutodiffBackend;

use crate::config::NonFinite;
use crate::engine::error::SimError;
use crate::engine::federation::{Evaluation, Federation};
use crate::local::error::LocalError;
use crate::accounting::energy::Energy;
use crate::records::{mean, ClientRecord, RoundRecord};
use crate::strategy::ClientPlan;
use crate::tensor::host::HostUpload;

/// A client's result that goes into the merge.
struct Accepted {
    plan: ClientPlan,
    upload: HostUpload,
    record: ClientRecord,
    /// Of `record.bytes_down`, the frozen layers' share (after TOA / QSGD).
    frozen_bytes: u64,
}

/// One round's results as they come in, by client.
pub struct RoundEnd {
    round: usize,
    skip_nonfinite: bool,
    /// Keyed by client: the merge reads uploads in ascending client order, whatever order
    /// they arrived in, so a run is the same for any worker count or network.
    accepted: BTreeMap<usize, Accepted>,
    skipped: usize,
    unfit: usize,
}

impl RoundEnd {
    /// Round `round`, in which `unfit` sampled clients fit no plan (memory budgets).
    pub fn new(round: usize, nonfinite: NonFinite, unfit: usize) -> Self {
        Self { round, skip_nonfinite: nonfinite == NonFinite::Skip, accepted: BTreeMap::new(), skipped: 0, unfit }
    }

    /// A client whose round failed: a diverged local training is skipped when the run skips
    /// non-finite clients; anything else is the run's error.
    pub fn failed(&mut self, error: SimError) -> Result<(), SimError> {
        match error {
            SimError::Client { error: LocalError::Diverged { .. }, .. } if self.skip_nonfinite => {
                self.skipped += 1;
                Ok(())
            }
            other => Err(other),
        }
    }

    /// A client's upload. A NaN or inf never reaches the global model: the client is
    /// skipped, or the run stops naming the tensor.
    pub fn accept(&mut self, plan: ClientPlan, upload: HostUpload, record: ClientRecord, frozen_bytes: u64) -> Result<(), SimError> {
        if let Some(tensor) = upload.first_nonfinite() {
            if self.skip_nonfinite {
                self.skipped += 1;
                return Ok(());
            }
            return Err(SimError::NonFinite { round: self.round, client: plan.client, tensor });
        }
        self.accepted.insert(plan.client, Accepted { plan, upload, record, frozen_bytes });
        Ok(())
    }

    /// Sampled clients that never replied (a lost Flower node): they count as skipped.
    pub fn missing(&mut self, clients: usize) {
        self.skipped += clients;
    }

    /// Steps 7–8: merge what was accepted into `fed`'s global model, evaluate on evaluation
    /// rounds, and total the round. `wall_s`: the round's wall time as the caller saw it.
    pub fn finish<B: AutodiffBackend>(self, fed: &mut Federation<B>, wall_s: f64) -> Result<RoundRecord, SimError> {
        let mut plans = Vec::with_capacity(self.accepted.len());
        let mut uploads = Vec::with_capacity(self.accepted.len());
        let mut per_client = Vec::with_capacity(self.accepted.len());
        for (_, accepted) in self.accepted {
            plans.push(accepted.plan);
            uploads.push(accepted.upload);
            per_client.push((accepted.record, accepted.frozen_bytes));
        }
        fed.merge(&uploads, &plans)?;
        let evaluation = fed.evaluate_round(self.round)?;
        let mut record = totals(self.round, evaluation, wall_s, &fed.energy, per_client);
        record.skipped_clients = self.skipped;
        record.unfit_clients = self.unfit;
        Ok(record)
    }
}

/// Totals of one round from its clients' records (with each one's frozen-layer bytes).
fn totals(round: usize, evaluation: Option<Evaluation>, wall_s: f64, energy: &Energy, per_client: Vec<(ClientRecord, u64)>) -> RoundRecord {
    let n = per_client.len().max(1) as f64;
    let compute_s: f64 = per_client.iter().map(|(c, _)| c.compute_s).sum();
    let down: u64 = per_client.iter().map(|(c, _)| c.bytes_down).sum();
    let up: u64 = per_client.iter().map(|(c, _)| c.bytes_up).sum();
    let peak_mem_mb = mean(&per_client.iter().filter_map(|(c, _)| c.peak_mem_mb).collect::<Vec<_>>());
    let peak_extra_mb = mean(&per_client.iter().filter_map(|(c, _)| c.peak_extra_mb).collect::<Vec<_>>());
    RoundRecord {
        round,
        accuracy: evaluation.map(|e| e.accuracy),
        accuracy_ensemble: evaluation.and_then(|e| e.accuracy_ensemble),
        test_loss: evaluation.map(|e| e.test_loss),
        train_loss: per_client.iter().map(|(c, _)| c.train_loss).sum::<f64>() / n,
        clients: per_client.len(),
        skipped_clients: 0,
        unfit_clients: 0,
        bytes_down: down,
        bytes_up: up,
        frozen_bytes_down: per_client.iter().map(|(_, f)| f).sum(),
        compute_s,
        wall_s,
        peak_mem_mb,
        peak_extra_mb,
        energy_compute_j: energy.compute_joules(compute_s),
        energy_comm_j: energy.comm_joules(down + up),
        per_client: per_client.into_iter().map(|(c, _)| c).collect(),
    }
}

//! The federation's steps under memory budgets (`federation.capacity = "memory"`): what they
//! measure on this backend (calibrating the peak predictor, the workers' warm-up, a plan's
//! shape facts) and what they hand the budget planner (`budgets.rs`, which chooses the plans
//! and never sees the federation). The rest of the server's steps are `federation.rs`.

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;

use super::budgets::{Budgets, RunFacts};
use super::federation::{Federation, RoundPlans};
use super::round_context::RoundContext;
use crate::accounting::budget::{round_budget_mb, Calibration, PlanFacts, ProbeRow};
use crate::config::Capacity;
use crate::engine::error::SimError;
use crate::local::training::{LocalModel, LocalTraining};
use crate::runtime::memory::CountingAllocator;
use crate::runtime::workers::Workers;
use crate::strategy::ClientPlan;
use crate::tensor::host::HostLayer;
use crate::tensor::submodel::extract;

impl<B: AutodiffBackend> Federation<B> {
    /// Memory budgets, step 1: the budget planner chooses each sampled client's plan.
    pub(super) fn plan_within_budgets(&self, round: usize, picked: &[usize]) -> Result<RoundPlans, SimError> {
        let (seed, fed) = (self.cfg.seed, &self.cfg.federation);
        let run = RunFacts {
            capacities: self.setup.capacities,
            profile_budget_mb: &|k| round_budget_mb(fed.budgets_mb[self.clusters[k]], fed.budget_jitter, seed, round, k),
            samples: &|k| self.parts[k].len(),
            plan_at: &|k, capacity| Ok(self.plan_at(round, k, capacity)?),
            plan_facts: &|plan| self.plan_facts(plan),
        };
        let (plans, sat_out) = self.budgets.plan_round(picked, &run)?;
        Ok(RoundPlans { plans, sat_out })
    }

    /// Memory budgets: client `client` (a Flower node) declares its own budget and the
    /// calibration of the peak predictor it measured on its own device; its plans come from
    /// these instead of its budget profile and the server's calibration.
    pub fn declare_memory(&mut self, client: usize, budget_mb: f64, calibration: Calibration) -> Result<(), SimError> {
        if self.cfg.federation.capacity != Capacity::Memory {
            return Err(SimError::Config {
                field: "federation.capacity",
                problem: format!("client {client} declares {budget_mb} MB of memory, but the run plans by clusters; set federation.capacity = \"memory\" to plan from budgets"),
            });
        }
        let run = (self.setup.capacities, self.setup.training.batch_size);
        self.budgets.declare(client, self.parts.len(), budget_mb, calibration, run, self.setup.training.caches_prefix())
    }

    /// Memory budgets: the plan client `client` trains at capacity `capacity` (of
    /// `setup.capacities`; the last is the least constrained) in round `round`, and its
    /// predicted training peak in bytes (from the server's calibration).
    pub fn capacity_plan(&self, round: usize, client: usize, capacity: usize) -> Result<(ClientPlan, u64), SimError> {
        let plan = self.plan_at(round, client, capacity)?;
        let predicted = self.predicted_peak(&plan, capacity, self.parts[client].len())?;
        Ok((plan, predicted))
    }

    /// The predicted training peak (bytes) of `plan`, a plan at capacity `capacity`, on a client
    /// with `samples`, from the server's calibration.
    pub fn predicted_peak(&self, plan: &ClientPlan, capacity: usize, samples: usize) -> Result<u64, SimError> {
        Budgets::predict(self.budgets.server()?, plan, capacity, samples, &|plan| self.plan_facts(plan))
    }

    /// What a plan's memory depends on: the model the server builds for it (width
    /// sub-model, compressed prefix) and Eq. 23 of the model it trains.
    pub fn plan_facts(&self, plan: &ClientPlan) -> Result<PlanFacts, SimError> {
        let prepared = self.round_context(0, None).prepare::<B>(plan, &self.host_global(), &self.device)?;
        Ok(self.facts_of(plan, &prepared.local))
    }

    /// [`Self::plan_facts`] of the client model `local` the server built for `plan`.
    fn facts_of(&self, plan: &ClientPlan, local: &LocalModel<B>) -> PlanFacts {
        let infos = match &plan.width {
            Some(spec) => extract(self.global.valid(), &self.setup.layout, spec, &self.device).layer_infos(),
            None => self.global.valid().layer_infos(),
        };
        PlanFacts::new(plan, &infos, local.resident_bytes(), self.setup.training.batch_size, self.setup.training.sgd.momentum > 0.0)
    }

    /// Memory budgets only: measure `ρ` at every capacity (two SGD steps of the
    /// method's own plan at that capacity, on the first training samples, on this backend) and
    /// keep the predictor for the run. For FedOLF capacity `N − 1 − l` is the ordered plan with
    /// `l` frozen. `memory` is the CPU's counting allocator; a GPU reports its own
    /// statistics. `on_capacity` sees each measurement as it is made.
    pub fn calibrate(&mut self, memory: Option<&CountingAllocator>, on_capacity: &mut dyn FnMut(&ProbeRow)) -> Result<(), SimError> {
        if self.cfg.federation.capacity != Capacity::Memory {
            return Ok(());
        }
        let batch = self.setup.training.batch_size;
        let rows = self.with_probe(memory, |clients, host_global, indices| {
            let measure = |capacity: usize| -> Result<ProbeRow, SimError> {
                let plan = self.probe_plan(capacity)?;
                let start = self.client_start(&plan, host_global);
                let prepared = clients.prepare::<B>(&plan, start.as_deref().unwrap_or(host_global), &self.device)?;
                let facts = self.facts_of(&plan, &prepared.local);
                let trained = clients.train(&plan, prepared.local, prepared.bytes_down, indices, &self.device)?;
                let peak_mb = trained.record.peak_mem_mb.ok_or_else(|| SimError::Config {
                    field: "federation.capacity",
                    problem: "\"memory\" calibrates on measured memory, and this backend measures none (on the CPU the binary must install fedolf::runtime::memory::CountingAllocator as its global allocator)".into(),
                })?;
                let resident = facts.resident_bytes;
                let measured = ((peak_mb * 1e6).round() as u64).saturating_sub(resident);
                Ok(ProbeRow { capacity, frozen: plan.frozen(), measured_transient: measured, theoretical_transient: facts.transient_bytes(), resident })
            };
            // Warm-up: thread pools and one-time buffers are no client's cost.
            measure(self.setup.capacities - 1)?;
            let mut rows = Vec::with_capacity(self.setup.capacities);
            for capacity in (0..self.setup.capacities).rev() {
                let row = measure(capacity)?;
                on_capacity(&row);
                rows.push(row);
            }
            rows.reverse();
            Ok::<_, SimError>(rows)
        })?;
        self.use_calibration(Calibration { batch, rows });
        Ok(())
    }

    /// Memory budgets: the predictor's calibration (`None` before [`Self::calibrate`]).
    pub fn calibration(&self) -> Option<Calibration> {
        self.budgets.calibration()
    }

    /// Memory budgets: predict with `calibration` (a resumed run's, from its checkpoint)
    /// instead of probing again.
    pub fn use_calibration(&mut self, calibration: Calibration) {
        if self.cfg.federation.capacity == Capacity::Memory {
            self.budgets.use_calibration(calibration, self.setup.training.caches_prefix());
        }
    }

    /// Run `probe` with the probe's client round (one epoch, no prefix cache, measured with
    /// `memory`), the global model on the host, and the probe's samples: two batches of the
    /// first training samples.
    fn with_probe<T>(&self, memory: Option<&CountingAllocator>, probe: impl FnOnce(&RoundContext<'_>, &[HostLayer], &[usize]) -> T) -> T {
        let training = LocalTraining { epochs: 1, cache_frozen: false, ..self.setup.training.clone() };
        let indices: Vec<usize> = (0..(2 * self.setup.training.batch_size).min(self.host_train.len())).collect();
        let mut clients = self.round_context(1, memory);
        clients.training = &training;
        probe(&clients, &self.host_global(), &indices)
    }

    /// The method's plan at `capacity` for client 0 in round 1, at its widest: FjORD's
    /// per-batch widths are dropped, so the probe measures the largest sub-model it may train.
    fn probe_plan(&self, capacity: usize) -> Result<ClientPlan, SimError> {
        let mut plan = self.plan_at(1, 0, capacity)?;
        if let Some(width) = &mut plan.width {
            width.per_batch_ratios.clear();
        }
        Ok(plan)
    }

    /// Memory budgets only: one probe step on every worker before the first round, so each
    /// worker's threads make their one-time allocations (kernel scratch buffers, pool
    /// bookkeeping) outside any client's measured peak, as the calibration's own warm-up
    /// did on this thread.
    pub fn warm_up(&self, workers: &Workers, memory: Option<&CountingAllocator>) -> Result<(), SimError> {
        if !self.budgets.is_calibrated() {
            return Ok(());
        }
        let plan = self.probe_plan(self.setup.capacities - 1)?;
        self.with_probe(memory, |clients, host_global, indices| {
            let start = self.client_start(&plan, host_global);
            let start = start.as_deref().unwrap_or(host_global);
            let device = &self.device;
            workers.on_each(|| clients.run::<B>(&plan, start, indices, device).map(|_| ())).into_iter().collect::<Result<(), _>>()
        })
    }
}

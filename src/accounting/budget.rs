//! Memory budgets choose what a client trains. FedOLF paper, end of Section V-B: client k
//! "can choose l_k ... given Σ_{q>l_k} m_AM(W_q) not exceeding its memory limit", and can
//! "dynamically adjust l_k based on the real-time memory limit" (left to future work there).
//!
//! The predicted training peak of a plan p (its roles, width, download compressor) on a
//! client holding n samples:
//!
//! `peak(p) = resident(p) + ρ_l · (m_A(p) + m_G(p) + m_O(p)) + cache(p, n)`
//!
//! - `resident(p)`: every tensor the client holds when training starts (its model copy, the
//!   frozen prefix as TOA left it), exact, from the shapes of the model the server builds;
//! - `m_A`, `m_G`: Eq. 23's activation and gradient terms of the plan's (sub-)model at the
//!   client's batch `min(B, n)` ([`crate::accounting::theory`]); `m_O`: the momentum buffers;
//! - `ρ_l`: measured ÷ theoretical transient memory of the method's own plan at capacity
//!   level l (FedOLF: the ordered plan with `l` frozen; a width method: its sub-model of that
//!   level), from a short probe (two SGD steps at the run's batch, on the run's own backend)
//!   once per run ([`Calibration`]). It absorbs what Eq. 23 leaves out: the gathered batch,
//!   the loss, autodiff bookkeeping, the new copies of updated weights, exit heads;
//! - `cache(p, n)`: with `train.cache_frozen` and E > 1, the frozen prefix's outputs for all
//!   n samples (`n · |a_l| · 4` bytes).
//!
//! Plans whose draws differ from client to client (random freezing, Feddrop, CoCoFL) use the
//! ratio of their level's probed draw, applied to their own Eq. 23. FjORD is probed at the
//! full width of its level (its per-batch widths only ever train less).

use std::collections::HashMap;

use fedolf_models::LayerInfo;
use rand::Rng;

use crate::local::roles::LayerRole;
use crate::runtime::rng::{stream, Purpose};
use crate::records::RoundRecord;
use crate::strategy::ClientPlan;
use crate::accounting::theory::{theoretical_memory, TheoreticalMemory};

const MB: f64 = 1e6;

/// The facts of one plan that do not change during the run (they depend on shapes only).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanFacts {
    pub resident_bytes: u64,
    pub theory: TheoreticalMemory,
    /// Elements per sample of the frozen prefix's output (what the prefix cache holds).
    pub prefix_output_elems: usize,
}

impl PlanFacts {
    /// `infos`: the layers of the model the plan trains (its width sub-model, if any).
    pub fn new(plan: &ClientPlan, infos: &[LayerInfo], resident_bytes: u64, batch: usize, momentum: bool) -> Self {
        let prefix = plan.roles.iter().take_while(|r| **r == LayerRole::FrozenNoGraph).count();
        let prefix_output_elems = if prefix == 0 { 0 } else { infos[prefix - 1].output.elems() };
        Self { resident_bytes, theory: theoretical_memory(infos, &plan.roles, batch, momentum), prefix_output_elems }
    }

    /// What one training step adds on top of the resident model, by Eq. 23 (+ momentum).
    pub fn transient_bytes(&self) -> u64 {
        self.theory.transient()
    }

    /// [`Self::transient_bytes`] with batches of `batch` instead of the `full_batch` the facts
    /// were worked out at (a client with fewer samples than the batch trains on them all at
    /// once): activations scale with the batch, gradients and momentum do not.
    pub fn transient_bytes_at(&self, batch: usize, full_batch: usize) -> f64 {
        let scale = batch.min(full_batch) as f64 / full_batch.max(1) as f64;
        self.theory.activations as f64 * scale + (self.theory.gradients + self.theory.optimizer) as f64
    }
}

/// The key under which a plan's facts are cached: everything that shapes the client's
/// memory (roles, kept channel counts, compressor), nothing that does not (which channels,
/// the client, its random draws).
pub fn facts_key(plan: &ClientPlan) -> String {
    let kept: Option<Vec<usize>> = plan.width.as_ref().map(|w| w.kept.iter().map(Vec::len).collect());
    format!("{:?}|{:?}|{:?}|{}|{:?}", plan.roles, kept, plan.download, plan.fake_int8_frozen, plan.objective)
}

/// One probe measurement: the method's plan at capacity `capacity`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProbeRow {
    /// (Written as `level` in checkpoints and nodes' calibrations, as before the rename.)
    #[serde(rename = "level")]
    pub capacity: usize,
    /// Layers the plan does not train.
    pub frozen: usize,
    /// Measured peak above the resident model, bytes.
    pub measured_transient: u64,
    /// Eq. 23's activations + gradients, plus momentum, bytes.
    pub theoretical_transient: u64,
    pub resident: u64,
}

impl ProbeRow {
    pub fn ratio(&self) -> f64 {
        self.measured_transient as f64 / self.theoretical_transient.max(1) as f64
    }
}

/// `ρ` at every capacity, measured on the run's backend (`rows[capacity]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Calibration {
    pub batch: usize,
    pub rows: Vec<ProbeRow>,
}

impl Calibration {
    /// `ρ` at `capacity` (the last measured one beyond the probe).
    pub fn ratio(&self, capacity: usize) -> f64 {
        self.rows.get(capacity.min(self.rows.len().saturating_sub(1))).map_or(1.0, ProbeRow::ratio)
    }
}

/// Predicts a plan's training peak; holds the run's calibration and every plan's facts.
#[derive(Debug, Clone)]
pub struct PeakPredictor {
    pub calibration: Calibration,
    /// Frozen prefix cached for every sample (`train.cache_frozen` with E > 1).
    pub caches_prefix: bool,
    facts: HashMap<String, PlanFacts>,
}

impl PeakPredictor {
    pub fn new(calibration: Calibration, caches_prefix: bool) -> Self {
        Self { calibration, caches_prefix, facts: HashMap::new() }
    }

    pub fn facts(&self, plan: &ClientPlan) -> Option<&PlanFacts> {
        self.facts.get(&facts_key(plan))
    }

    pub fn remember(&mut self, plan: &ClientPlan, facts: PlanFacts) {
        self.facts.insert(facts_key(plan), facts);
    }

    /// Predicted peak in bytes of a plan at capacity `capacity` whose facts are `facts`, on
    /// a client with `samples`.
    pub fn predict(&self, facts: &PlanFacts, capacity: usize, samples: usize) -> u64 {
        let transient = self.calibration.ratio(capacity) * facts.transient_bytes_at(samples, self.calibration.batch);
        let cache = if self.caches_prefix { (samples * facts.prefix_output_elems * 4) as u64 } else { 0 };
        facts.resident_bytes + transient.round() as u64 + cache
    }
}

/// Client `client`'s budget in round `round`, MB: its profile, jittered per round.
pub fn round_budget_mb(profile_mb: f64, jitter: f64, seed: u64, round: usize, client: usize) -> f64 {
    if jitter == 0.0 {
        return profile_mb;
    }
    let u: f64 = stream(seed, Purpose::Budget, round as u64, client as u64).random_range(-jitter..=jitter);
    profile_mb * (1.0 + u)
}

/// The run summary's view of the budgets: how well the predictor kept clients inside them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BudgetSummary {
    /// Client rounds trained under a budget with a measured peak.
    pub client_rounds: usize,
    /// Of those, how many measured a peak over their budget, and that share.
    pub over_budget: usize,
    pub miss_rate: f64,
    /// Over-budget client rounds: mean and largest excess, MB and % of the budget.
    pub mean_excess_mb: f64,
    pub max_excess_mb: f64,
    pub max_excess_pct: f64,
    /// |measured − predicted| ÷ predicted, mean and worst, %.
    pub mean_abs_error_pct: f64,
    pub max_abs_error_pct: f64,
    /// Sampled client rounds that fit no plan and sat out.
    pub sat_out: usize,
}

impl BudgetSummary {
    /// `None` for a run without budgets.
    pub fn from_records(records: &[RoundRecord]) -> Option<Self> {
        let pairs: Vec<(f64, f64, f64)> = records
            .iter()
            .flat_map(|r| &r.per_client)
            .filter_map(|c| Some((c.budget_mb?, c.predicted_mb?, c.peak_mem_mb?)))
            .collect();
        let sat_out: usize = records.iter().map(|r| r.unfit_clients).sum();
        if sat_out == 0 && !records.iter().flat_map(|r| &r.per_client).any(|c| c.budget_mb.is_some()) {
            return None;
        }
        let excess: Vec<(f64, f64)> = pairs.iter().filter(|(b, _, m)| m > b).map(|(b, _, m)| (m - b, 100.0 * (m - b) / b)).collect();
        let errors: Vec<f64> = pairs.iter().map(|(_, p, m)| 100.0 * (m - p).abs() / p.max(1e-9)).collect();
        let max = |v: &mut dyn Iterator<Item = f64>| v.fold(0.0f64, f64::max);
        // Means of nothing are 0 (an empty f64 sum is −0).
        let mean = |v: &mut dyn Iterator<Item = f64>, n: usize| if n == 0 { 0.0 } else { v.sum::<f64>() / n as f64 };
        let n = pairs.len().max(1) as f64;
        Some(Self {
            client_rounds: pairs.len(),
            over_budget: excess.len(),
            miss_rate: excess.len() as f64 / n,
            mean_excess_mb: mean(&mut excess.iter().map(|e| e.0), excess.len()),
            max_excess_mb: max(&mut excess.iter().map(|e| e.0)),
            max_excess_pct: max(&mut excess.iter().map(|e| e.1)),
            mean_abs_error_pct: mean(&mut errors.iter().copied(), errors.len()),
            max_abs_error_pct: max(&mut errors.iter().copied()),
            sat_out,
        })
    }
}

/// Bytes → MB as budgets are given.
pub fn mb(bytes: u64) -> f64 {
    bytes as f64 / MB
}

//! The memory-budget planner (`federation.capacity = "memory"`): the peak predictor
//! calibrated on the server's backend, the budget and predictor each Flower node that declared
//! its own memory brought, and the choice of each client's plan. It knows nothing of the
//! federation that owns it: what it needs of the run (a plan at a capacity, a plan's shape
//! facts) is handed to it. The federation's steps that measure (calibration, warm-up) are in
//! `budget_steps.rs`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::accounting::budget::{mb, Calibration, PeakPredictor, PlanFacts};
use crate::engine::error::SimError;
use crate::strategy::{ClientPlan, MemoryFit};

#[derive(Default)]
pub struct Budgets {
    /// After `Federation::calibrate` (or from a resumed checkpoint's calibration).
    server: Option<Mutex<PeakPredictor>>,
    declared: BTreeMap<usize, DeclaredMemory>,
}

/// A node's own memory: its budget, and the peak predictor calibrated on its device.
struct DeclaredMemory {
    budget_mb: f64,
    predictor: Mutex<PeakPredictor>,
}

impl Budgets {
    /// The server's predictor.
    pub fn server(&self) -> Result<&Mutex<PeakPredictor>, SimError> {
        self.server.as_ref().ok_or_else(|| SimError::Config {
            field: "federation.capacity",
            problem: "memory budgets need the peak predictor: call Federation::calibrate before planning".into(),
        })
    }

    pub fn is_calibrated(&self) -> bool {
        self.server.is_some()
    }

    /// The server predictor's calibration (`None` before one is set).
    pub fn calibration(&self) -> Option<Calibration> {
        self.server.as_ref().map(|p| p.lock().expect("predictor lock").calibration.clone())
    }

    /// Predict with `calibration` from now on.
    pub fn use_calibration(&mut self, calibration: Calibration, caches_prefix: bool) {
        self.server = Some(Mutex::new(PeakPredictor::new(calibration, caches_prefix)));
    }

    /// Client `client` (of `clients`) plans from its own budget and its own device's
    /// calibration, which must cover the run's `capacities` at its `batch`.
    pub fn declare(&mut self, client: usize, clients: usize, budget_mb: f64, calibration: Calibration, run: (usize, usize), caches_prefix: bool) -> Result<(), SimError> {
        let (capacities, batch) = run;
        if client >= clients {
            return Err(SimError::Config { field: "federation.clients", problem: format!("client {client} declares its memory, but the run has {clients} clients") });
        }
        if !(budget_mb.is_finite() && budget_mb > 0.0) {
            return Err(SimError::Config { field: "memory-mb", problem: format!("client {client} declares {budget_mb} MB: a budget is a positive number of MB") });
        }
        if calibration.rows.len() != capacities || calibration.batch != batch {
            return Err(SimError::Config {
                field: "memory-mb",
                problem: format!("client {client}'s calibration has {} capacities at batch {}, the run has {capacities} capacities at batch {batch}", calibration.rows.len(), calibration.batch),
            });
        }
        self.declared.insert(client, DeclaredMemory { budget_mb, predictor: Mutex::new(PeakPredictor::new(calibration, caches_prefix)) });
        Ok(())
    }

    /// The budget and predictor of a client that declared its own memory.
    pub fn declared(&self, client: usize) -> Option<(f64, &Mutex<PeakPredictor>)> {
        self.declared.get(&client).map(|node| (node.budget_mb, &node.predictor))
    }
}

/// What the planner asks of the run, per client: its budget profile's budget this round, its
/// sample count, its plan at a capacity, and a plan's shape facts (worked out once per shape).
pub struct RunFacts<'a> {
    pub capacities: usize,
    pub profile_budget_mb: &'a dyn Fn(usize) -> f64,
    pub samples: &'a dyn Fn(usize) -> usize,
    pub plan_at: &'a dyn Fn(usize, usize) -> Result<ClientPlan, SimError>,
    pub plan_facts: &'a dyn Fn(&ClientPlan) -> Result<PlanFacts, SimError>,
}

impl Budgets {
    /// Each picked client's plan, the least constrained whose predicted peak fits its budget
    /// (a node that declared its memory: its own budget and its own device's calibration;
    /// every other client: its profile's budget and the server's calibration), and the
    /// clients that fit none and sit the round out.
    pub fn plan_round(&self, picked: &[usize], run: &RunFacts<'_>) -> Result<(Vec<ClientPlan>, Vec<usize>), SimError> {
        let (mut plans, mut sat_out) = (Vec::with_capacity(picked.len()), Vec::new());
        for &k in picked {
            let (budget_mb, predictor) = match self.declared(k) {
                Some(declared) => declared,
                None => ((run.profile_budget_mb)(k), self.server()?),
            };
            let mut chosen = None;
            // The least constrained capacity first (c − 1: nothing frozen, full width).
            for capacity in (0..run.capacities).rev() {
                let mut candidate = (run.plan_at)(k, capacity)?;
                let predicted_mb = mb(Self::predict(predictor, &candidate, capacity, (run.samples)(k), run.plan_facts)?);
                if predicted_mb <= budget_mb {
                    candidate.memory = Some(MemoryFit { budget_mb, predicted_mb });
                    chosen = Some(candidate);
                    break;
                }
            }
            match chosen {
                Some(p) => plans.push(p),
                None => sat_out.push(k),
            }
        }
        Ok((plans, sat_out))
    }

    /// The predicted training peak (bytes) of `plan`, made at `capacity`, on a client with
    /// `samples`, by `predictor`; the plan's shape facts are worked out once and cached.
    pub fn predict(predictor: &Mutex<PeakPredictor>, plan: &ClientPlan, capacity: usize, samples: usize, plan_facts: &dyn Fn(&ClientPlan) -> Result<PlanFacts, SimError>) -> Result<u64, SimError> {
        let mut predictor = predictor.lock().expect("predictor lock");
        if let Some(facts) = predictor.facts(plan) {
            return Ok(predictor.predict(facts, capacity, samples));
        }
        let facts = plan_facts(plan)?;
        predictor.remember(plan, facts);
        Ok(predictor.predict(&facts, capacity, samples))
    }
}

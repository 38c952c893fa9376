//! Memory budgets' state (`federation.capacity = "memory"`): the peak predictor calibrated on
//! the server's backend, and the budget and predictor each Flower node that declared its own
//! memory brought. The federation's steps that use them are in `budget_steps.rs`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::accounting::budget::{Calibration, PeakPredictor};
use crate::engine::error::SimError;

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

    /// Client `client` plans from its own budget and its own device's calibration.
    pub fn declare(&mut self, client: usize, budget_mb: f64, calibration: Calibration, caches_prefix: bool) {
        self.declared.insert(client, DeclaredMemory { budget_mb, predictor: Mutex::new(PeakPredictor::new(calibration, caches_prefix)) });
    }

    /// The budget and predictor of a client that declared its own memory.
    pub fn declared(&self, client: usize) -> Option<(f64, &Mutex<PeakPredictor>)> {
        self.declared.get(&client).map(|node| (node.budget_mb, &node.predictor))
    }
}

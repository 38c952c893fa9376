//! The paper's protocol: several trials of one setting (one per seed), reported as the mean
//! and the sample standard deviation (n − 1 in the denominator) across trials.

use serde::Serialize;

use crate::io::report::Summary;

use crate::records::mean;

/// Mean and spread of one metric across trials.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Spread {
    pub mean: f64,
    /// Sample standard deviation (n − 1); 0 for a single value.
    pub std: f64,
    /// The per-trial values, in trial order.
    pub values: Vec<f64>,
}

impl Spread {
    /// `None` when no trial has the value.
    pub fn of(values: Vec<f64>) -> Option<Self> {
        let mean = mean(&values)?;
        let n = values.len() as f64;
        let std = if values.len() > 1 { (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
        Some(Self { mean, std, values })
    }
}

/// `summary.json` of a multi-seed run: every trial's summary and the spreads the paper
/// reports.
#[derive(Debug, Clone, Serialize)]
pub struct TrialsSummary {
    pub name: String,
    pub method: String,
    pub model: String,
    pub dataset: String,
    pub seeds: Vec<u64>,
    /// "completed" when every trial completed, "failed" when one failed (it says why),
    /// "running" while trials remain.
    pub status: String,
    pub trials_completed: usize,
    pub final_accuracy: Option<Spread>,
    pub best_accuracy: Option<Spread>,
    pub mean_last_accuracy: Option<Spread>,
    /// Multi-exit methods: the exit ensemble's mean over the last evaluations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_last_accuracy_ensemble: Option<Spread>,
    pub mean_peak_mem_mb: Option<Spread>,
    pub trials: Vec<Summary>,
}

impl TrialsSummary {
    /// Spreads over the completed trials; `seeds` lists every planned trial.
    pub fn new(seeds: &[u64], trials: Vec<Summary>) -> Self {
        let completed: Vec<&Summary> = trials.iter().filter(|t| t.status == "completed").collect();
        let spread = |f: fn(&Summary) -> Option<f64>| Spread::of(completed.iter().filter_map(|t| f(t)).collect());
        let first = trials.first();
        let field = |f: fn(&Summary) -> &String| first.map(|t| f(t).clone()).unwrap_or_default();
        let status = if completed.len() == seeds.len() {
            "completed"
        } else if trials.iter().any(|t| t.status != "completed") {
            "failed"
        } else {
            "running"
        };
        Self {
            name: field(|t| &t.name),
            method: field(|t| &t.method),
            model: field(|t| &t.model),
            dataset: field(|t| &t.dataset),
            seeds: seeds.to_vec(),
            status: status.into(),
            trials_completed: completed.len(),
            final_accuracy: spread(|t| t.final_accuracy),
            best_accuracy: spread(|t| t.best_accuracy),
            mean_last_accuracy: spread(|t| t.mean_last_accuracy),
            mean_last_accuracy_ensemble: spread(|t| t.mean_last_accuracy_ensemble),
            mean_peak_mem_mb: spread(|t| t.mean_peak_mem_mb),
            trials,
        }
    }
}

//! What a run measures, as plain data: one row of `clients.csv` per client round, one row of
//! `rounds.csv` per round, and the means the reports take of them. Everything above reads
//! and writes these; they depend on nothing of the crate.

/// Bytes of one parameter on the wire and in memory (f32).
pub const BYTES_PER_PARAM: u64 = 4;

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
    /// The device that trained it (`cpu`, `wgpu`, `cuda`): the run's `--device` in
    /// simulation, the node's own in a Flower federation.
    #[serde(default)]
    pub device: String,
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

/// Arithmetic mean; `None` for no values.
pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Mean of the last `max(3, ⌈n/10⌉)` of `n` evaluations (all of them when `n < 3`).
pub fn mean_last(evaluated: &[f64]) -> Option<f64> {
    let n = evaluated.len();
    let k = n.div_ceil(10).max(3).min(n);
    mean(&evaluated[n - k..])
}


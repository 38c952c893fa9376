//! The server side of a run, for a Flower `ServerApp`: the simulator's [`Federation`] (same
//! sampling, plans, compression, merge and evaluation), driven one call per step, with the
//! results files and the checkpoint `fedolf run` writes, so a federation whose server
//! stopped resumes from its run folder.

use std::collections::BTreeMap;
use std::path::Path;

use fedolf::engine::round_context::{payload_to_device, payload_to_host, Prepared};
use fedolf::config::Config;
use fedolf::engine::federation::Federation;
use fedolf::io::lock::FolderLock;
use fedolf::io::report::{RunDir, Summary};
use fedolf::io::run_writer::RunWriter;
use fedolf::engine::data::load_dataset;
use fedolf::engine::round_end::RoundEnd;
use fedolf::accounting::budget::Calibration;
use fedolf::records::ClientRecord;
use fedolf::strategy::ClientPlan;
use fedolf_datasets::Dataset;
use pyo3::prelude::*;

use crate::wire::{from_wire, model_from_wire, model_to_wire, to_wire, WireTensor};
use crate::{py_err, Train};

/// A client's round in flight: what it was sent (to check what comes back).
struct InFlight {
    plan: ClientPlan,
    prepared: Prepared<Train>,
}

/// The federation's server: holds the global model, the strategy and the test set.
#[pyclass(unsendable)]
pub struct Server {
    fed: Federation<Train>,
    dataset: Dataset,
    round: usize,
    in_flight: BTreeMap<usize, InFlight>,
    /// The round's replies so far (the simulator's bookkeeping: skips, merge, record).
    round_end: Option<RoundEnd>,
    /// The run's results files and checkpoints, as `fedolf run` writes them.
    writer: RunWriter,
    /// Held while the server writes its folder.
    _lock: Option<FolderLock>,
    /// The first round this server runs (after a resumed checkpoint's rounds).
    first_round: usize,
}

#[pymethods]
impl Server {
    /// `config_toml`: a `fedolf run` config (its text), with `overrides` (`key=value`, as
    /// `fedolf run --set`). `out_dir`: where `rounds.csv`, `clients.csv`, `summary.json`,
    /// `config.toml` and `checkpoint/` go (`None` = nowhere). `resume`: continue the run in
    /// that folder after its checkpoint (written by this server or by `fedolf run`; the
    /// config must be the run's own); its results so far are kept and later rounds appended.
    #[new]
    #[pyo3(signature = (config_toml, out_dir=None, overrides=Vec::new(), resume=None))]
    fn new(config_toml: &str, out_dir: Option<&str>, overrides: Vec<String>, resume: Option<&str>) -> PyResult<Self> {
        let cfg = Config::from_toml(config_toml, "run config", &overrides).map_err(py_err)?;
        let dataset = load_dataset(&cfg).map_err(py_err)?;
        let mut fed = Federation::<Train>::new(&cfg, &dataset, &Default::default()).map_err(py_err)?;
        // `fedolf run`'s start: the checkpoint is read against this run's model (every tensor,
        // its shape, finite) before anything is written; with memory budgets the peak
        // predictor is calibrated here, on the server's CPU, for the clients whose nodes
        // declare no memory of their own (a resumed run keeps its own).
        let records = fed.start(resume.map(Path::new), Some(&crate::ALLOC), &mut |_| {}).map_err(|e| match resume {
            Some(run) => py_err(format!("{run}: {e}")),
            None => py_err(e),
        })?;
        let mut lock = None;
        let mut writer = match out_dir {
            Some(path) => {
                // One writer per run folder: a second server on it is refused here, before it
                // writes anything (what it read to resume is left as it was).
                std::fs::create_dir_all(path).map_err(|e| py_err(format!("{path}: {e}")))?;
                let dir = RunDir { path: Path::new(path).to_path_buf() };
                lock = Some(dir.lock().map_err(py_err)?);
                dir.write_config(&cfg).map_err(py_err)?;
                RunWriter::new(dir)
            }
            None => RunWriter::nowhere(),
        };
        if resume.is_some() {
            writer.resume_from(&records).map_err(py_err)?;
        }
        let first_round = records.len() + 1;
        Ok(Self { fed, dataset, round: 0, in_flight: BTreeMap::new(), round_end: None, writer, _lock: lock, first_round })
    }

    /// The first round to run: 1, or the one after a resumed checkpoint.
    #[getter]
    fn first_round(&self) -> usize {
        self.first_round
    }

    /// The run's config as TOML (what every node trains with).
    fn config_toml(&self) -> String {
        self.fed.cfg.to_toml()
    }

    #[getter]
    fn num_layers(&self) -> usize {
        self.fed.setup.num_layers
    }

    #[getter]
    fn num_clients(&self) -> usize {
        self.fed.cfg.federation.clients
    }

    #[getter]
    fn rounds(&self) -> usize {
        self.fed.cfg.federation.rounds
    }

    #[getter]
    fn method(&self) -> String {
        self.fed.cfg.method.clone()
    }

    /// How clients' capacity is set: `clusters` (the cluster table) or `memory` (budgets).
    #[getter]
    fn capacity(&self) -> &'static str {
        match self.fed.cfg.federation.capacity {
            fedolf::config::Capacity::Clusters => "clusters",
            fedolf::config::Capacity::Memory => "memory",
        }
    }

    #[getter]
    fn dataset_source(&self) -> String {
        self.dataset.source.clone()
    }

    /// Memory budgets: the peak predictor's calibration on this process's device, as JSON
    /// (`batch`, and per capacity level `rows[level]`: `resident`, `measured_transient`,
    /// `theoretical_transient` bytes); `None` without budgets.
    fn calibration(&self) -> PyResult<Option<String>> {
        self.fed.calibration().map(|c| serde_json::to_string(&c).map_err(py_err)).transpose()
    }

    /// Per-channel `(mean, std)` of the training split, which every node normalises with.
    fn stats(&self) -> Vec<(f32, f32)> {
        self.fed.stats.clone()
    }

    /// Memory budgets: client `client`'s node declares `budget_mb` and the calibration it
    /// measured on its own device (`Client.calibrate`'s JSON); its plans come from these.
    fn declare_memory(&mut self, client: usize, budget_mb: f64, calibration_json: &str) -> PyResult<()> {
        let calibration: Calibration = serde_json::from_str(calibration_json).map_err(|e| py_err(format!("client {client}: calibration: {e}")))?;
        self.fed.declare_memory(client, budget_mb, calibration).map_err(py_err)
    }

    /// Client `k`'s capacity cluster (0-based).
    fn cluster(&self, client: usize) -> PyResult<usize> {
        self.fed.clusters.get(client).copied().ok_or_else(|| py_err(format!("client {client} is outside 0..{}", self.fed.clusters.len())))
    }

    /// The global model (every layer, then exit heads).
    fn global_weights<'py>(&self, py: Python<'py>) -> Vec<WireTensor<'py>> {
        model_to_wire(py, &self.fed.host_global())
    }

    /// Replace the global model (the arrays a Flower strategy carries between rounds).
    fn set_global(&mut self, weights: Vec<WireTensor<'_>>) -> PyResult<()> {
        let n = self.fed.host_global().len();
        let model = model_from_wire(&weights, n, "global model")?;
        self.fed.set_global(&model).map_err(py_err)
    }

    /// Start round `round`: the clients sampled and each one's plan, as `(client, plan JSON)`.
    /// `live`: the clients whose nodes can be reached (`None`: all); only those are sampled.
    #[pyo3(signature = (round, live=None))]
    fn plan_round(&mut self, round: usize, live: Option<Vec<usize>>) -> PyResult<Vec<(usize, String)>> {
        if round == 0 || round > self.fed.cfg.federation.rounds {
            return Err(py_err(format!("round {round} is outside 1..={}", self.fed.cfg.federation.rounds)));
        }
        self.round = round;
        self.in_flight.clear();
        let round_plans = self.fed.plan_round_among(round, live.as_deref()).map_err(py_err)?;
        self.round_end = Some(RoundEnd::new(round, self.fed.cfg.train.nonfinite, round_plans.sat_out.len()));
        let plans = round_plans.plans;
        let host_global = self.fed.host_global();
        let clients = self.fed.round_context(round, None);
        let mut out = Vec::with_capacity(plans.len());
        for plan in plans {
            let start = self.fed.client_start(&plan, &host_global);
            let prepared = clients.prepare::<Train>(&plan, start.as_deref().unwrap_or(&host_global), &Default::default()).map_err(py_err)?;
            out.push((plan.client, serde_json::to_string(&plan).map_err(py_err)?));
            self.in_flight.insert(plan.client, InFlight { plan, prepared });
        }
        Ok(out)
    }

    /// What client `client` downloads this round: its model laid out by its plan, the frozen
    /// prefix compressed (TOA / QSGD), as `(tensors, bytes_down, frozen_bytes)`.
    fn download<'py>(&self, py: Python<'py>, client: usize) -> PyResult<(Vec<WireTensor<'py>>, u64, u64)> {
        let flight = self.in_flight.get(&client).ok_or_else(|| py_err(format!("client {client} was not sampled in round {}", self.round)))?;
        let payload = payload_to_host(flight.prepared.local.payload());
        Ok((to_wire(py, &payload), flight.prepared.bytes_down, flight.prepared.frozen_bytes))
    }

    /// Client `client`'s reply: the layers it trained and its record (JSON, as the node's
    /// `Client.train` returns it). Checked against what it was sent.
    fn receive(&mut self, client: usize, layers: Vec<WireTensor<'_>>, record_json: &str) -> PyResult<()> {
        let flight = self.in_flight.remove(&client).ok_or_else(|| py_err(format!("client {client}: no round in flight for it (round {})", self.round)))?;
        let record: ClientRecord = serde_json::from_str(record_json).map_err(|e| py_err(format!("client {client}: record: {e}")))?;
        let layers = from_wire(&layers, &format!("client {client} upload"))?;
        // (layer, [(name, shape)]) of what arrived and of what the plan trains.
        let got: Vec<_> = layers.iter().map(|(i, t)| (*i, t.iter().map(|t| (t.name.clone(), t.shape.clone())).collect::<Vec<_>>())).collect();
        let want: Vec<_> = flight.prepared.local.trained_layers().into_iter().map(|(i, t)| (i, t.into_iter().map(|t| (t.name, t.shape)).collect::<Vec<_>>())).collect();
        if got != want {
            return Err(py_err(format!(
                "client {client}: the upload's layers and shapes differ from what its plan trains (expected layers {:?}, got {:?})",
                want.iter().map(|(i, _)| i).collect::<Vec<_>>(),
                got.iter().map(|(i, _)| i).collect::<Vec<_>>()
            )));
        }
        if record.samples == 0 || record.client != client || record.round != self.round {
            return Err(py_err(format!("client {client}: record says client {} round {} with {} samples", record.client, record.round, record.samples)));
        }
        let device = Default::default();
        let trained = payload_to_device(&layers, &device);
        let clients = self.fed.round_context(self.round, None);
        let upload = clients.upload(&flight.plan, trained, record.samples as f64, &flight.prepared.start, &device).map_err(py_err)?;
        let round_end = self.round_end.as_mut().ok_or_else(|| py_err(format!("client {client}: round {} has ended", self.round)))?;
        round_end.accept(flight.plan, upload, record, flight.prepared.frozen_bytes).map_err(py_err)
    }

    /// Clients sampled this round that have not replied.
    fn missing(&self) -> Vec<usize> {
        self.in_flight.keys().copied().collect()
    }

    /// End the round: merge what arrived (in client order, as the simulator does), evaluate,
    /// append the round to the results files. `wall_s`: the round's wall time as the caller
    /// saw it. Returns the round's record as JSON (the `rounds.csv` fields and per-client rows).
    fn finish_round(&mut self, py: Python<'_>, wall_s: f64) -> PyResult<String> {
        let mut round_end = self.round_end.take().ok_or_else(|| py_err(format!("round {}: no round in progress", self.round)))?;
        // Clients that never replied sit in the round's count of skipped clients.
        round_end.missing(self.in_flight.len());
        self.in_flight.clear();
        // The merge and the evaluation run without the GIL: the process's other Python threads
        // (the SuperLink's heartbeats among them) go on meanwhile.
        let fed = &mut self.fed;
        let record = py.detach(move || round_end.finish(fed, wall_s)).map_err(py_err)?;
        let json = serde_json::to_string(&record).map_err(py_err)?;
        self.writer.push(record).map_err(py_err)?;
        // The checkpoint `fedolf run` writes, on the same rounds: a federation whose server
        // stops resumes from here.
        if self.fed.cfg.checkpoint_due(self.round) {
            self.writer.checkpoint(&self.fed.checkpoint(self.round, self.writer.records().to_vec())).map_err(py_err)?;
        }
        Ok(json)
    }

    /// `(accuracy, test loss)` of the global model now.
    fn evaluate(&mut self, py: Python<'_>) -> (f64, f64) {
        let (fed, round) = (&mut self.fed, self.round.max(1));
        let evaluation = py.detach(move || fed.evaluate_now(round));
        (evaluation.accuracy, evaluation.test_loss)
    }

    /// Write `summary.json` (as `fedolf run` does) and return it as JSON.
    #[pyo3(signature = (wall_s, error=None))]
    fn write_summary(&self, wall_s: f64, error: Option<String>) -> PyResult<String> {
        let summary = Summary::new(&self.fed.cfg, &self.dataset.source, self.writer.records(), wall_s, error);
        self.writer.summary(&summary).map_err(py_err)?;
        serde_json::to_string(&summary).map_err(py_err)
    }
}

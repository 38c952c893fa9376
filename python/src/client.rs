//! A node's side, for a Flower `ClientApp`: its own samples (the simulator's partition of the
//! run's dataset, or a data folder of its own), the device it trains on, and one call per
//! round that rebuilds the model it was sent, trains it with the simulator's local training
//! on that device, and returns the trained layers. With memory budgets it also measures the
//! peak predictor's calibration on its own device, for the server to plan it from.

use burn::tensor::backend::AutodiffBackend;
use fedolf::accounting::budget::Calibration;
use fedolf::config::{Config, PartitionKind};
use fedolf::engine::data::load_dataset;
use fedolf::engine::error::SimError;
use fedolf::engine::federation::{partition_clients, Federation};
use fedolf::engine::round_context::{payload_to_host, ClientSetup};
use fedolf::records::ClientRecord;
use fedolf::runtime::backend::{with_backend, BackendTask, DeviceKind};
use fedolf::strategy::ClientPlan;
use fedolf::tensor::host::{HostLayer, HostSplit};
use fedolf_datasets::{Dataset, DatasetKind, ImageSet};
use pyo3::prelude::*;

use crate::wire::{from_wire, to_wire, WireTensor};
use crate::{py_err, ALLOC};

#[pyclass(unsendable)]
pub struct Client {
    cfg: Config,
    /// What every client round of the run shares: built as the server builds it, with this
    /// node's device.
    setup: ClientSetup,
    /// This node's samples, in the order the simulator gives them to this client.
    samples: ImageSet,
    classes: usize,
    /// The normalised samples, for the statistics they were made with.
    normalised: Option<(Vec<(f32, f32)>, HostSplit)>,
    /// Whether this process has trained once: the first round's one-time allocations
    /// (thread pools, kernel scratch) are no round's cost, as the simulator's warm-up keeps
    /// them out of its clients' peaks.
    warmed_up: bool,
}

#[pymethods]
impl Client {
    /// `partition_id` of `num_partitions`: this node is that client of the run's partition
    /// (the config's `federation.clients` must be `num_partitions`). With `data_dir`, the
    /// node's whole training split in that folder is its data instead. `device`: where its
    /// rounds train (`cpu`, `wgpu`, `cuda`: one compiled into these bindings; `None` = cpu).
    #[new]
    #[pyo3(signature = (config_toml, partition_id, num_partitions, data_dir=None, device=None))]
    fn new(config_toml: &str, partition_id: usize, num_partitions: usize, data_dir: Option<&str>, device: Option<&str>) -> PyResult<Self> {
        let device = node_device(device)?;
        fedolf::runtime::backend::probe(device).map_err(|e| py_err(format!("node {partition_id}: node config `device`: {e}")))?;
        let mut cfg = Config::from_toml(config_toml, "run config", &[]).map_err(py_err)?;
        if cfg.federation.clients != num_partitions {
            return Err(py_err(format!(
                "node config: num-partitions = {num_partitions}, but the run has federation.clients = {}; every node of the run must be one of its clients",
                cfg.federation.clients
            )));
        }
        if partition_id >= num_partitions {
            return Err(py_err(format!("node config: partition-id = {partition_id} is outside 0..{num_partitions}")));
        }
        let samples = match data_dir {
            Some(dir) => {
                cfg.data.data_dir = dir.to_string();
                cfg.data.train_limit = 0;
                load_dataset(&cfg).map_err(py_err)?.train
            }
            None => {
                let dataset = load_dataset(&cfg).map_err(py_err)?;
                let (parts, _) = partition_clients(&cfg, &dataset).map_err(py_err)?;
                subset(&dataset.train, &parts[partition_id])
            }
        };
        cfg.device = device;
        let classes = DatasetKind::parse(&cfg.data.dataset).map_err(py_err)?.num_classes();
        // The setup only reads shapes from the model it builds: the CPU builds it for any device.
        let (setup, _) = ClientSetup::new::<fedolf::runtime::backend::CpuBackend>(&cfg, samples.shape, classes, &Default::default()).map_err(py_err)?;
        Ok(Self { cfg, setup, samples, classes, normalised: None, warmed_up: false })
    }

    #[getter]
    fn num_samples(&self) -> usize {
        self.samples.len()
    }

    /// The device this node trains on.
    #[getter]
    fn device(&self) -> &'static str {
        self.setup.device.name()
    }

    /// One local round: rebuild the model from `payload` (what the server's `download` sent)
    /// by `plan_json`, train it on this node's samples normalised with `stats`, on this
    /// node's device, and return `(trained layers, record JSON)`. The record carries loss,
    /// samples, seconds, peak memory (`peak_mem_mb`: the counting allocator on the CPU, the
    /// device's memory statistics on a GPU) and `device`.
    fn train<'py>(
        &mut self,
        py: Python<'py>,
        round: usize,
        plan_json: &str,
        payload: Vec<WireTensor<'py>>,
        stats: Vec<(f32, f32)>,
        bytes_down: u64,
    ) -> PyResult<(Vec<WireTensor<'py>>, String)> {
        let plan: ClientPlan = serde_json::from_str(plan_json).map_err(|e| py_err(format!("plan: {e}")))?;
        if stats.len() != self.samples.shape[0] {
            return Err(py_err(format!("stats: {} channels given, the images have {}", stats.len(), self.samples.shape[0])));
        }
        if self.normalised.as_ref().is_none_or(|(s, _)| *s != stats) {
            self.normalised = Some((stats.clone(), HostSplit::new(&self.samples, &stats)));
        }
        let (_, train) = self.normalised.as_ref().expect("set just above");
        let payload = from_wire(&payload, "payload")?;
        let warm_up = !std::mem::replace(&mut self.warmed_up, true) && memory_on(self.setup.device).is_some();
        let task = TrainRound { setup: &self.setup, round, plan: &plan, payload: &payload, train, bytes_down, warm_up };
        // Without the GIL: Flower's ClientApp process answers its SuperNode's heartbeats from
        // a Python thread, and a round longer than its patience would read as a dead app.
        let device = self.setup.device;
        let (layers, record) = py.detach(|| with_backend(device, task).map_err(|e| e.to_string())?.map_err(|e| e.to_string())).map_err(py_err)?;
        let record = serde_json::to_string(&record).map_err(py_err)?;
        Ok((to_wire(py, &layers), record))
    }

    /// Memory budgets: the peak predictor's calibration measured here, on this node's device
    /// and samples (the probe `fedolf run` makes before round 1: two SGD steps at the run's
    /// batch at every capacity level), as JSON for the server's `declare_memory`.
    fn calibrate(&self, py: Python<'_>) -> PyResult<String> {
        let task = Calibrate { cfg: &self.cfg, samples: &self.samples, classes: self.classes };
        let device = self.setup.device;
        let calibration = py.detach(|| with_backend(device, task).map_err(|e| e.to_string())?.map_err(|e| e.to_string())).map_err(py_err)?;
        serde_json::to_string(&calibration).map_err(py_err)
    }
}

/// The device a node's config names (`None`: the CPU), if these bindings have it.
fn node_device(name: Option<&str>) -> PyResult<DeviceKind> {
    let kind = DeviceKind::parse(name.unwrap_or("cpu")).map_err(|e| py_err(format!("node config: device: {e}")))?;
    let compiled = DeviceKind::compiled();
    if !compiled.contains(&kind) {
        let names: Vec<&str> = compiled.iter().map(|d| d.name()).collect();
        return Err(py_err(format!(
            "node config: device = '{}', but these bindings were built with {} only (rebuild them with FEDOLF_WHEEL_FEATURES={} flower/install.sh)",
            kind.name(),
            names.join(", "),
            kind.name()
        )));
    }
    Ok(kind)
}

/// The counting allocator where it measures (the CPU); a GPU reports its own statistics.
fn memory_on(device: DeviceKind) -> Option<&'static fedolf::runtime::memory::CountingAllocator> {
    (device == DeviceKind::Cpu).then_some(&ALLOC)
}

/// One client round on the node's backend.
struct TrainRound<'a> {
    setup: &'a ClientSetup,
    round: usize,
    plan: &'a ClientPlan,
    payload: &'a [(usize, HostLayer)],
    train: &'a HostSplit,
    bytes_down: u64,
    /// Train once, unmeasured, on the first two batches before the measured round.
    warm_up: bool,
}

impl BackendTask for TrainRound<'_> {
    type Output = Result<(Vec<(usize, HostLayer)>, ClientRecord), SimError>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        if self.warm_up {
            let unmeasured = self.setup.round(self.round, self.train, None);
            let local = unmeasured.rebuild::<B>(self.plan, self.payload, &device)?;
            let first: Vec<usize> = (0..self.train.len().min(2 * self.setup.training.batch_size)).collect();
            unmeasured.train(self.plan, local, self.bytes_down, &first, &device)?;
        }
        let clients = self.setup.round(self.round, self.train, memory_on(self.setup.device));
        let local = clients.rebuild::<B>(self.plan, self.payload, &device)?;
        let indices: Vec<usize> = (0..self.train.len()).collect();
        let trained = clients.train(self.plan, local, self.bytes_down, &indices, &device)?;
        Ok((payload_to_host(trained.layers), trained.record))
    }
}

/// The memory probe on the node's backend: the server's calibration step, run on a
/// federation of this node alone (the probe reads only the model, the plans and the first
/// two batches of samples).
struct Calibrate<'a> {
    cfg: &'a Config,
    samples: &'a ImageSet,
    classes: usize,
}

impl BackendTask for Calibrate<'_> {
    type Output = Result<Calibration, SimError>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let mut cfg = self.cfg.clone();
        cfg.federation.clients = 1;
        cfg.federation.clients_per_round = 1;
        cfg.data.partition = PartitionKind::Iid;
        let probe_samples: Vec<usize> = (0..self.samples.len().min(2 * cfg.train.batch_size)).collect();
        let dataset = Dataset {
            name: cfg.data.dataset.clone(),
            num_classes: self.classes,
            train: self.samples.clone(),
            test: subset(self.samples, &probe_samples),
            source: "this node's samples".into(),
        };
        let mut fed = Federation::<B>::new(&cfg, &dataset, &device)?;
        fed.calibrate(memory_on(cfg.device), &mut |_| {})?;
        fed.calibration().ok_or_else(|| SimError::Config { field: "federation.capacity", problem: "the node calibrates for memory budgets only: the run's capacity is not \"memory\"".into() })
    }
}

/// The samples `indices` of `set`, in that order.
fn subset(set: &ImageSet, indices: &[usize]) -> ImageSet {
    let size = set.image_len();
    ImageSet {
        shape: set.shape,
        pixels: indices.iter().flat_map(|&i| &set.pixels[i * size..(i + 1) * size]).copied().collect(),
        labels: indices.iter().map(|&i| set.labels[i]).collect(),
    }
}

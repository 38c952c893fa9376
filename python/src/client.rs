//! A node's side, for a Flower `ClientApp`: its own samples (the simulator's partition of the
//! run's dataset, or a data folder of its own) and one call per round that rebuilds the model
//! it was sent, trains it with the simulator's local training, and returns the trained layers.

use fedolf::engine::round_context::{payload_to_host, ClientSetup};
use fedolf::config::Config;
use fedolf::engine::federation::partition_clients;
use fedolf::tensor::host::HostSplit;
use fedolf::engine::data::load_dataset;
use fedolf::strategy::ClientPlan;
use fedolf_datasets::ImageSet;
use pyo3::prelude::*;

use crate::wire::{from_wire, to_wire, WireTensor};
use crate::{py_err, Train, ALLOC};

#[pyclass(unsendable)]
pub struct Client {
    /// What every client round of the run shares: built as the server builds it.
    setup: ClientSetup,
    /// This node's samples, in the order the simulator gives them to this client.
    samples: ImageSet,
    /// The normalised samples, for the statistics they were made with.
    normalised: Option<(Vec<(f32, f32)>, HostSplit)>,
}

#[pymethods]
impl Client {
    /// `partition_id` of `num_partitions`: this node is that client of the run's partition
    /// (the config's `federation.clients` must be `num_partitions`). With `data_dir`, the
    /// node's whole training split in that folder is its data instead.
    #[new]
    #[pyo3(signature = (config_toml, partition_id, num_partitions, data_dir=None))]
    fn new(config_toml: &str, partition_id: usize, num_partitions: usize, data_dir: Option<&str>) -> PyResult<Self> {
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
        let classes = fedolf_datasets::DatasetKind::parse(&cfg.data.dataset).map_err(py_err)?.num_classes();
        let (setup, _) = ClientSetup::new::<Train>(&cfg, samples.shape, classes, &Default::default()).map_err(py_err)?;
        Ok(Self { setup, samples, normalised: None })
    }

    #[getter]
    fn num_samples(&self) -> usize {
        self.samples.len()
    }

    /// One local round: rebuild the model from `payload` (what the server's `download` sent)
    /// by `plan_json`, train it on this node's samples normalised with `stats`, and return
    /// `(trained layers, record JSON)`. The record carries loss, samples, seconds and peak
    /// memory (`peak_mem_mb`, measured by the counting allocator).
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
        let clients = self.setup.round(round, train, Some(&ALLOC));
        let device = Default::default();
        let local = clients.rebuild::<Train>(&plan, &payload, &device).map_err(py_err)?;
        let indices: Vec<usize> = (0..self.samples.len()).collect();
        let trained = clients.train(&plan, local, bytes_down, &indices, &device).map_err(py_err)?;
        let record = serde_json::to_string(&trained.record).map_err(py_err)?;
        Ok((to_wire(py, &payload_to_host(trained.layers)), record))
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

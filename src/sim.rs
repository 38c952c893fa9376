//! The simulation round loop (DESIGN.md, "FedOLF round"), readable top to bottom:
//! sample clients → plan each → split + TOA → local training → upload active layers →
//! layer-wise aggregation → evaluate every `eval_every` rounds.

use std::path::Path;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fedolf_datasets::partition::{self, DirichletSettings};
use fedolf_datasets::{DataError, Dataset, DatasetKind, ImageSet};
use fedolf_models::{LayeredNet, ModelError, ModelKind};
use rand::seq::index::sample;
use thiserror::Error;

use crate::aggregate::{aggregate_layerwise, AggregateError, LayerUpload};
use crate::config::{Config, PartitionKind};
use crate::energy::Energy;
use crate::freeze::{train_local, ClientData, FreezeError, LocalTraining, SgdSettings, SplitModel};
use crate::memory::CountingAllocator;
use crate::params::{read_layer, read_model, write_model, ParamError};
use crate::plan::{plan_client, ClientPlan};
use crate::rng::{stream, Purpose};
use crate::toa::{sparsify_prefix, ToaError, ToaSettings};

pub const BYTES_PER_PARAM: u64 = 4;

#[derive(Debug, Error)]
pub enum SimError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("round {round}, client {client}: {source}")]
    Client { round: usize, client: usize, source: FreezeError },
    #[error(transparent)]
    Freeze(#[from] FreezeError),
    #[error(transparent)]
    Toa(#[from] ToaError),
    #[error(transparent)]
    Aggregate(#[from] AggregateError),
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error("config field `{field}`: {problem}")]
    Config { field: &'static str, problem: String },
    #[error("round {round}: the global model's test loss is {loss} (diverged; lower train.lr)")]
    Diverged { round: usize, loss: f64 },
}

/// One round's measurements (one row of `rounds.csv`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RoundRecord {
    pub round: usize,
    /// Test accuracy as a fraction, on evaluation rounds.
    pub accuracy: Option<f64>,
    pub test_loss: Option<f64>,
    /// Mean local training loss over the round's clients.
    pub train_loss: f64,
    pub clients: usize,
    pub bytes_down: u64,
    pub bytes_up: u64,
    /// Of `bytes_down`, the frozen layers' share (after TOA).
    pub frozen_bytes_down: u64,
    /// Sum of the clients' local training seconds.
    pub compute_s: f64,
    pub wall_s: f64,
    /// Mean over clients of the peak extra heap during local training (CPU only).
    pub peak_mem_mb: Option<f64>,
    pub energy_compute_j: f64,
    pub energy_comm_j: f64,
}

/// What a run is about to do, for the log header.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub dataset_source: String,
    pub train_size: usize,
    pub test_size: usize,
    pub num_layers: usize,
    pub model_params: usize,
    pub cluster_frozen: Vec<usize>,
}

/// Receives progress as the run goes (progress bars, incremental result files).
pub trait RoundObserver {
    fn on_start(&mut self, _info: &RunInfo) {}
    fn on_round(&mut self, _record: &RoundRecord) -> std::io::Result<()> {
        Ok(())
    }
}

/// A split's tensors on the device, normalised per channel with the training statistics.
struct DeviceSplit<B: Backend> {
    images: Tensor<B, 4>,
    labels: Tensor<B, 1, Int>,
}

impl<B: Backend> DeviceSplit<B> {
    fn new(set: &ImageSet, stats: &[(f32, f32)], device: &B::Device) -> Self {
        let [c, h, w] = set.shape;
        let hw = h * w;
        let pixels: Vec<f32> = set
            .pixels
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let (mean, std) = stats[(i / hw) % c];
                (p as f32 / 255.0 - mean) / std
            })
            .collect();
        let labels: Vec<i64> = set.labels.iter().map(|&l| l as i64).collect();
        Self {
            // [n·c·h·w] -> [n, c, h, w]
            images: Tensor::from_data(TensorData::new(pixels, [set.len(), c, h, w]), device),
            labels: Tensor::from_data(TensorData::new(labels, [set.len()]), device),
        }
    }

    fn len(&self) -> usize {
        self.labels.dims()[0]
    }
}

/// Read the dataset the config names, applying its size limits.
pub fn load_dataset(cfg: &Config) -> Result<Dataset, SimError> {
    let kind = DatasetKind::parse(&cfg.data.dataset)?;
    let dir = (!cfg.data.data_dir.is_empty()).then(|| Path::new(&cfg.data.data_dir));
    let mut ds = fedolf_datasets::load(kind, dir)?;
    if cfg.data.train_limit > 0 {
        ds.train.truncate(cfg.data.train_limit);
    }
    if cfg.data.test_limit > 0 {
        ds.test.truncate(cfg.data.test_limit);
    }
    Ok(ds)
}

/// Run the experiment `cfg` on backend `B`.
pub fn run<B: AutodiffBackend>(
    cfg: &Config,
    dataset: &Dataset,
    device: &B::Device,
    memory: Option<&CountingAllocator>,
    observer: &mut dyn RoundObserver,
) -> Result<Vec<RoundRecord>, SimError> {
    let fed = &cfg.federation;
    let toa = ToaSettings::new(cfg.toa.s, cfg.toa.mode)?;
    let local = LocalTraining {
        epochs: cfg.train.epochs,
        batch_size: cfg.train.batch_size,
        sgd: SgdSettings { lr: cfg.train.lr, momentum: cfg.train.momentum, weight_decay: cfg.train.weight_decay },
    };

    // Data on the device (inner backend: data needs no graph).
    let stats = dataset.train.channel_stats();
    let train = DeviceSplit::<B::InnerBackend>::new(&dataset.train, &stats, device);
    let test = DeviceSplit::<B::InnerBackend>::new(&dataset.test, &stats, device);

    // Partition and capacity clusters (fixed for the run).
    let parts = match cfg.data.partition {
        PartitionKind::Iid => partition::iid(train.len(), fed.clients, &mut stream(cfg.seed, Purpose::Partition, 0, 0))?,
        PartitionKind::Dirichlet => partition::dirichlet(
            &dataset.train.labels,
            dataset.num_classes,
            fed.clients,
            DirichletSettings { alpha: cfg.data.alpha, min_size: cfg.data.min_size, max_retries: 1000 },
            &mut stream(cfg.seed, Purpose::Partition, 0, 0),
        )?,
    };
    let clusters = partition::capacity_clusters(fed.clients, fed.clusters, &mut stream(cfg.seed, Purpose::Clusters, 0, 0))?;

    // The global model: seeded, and touched in a fixed order so lazy init is reproducible.
    let kind = ModelKind::parse(&cfg.model.name)?;
    B::seed(device, cfg.seed);
    let mut global: LayeredNet<B> = kind.init(dataset.train.shape, dataset.num_classes, device)?;
    let model_params: usize = read_model(&global).iter().flatten().map(|t| t.numel()).sum();
    let num_layers = global.num_layers();
    let cluster_frozen: Vec<usize> = (0..fed.clusters).map(|i| plan_client(cfg.method, 0, i, fed.clusters, toa).frozen).collect();
    if let Some(&max) = cluster_frozen.iter().max() {
        if max >= num_layers {
            return Err(SimError::Config {
                field: "federation.clusters",
                problem: format!(
                    "{} clusters freeze up to {max} layers, but {} has only {num_layers} (use at most {num_layers} clusters)",
                    fed.clusters, kind.name()
                ),
            });
        }
    }
    observer.on_start(&RunInfo {
        dataset_source: dataset.source.clone(),
        train_size: train.len(),
        test_size: test.len(),
        num_layers,
        model_params,
        cluster_frozen,
    });

    let energy = Energy::from(&cfg.energy);
    let mut records = Vec::with_capacity(fed.rounds);
    for round in 1..=fed.rounds {
        let wall = Instant::now();
        // 1. Sample C_t uniformly without replacement.
        let mut picked = sample(&mut stream(cfg.seed, Purpose::ClientSampling, round as u64, 0), fed.clients, fed.clients_per_round).into_vec();
        picked.sort_unstable();
        let plans: Vec<ClientPlan> = picked.iter().map(|&k| plan_client(cfg.method, k, clusters[k], fed.clusters, toa)).collect();

        let mut uploads = Vec::with_capacity(plans.len());
        let (mut down, mut up, mut frozen_down, mut compute_s, mut loss_sum) = (0u64, 0u64, 0u64, 0.0f64, 0.0f64);
        let mut peaks = Vec::new();
        for plan in &plans {
            // 2–3. Split the global model; sparsify the frozen prefix (TOA).
            let mut split = SplitModel::from_global(&global, plan.frozen)?;
            let frozen_elems = match plan.toa {
                Some(settings) => {
                    let mut rng = stream(cfg.seed, Purpose::Toa, round as u64, plan.client as u64);
                    let (sparse, report) = sparsify_prefix(split.frozen, settings, &mut rng)?;
                    split.frozen = sparse;
                    report.frozen_sent_elems
                }
                None => split.frozen.layers.iter().map(crate::params::layer_numel).sum(),
            };
            let active_elems: usize = split.active.layers.iter().map(crate::params::layer_numel).sum();
            // 4. Download = sparsified frozen layers + active layers in full.
            frozen_down += frozen_elems as u64 * BYTES_PER_PARAM;
            down += (frozen_elems + active_elems) as u64 * BYTES_PER_PARAM;

            // 5. Local training.
            let indices = &parts[plan.client];
            let data = ClientData { images: &train.images, labels: &train.labels, indices };
            let mut rng = stream(cfg.seed, Purpose::LocalShuffle, round as u64, plan.client as u64);
            let started = Instant::now();
            let result = match memory {
                Some(alloc) => {
                    let (r, peak) = alloc.measure(|| train_local(split, &data, &local, &mut rng));
                    peaks.push(peak as f64 / 1e6);
                    r
                }
                None => train_local(split, &data, &local, &mut rng),
            };
            let (trained, outcome) = result.map_err(|source| SimError::Client { round, client: plan.client, source })?;
            compute_s += started.elapsed().as_secs_f64();
            loss_sum += outcome.mean_loss;

            // 6. Upload = active layers only.
            let layers: Vec<_> = trained
                .active
                .layers
                .iter()
                .enumerate()
                .map(|(i, layer)| (plan.frozen + i, read_layer(&layer.valid())))
                .collect();
            up += layers.iter().flat_map(|(_, p)| p).map(|t| t.numel() as u64).sum::<u64>() * BYTES_PER_PARAM;
            uploads.push(LayerUpload { weight: indices.len() as f64, layers });
        }

        // 7. Layer-wise aggregation (layers nobody trained keep their value).
        let global_params = read_model(&global.valid());
        let merged = aggregate_layerwise(&global_params, &uploads)?;
        let merged: Vec<_> = merged
            .into_iter()
            .map(|layer| layer.map(|tensors| tensors.into_iter().map(|t| lift::<B>(t)).collect()))
            .collect();
        global = write_model(global, &merged)?;

        // 8. Evaluate.
        let (accuracy, test_loss) = if round % fed.eval_every == 0 || round == fed.rounds {
            let (acc, loss) = evaluate(&global.valid(), &test, 500);
            if !loss.is_finite() {
                return Err(SimError::Diverged { round, loss });
            }
            (Some(acc), Some(loss))
        } else {
            (None, None)
        };
        let record = RoundRecord {
            round,
            accuracy,
            test_loss,
            train_loss: loss_sum / plans.len() as f64,
            clients: plans.len(),
            bytes_down: down,
            bytes_up: up,
            frozen_bytes_down: frozen_down,
            compute_s,
            wall_s: wall.elapsed().as_secs_f64(),
            peak_mem_mb: (!peaks.is_empty()).then(|| peaks.iter().sum::<f64>() / peaks.len() as f64),
            energy_compute_j: energy.compute_joules(compute_s),
            energy_comm_j: energy.comm_joules(down + up),
        };
        observer.on_round(&record).map_err(|e| DataError::Io { path: "results".into(), source: e })?;
        records.push(record);
    }
    Ok(records)
}

/// Move an aggregated tensor (computed on the inner backend) back to the training backend.
fn lift<B: AutodiffBackend>(t: crate::params::NamedTensor<B::InnerBackend>) -> crate::params::NamedTensor<B> {
    crate::params::NamedTensor { name: t.name, shape: t.shape, value: Tensor::from_inner(t.value) }
}

/// Top-1 accuracy (fraction) and mean cross-entropy of `net` on a split, in batches.
fn evaluate<B: Backend>(net: &LayeredNet<B>, split: &DeviceSplit<B>, batch: usize) -> (f64, f64) {
    let n = split.len();
    let device = split.images.device();
    let loss_fn = burn::nn::loss::CrossEntropyLossConfig::new().init::<B>(&device);
    let mut correct: Option<Tensor<B, 1, Int>> = None;
    let mut loss_sum: Option<Tensor<B, 1>> = None;
    for start in (0..n).step_by(batch) {
        let len = batch.min(n - start);
        // [n, c, h, w] -> [len, c, h, w]
        let x = split.images.clone().narrow(0, start, len);
        let y = split.labels.clone().narrow(0, start, len);
        let logits = net.forward(x);
        let hits = logits.clone().argmax(1).reshape([len]).equal(y.clone()).int().sum();
        let loss = loss_fn.forward(logits, y) * len as f32;
        correct = Some(match correct { Some(c) => c + hits, None => hits });
        loss_sum = Some(match loss_sum { Some(s) => s + loss, None => loss });
    }
    let correct = correct.map_or(0, |c| c.into_scalar().elem::<i64>());
    let loss = loss_sum.map_or(0.0, |s| s.into_scalar().elem::<f64>());
    (correct as f64 / n.max(1) as f64, loss / n.max(1) as f64)
}

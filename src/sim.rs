//! The simulation round loop (DESIGN.md, "FedOLF round"), readable top to bottom:
//! sample clients → plan each → split + TOA → local training → upload active layers →
//! the strategy's merge → evaluate every `eval_every` rounds. Everything a method does
//! differently is a [`Strategy`] hook; this loop names no method.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fedolf_datasets::partition::{self, DirichletSettings};
use fedolf_datasets::{DataError, Dataset, DatasetKind};
use fedolf_models::{LayeredNet, ModelError, ModelKind};
use rand::seq::index::sample;
use thiserror::Error;

use crate::aggregate::AggregateError;
use crate::backend::DeviceKind;
use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::client_round::ClientRound;
use crate::config::{Config, NonFinite, PartitionKind};
use crate::energy::Energy;
use crate::freeze::{FreezeError, LocalTraining, SgdSettings};
use crate::host::{model_to_device, model_to_host, HostSplit};
use crate::memory::CountingAllocator;
use crate::params::{read_model, write_model, ParamError};
use crate::qsgd::{QsgdError, QsgdSettings};
use crate::report::mean;
use crate::rng::{stream, Purpose};
use crate::strategy::{strategy_for, ClientPlan, Download, EvalView, PlanContext, StrategyInputs};
use crate::submodel::extract;
use crate::toa::{ToaError, ToaSettings};
use crate::workers::{WorkerError, WorkerLayout, Workers};

pub const BYTES_PER_PARAM: u64 = 4;

#[derive(Debug, Error)]
pub enum SimError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] ModelError),
    // `error`, not `source`: the message already carries it, and a source would print twice.
    #[error("round {round}, client {client}: {error}")]
    Client { round: usize, client: usize, error: FreezeError },
    #[error(transparent)]
    Freeze(#[from] FreezeError),
    #[error(transparent)]
    Toa(#[from] ToaError),
    #[error(transparent)]
    Aggregate(#[from] AggregateError),
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error(transparent)]
    Qsgd(#[from] QsgdError),
    #[error("round {round}, client {client}: {error}")]
    OrderedDropout { round: usize, client: usize, error: crate::ordered_dropout::OrderedDropoutError },
    #[error("config field `{field}`: {problem}")]
    Config { field: &'static str, problem: String },
    #[error(transparent)]
    Workers(#[from] WorkerError),
    #[error("round {round}: the global model's test loss is {loss} (diverged; lower train.lr)")]
    Diverged { round: usize, loss: f64 },
    #[error("round {round}, client {client}: the upload's tensor `{tensor}` holds NaN or infinite values (diverged; lower train.lr, or set train.nonfinite = \"skip\")")]
    NonFinite { round: usize, client: usize, tensor: String },
    #[error("interrupted; the checkpoint holds the {round} rounds completed")]
    Interrupted { round: usize },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("resume: {0}")]
    Resume(String),
}

/// Where a run starts and what can stop it.
#[derive(Default)]
pub struct RunStart<'a> {
    /// Continue after the checkpoint in this run folder (same config and seed).
    pub resume: Option<&'a Path>,
    /// Set (by a signal handler) to stop: clients not yet started are abandoned, the last
    /// completed round is checkpointed, and the run returns [`SimError::Interrupted`].
    pub stop: Option<&'a AtomicBool>,
}

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

/// What a run is about to do, for the log header.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub dataset_source: String,
    pub train_size: usize,
    pub test_size: usize,
    pub num_layers: usize,
    pub model_params: usize,
    /// Layers each cluster freezes (weakest first); `None` = it changes per round (SLT stages).
    pub cluster_frozen: Option<Vec<usize>>,
    /// Clients trained at once, and kernel threads each.
    pub workers: WorkerLayout,
}

/// Receives progress as the run goes (progress bars, incremental result files).
pub trait RoundObserver {
    fn on_start(&mut self, _info: &RunInfo) {}
    fn on_round(&mut self, _record: &RoundRecord) -> std::io::Result<()> {
        Ok(())
    }
    /// A resumed run's records so far (before its first new round).
    fn on_resume(&mut self, _records: &[RoundRecord]) -> std::io::Result<()> {
        Ok(())
    }
    /// A checkpoint to store (every `checkpoint_every` rounds, at the end, on interruption).
    fn on_checkpoint(&mut self, _checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        Ok(())
    }
}

/// A split's tensors on the device, normalised per channel with the training statistics.
struct DeviceSplit<B: Backend> {
    images: Tensor<B, 4>,
    labels: Tensor<B, 1, Int>,
}

impl<B: Backend> DeviceSplit<B> {
    fn new(split: &HostSplit, device: &B::Device) -> Self {
        let (images, labels) = split.to_device(device);
        Self { images, labels }
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

/// Run the experiment `cfg` on backend `B` from round 1.
pub fn run<B: AutodiffBackend>(
    cfg: &Config,
    dataset: &Dataset,
    device: &B::Device,
    memory: Option<&CountingAllocator>,
    observer: &mut dyn RoundObserver,
) -> Result<Vec<RoundRecord>, SimError> {
    run_from::<B>(cfg, dataset, device, memory, observer, RunStart::default())
}

/// Run the experiment `cfg` on backend `B` from `start` (a checkpoint, or round 1).
pub fn run_from<B: AutodiffBackend>(
    cfg: &Config,
    dataset: &Dataset,
    device: &B::Device,
    memory: Option<&CountingAllocator>,
    observer: &mut dyn RoundObserver,
    start: RunStart<'_>,
) -> Result<Vec<RoundRecord>, SimError> {
    let fed = &cfg.federation;
    let download = if cfg.qsgd.bits > 0 {
        Download::Qsgd(QsgdSettings::new(cfg.qsgd.bits, cfg.qsgd.bucket)?)
    } else {
        Download::Toa(ToaSettings::new(cfg.toa.s, cfg.toa.mode)?)
    };
    let training = LocalTraining {
        epochs: cfg.train.epochs,
        batch_size: cfg.train.batch_size,
        sgd: SgdSettings { lr: cfg.train.lr, momentum: cfg.train.momentum, weight_decay: cfg.train.weight_decay },
        cache_frozen: cfg.train.cache_frozen,
    };

    // Data normalised on the host (each client puts its own samples on its device); the
    // server's copies on the device (inner backend: data needs no graph).
    let stats = dataset.train.channel_stats();
    let host_train = HostSplit::new(&dataset.train, &stats);
    let train = DeviceSplit::<B::InnerBackend>::new(&host_train, device);
    let test = DeviceSplit::<B::InnerBackend>::new(&HostSplit::new(&dataset.test, &stats), device);
    let worker_layout = WorkerLayout::new(fed.workers, cfg.device != DeviceKind::Cpu);
    let workers = Workers::new(worker_layout)?;

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
    // Exit heads (multi-exit methods only) come after the layers.
    let kind = ModelKind::parse(&cfg.model.name)?;
    B::seed(device, cfg.seed);
    let options = cfg.model.options();
    let plain: LayeredNet<B> = kind.init_with(dataset.train.shape, dataset.num_classes, &options, device)?;
    let model_params: usize = read_model(&plain).iter().flatten().map(|t| t.numel()).sum();
    let num_layers = plain.num_layers();
    let layout = plain.channel_spaces();
    let probe = strategy_for::<B>(cfg.method, &StrategyInputs::new(download));
    let exit_depths = probe.exit_depths(num_layers, fed.clusters);
    let mut global = plain.with_exits(&exit_depths, device)?;
    if probe.uses_levels() && fed.clusters > num_layers {
        return Err(SimError::Config {
            field: "federation.clusters",
            problem: format!(
                "{} clusters freeze or drop up to {} layers, but {} has only {num_layers} (use at most {num_layers} clusters)",
                fed.clusters,
                fed.clusters - 1,
                kind.name()
            ),
        });
    }
    let mut strategy = strategy_for::<B>(cfg.method, &StrategyInputs::for_run(cfg, download, &global.valid(), &layout, device));
    let eligible: Vec<usize> = (0..fed.clients).filter(|&k| strategy.eligible(clusters[k], fed.clusters)).collect();
    let per_round = fed.clients_per_round.min(eligible.len());
    observer.on_start(&RunInfo {
        dataset_source: dataset.source.clone(),
        train_size: train.len(),
        test_size: test.len(),
        num_layers,
        model_params,
        cluster_frozen: strategy.frozen_per_cluster(fed.clusters),
        workers: worker_layout,
    });

    // Resume: the checkpoint's model, strategy state and records replace the fresh ones (the
    // strategy's inputs above depend only on shapes, not on the weights).
    let mut records = Vec::with_capacity(fed.rounds);
    let mut first_round = 1;
    if let Some(run_dir) = start.resume {
        let template = model_to_host(read_model(&global.valid()));
        let ckpt = Checkpoint::read(run_dir, &template, num_layers)?;
        if ckpt.round > fed.rounds {
            return Err(SimError::Resume(format!("the checkpoint holds {} rounds, the run has {}", ckpt.round, fed.rounds)));
        }
        global = write_model(global, &model_to_device(&ckpt.model, device))?;
        strategy.restore_state(ckpt.strategy_state).map_err(SimError::Resume)?;
        first_round = ckpt.round + 1;
        records = ckpt.records;
        observer.on_resume(&records).map_err(|e| DataError::Io { path: "results".into(), source: e })?;
    }
    let stopped = || start.stop.is_some_and(|s| s.load(Ordering::SeqCst));
    let skip_nonfinite = cfg.train.nonfinite == NonFinite::Skip;
    let energy = Energy::from(&cfg.energy);
    for round in first_round..=fed.rounds {
        let wall = Instant::now();
        // 1. Sample C_t uniformly without replacement (among eligible clients).
        let mut picked: Vec<usize> = sample(&mut stream(cfg.seed, Purpose::ClientSampling, round as u64, 0), eligible.len(), per_round)
            .into_iter()
            .map(|i| eligible[i])
            .collect();
        picked.sort_unstable();
        let ctx = PlanContext { num_layers, clusters: fed.clusters, round, rounds: fed.rounds, layout: &layout };
        let plans: Vec<ClientPlan> = picked
            .iter()
            .map(|&k| strategy.plan(&ctx, k, clusters[k], &mut stream(cfg.seed, Purpose::Plan, round as u64, k as u64)))
            .collect::<Result<_, _>>()?;

        // 2–6. Each sampled client trains on a worker from a host copy of the global model;
        // results come back in client order, so the run is the same for any worker count.
        let global_params = read_model(&global.valid());
        let host_global = model_to_host(global_params.clone());
        // What each client downloads: the global model, unless its method gives it its own.
        let starts: Vec<Option<Vec<_>>> = plans.iter().map(|p| strategy.client_start(p, &host_global)).collect();
        let clients = ClientRound {
            round,
            seed: cfg.seed,
            model: kind,
            exit_depths: &exit_depths,
            input: dataset.train.shape,
            classes: dataset.num_classes,
            options: &options,
            layout: &layout,
            train: &host_train,
            training: &training,
            memory,
        };
        let mut largest_first: Vec<usize> = (0..plans.len()).collect();
        largest_first.sort_by_key(|&i| std::cmp::Reverse(parts[plans[i].client].len()));
        let results = workers.run_scheduled(&largest_first, |i| {
            if stopped() {
                return Err(SimError::Interrupted { round: round - 1 });
            }
            clients.run::<B>(&plans[i], starts[i].as_deref().unwrap_or(&host_global), &parts[plans[i].client], device)
        });
        let mut uploads = Vec::with_capacity(plans.len());
        let mut per_client = Vec::with_capacity(plans.len());
        let mut merged_plans = Vec::with_capacity(plans.len());
        let mut skipped = 0;
        for (result, plan) in results.into_iter().zip(&plans) {
            let result = match result {
                Err(SimError::Interrupted { .. }) => continue,
                Err(SimError::Client { error: FreezeError::Diverged { .. }, .. }) if skip_nonfinite => {
                    skipped += 1;
                    continue;
                }
                other => other?,
            };
            // A NaN or inf never reaches the global model.
            if let Some(tensor) = result.upload.first_nonfinite() {
                if skip_nonfinite {
                    skipped += 1;
                    continue;
                }
                return Err(SimError::NonFinite { round, client: plan.client, tensor });
            }
            uploads.push(result.upload.to_device::<B::InnerBackend>(device));
            per_client.push((result.record, result.frozen_bytes));
            merged_plans.push(plan.clone());
        }
        if stopped() {
            // The round is abandoned: the global model is still round − 1's.
            let ckpt = Checkpoint { round: round - 1, model: host_global, num_layers, strategy_state: strategy.state(), records };
            observer.on_checkpoint(&ckpt)?;
            return Err(SimError::Interrupted { round: round - 1 });
        }

        // 7. Merge (layers nobody trained keep their value).
        let merged = strategy.merge(&global_params, &uploads, &merged_plans)?;
        let merged: Vec<_> = merged
            .into_iter()
            .map(|layer| layer.map(|tensors| tensors.into_iter().map(|t| lift::<B>(t)).collect()))
            .collect();
        global = write_model(global, &merged)?;

        // 8. Evaluate what the strategy names, after its pre-evaluation step.
        let (accuracy, test_loss, accuracy_ensemble) = if round % fed.eval_every == 0 || round == fed.rounds {
            global = strategy.before_eval(global, &train.images);
            let (acc, loss, ensemble) = match strategy.eval_view(&ctx) {
                EvalView::Full => with_no_ensemble(evaluate(&global.valid(), &test, 500)),
                EvalView::Width(spec) => with_no_ensemble(evaluate(&extract(global.valid(), &layout, &spec, device), &test, 500)),
                EvalView::Exits => evaluate_exits(&global.valid(), &test, 500),
            };
            if !loss.is_finite() {
                return Err(SimError::Diverged { round, loss });
            }
            (Some(acc), Some(loss), ensemble)
        } else {
            (None, None, None)
        };
        let mut record = round_record(round, accuracy, test_loss, wall.elapsed().as_secs_f64(), &energy, per_client);
        record.accuracy_ensemble = accuracy_ensemble;
        record.skipped_clients = skipped;
        observer.on_round(&record).map_err(|e| DataError::Io { path: "results".into(), source: e })?;
        records.push(record);
        if (cfg.checkpoint_every > 0 && round % cfg.checkpoint_every == 0) || round == fed.rounds {
            let model = model_to_host(read_model(&global.valid()));
            observer.on_checkpoint(&Checkpoint { round, model, num_layers, strategy_state: strategy.state(), records: records.clone() })?;
        }
    }
    Ok(records)
}

/// Totals of one round from its clients' records.
fn round_record(
    round: usize,
    accuracy: Option<f64>,
    test_loss: Option<f64>,
    wall_s: f64,
    energy: &Energy,
    per_client: Vec<(ClientRecord, u64)>,
) -> RoundRecord {
    let n = per_client.len().max(1) as f64;
    let compute_s: f64 = per_client.iter().map(|(c, _)| c.compute_s).sum();
    let down: u64 = per_client.iter().map(|(c, _)| c.bytes_down).sum();
    let up: u64 = per_client.iter().map(|(c, _)| c.bytes_up).sum();
    let peak_mem_mb = mean(&per_client.iter().filter_map(|(c, _)| c.peak_mem_mb).collect::<Vec<_>>());
    let peak_extra_mb = mean(&per_client.iter().filter_map(|(c, _)| c.peak_extra_mb).collect::<Vec<_>>());
    RoundRecord {
        round,
        accuracy,
        accuracy_ensemble: None,
        test_loss,
        train_loss: per_client.iter().map(|(c, _)| c.train_loss).sum::<f64>() / n,
        clients: per_client.len(),
        skipped_clients: 0,
        bytes_down: down,
        bytes_up: up,
        frozen_bytes_down: per_client.iter().map(|(_, f)| f).sum(),
        compute_s,
        wall_s,
        peak_mem_mb,
        peak_extra_mb,
        energy_compute_j: energy.compute_joules(compute_s),
        energy_comm_j: energy.comm_joules(down + up),
        per_client: per_client.into_iter().map(|(c, _)| c).collect(),
    }
}

pub use crate::strategy::recompute_bn_statistics;

/// Move an aggregated tensor (computed on the inner backend) back to the training backend.
fn lift<B: AutodiffBackend>(t: crate::params::NamedTensor<B::InnerBackend>) -> crate::params::NamedTensor<B> {
    crate::params::NamedTensor { name: t.name, shape: t.shape, value: Tensor::from_inner(t.value) }
}

fn with_no_ensemble((acc, loss): (f64, f64)) -> (f64, f64, Option<f64>) {
    (acc, loss, None)
}

/// A multi-exit model on a split, in batches: the deepest output's top-1 accuracy and mean
/// cross-entropy, and the top-1 accuracy of the mean of every output's logits.
fn evaluate_exits<B: Backend>(net: &LayeredNet<B>, split: &DeviceSplit<B>, batch: usize) -> (f64, f64, Option<f64>) {
    let n = split.len();
    let device = split.images.device();
    let loss_fn = burn::nn::loss::CrossEntropyLossConfig::new().init::<B>(&device);
    let (mut deepest_hits, mut ensemble_hits, mut loss_sum) = (0i64, 0i64, 0.0f64);
    for start in (0..n).step_by(batch) {
        let len = batch.min(n - start);
        // [n, c, h, w] -> [len, c, h, w]
        let x = split.images.clone().narrow(0, start, len);
        let y = split.labels.clone().narrow(0, start, len);
        let outputs = net.forward_all_exits(x);
        let count = outputs.len() as f32;
        let deepest = outputs.last().expect("the classifier is an output").clone();
        // mean over exits: Vec<[len, classes]> -> [len, classes]
        let ensemble = outputs.into_iter().reduce(|a, b| a + b).expect("at least one output") / count;
        let hits = |logits: Tensor<B, 2>| logits.argmax(1).reshape([len]).equal(y.clone()).int().sum().into_scalar().elem::<i64>();
        deepest_hits += hits(deepest.clone());
        ensemble_hits += hits(ensemble);
        loss_sum += loss_fn.forward(deepest, y.clone()).into_scalar().elem::<f64>() * len as f64;
    }
    let n = n.max(1) as f64;
    (deepest_hits as f64 / n, loss_sum / n, Some(ensemble_hits as f64 / n))
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

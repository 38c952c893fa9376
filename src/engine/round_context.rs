//! One client's round (ARCHITECTURE.md, "A round", steps 2–6) in three steps, each on one side
//! of the wire:
//! - [`RoundContext::prepare`] (server): build the client's model from the host copy of the
//!   global weights, lay it out by the plan, compress the frozen prefix;
//! - [`RoundContext::train`] (client): train on the client's own samples;
//! - [`RoundContext::upload`] (server): the trained layers as the merge reads them (width
//!   sub-models embedded in global coordinates with their masks).
//!
//! The simulator runs all three on one worker thread ([`RoundContext::run`]); a Flower
//! deployment sends [`LocalModel::payload`] down, rebuilds the model on the node with
//! [`RoundContext::rebuild`], and sends the trained layers back. Everything here lives on the
//! calling thread (its own device stream on a GPU); only host data crosses threads.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::Backend;
use burn::tensor::backend::AutodiffBackend;
use fedolf_models::{LayeredNet, ModelKind, ModelOptions, SpaceLayout};

use crate::tensor::aggregate::LayerUpload;
use crate::local::fake_quant::fake_int8_frozen;
use crate::local::roles::LayerRole;
use crate::local::training::{train_local, ClientData, LocalModel, LocalTraining};
use crate::tensor::host::{layer_to_device, layer_to_host, model_to_device, HostLayer, HostSplit, HostUpload};
use crate::runtime::backend::DeviceKind;
use crate::runtime::memory::CountingAllocator;
use crate::config::{Capacity, Config};
use crate::engine::error::SimError;
use crate::records::{ClientRecord, BYTES_PER_PARAM};
use crate::local::ordered_dropout::train_ordered_dropout;
use crate::tensor::params::{layer_numel, mark_trainable, read_model, write_layer, write_layer_resized, write_model, LayerParams, ParamError};
use crate::compress::qsgd::quantize_prefix;
use crate::runtime::rng::{stream, Purpose};
use crate::strategy::{facts, ClientPlan, Download, Facts};
use crate::tensor::submodel::{embed_layer, embedding_indices, extract, WidthSpec};
use crate::compress::toa::sparsify_prefix;

/// What every client round of a run shares, fixed by its config: the architecture and its
/// exit heads, the channel layout, how many capacities and the local training settings. The
/// server ([`Federation`](crate::engine::federation::Federation)) and every Flower node build
/// it with [`ClientSetup::new`], so both lay out and train a client's model alike.
#[derive(Debug, Clone)]
pub struct ClientSetup {
    pub seed: u64,
    pub model: ModelKind,
    pub options: ModelOptions,
    /// `[channels, height, width]` of one image.
    pub input: [usize; 3],
    pub classes: usize,
    pub num_layers: usize,
    /// Parameters of the model without exit heads.
    pub model_params: usize,
    pub layout: SpaceLayout,
    /// `c`, how many capacities plans are made at (0 = the weakest): `federation.clusters`,
    /// or with memory budgets every one the model allows (N: l = 0..N−1 frozen, or N widths).
    pub capacities: usize,
    /// Depths after which the model carries exit heads (multi-exit methods).
    pub exit_depths: Vec<usize>,
    /// The method's facts (`strategy/`'s registry).
    pub method: &'static Facts,
    pub training: LocalTraining,
    /// The device client rounds train on (recorded with each one): the run's `device`, or a
    /// Flower node's own.
    pub device: DeviceKind,
}

impl ClientSetup {
    /// The setup of run `cfg` on images of shape `input` with `classes` classes, and the
    /// model without exit heads (its weights are `B`'s own draw: callers that keep it redraw
    /// them on the host).
    pub fn new<B: AutodiffBackend>(cfg: &Config, input: [usize; 3], classes: usize, device: &B::Device) -> Result<(Self, LayeredNet<B>), SimError> {
        let model = ModelKind::parse(&cfg.model.name)?;
        let method = facts(&cfg.method)?;
        let options = cfg.model.options();
        let plain: LayeredNet<B> = model.init_with(input, classes, &options, device)?;
        let num_layers = plain.num_layers();
        // With memory budgets a client may land on any capacity the model allows, so the
        // strategy sees N capacities (its `c`) and the budget picks one per round.
        let capacities = match cfg.federation.capacity {
            Capacity::Clusters => cfg.federation.clusters,
            Capacity::Memory => num_layers,
        };
        let setup = Self {
            seed: cfg.seed,
            model,
            options,
            input,
            classes,
            num_layers,
            model_params: read_model(&plain).iter().flatten().map(|t| t.numel()).sum(),
            layout: plain.channel_spaces(),
            capacities,
            exit_depths: (method.exit_depths)(num_layers, capacities),
            method,
            training: cfg.train.local_training(),
            device: cfg.device,
        };
        Ok((setup, plain))
    }

    /// The context of round `round`'s client rounds, whose samples are drawn from `train`;
    /// `memory` measures each one's peak (CPU).
    pub fn round<'a>(&'a self, round: usize, train: &'a HostSplit, memory: Option<&'a CountingAllocator>) -> RoundContext<'a> {
        RoundContext { setup: self, round, train, training: &self.training, memory }
    }
}

/// One round's shared context for its client rounds (read-only, host data only).
pub struct RoundContext<'a> {
    pub setup: &'a ClientSetup,
    pub round: usize,
    /// The training split the clients' sample indices point into.
    pub train: &'a HostSplit,
    /// The setup's local training, or the memory probe's shortened copy of it.
    pub training: &'a LocalTraining,
    /// The counting allocator, when memory is measured (CPU).
    pub memory: Option<&'a CountingAllocator>,
}

/// A client's round, on the host.
pub struct ClientResult {
    pub record: ClientRecord,
    /// Of `record.bytes_down`, the frozen layers' share (after TOA / QSGD).
    pub frozen_bytes: u64,
    pub upload: HostUpload,
}

/// The server's side of a download: the client's model, ready to train or to send.
pub struct Prepared<B: AutodiffBackend> {
    pub local: LocalModel<B>,
    /// The model the client started from (the width methods embed their upload in it).
    pub start: LayeredNet<B>,
    /// Of `bytes_down`, the frozen layers' share (after TOA / QSGD).
    pub frozen_bytes: u64,
    /// Download = (compressed) frozen prefix + every other layer held, in full.
    pub bytes_down: u64,
}

/// What local training produced (on the client's device).
pub struct Trained<B: AutodiffBackend> {
    /// `(global index, tensors)` of every trained layer and exit head.
    pub layers: Vec<(usize, LayerParams<B::InnerBackend>)>,
    pub record: ClientRecord,
}

impl RoundContext<'_> {
    /// Steps 2–6 for the client whose samples are `indices`, from the model `start` (the
    /// global model as this client downloads it), on this thread's `device`.
    pub fn run<B: AutodiffBackend>(&self, plan: &ClientPlan, start: &[HostLayer], indices: &[usize], device: &B::Device) -> Result<ClientResult, SimError> {
        let Prepared { local, start, frozen_bytes, bytes_down } = self.prepare::<B>(plan, start, device)?;
        let trained = self.train(plan, local, bytes_down, indices, device)?;
        let upload = self.upload(plan, trained.layers, indices.len() as f64, &start, device)?;
        Ok(ClientResult { record: trained.record, frozen_bytes, upload })
    }

    /// The model `start` as this round's client models are built: the run's architecture and
    /// exit heads, with `start`'s weights.
    pub fn start_model<B: AutodiffBackend>(&self, start: &[HostLayer], device: &B::Device) -> Result<LayeredNet<B>, SimError> {
        let model = self.template::<B>(device)?;
        Ok(write_model(model, &model_to_device(start, device))?)
    }

    fn template<B: AutodiffBackend>(&self, device: &B::Device) -> Result<LayeredNet<B>, SimError> {
        let setup = self.setup;
        Ok(setup.model.init_with::<B>(setup.input, setup.classes, &setup.options, device)?.with_exits(&setup.exit_depths, device)?)
    }

    /// Steps 2–3 (server): lay out the client's copy (a width sub-model for the width
    /// methods) and compress the frozen prefix (TOA / QSGD).
    pub fn prepare<B: AutodiffBackend>(&self, plan: &ClientPlan, start: &[HostLayer], device: &B::Device) -> Result<Prepared<B>, SimError> {
        let (round, client) = (self.round, plan.client);
        let global = self.start_model::<B>(start, device)?;
        let mut local = match &plan.width {
            Some(spec) => LocalModel::from_roles(&self.sub_model(global.clone(), spec, device), &plan.roles)?,
            None => LocalModel::from_roles(&global, &plan.roles)?,
        };
        local.objective = plan.objective;
        if plan.fake_int8_frozen {
            local = fake_int8_frozen(local)?;
        }
        let frozen_bytes = match plan.download {
            Download::Toa(settings) => {
                let mut rng = stream(self.setup.seed, Purpose::Toa, round as u64, client as u64);
                let (sparse, report) = sparsify_prefix(local.no_graph, settings, &mut rng)?;
                local.no_graph = sparse;
                report.frozen_sent_elems as u64 * BYTES_PER_PARAM
            }
            Download::Qsgd(settings) => {
                let mut rng = stream(self.setup.seed, Purpose::Qsgd, round as u64, client as u64);
                let (quantized, bytes) = quantize_prefix(local.no_graph, settings, &mut rng)?;
                local.no_graph = quantized;
                bytes
            }
            Download::Full => local.no_graph.layers.iter().map(layer_numel).sum::<usize>() as u64 * BYTES_PER_PARAM,
        };
        let bytes_down = frozen_bytes + local.graph_numel() as u64 * BYTES_PER_PARAM;
        Ok(Prepared { local, start: global, frozen_bytes, bytes_down })
    }

    /// A width sub-model of `global`, trainable, with its Scaler.
    fn sub_model<B: AutodiffBackend>(&self, global: LayeredNet<B>, spec: &WidthSpec, device: &B::Device) -> LayeredNet<B> {
        let mut sub = mark_trainable(LayeredNet::<B>::from_inner(extract(global.valid(), &self.setup.layout, spec, device)));
        sub.set_scaler(spec.scaler);
        sub
    }

    /// On a node: the client's model from what it downloaded ([`LocalModel::payload`] on the
    /// server, as host data). The architecture comes from the run, the channels kept from the
    /// plan, the weights from `payload`; a TOA-sparsified prefix keeps the shapes it arrived in.
    pub fn rebuild<B: AutodiffBackend>(&self, plan: &ClientPlan, payload: &[(usize, HostLayer)], device: &B::Device) -> Result<LocalModel<B>, SimError> {
        let template = self.template::<B>(device)?;
        let mut net = match &plan.width {
            Some(spec) => self.sub_model(template, spec, device),
            None => template,
        };
        let n = net.num_layers();
        if plan.roles.len() != n {
            return Err(ParamError::LayerCount { expected: n, got: plan.roles.len() }.into());
        }
        let prefix = plan.roles.iter().take_while(|r| **r == LayerRole::FrozenNoGraph).count();
        let mut received: Vec<Option<LayerParams<B>>> = vec![None; n + net.exits.len()];
        for (i, layer) in payload {
            let slot = received.get_mut(*i).ok_or(ParamError::LayerCount { expected: n + net.exits.len(), got: i + 1 })?;
            *slot = Some(layer_to_device(layer, device));
        }
        let layers = std::mem::take(&mut net.layers);
        net.layers = layers
            .into_iter()
            .enumerate()
            .map(|(i, layer)| match received[i].take() {
                Some(p) if i < prefix => write_layer_resized(layer, i, &p),
                Some(p) => write_layer(layer, i, &p),
                None if plan.roles[i] == LayerRole::Skipped => Ok(layer),
                None => Err(ParamError::CountMismatch { layer: i, expected: crate::tensor::params::read_layer(&layer).len(), got: 0 }),
            })
            .collect::<Result<_, _>>()?;
        let exits = std::mem::take(&mut net.exits);
        net.exits = exits
            .into_iter()
            .enumerate()
            .map(|(e, exit)| match received[n + e].take() {
                Some(p) => write_layer(exit, n + e, &p),
                None => Ok(exit),
            })
            .collect::<Result<_, _>>()?;
        let mut local = LocalModel::from_roles(&net, &plan.roles)?;
        local.objective = plan.objective;
        Ok(local)
    }

    /// Steps 4–5 (client): local training on the client's own samples `indices`. The client
    /// holds its model copy and its data before it starts; the peak counts what training adds
    /// on top. `bytes_down` is what [`Self::prepare`] counted.
    pub fn train<B: AutodiffBackend>(&self, plan: &ClientPlan, local: LocalModel<B>, bytes_down: u64, indices: &[usize], device: &B::Device) -> Result<Trained<B>, SimError> {
        let (round, client) = (self.round, plan.client);
        let resident = local.resident_bytes() as usize;
        let (images, labels) = self.train.subset_to_device::<B::InnerBackend>(indices, device);
        let positions: Vec<usize> = (0..indices.len()).collect();
        let data = ClientData { images: &images, labels: &labels, indices: &positions };
        let mut rng = stream(self.setup.seed, Purpose::LocalShuffle, round as u64, client as u64);
        let started = Instant::now();
        let ratios = plan.width.as_ref().map_or(&[][..], |w| w.per_batch_ratios.as_slice());
        let train = || -> Result<(LocalModel<B>, _), SimError> {
            if ratios.is_empty() {
                return train_local(local, &data, self.training, &mut rng).map_err(|error| SimError::Client { round, client, error });
            }
            let (net, outcome) = train_ordered_dropout(local.join(), &self.setup.layout.sizes, ratios, &data, self.training, &mut rng)
                .map_err(|error| SimError::OrderedDropout { round, client, error })?;
            Ok((LocalModel::from_roles(&net, &plan.roles)?, outcome))
        };
        let (result, peak_extra) = match self.memory {
            Some(alloc) => {
                let (r, peak) = alloc.measure(train);
                (r, Some(peak))
            }
            None => (train(), None),
        };
        let (trained, outcome) = result?;
        let compute_s = started.elapsed().as_secs_f64();
        let layers = trained.trained_layers();
        let bytes_up = layers.iter().flat_map(|(_, p)| p).map(|t| t.numel() as u64).sum::<u64>() * BYTES_PER_PARAM;
        let record = ClientRecord {
            round,
            client,
            cluster: plan.capacity,
            frozen: plan.frozen(),
            samples: indices.len(),
            bytes_down,
            bytes_up,
            compute_s,
            // CPU: resident model + the allocator's peak above it; GPU: the stream's bytes
            // in use after the forward pass (see `LocalOutcome::device_peak_bytes`).
            peak_mem_mb: peak_extra.map(|extra| (extra + resident) as f64 / 1e6).or(outcome.device_peak_bytes.map(|b| b as f64 / 1e6)),
            peak_extra_mb: peak_extra.map(|b| b as f64 / 1e6),
            train_loss: outcome.mean_loss,
            budget_mb: plan.memory.map(|m| m.budget_mb),
            predicted_mb: plan.memory.map(|m| m.predicted_mb),
            device: self.setup.device.name().to_string(),
        };
        Ok(Trained { layers, record })
    }

    /// Step 6 (server): the trained layers, weighted `n_k`, as the merge reads them; width
    /// sub-models are embedded in `start`'s coordinates with their masks.
    pub fn upload<B: AutodiffBackend>(
        &self,
        plan: &ClientPlan,
        layers: Vec<(usize, LayerParams<B::InnerBackend>)>,
        weight: f64,
        start: &LayeredNet<B>,
        device: &B::Device,
    ) -> Result<HostUpload, SimError> {
        let upload = match &plan.width {
            Some(spec) => {
                let positions = embedding_indices(start.valid(), &self.setup.layout, spec, device)?;
                let global_params = read_model(&start.valid());
                // Only trained layers travel (SLT freezes a prefix); each keeps its index.
                let mut values = Vec::with_capacity(layers.len());
                let mut masks = Vec::with_capacity(layers.len());
                for (l, p) in layers {
                    let (Some(at), Some(global)) = (positions.get(l), global_params.get(l)) else {
                        return Err(ParamError::LayerCount { expected: global_params.len(), got: l + 1 }.into());
                    };
                    let (v, m) = embed_layer(&p, at, global);
                    values.push((l, v));
                    masks.push(m);
                }
                LayerUpload::masked(weight, values, masks)
            }
            None => LayerUpload::whole(weight, layers),
        };
        Ok(HostUpload::from_device(upload))
    }
}

/// Indexed layers (a payload, trained layers) on the host.
pub fn payload_to_host<B: Backend>(payload: Vec<(usize, LayerParams<B>)>) -> Vec<(usize, HostLayer)> {
    payload.into_iter().map(|(i, layer)| (i, layer_to_host(layer))).collect()
}

/// Indexed host layers on `device`.
pub fn payload_to_device<B: Backend>(payload: &[(usize, HostLayer)], device: &B::Device) -> Vec<(usize, LayerParams<B>)> {
    payload.iter().map(|(i, layer)| (*i, layer_to_device(layer, device))).collect()
}

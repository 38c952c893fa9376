//! One client's round, as a worker runs it (DESIGN.md, FedOLF round, steps 2–6): build the
//! client's model from the host copy of the global weights, lay it out by the plan, compress
//! the frozen prefix, train on the client's own samples, and hand back the upload as host data.
//! Everything here lives on the worker's thread (its own device stream on a GPU); only
//! [`ClientRound`] and [`ClientResult`] (host data) cross threads.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use fedolf_models::{LayeredNet, ModelKind, ModelOptions, SpaceLayout};

use crate::aggregate::LayerUpload;
use crate::fake_quant::fake_int8_frozen;
use crate::freeze::{train_local, ClientData, LocalModel, LocalTraining};
use crate::host::{model_to_device, HostLayer, HostSplit, HostUpload};
use crate::memory::CountingAllocator;
use crate::ordered_dropout::train_ordered_dropout;
use crate::params::{layer_numel, mark_trainable, read_model, write_model};
use crate::qsgd::quantize_prefix;
use crate::rng::{stream, Purpose};
use crate::sim::{ClientRecord, SimError, BYTES_PER_PARAM};
use crate::strategy::{ClientPlan, Download};
use crate::submodel::{embed_layer, embedding_indices, extract};
use crate::toa::sparsify_prefix;

/// What every client of a round shares (read-only, host data only).
pub struct ClientRound<'a> {
    pub round: usize,
    pub seed: u64,
    pub model: ModelKind,
    /// Depths after which the model carries exit heads (multi-exit methods).
    pub exit_depths: &'a [usize],
    pub input: [usize; 3],
    pub classes: usize,
    pub options: &'a ModelOptions,
    pub layout: &'a SpaceLayout,
    pub train: &'a HostSplit,
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

impl ClientRound<'_> {
    /// Run `plan` for the client whose samples are `indices`, from the model `start` (the
    /// global model as this client downloads it), on this thread's `device`.
    pub fn run<B: AutodiffBackend>(&self, plan: &ClientPlan, start: &[HostLayer], indices: &[usize], device: &B::Device) -> Result<ClientResult, SimError> {
        let (round, client) = (self.round, plan.client);
        let model = self.model.init_with::<B>(self.input, self.classes, self.options, device)?.with_exits(self.exit_depths, device)?;
        let global = write_model(model, &model_to_device(start, device))?;

        // 2–3. Lay out the client's copy (a width sub-model for the width methods); compress
        // the frozen prefix (TOA / QSGD).
        let mut local = match &plan.width {
            Some(spec) => {
                let mut sub = mark_trainable(LayeredNet::<B>::from_inner(extract(global.valid(), self.layout, spec, device)));
                sub.set_scaler(spec.scaler);
                LocalModel::from_roles(&sub, &plan.roles)?
            }
            None => LocalModel::from_roles(&global, &plan.roles)?,
        };
        local.objective = plan.objective;
        if plan.fake_int8_frozen {
            local = fake_int8_frozen(local)?;
        }
        let frozen_bytes = match plan.download {
            Download::Toa(settings) => {
                let mut rng = stream(self.seed, Purpose::Toa, round as u64, client as u64);
                let (sparse, report) = sparsify_prefix(local.no_graph, settings, &mut rng)?;
                local.no_graph = sparse;
                report.frozen_sent_elems as u64 * BYTES_PER_PARAM
            }
            Download::Qsgd(settings) => {
                let mut rng = stream(self.seed, Purpose::Qsgd, round as u64, client as u64);
                let (quantized, bytes) = quantize_prefix(local.no_graph, settings, &mut rng)?;
                local.no_graph = quantized;
                bytes
            }
            Download::Full => local.no_graph.layers.iter().map(layer_numel).sum::<usize>() as u64 * BYTES_PER_PARAM,
        };
        // 4. Download = (compressed) frozen prefix + every other layer in full.
        let bytes_down = frozen_bytes + local.graph_numel() as u64 * BYTES_PER_PARAM;

        // 5. Local training on the client's own samples. The client holds its model copy and
        // its data before it starts; the peak counts what training adds on top.
        let resident = local.resident_bytes() as usize;
        let (images, labels) = self.train.subset_to_device::<B::InnerBackend>(indices, device);
        let positions: Vec<usize> = (0..indices.len()).collect();
        let data = ClientData { images: &images, labels: &labels, indices: &positions };
        let mut rng = stream(self.seed, Purpose::LocalShuffle, round as u64, client as u64);
        let started = Instant::now();
        let ratios = plan.width.as_ref().map_or(&[][..], |w| w.per_batch_ratios.as_slice());
        let train = || -> Result<(LocalModel<B>, _), SimError> {
            if ratios.is_empty() {
                return train_local(local, &data, self.training, &mut rng).map_err(|error| SimError::Client { round, client, error });
            }
            let (net, outcome) = train_ordered_dropout(local.join(), &self.layout.sizes, ratios, &data, self.training, &mut rng)
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

        // 6. Upload = trained layers only (width sub-models: embedded with their masks).
        let layers = trained.trained_layers();
        let bytes_up = layers.iter().flat_map(|(_, p)| p).map(|t| t.numel() as u64).sum::<u64>() * BYTES_PER_PARAM;
        let weight = indices.len() as f64;
        let upload = match &plan.width {
            Some(spec) => {
                let positions = embedding_indices(global.valid(), self.layout, spec, device)?;
                let global_params = read_model(&global.valid());
                // Only trained layers travel (SLT freezes a prefix); each keeps its index.
                let (values, masks): (Vec<_>, Vec<_>) = layers
                    .into_iter()
                    .map(|(l, p)| {
                        let (v, m) = embed_layer(&p, &positions[l], &global_params[l]);
                        ((l, v), m)
                    })
                    .unzip();
                LayerUpload::masked(weight, values, masks)
            }
            None => LayerUpload::whole(weight, layers),
        };
        Ok(ClientResult {
            record: ClientRecord {
                round,
                client,
                cluster: plan.cluster,
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
            },
            frozen_bytes,
            upload: HostUpload::from_device(upload),
        })
    }
}

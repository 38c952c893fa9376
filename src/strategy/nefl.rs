//! NeFL (Kang et al., "NeFL: Nested model scaling for federated learning with system
//! heterogeneous clients"); the rule this file implements is stated below.
//!
//! ResNets (depthwise nesting): a client of level `l_k = c − i_k` skips `l_k` non-first
//! residual blocks — deepest stage first, the last block of a stage first — and a skipped
//! block is the identity (each kept block's step scalar is fixed at 1). Models without
//! identity blocks (the CNN, AlexNet; widthwise nesting): the client trains the `r_k = i_k/c`
//! prefix of every hidden channel space. Each level below the full one keeps its own
//! BatchNorm bank (γ, β and running statistics), downloaded by that level's clients and
//! averaged only over them; every other tensor is shared and merged by MWA over everyone
//! who holds it (`w = n_k`). The full level's bank is the global model's own BatchNorm,
//! so the evaluated model — the full level with its bank — is the global model.
//!
//! Choices: fixed step scalars (the learnable ones are optional); a bank no client has
//! trained yet starts from the initial model's BatchNorm.

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fedolf_models::SpaceLayout;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

use super::{Build, ClientPlan, Method, NoOptions, PlanContext, Strategy};
use crate::tensor::aggregate::{aggregate_layerwise, AggregateError, LayerUpload};
use crate::local::error::LocalError;
use crate::local::roles::LayerRole;
use crate::tensor::host::{layer_to_device, layer_to_host, HostLayer, HostTensor};
use crate::tensor::params::LayerParams;
use crate::tensor::submodel::WidthSpec;

#[derive(Default)]
pub struct NeFl {
    /// Each level's bank: per layer, its BatchNorm tensors only.
    banks: BTreeMap<usize, Vec<HostLayer>>,
    /// The initial model's BatchNorm (from the first merge on): where an untrained bank starts.
    initial: Option<Vec<HostLayer>>,
}

/// Whether a tensor (by its path) is a BatchNorm entry: γ, β or a running statistic.
pub fn is_batch_norm(name: &str) -> bool {
    matches!(name.rsplit('.').next(), Some("gamma" | "beta" | "running_mean" | "running_var"))
}

/// The blocks a level-`l` client skips: non-first residual blocks (identity skips: the block
/// reads and writes one channel space), deepest stage first, each stage's last block first.
pub fn nefl_skipped_blocks(layout: &SpaceLayout, l: usize) -> Result<Vec<usize>, LocalError> {
    let identity = identity_blocks(layout);
    if l > identity.len() {
        return Err(LocalError::BadRoles(format!("NeFL level {l} skips {l} residual blocks, but the model has {} that can be skipped", identity.len())));
    }
    // Stages are spaces; a deeper stage's blocks have larger indices, so descending order
    // takes the deepest stage's last block first and finishes a stage before the next.
    let mut order = identity;
    order.sort_unstable_by(|a, b| b.cmp(a));
    Ok(order.into_iter().take(l).collect())
}

/// Layers that read and write one channel space: residual blocks with an identity skip.
fn identity_blocks(layout: &SpaceLayout) -> Vec<usize> {
    (0..layout.layers.len()).filter(|&i| layout.layers[i].input.is_some() && layout.layers[i].input == layout.layers[i].output).collect()
}

/// `model` with every BatchNorm entry that `bank` holds (matched by layer and name).
fn with_bank(model: &[HostLayer], bank: &[HostLayer]) -> Vec<HostLayer> {
    model
        .iter()
        .enumerate()
        .map(|(l, layer)| {
            layer
                .iter()
                .map(|t| bank.get(l).and_then(|b| b.iter().find(|x| x.name == t.name && is_batch_norm(&x.name))).unwrap_or(t).clone())
                .collect()
        })
        .collect()
}

/// Only the BatchNorm tensors of each layer.
fn batch_norm_only(model: &[HostLayer]) -> Vec<HostLayer> {
    model.iter().map(|layer| layer.iter().filter(|t| is_batch_norm(&t.name)).cloned().collect()).collect()
}

/// The upload without its BatchNorm entries (masked out), for the shared merge.
fn without_batch_norm<B: Backend>(upload: &LayerUpload<B>) -> LayerUpload<B> {
    let masks = upload
        .layers
        .iter()
        .enumerate()
        .map(|(pos, (_, tensors))| {
            tensors
                .iter()
                .enumerate()
                .map(|(i, t)| match (is_batch_norm(&t.name), &upload.masks) {
                    (true, _) => t.value.zeros_like(),
                    (false, Some(m)) => m[pos][i].clone(),
                    (false, None) => t.value.ones_like(),
                })
                .collect()
        })
        .collect();
    LayerUpload::masked(upload.weight, upload.layers.clone(), masks)
}

impl Method for NeFl {
    const NAME: &'static str = "nefl";
    const ABOUT: &'static str = "NeFL: ResNets skip c−i non-first blocks (identity), CNN/AlexNet nest widths i/c; per-level BatchNorm banks";
    type Options = NoOptions;
    const USES_LEVELS: bool = true;
    const FREEZES_LEVELS: bool = false; // levels drop or skip layers

    fn build<M: Backend>(_build: &Build<'_, M>, _options: NoOptions) -> Self {
        Self::default()
    }
}

impl<B: AutodiffBackend> Strategy<B> for NeFl {
    fn plan(&self, ctx: &PlanContext<'_>, client: usize, capacity: usize, _rng: &mut ChaCha8Rng) -> Result<ClientPlan, LocalError> {
        let l = ctx.level(capacity)?;
        let depthwise = !identity_blocks(ctx.layout).is_empty();
        let mut plan = ClientPlan::new(client, capacity, vec![LayerRole::Trained; ctx.num_layers]);
        if depthwise {
            for i in nefl_skipped_blocks(ctx.layout, l)? {
                plan.roles[i] = LayerRole::Skipped;
            }
        } else {
            plan = plan.with_width(WidthSpec::prefix(ctx.layout, ctx.width_ratio(capacity)).unless_full(ctx.layout));
        }
        Ok(plan.with_bn_bank((l > 0).then_some(capacity)))
    }

    /// Banks as `bank/<level>/<layer>/<name>`, the initial model as `initial/<layer>/<name>`.
    fn state(&self) -> Vec<HostTensor> {
        let flatten = |prefix: String, model: &[HostLayer]| -> Vec<HostTensor> {
            model
                .iter()
                .enumerate()
                .flat_map(|(l, layer)| layer.iter().map(move |t| (l, t)))
                .map(|(l, t)| HostTensor { name: format!("{prefix}/{l}/{}", t.name), shape: t.shape.clone(), values: t.values.clone() })
                .collect()
        };
        let mut out: Vec<HostTensor> = self.banks.iter().flat_map(|(level, bank)| flatten(format!("bank/{level}"), bank)).collect();
        if let Some(initial) = &self.initial {
            out.extend(flatten("initial".into(), initial));
        }
        out
    }

    fn restore_state(&mut self, state: Vec<HostTensor>) -> Result<(), String> {
        let mut initial: BTreeMap<(usize, String), HostTensor> = BTreeMap::new();
        let mut banks: BTreeMap<usize, Vec<(usize, HostTensor)>> = BTreeMap::new();
        for t in state {
            let parts: Vec<&str> = t.name.splitn(4, '/').collect();
            let bad = || format!("NeFL state: unexpected tensor `{}`", t.name);
            match parts.as_slice() {
                ["initial", layer, name] => {
                    let layer = layer.parse().map_err(|_| bad())?;
                    initial.insert((layer, name.to_string()), HostTensor { name: name.to_string(), ..t.clone() });
                }
                ["bank", level, layer, name] => {
                    let (level, layer) = (level.parse().map_err(|_| bad())?, layer.parse().map_err(|_| bad())?);
                    banks.entry(level).or_default().push((layer, HostTensor { name: name.to_string(), ..t.clone() }));
                }
                _ => return Err(bad()),
            }
        }
        if initial.is_empty() {
            return if banks.is_empty() { Ok(()) } else { Err("NeFL state: banks without the initial model".into()) };
        }
        let by_layer = |entries: Vec<(usize, HostTensor)>| -> Vec<HostLayer> {
            let layers = entries.iter().map(|(l, _)| l + 1).max().unwrap_or(0);
            let mut out: Vec<HostLayer> = vec![Vec::new(); layers];
            for (l, t) in entries {
                out[l].push(t);
            }
            out
        };
        self.initial = Some(by_layer(initial.into_iter().map(|((l, _), t)| (l, t)).collect()));
        self.banks = banks.into_iter().map(|(level, entries)| (level, by_layer(entries))).collect();
        Ok(())
    }

    fn client_start(&self, plan: &ClientPlan, global: &[HostLayer]) -> Option<Vec<HostLayer>> {
        let level = plan.bn_bank?;
        let bank = self.banks.get(&level).or(self.initial.as_ref())?;
        Some(with_bank(global, bank))
    }

    fn merge(
        &mut self,
        global: &[LayerParams<B::InnerBackend>],
        uploads: &[LayerUpload<B::InnerBackend>],
        plans: &[ClientPlan],
    ) -> Result<Vec<Option<LayerParams<B::InnerBackend>>>, AggregateError> {
        let global_host: Vec<HostLayer> = global.iter().cloned().map(layer_to_host).collect();
        let initial = self.initial.get_or_insert_with(|| batch_norm_only(&global_host)).clone();
        // Shared tensors: everyone; BatchNorm: only the full level (the global model's bank).
        let shared: Vec<LayerUpload<_>> = uploads
            .iter()
            .zip(plans)
            .map(|(u, p)| if p.bn_bank.is_some() { without_batch_norm(u) } else { u.clone() })
            .collect();
        let merged = aggregate_layerwise(global, &shared)?;
        // Each level's bank: MWA over that level's uploads only, BatchNorm entries kept.
        let Some(device) = global.iter().flatten().next().map(|t| t.value.device()) else {
            return Ok(merged);
        };
        let mut levels: Vec<usize> = plans.iter().filter_map(|p| p.bn_bank).collect();
        levels.sort_unstable();
        levels.dedup();
        for level in levels {
            // The level's model: the shared tensors with its bank (BatchNorm entries taken from it).
            let bank = with_bank(&global_host, self.banks.get(&level).unwrap_or(&initial));
            let bank_device: Vec<LayerParams<B::InnerBackend>> = bank.iter().map(|l| layer_to_device(l, &device)).collect();
            let own: Vec<LayerUpload<_>> = uploads.iter().zip(plans).filter(|(_, p)| p.bn_bank == Some(level)).map(|(u, _)| u.clone()).collect();
            let updated = aggregate_layerwise(&bank_device, &own)?;
            let new_bank: Vec<HostLayer> = updated
                .into_iter()
                .zip(bank_device)
                .map(|(new, old)| layer_to_host(new.unwrap_or(old)))
                .collect();
            self.banks.insert(level, batch_norm_only(&new_bank));
        }
        Ok(merged)
    }
}

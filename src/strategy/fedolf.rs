//! FedOLF (Federated Learning with Ordered Layer Freezing, IEEE TMC, arXiv 2512.23200).
//! Cluster `i_k` freezes `L_1..L_{l_k}`, `l_k = c − i_k`, outside the autodiff graph, trains
//! `L_{l_k+1}..L_N` and uploads only those; the server aggregates layer by layer,
//! `θ_l ← Σ_{k∈S_l} n_k θ_{k,l} / Σ_{k∈S_l} n_k` (`fedolf.merge = "weighted"`, the authors'
//! public code), or `θ_l ← r·mean_{k∈S_l} θ_{k,l} + (1 − r)·θ_l`, `r = |S_l| / |C_t|`
//! (`"blend"`, the rule of the paper's [17], CoCoFL). TOA (needs `l_k ≥ 2`) or QSGD compresses
//! the frozen layers' download.

use burn::tensor::backend::{AutodiffBackend, Backend};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{cocofl_blend, Build, ClientPlan, Download, Method, PlanContext, Strategy};
use crate::tensor::aggregate::{aggregate_layerwise, AggregateError, LayerUpload};
use crate::tensor::params::LayerParams;
use crate::local::error::LocalError;
use crate::local::roles::ordered_roles;

pub struct FedOlf {
    pub download: Download,
    pub merge: LayerMerge,
}

/// `[fedolf]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// The server's layer-wise rule (ARCHITECTURE.md, "FedOLF's server rule").
    pub merge: LayerMerge,
}

/// How a layer's uploads replace it on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LayerMerge {
    /// `θ_l ← Σ_{k∈S_l} n_k θ_{k,l} / Σ_{k∈S_l} n_k`: the uploaders' n_k-weighted mean
    /// replaces the layer (the FedOLF authors' public code).
    #[default]
    Weighted,
    /// `θ_l ← r·mean_{k∈S_l} θ_{k,l} + (1 − r)·θ_l`, `r = |S_l| / |C_t|`: the layer moves by
    /// the share of the round's clients that trained it (CoCoFL's rule, the paper's [17]).
    Blend,
}

impl Method for FedOlf {
    const NAME: &'static str = "fedolf";
    const ABOUT: &'static str = "FedOLF: cluster i freezes the first c−i layers (no graph), trains and uploads the rest; TOA or QSGD on download";
    type Options = Options;
    const USES_LEVELS: bool = true;

    fn build<M: Backend>(build: &Build<'_, M>, options: Options) -> Self {
        Self { download: build.download, merge: options.merge }
    }
}

impl<B: AutodiffBackend> Strategy<B> for FedOlf {
    fn plan(&self, ctx: &PlanContext<'_>, client: usize, capacity: usize, _rng: &mut ChaCha8Rng) -> Result<ClientPlan, LocalError> {
        let l = ctx.level(capacity)?;
        let download = match self.download {
            Download::Toa(s) if s.is_active() && l >= 2 => Download::Toa(s),
            Download::Qsgd(q) if l >= 1 => Download::Qsgd(q),
            _ => Download::Full,
        };
        Ok(ClientPlan::new(client, capacity, ordered_roles(ctx.num_layers, l)?).with_download(download))
    }

    fn merge(
        &mut self,
        global: &[LayerParams<B::InnerBackend>],
        uploads: &[LayerUpload<B::InnerBackend>],
        plans: &[ClientPlan],
    ) -> Result<Vec<Option<LayerParams<B::InnerBackend>>>, AggregateError> {
        match self.merge {
            LayerMerge::Weighted => aggregate_layerwise(global, uploads),
            LayerMerge::Blend => cocofl_blend(global, uploads, plans.len()),
        }
    }
}

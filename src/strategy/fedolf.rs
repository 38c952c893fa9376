//! FedOLF (Federated Learning with Ordered Layer Freezing, IEEE TMC, arXiv 2512.23200).
//! Cluster `i_k` freezes `L_1..L_{l_k}`, `l_k = c − i_k`, outside the autodiff graph, trains
//! `L_{l_k+1}..L_N` and uploads only those; the server aggregates layer by layer,
//! `θ_l ← Σ_{k∈S_l} n_k θ_{k,l} / Σ_{k∈S_l} n_k`. TOA (needs `l_k ≥ 2`) or QSGD compresses
//! the frozen layers' download.

use burn::tensor::backend::AutodiffBackend;
use rand_chacha::ChaCha8Rng;

use super::{ClientPlan, Download, PlanContext, Strategy};
use crate::config::Method;
use crate::local::objective::Objective;
use crate::local::error::LocalError;
use crate::local::roles::ordered_roles;

pub struct FedOlf {
    pub download: Download,
}

impl<B: AutodiffBackend> Strategy<B> for FedOlf {
    fn method(&self) -> Method {
        Method::Fedolf
    }

    fn uses_levels(&self) -> bool {
        true
    }

    fn plan(&self, ctx: &PlanContext<'_>, client: usize, cluster: usize, _rng: &mut ChaCha8Rng) -> Result<ClientPlan, LocalError> {
        let l = ctx.level(cluster)?;
        let download = match self.download {
            Download::Toa(s) if s.is_active() && l >= 2 => Download::Toa(s),
            Download::Qsgd(q) if l >= 1 => Download::Qsgd(q),
            _ => Download::Full,
        };
        Ok(ClientPlan { client, cluster, roles: ordered_roles(ctx.num_layers, l)?, download, width: None, fake_int8_frozen: false, objective: Objective::CrossEntropy, bn_bank: None, memory: None })
    }
}

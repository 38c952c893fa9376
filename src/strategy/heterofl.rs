//! HeteroFL (Diao et al., "HeteroFL: Computation and communication efficient federated
//! learning for heterogeneous clients", ICLR 2021). Client width `r_k = i_k / c`: every
//! hidden channel space keeps its first `⌈r_k·C⌉` channels; the client trains the whole
//! sub-model and uploads it; the server averages each element over the clients that held it,
//! `θ ← Σ_k n_k M_k⊙θ̃_k / Σ_k n_k M_k` (MWA), elements nobody held keep their value.
//!
//! Scaler: every hidden conv / FC output is divided by `r_k` while the sub-model trains
//! (identity at evaluation, where the global model has scale 1).
//! Static BN (`heterofl.static_bn`, default on): before each evaluation the global model's BN
//! statistics are recomputed with a no-grad pass over the training data (`sim.rs`); local
//! training uses batch statistics.

use rand_chacha::ChaCha8Rng;

use super::{ClientPlan, Download, PlanContext, Strategy};
use crate::config::Method;
use crate::freeze::{FreezeError, LayerRole};
use crate::submodel::WidthSpec;

pub struct HeteroFl;

impl Strategy for HeteroFl {
    fn method(&self) -> Method {
        Method::Heterofl
    }

    fn plan(&self, ctx: &PlanContext<'_>, client: usize, cluster: usize, _rng: &mut ChaCha8Rng) -> Result<ClientPlan, FreezeError> {
        let r = ctx.width_ratio(cluster);
        let width = WidthSpec::prefix(ctx.layout, r).with_scaler(r);
        Ok(ClientPlan { client, cluster, roles: vec![LayerRole::Trained; ctx.num_layers], download: Download::Full, width: Some(width), fake_int8_frozen: false })
    }
}

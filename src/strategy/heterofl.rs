//! HeteroFL (Diao et al., "HeteroFL: Computation and communication efficient federated
//! learning for heterogeneous clients", ICLR 2021). Client width `r_k = i_k / c`: every
//! hidden channel space keeps its first `⌈r_k·C⌉` channels; the client trains the whole
//! sub-model and uploads it; the server averages each element over the clients that held it,
//! `θ ← Σ_k n_k M_k⊙θ̃_k / Σ_k n_k M_k` (MWA), elements nobody held keep their value.
//!
//! Not faithful yet: the Scaler (divide each conv output by `r_k` in training) and the
//! static-BN option (recompute global BN statistics before evaluation) are not implemented.

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
        let width = WidthSpec::prefix(ctx.layout, ctx.width_ratio(cluster));
        Ok(ClientPlan { client, cluster, roles: vec![LayerRole::Trained; ctx.num_layers], download: Download::Full, width: Some(width) })
    }
}

//! HeteroFL (Diao et al., "HeteroFL: Computation and communication efficient federated
//! learning for heterogeneous clients", ICLR 2021), as the FedOLF paper runs it (§V,
//! baselines): it "prunes the rightmost filters in convolution layers ... but keep[s] the FC
//! layers unchanged". Client width `r_k = i_k / c`: every convolutional channel space keeps
//! its first `⌈r_k·C⌉` channels; hidden FC layers keep all their neurons, and the first FC
//! layer keeps the input columns of the conv channels kept. The client trains the whole
//! sub-model and uploads it; the server averages each element over the clients that held it,
//! `θ ← Σ_k n_k M_k⊙θ̃_k / Σ_k n_k M_k` (MWA), elements nobody held keep their value.
//!
//! Scaler: every conv output is divided by `r_k` while the sub-model trains (identity at
//! evaluation, where the global model has scale 1); FC outputs are not scaled (full width).
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
        let width = WidthSpec::prefix_conv(ctx.layout, r).with_scaler(r);
        Ok(ClientPlan { client, cluster, roles: vec![LayerRole::Trained; ctx.num_layers], download: Download::Full, width: Some(width), fake_int8_frozen: false })
    }
}

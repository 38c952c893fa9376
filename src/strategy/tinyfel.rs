//! TinyFEL (as the FedOLF paper describes it; no public code exists): the first `l_k` layers
//! are frozen only in backpropagation — the whole forward pass is recorded on the autodiff
//! backend, every gradient is computed, and the frozen layers' gradients are discarded before
//! the update. Same training result as FedOLF without TOA; it exists to measure memory and
//! energy (paper Fig. 17). Server: layer-wise MWA.

use burn::tensor::backend::{AutodiffBackend, Backend};
use rand_chacha::ChaCha8Rng;

use super::{Build, ClientPlan, Method, NoOptions, PlanContext, Strategy};
use crate::local::error::LocalError;
use crate::local::roles::LayerRole;

pub struct TinyFel;

impl Method for TinyFel {
    const NAME: &'static str = "tinyfel";
    const ABOUT: &'static str = "TinyFEL: first c−i layers frozen only in backprop (whole forward recorded, their gradients dropped)";
    type Options = NoOptions;
    const USES_LEVELS: bool = true;

    fn build<M: Backend>(_build: &Build<'_, M>, _options: NoOptions) -> Self {
        Self
    }
}

impl<B: AutodiffBackend> Strategy<B> for TinyFel {
    fn plan(&self, ctx: &PlanContext<'_>, client: usize, capacity: usize, _rng: &mut ChaCha8Rng) -> Result<ClientPlan, LocalError> {
        let l = ctx.level(capacity)?;
        let roles = (0..ctx.num_layers).map(|i| if i < l { LayerRole::FrozenGradDiscarded } else { LayerRole::Trained }).collect();
        Ok(ClientPlan::new(client, capacity, roles))
    }
}

//! Federated Dropout (Caldas et al., "Expanding the reach of federated learning by reducing
//! client resource requirements", 2018). Per client per round, each channel space keeps a
//! uniformly random subset of `⌈r_k·C⌉` channels (`r_k = i_k / c`), drawn once per space so
//! residual skips stay aligned. The client trains the sub-model and uploads it; the server
//! applies MWA over element masks. The full model is evaluated.

use burn::tensor::backend::{AutodiffBackend, Backend};
use rand_chacha::ChaCha8Rng;

use super::{Build, ClientPlan, Method, NoOptions, PlanContext, Strategy};
use crate::local::error::LocalError;
use crate::local::roles::LayerRole;
use crate::tensor::submodel::WidthSpec;

pub struct Feddrop;

impl Method for Feddrop {
    const NAME: &'static str = "feddrop";
    const ABOUT: &'static str = "Feddrop: random ⌈r·C⌉ channels per space each round (r = i/c); masked MWA; full model evaluated";
    type Options = NoOptions;

    fn build<M: Backend>(_build: &Build<'_, M>, _options: NoOptions) -> Self {
        Self
    }
}

impl<B: AutodiffBackend> Strategy<B> for Feddrop {
    fn plan(&self, ctx: &PlanContext<'_>, client: usize, capacity: usize, rng: &mut ChaCha8Rng) -> Result<ClientPlan, LocalError> {
        let width = WidthSpec::random(ctx.layout, ctx.width_ratio(capacity), rng);
        Ok(ClientPlan::new(client, capacity, vec![LayerRole::Trained; ctx.num_layers]).with_width(Some(width)))
    }
}

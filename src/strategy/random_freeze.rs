//! Random layer freezing (the FedOLF paper's Fig. 2 contrast): cluster `i_k` freezes `l_k`
//! layers drawn uniformly (fresh per client per round). Frozen layers below the lowest
//! trained one leave the graph; frozen layers above a trained one stay in it with
//! `require_grad = false` so gradients reach the layers below — which is why random freezing
//! saves little memory. Server: layer-wise MWA over the layers each client trained.

use rand::seq::index::sample;
use burn::tensor::backend::{AutodiffBackend, Backend};
use rand_chacha::ChaCha8Rng;

use super::{Build, ClientPlan, Method, NoOptions, PlanContext, Strategy};
use crate::local::error::LocalError;
use crate::local::roles::roles_with_pass_grad;

pub struct RandomFreeze;

impl Method for RandomFreeze {
    const NAME: &'static str = "random-freeze";
    const ABOUT: &'static str = "Random freezing (paper Fig. 2): c−i layers drawn at random; frozen layers above a trained one pass gradients";
    type Options = NoOptions;
    const USES_LEVELS: bool = true;

    fn build<M: Backend>(_build: &Build<'_, M>, _options: NoOptions) -> Self {
        Self
    }
}

impl<B: AutodiffBackend> Strategy<B> for RandomFreeze {
    fn plan(&self, ctx: &PlanContext<'_>, client: usize, capacity: usize, rng: &mut ChaCha8Rng) -> Result<ClientPlan, LocalError> {
        let l = ctx.level(capacity)?;
        let mut frozen = vec![false; ctx.num_layers];
        for i in sample(rng, ctx.num_layers, l).into_iter() {
            frozen[i] = true;
        }
        Ok(ClientPlan::new(client, capacity, roles_with_pass_grad(&frozen)))
    }
}

//! Random layer freezing (the FedOLF paper's Fig. 2 contrast): cluster `i_k` freezes `l_k`
//! layers drawn uniformly (fresh per client per round). Frozen layers below the lowest
//! trained one leave the graph; frozen layers above a trained one stay in it with
//! `require_grad = false` so gradients reach the layers below — which is why random freezing
//! saves little memory. Server: layer-wise MWA over the layers each client trained.

use rand::seq::index::sample;
use burn::tensor::backend::AutodiffBackend;
use rand_chacha::ChaCha8Rng;

use super::{ClientPlan, PlanContext, Strategy};
use crate::config::Method;
use crate::local::error::LocalError;
use crate::local::roles::roles_with_pass_grad;

pub struct RandomFreeze;

impl<B: AutodiffBackend> Strategy<B> for RandomFreeze {
    fn method(&self) -> Method {
        Method::RandomFreeze
    }

    fn uses_levels(&self) -> bool {
        true
    }

    fn plan(&self, ctx: &PlanContext<'_>, client: usize, cluster: usize, rng: &mut ChaCha8Rng) -> Result<ClientPlan, LocalError> {
        let l = ctx.level(cluster)?;
        let mut frozen = vec![false; ctx.num_layers];
        for i in sample(rng, ctx.num_layers, l).into_iter() {
            frozen[i] = true;
        }
        Ok(ClientPlan::new(client, cluster, roles_with_pass_grad(&frozen)))
    }
}

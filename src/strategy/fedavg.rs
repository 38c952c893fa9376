//! FedAvg (McMahan et al., AISTATS 2017): every client trains and uploads the whole model;
//! `θ ← Σ_k n_k θ_k / Σ_k n_k`. The paper's unconstrained upper bound.
//! Drop variant (the paper's "FedAvg (drop)" baseline): only the strongest cluster (`i_k = c`) takes part.

use burn::tensor::backend::AutodiffBackend;
use rand_chacha::ChaCha8Rng;

use super::{ClientPlan, PlanContext, Strategy};
use crate::config::Method;
use crate::local::error::LocalError;
use crate::local::roles::LayerRole;

pub struct FedAvg {
    pub drop_weak: bool,
}

impl<B: AutodiffBackend> Strategy<B> for FedAvg {
    fn method(&self) -> Method {
        if self.drop_weak {
            Method::FedavgDrop
        } else {
            Method::Fedavg
        }
    }

    fn eligible(&self, cluster: usize, clusters: usize) -> bool {
        !self.drop_weak || cluster + 1 == clusters
    }

    fn plan(&self, ctx: &PlanContext<'_>, client: usize, cluster: usize, _rng: &mut ChaCha8Rng) -> Result<ClientPlan, LocalError> {
        Ok(ClientPlan::new(client, cluster, vec![LayerRole::Trained; ctx.num_layers]))
    }
}

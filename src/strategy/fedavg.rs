//! FedAvg (McMahan et al., AISTATS 2017): every client trains and uploads the whole model;
//! `θ ← Σ_k n_k θ_k / Σ_k n_k`. The paper's unconstrained upper bound.

use burn::tensor::backend::{AutodiffBackend, Backend};
use rand_chacha::ChaCha8Rng;

use super::{Build, ClientPlan, Method, NoOptions, PlanContext, Strategy};
use crate::local::error::LocalError;
use crate::local::roles::LayerRole;

pub struct FedAvg;

impl Method for FedAvg {
    const NAME: &'static str = "fedavg";
    const ABOUT: &'static str = "FedAvg: every client trains and uploads the full model (the unconstrained upper bound)";
    type Options = NoOptions;

    fn build<M: Backend>(_build: &Build<'_, M>, _options: NoOptions) -> Self {
        Self
    }
}

impl<B: AutodiffBackend> Strategy<B> for FedAvg {
    fn plan(&self, ctx: &PlanContext<'_>, client: usize, capacity: usize, _rng: &mut ChaCha8Rng) -> Result<ClientPlan, LocalError> {
        Ok(ClientPlan::new(client, capacity, vec![LayerRole::Trained; ctx.num_layers]))
    }
}

//! FedAvg, drop variant (the paper's "FedAvg (drop)" baseline): only the strongest cluster
//! (`i_k = c`) takes part, and it trains FedAvg's full model: `θ ← Σ_k n_k θ_k / Σ_k n_k`
//! over those clients.

use burn::tensor::backend::{AutodiffBackend, Backend};
use rand_chacha::ChaCha8Rng;

use super::fedavg::FedAvg;
use super::{Build, ClientPlan, Method, NoOptions, PlanContext, Strategy};
use crate::local::error::LocalError;

pub struct FedAvgDrop;

impl Method for FedAvgDrop {
    const NAME: &'static str = "fedavg-drop";
    const ABOUT: &'static str = "FedAvg, drop variant: only the strongest cluster takes part";
    type Options = NoOptions;

    fn build<M: Backend>(_build: &Build<'_, M>, _options: NoOptions) -> Self {
        Self
    }
}

impl<B: AutodiffBackend> Strategy<B> for FedAvgDrop {
    fn eligible(&self, cluster: usize, capacities: usize) -> bool {
        cluster + 1 == capacities
    }

    fn plan(&self, ctx: &PlanContext<'_>, client: usize, capacity: usize, rng: &mut ChaCha8Rng) -> Result<ClientPlan, LocalError> {
        <FedAvg as Strategy<B>>::plan(&FedAvg, ctx, client, capacity, rng)
    }
}

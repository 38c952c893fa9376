//! FjORD (Horváth et al., "FjORD: Fair and accurate federated learning under heterogeneous
//! targets with ordered dropout", NeurIPS 2021). Client width `r_k = i_k / c`: it downloads
//! and uploads the `r_k`-prefix sub-model; for every mini-batch it draws
//! `p ~ U{1/c, 2/c, …, r_k}` and trains only the `p`-prefix of every channel space (ordered
//! dropout). Server: MWA over element masks, `w = n_k`. Evaluated at `p = 1`.
//!
//! Choices: self-distillation off (the paper's optional extra). Each mini-batch trains a fresh `p`-prefix
//! copy, so SGD momentum does not carry across batches (plain SGD steps).

use burn::tensor::backend::{AutodiffBackend, Backend};
use rand_chacha::ChaCha8Rng;

use super::{Build, ClientPlan, Method, NoOptions, PlanContext, Strategy};
use crate::local::error::LocalError;
use crate::local::roles::LayerRole;
use crate::tensor::submodel::WidthSpec;

pub struct Fjord;

impl Method for Fjord {
    const NAME: &'static str = "fjord";
    const ABOUT: &'static str = "FjORD: r = i/c prefix sub-model; each batch trains a random p-prefix, p ∈ {1/c..r}; masked MWA";
    type Options = NoOptions;

    fn build<M: Backend>(_build: &Build<'_, M>, _options: NoOptions) -> Self {
        Self
    }
}

impl<B: AutodiffBackend> Strategy<B> for Fjord {
    fn plan(&self, ctx: &PlanContext<'_>, client: usize, capacity: usize, _rng: &mut ChaCha8Rng) -> Result<ClientPlan, LocalError> {
        let mut width = WidthSpec::prefix(ctx.layout, ctx.width_ratio(capacity));
        width.per_batch_ratios = (1..=capacity + 1).map(|i| i as f64 / ctx.capacities as f64).collect();
        Ok(ClientPlan::new(client, capacity, vec![LayerRole::Trained; ctx.num_layers]).with_width(Some(width)))
    }
}

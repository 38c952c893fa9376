//! The freezing modes the paper contrasts for memory (Fig. 2: ordered vs random; Fig. 17:
//! TinyFEL), as per-layer [`LayerRole`]s for [`LocalModel::from_roles`](crate::local::training::LocalModel):
//! - `ordered` (FedOLF): layers `[0, l)` outside the graph, the rest train.
//! - `random`: `l` layers drawn uniformly; frozen layers below the lowest trained one run
//!   outside the graph, frozen layers above it stay in it with `require_grad = false` (their
//!   activations are kept so gradients reach the layers below).
//! - `tinyfel`: the whole forward pass is recorded; gradients of the first `l` layers are
//!   computed and discarded.
//! - `none`: full training.

use rand::seq::index::sample;
use rand::Rng;

use crate::local::error::LocalError;

/// How one layer takes part in local training (and in the Eq. 23 count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LayerRole {
    FrozenNoGraph,
    FrozenInGraph,
    FrozenGradDiscarded,
    Trained,
    /// Not held by the client: neither downloaded, run, trained nor uploaded.
    Skipped,
}

/// FedOLF's layout: `[0, l)` frozen outside the graph, the rest trained.
pub fn ordered_roles(num_layers: usize, l: usize) -> Result<Vec<LayerRole>, LocalError> {
    if l >= num_layers {
        return Err(LocalError::TooManyFrozen { frozen: l, num_layers });
    }
    Ok((0..num_layers).map(|i| if i < l { LayerRole::FrozenNoGraph } else { LayerRole::Trained }).collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezeMode {
    Ordered,
    Random,
    TinyFel,
    None,
}

impl FreezeMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ordered => "ordered",
            Self::Random => "random",
            Self::TinyFel => "tinyfel",
            Self::None => "none",
        }
    }
}

/// The per-layer roles of `mode` with `l` frozen layers (random draws from `rng`).
pub fn layer_roles<R: Rng>(mode: FreezeMode, num_layers: usize, l: usize, rng: &mut R) -> Result<Vec<LayerRole>, LocalError> {
    if l >= num_layers {
        return Err(LocalError::TooManyFrozen { frozen: l, num_layers });
    }
    let roles = match mode {
        FreezeMode::None => vec![LayerRole::Trained; num_layers],
        FreezeMode::Ordered => ordered_roles(num_layers, l)?,
        FreezeMode::TinyFel => (0..num_layers).map(|i| if i < l { LayerRole::FrozenGradDiscarded } else { LayerRole::Trained }).collect(),
        FreezeMode::Random => {
            let mut frozen = vec![false; num_layers];
            for i in sample(rng, num_layers, l).into_iter() {
                frozen[i] = true;
            }
            roles_with_pass_grad(&frozen)
        }
    };
    Ok(roles)
}

/// Roles for an arbitrary frozen set: frozen layers below the lowest trained one leave the
/// graph; frozen layers above it pass gradients through.
pub fn roles_with_pass_grad(frozen: &[bool]) -> Vec<LayerRole> {
    let lowest_trained = frozen.iter().position(|f| !f).unwrap_or(frozen.len());
    frozen
        .iter()
        .enumerate()
        .map(|(i, &f)| match (f, i < lowest_trained) {
            (false, _) => LayerRole::Trained,
            (true, true) => LayerRole::FrozenNoGraph,
            (true, false) => LayerRole::FrozenInGraph,
        })
        .collect()
}

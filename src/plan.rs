//! Per-client decisions for one round, as owned values (never a shared mutable config).

use crate::config::Method;
use crate::toa::ToaSettings;

/// What one sampled client does this round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientPlan {
    pub client: usize,
    /// Capacity cluster, 0-based (`i_k − 1`).
    pub cluster: usize,
    /// Frozen prefix length `l_k`.
    pub frozen: usize,
    /// TOA on the download, when on and `l_k ≥ 2`.
    pub toa: Option<ToaSettings>,
}

/// FedOLF: cluster `i_k ∈ 1..=c` freezes `l_k = c − i_k` layers (paper §IV, "client system
/// heterogeneity"). FedAvg: nobody freezes.
pub fn plan_client(method: Method, client: usize, cluster: usize, clusters: usize, toa: ToaSettings) -> ClientPlan {
    let frozen = match method {
        Method::Fedolf => clusters - 1 - cluster,
        Method::Fedavg => 0,
    };
    let toa = (toa.is_active() && frozen >= 2).then_some(toa);
    ClientPlan { client, cluster, frozen, toa }
}

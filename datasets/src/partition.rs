//! Federated partitions of a training set, and capacity clusters.
//!
//! - iid: a seeded shuffle dealt into K near-equal shards.
//! - Dirichlet(α) over labels (Hsu et al. 2019; the FedOLF paper follows [47] with α = 0.1):
//!   for each class, proportions `p ~ Dir(α·1_K)` split that class's samples among clients;
//!   a client already holding more than `n/K` samples gets no more (the usual balancing of
//!   that reference code). Redrawn until every client has at least `min_size` samples, up to
//!   `max_retries` times.
//! - Capacity clusters: clients are shuffled and dealt into `c` equal clusters (sizes differ by
//!   at most one when `c ∤ K`).
//! Every partition is disjoint and covers every sample.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_distr::{Distribution, Gamma};

use crate::error::DataError;

/// iid: shuffle, then deal contiguous shards of near-equal size.
pub fn iid<R: Rng>(n: usize, clients: usize, rng: &mut R) -> Result<Vec<Vec<usize>>, DataError> {
    if clients == 0 || clients > n {
        return Err(DataError::BadPartition(format!("clients = {clients} must be in 1..={n} (the training set size)")));
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(rng);
    let (base, extra) = (n / clients, n % clients);
    let mut out = Vec::with_capacity(clients);
    let mut start = 0;
    for k in 0..clients {
        let len = base + usize::from(k < extra);
        out.push(idx[start..start + len].to_vec());
        start += len;
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DirichletSettings {
    pub alpha: f64,
    pub min_size: usize,
    pub max_retries: usize,
}

/// Dirichlet(α) label skew; see the module doc.
pub fn dirichlet<R: Rng>(labels: &[u16], num_classes: usize, clients: usize, s: DirichletSettings, rng: &mut R) -> Result<Vec<Vec<usize>>, DataError> {
    let n = labels.len();
    if !(s.alpha.is_finite() && s.alpha > 0.0) {
        return Err(DataError::BadPartition(format!("dirichlet alpha = {} must be finite and > 0", s.alpha)));
    }
    if clients == 0 || clients.saturating_mul(s.min_size.max(1)) > n {
        return Err(DataError::BadPartition(format!(
            "{clients} clients × min_size {} exceeds the {n} training samples",
            s.min_size.max(1)
        )));
    }
    let gamma = Gamma::new(s.alpha, 1.0).map_err(|e| DataError::BadPartition(format!("alpha: {e}")))?;
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l as usize].push(i);
    }
    let cap = n as f64 / clients as f64;
    for _ in 0..s.max_retries.max(1) {
        let mut parts: Vec<Vec<usize>> = vec![Vec::new(); clients];
        for class in by_class.iter_mut() {
            class.shuffle(rng);
            let mut p: Vec<f64> = (0..clients)
                .map(|k| if (parts[k].len() as f64) < cap { gamma.sample(rng) } else { 0.0 })
                .collect();
            let total: f64 = p.iter().sum();
            if total <= 0.0 {
                // Every client is at the cap: spread this class uniformly.
                p = vec![1.0; clients];
            }
            let total: f64 = p.iter().sum();
            // Cumulative cut points over this class's samples.
            let mut acc = 0.0;
            let mut start = 0;
            for (k, pk) in p.iter().enumerate() {
                acc += pk / total;
                let end = if k + 1 == clients { class.len() } else { ((acc * class.len() as f64) as usize).min(class.len()) };
                parts[k].extend_from_slice(&class[start..end.max(start)]);
                start = end.max(start);
            }
        }
        if parts.iter().all(|p| p.len() >= s.min_size) {
            return Ok(parts);
        }
    }
    Err(DataError::BadPartition(format!(
        "no Dirichlet(α = {}) draw gave all {clients} clients ≥ {} samples in {} tries; lower min_size or raise alpha",
        s.alpha, s.min_size, s.max_retries
    )))
}

/// Assign each client a capacity cluster in `0..c`, dealt at random into equal clusters.
pub fn capacity_clusters<R: Rng>(clients: usize, c: usize, rng: &mut R) -> Result<Vec<usize>, DataError> {
    if c == 0 || c > clients {
        return Err(DataError::BadPartition(format!("clusters = {c} must be in 1..={clients} (the client count)")));
    }
    let mut order: Vec<usize> = (0..clients).collect();
    order.shuffle(rng);
    let mut cluster = vec![0; clients];
    for (pos, &k) in order.iter().enumerate() {
        cluster[k] = pos * c / clients;
    }
    Ok(cluster)
}

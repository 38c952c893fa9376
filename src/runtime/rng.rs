//! Seeded random streams, one per purpose, so that adding a draw in one place never shifts
//! the draws of another (no global RNG anywhere).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What a stream is for; its tag is mixed into the seed. Tags are explicit and never reused,
/// so adding or removing a purpose leaves every other stream (and recorded result) unchanged.
#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    Partition = 0,
    Clusters = 1,
    ClientSampling = 2,
    /// Mini-batch order of one client in one round.
    LocalShuffle = 4,
    /// TOA draw for one client in one round.
    Toa = 5,
    /// A strategy's per-client decisions (random frozen sets, CoCoFL windows, Feddrop subsets).
    Plan = 6,
    /// QSGD rounding for one client in one round.
    Qsgd = 7,
    MemoryProbe = 8,
    /// A client's memory budget jitter in one round.
    Budget = 9,
    /// The initial weights of a run's model (drawn on the host: the same on every device).
    Init = 10,
    /// Synthetic inputs of the speed and memory measurements.
    SyntheticBatch = 11,
}

/// SplitMix64 finaliser: a cheap, well-mixed hash of the seed material.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The stream for `purpose`, indexed by `(a, b)` (e.g. round and client).
pub fn stream(seed: u64, purpose: Purpose, a: u64, b: u64) -> ChaCha8Rng {
    let tag = purpose as u64 + 1;
    let s = mix(mix(mix(seed) ^ tag.wrapping_mul(0xA24B_AED4_963E_E407)) ^ a) ^ mix(b.wrapping_add(0x5851_F42D));
    ChaCha8Rng::seed_from_u64(s)
}

/// The running sums of `weights`, in order (what [`draw_by_cumulative`] draws from).
pub fn running_sums(weights: &[f64]) -> Vec<f64> {
    weights.iter().scan(0.0, |acc, &w| {
        *acc += w;
        Some(*acc)
    }).collect()
}

/// An index drawn with probability proportional to its weight, from the weights' running sums
/// (`cumulative`, its last entry positive): the first whose running sum exceeds a uniform draw
/// on `[0, total)`.
pub fn draw_by_cumulative<R: Rng>(cumulative: &[f64], rng: &mut R) -> usize {
    let u: f64 = rng.random::<f64>() * cumulative[cumulative.len() - 1];
    cumulative.partition_point(|&c| c <= u).min(cumulative.len() - 1)
}

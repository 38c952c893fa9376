//! The machine's FP32 peak, measured: independent chains of fused multiply-adds on the widest
//! vectors the CPU has (AVX-512, else AVX2 with FMA), on one thread and on every core at once.
//! Benchmarks divide a kernel's GFLOP/s by it, so "% of peak" is this machine's, not a data
//! sheet's. Chosen at run time, so one binary runs on any x86-64; elsewhere there is no probe.

use std::time::{Duration, Instant};

/// Independent accumulators: enough to cover the FMA latency (4 cycles) on two FMA ports.
const CHAINS: usize = 12;

/// Which vector instructions the probe (and the kernels that dispatch the same way) use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vectors {
    Avx512,
    Avx2,
}

impl Vectors {
    /// The widest this CPU has; `None` off x86-64 or without AVX2 + FMA.
    pub fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Some(Self::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Some(Self::Avx2);
            }
        }
        None
    }

    pub fn lanes(self) -> usize {
        match self {
            Self::Avx512 => 16,
            Self::Avx2 => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512 => "AVX-512",
            Self::Avx2 => "AVX2+FMA",
        }
    }

    /// `iterations` rounds of `acc ← acc·1 + 1` on every lane of every chain; returns the sum
    /// of all lanes (`CHAINS · lanes · iterations` exactly while that is below 2^24), so the
    /// work cannot be optimised away and a test can check it was all done.
    pub fn fma_chains(self, iterations: usize) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: `self` came from `detect`, which checked the CPU has these instructions.
            unsafe {
                match self {
                    Self::Avx512 => x86::chains_avx512(iterations),
                    Self::Avx2 => x86::chains_avx2(iterations),
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = iterations;
            unreachable!("Vectors::detect finds none off x86-64")
        }
    }

    /// Floating-point operations of [`Self::fma_chains`] (two a lane and FMA).
    pub fn flops(self, iterations: usize) -> f64 {
        2.0 * (CHAINS * self.lanes() * iterations) as f64
    }
}

/// The measured peak, GFLOP/s.
#[derive(Debug, Clone, Copy)]
pub struct Peak {
    pub vectors: Vectors,
    pub one_thread: f64,
    pub threads: usize,
    pub all_threads: f64,
}

impl Peak {
    /// The probe's line for a bench's header, then how `% peak` is read (`how`); the line for
    /// no probe when there is none.
    pub fn header(peak: Option<Peak>, how: &str) -> String {
        match peak {
            Some(p) => format!(
                "measured FP32 peak ({} FMA chains): {:.0} GFLOP/s on 1 thread, {:.0} on {} threads (% peak = {how})",
                p.vectors.name(),
                p.one_thread,
                p.all_threads,
                p.threads
            ),
            None => "no FP32 peak probe here (the CPU backend on x86-64 with AVX2 + FMA or AVX-512): no % of peak".to_string(),
        }
    }

    /// `gflops` (GFLOP/s) as a share of the all-threads peak, `-` without a probe.
    pub fn share(peak: Option<Peak>, gflops: f64) -> String {
        peak.map_or("-".to_string(), |p| format!("{:.0}%", 100.0 * gflops / p.all_threads))
    }
}

/// Measure the peak on one thread and on `threads` threads at once, each for about `span`
/// (the best of three such spans, so a stray interruption does not lower it).
pub fn measure(threads: usize, span: Duration) -> Option<Peak> {
    let vectors = Vectors::detect()?;
    let one_thread = (0..3).map(|_| gflops_for(vectors, span)).fold(0.0, f64::max);
    let threads = threads.max(1);
    let all_threads = (0..3)
        .map(|_| std::thread::scope(|s| (0..threads).map(|_| s.spawn(|| gflops_for(vectors, span))).collect::<Vec<_>>().into_iter().map(|h| h.join().unwrap_or(0.0)).sum::<f64>()))
        .fold(0.0, f64::max);
    Some(Peak { vectors, one_thread, threads, all_threads })
}

/// GFLOP/s of FMA chains run for about `span` on this thread.
fn gflops_for(vectors: Vectors, span: Duration) -> f64 {
    // Batches of 2^20 iterations (~0.1 ms at a few GHz) until `span` has passed.
    const BATCH: usize = 1 << 20;
    let started = Instant::now();
    let mut batches = 0usize;
    while started.elapsed() < span || batches == 0 {
        std::hint::black_box(vectors.fma_chains(std::hint::black_box(BATCH)));
        batches += 1;
    }
    vectors.flops(BATCH) * batches as f64 / started.elapsed().as_secs_f64() / 1e9
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::CHAINS;

    #[target_feature(enable = "avx512f")]
    pub(super) fn chains_avx512(iterations: usize) -> f32 {
        let one = _mm512_set1_ps(1.0);
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..iterations {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, one, one);
            }
        }
        acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn chains_avx2(iterations: usize) -> f32 {
        let one = _mm256_set1_ps(1.0);
        let mut acc = [_mm256_setzero_ps(); CHAINS];
        for _ in 0..iterations {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(*a, one, one);
            }
        }
        let mut lanes = [0.0f32; 8];
        let mut sum = 0.0;
        for a in acc {
            // SAFETY: `lanes` holds 8 floats, one 256-bit store.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), a) };
            sum += lanes.iter().sum::<f32>();
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lane_of_every_chain_does_each_fma() {
        // `acc ← acc·1 + 1` from 0: each lane ends at `iterations`, so the sum counts the
        // FMAs done, which is what the FLOP count assumes.
        for vectors in [Vectors::Avx512, Vectors::Avx2] {
            let available = match Vectors::detect() {
                Some(Vectors::Avx512) => true,
                Some(Vectors::Avx2) => vectors == Vectors::Avx2,
                None => false,
            };
            if !available {
                continue;
            }
            for iterations in [0, 1, 7, 1000] {
                assert_eq!(vectors.fma_chains(iterations), (CHAINS * vectors.lanes() * iterations) as f32, "{vectors:?} × {iterations}");
                assert_eq!(vectors.flops(iterations), 2.0 * (CHAINS * vectors.lanes() * iterations) as f64);
            }
        }
    }

    #[test]
    fn the_peak_is_measured_on_one_and_on_several_threads() {
        let Some(peak) = measure(2, Duration::from_millis(5)) else { return };
        assert_eq!((peak.vectors, peak.threads), (Vectors::detect().unwrap(), 2));
        assert!(peak.one_thread.is_finite() && peak.one_thread > 0.0 && peak.all_threads > 0.0, "{peak:?}");
    }
}

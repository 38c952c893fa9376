//! Client workers: up to N clients of a round train at once, each worker on its own rayon pool
//! (Flex's kernels parallelise on the pool they are called from), results returned in job
//! order so aggregation never depends on which worker finished first.
//!
//! Every thread of worker `w`'s pool is tagged with memory account `w + 1`
//! ([`crate::runtime::memory::tag_thread`]), so a client's measured peak counts its own allocations
//! only. The pools live as long as the `Workers` value: on a GPU each pool thread keeps its
//! own stream across rounds, and no device tensor ever crosses from one worker to another
//! (jobs take and return host data).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use thiserror::Error;

use crate::runtime::memory::{tag_thread, MAX_ACCOUNTS};

#[derive(Debug, Error)]
pub enum WorkerError {
    #[error("federation.workers = {0}: must be in 1..{MAX_ACCOUNTS}")]
    Count(usize),
    #[error("cannot start worker {worker}'s thread pool: {message}")]
    Pool { worker: usize, message: String },
}

/// How the machine's cores are shared between client workers and each worker's kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerLayout {
    pub workers: usize,
    pub threads_per_worker: usize,
}

impl WorkerLayout {
    /// `workers` clients at once, the cores split evenly between them (at least one thread
    /// each). `workers = 0` picks the default for the device: on the CPU one worker per core
    /// with one kernel thread each, which `fedolf bench speed` measured fastest (see the
    /// README's speed section); on a GPU, 2.
    pub fn new(workers: usize, gpu: bool) -> Self {
        let cores = available_cores();
        let workers = match workers {
            0 if gpu => 2,
            0 => cores,
            n => n,
        };
        Self { workers, threads_per_worker: (cores / workers).max(1) }
    }
}

/// Cores this process may use (`RAYON_NUM_THREADS` caps it, as for Flex's own pool).
pub fn available_cores() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse::<usize>().ok()) {
        Some(n) if n > 0 => n,
        _ => cores,
    }
}

pub struct Workers {
    pools: Vec<rayon::ThreadPool>,
}

impl Workers {
    pub fn new(layout: WorkerLayout) -> Result<Self, WorkerError> {
        if layout.workers == 0 || layout.workers >= MAX_ACCOUNTS {
            return Err(WorkerError::Count(layout.workers));
        }
        let pools = (0..layout.workers)
            .map(|worker| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(layout.threads_per_worker)
                    .thread_name(move |i| format!("fedolf-worker-{worker}.{i}"))
                    .start_handler(move |_| tag_thread(worker + 1))
                    .build()
                    .map_err(|e| WorkerError::Pool { worker, message: e.to_string() })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { pools })
    }

    pub fn count(&self) -> usize {
        self.pools.len()
    }

    /// Run `job` once on every worker, one after another (its threads make their one-time
    /// allocations before anything on them is measured).
    pub fn on_each<T: Send>(&self, job: impl Fn() -> T + Sync) -> Vec<T> {
        self.pools.iter().map(|pool| pool.install(&job)).collect()
    }

    /// Run `job(i)` for every `i in 0..jobs`, at most one per worker at a time; the results
    /// come back in job order whatever the finishing order.
    pub fn run_in_order<T: Send>(&self, jobs: usize, job: impl Fn(usize) -> T + Sync) -> Vec<T> {
        self.run_scheduled(&(0..jobs).collect::<Vec<_>>(), job)
    }

    /// [`Self::run_in_order`], starting the jobs in the order `start` (a permutation of
    /// `0..jobs`): longest first keeps a worker from being left with one long client at the
    /// end of a round. The results are still in job order.
    pub fn run_scheduled<T: Send>(&self, start: &[usize], job: impl Fn(usize) -> T + Sync) -> Vec<T> {
        let jobs = start.len();
        debug_assert!({
            let mut sorted = start.to_vec();
            sorted.sort_unstable();
            sorted.iter().enumerate().all(|(i, &j)| i == j)
        });
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<T>>> = Mutex::new((0..jobs).map(|_| None).collect());
        std::thread::scope(|scope| {
            for pool in self.pools.iter().take(jobs) {
                let (next, results, job) = (&next, &results, &job);
                scope.spawn(move || loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= jobs {
                        break;
                    }
                    let i = start[n];
                    // `install` runs the job on one of the pool's (tagged) threads.
                    let out = pool.install(|| job(i));
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(out);
                });
            }
        });
        results
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .into_iter()
            .map(|r| r.expect("every job index below `jobs` is taken by exactly one worker"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_job_order_for_any_worker_count() {
        for workers in [1, 2, 3, 7] {
            let pool = Workers::new(WorkerLayout { workers, threads_per_worker: 1 }).unwrap();
            // Later jobs finish first: the order must still be the job order.
            let out = pool.run_in_order(9, |i| {
                std::thread::sleep(std::time::Duration::from_millis((9 - i as u64) * 2));
                i * i
            });
            assert_eq!(out, (0..9).map(|i| i * i).collect::<Vec<_>>(), "{workers} workers");
            let out = pool.run_scheduled(&[4, 2, 0, 1, 3], |i| i + 10);
            assert_eq!(out, vec![10, 11, 12, 13, 14], "{workers} workers, scheduled");
        }
    }

    #[test]
    fn zero_workers_is_an_error() {
        assert!(matches!(Workers::new(WorkerLayout { workers: 0, threads_per_worker: 1 }), Err(WorkerError::Count(0))));
    }
}

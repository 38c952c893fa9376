//! Practical memory on the CPU: a counting global allocator with a resettable high-water mark.
//!
//! A binary opts in with
//! `#[global_allocator] static ALLOC: fedolf::runtime::memory::CountingAllocator = CountingAllocator::new();`
//! and measures a region with [`CountingAllocator::measure`]: the peak of live heap bytes
//! during the region, above the live bytes just before it (the paper's analogue is
//! `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`). Counters are per
//! allocator instance, not global statics, and count every thread (rayon workers included).
//!
//! Concurrent clients: every allocation is charged to the *account* of the thread that makes
//! it (a deallocation to the thread that frees). A worker tags every thread of its own rayon
//! pool with its account ([`tag_thread`]), so a client measured on that worker sees only its
//! own allocations, never another client's. Untagged threads (the main thread, Flex's global
//! pool) share account 0. Each account sits on its own cache line, so concurrent workers never
//! contend on a counter.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering};

/// Accounts available to workers: `1..MAX_ACCOUNTS` (0 = untagged threads).
pub const MAX_ACCOUNTS: usize = 256;

thread_local! {
    // The allocator reads this on every call, so it must never allocate: a const-initialised
    // `Cell<usize>` has no destructor and no lazy initialisation.
    static ACCOUNT: Cell<usize> = const { Cell::new(0) };
}

/// Charge this thread's allocations to `account` (`1..MAX_ACCOUNTS`; 0 = untagged).
pub fn tag_thread(account: usize) {
    assert!(account < MAX_ACCOUNTS, "memory account {account} out of range (max {})", MAX_ACCOUNTS - 1);
    ACCOUNT.with(|a| a.set(account));
}

fn thread_account() -> usize {
    // `try_with`: a thread being torn down may still free memory.
    ACCOUNT.try_with(Cell::get).unwrap_or(0)
}

/// Net bytes allocated minus freed by one account's threads (negative when they free memory
/// others allocated), and its high-water mark.
#[repr(align(128))]
struct Account {
    net: AtomicIsize,
    peak: AtomicIsize,
}

impl Account {
    const fn new() -> Self {
        Self { net: AtomicIsize::new(0), peak: AtomicIsize::new(0) }
    }
}

pub struct CountingAllocator {
    accounts: [Account; MAX_ACCOUNTS],
}

impl CountingAllocator {
    pub const fn new() -> Self {
        Self { accounts: [const { Account::new() }; MAX_ACCOUNTS] }
    }

    /// Run `f`; return its result and the peak extra heap bytes it needed: the high-water mark
    /// of the calling thread's account above its value at the start (a worker's pool, or the
    /// untagged threads together).
    pub fn measure<T>(&self, f: impl FnOnce() -> T) -> (T, usize) {
        let account = &self.accounts[thread_account()];
        let base = account.net.load(Ordering::Relaxed);
        account.peak.store(base, Ordering::Relaxed);
        let out = f();
        (out, (account.peak.load(Ordering::Relaxed) - base).max(0) as usize)
    }

    fn add(&self, size: usize) {
        let account = &self.accounts[thread_account()];
        let now = account.net.fetch_add(size as isize, Ordering::Relaxed) + size as isize;
        account.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn sub(&self, size: usize) {
        self.accounts[thread_account()].net.fetch_sub(size as isize, Ordering::Relaxed);
    }
}

impl Default for CountingAllocator {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every call forwards to the system allocator unchanged; the counters are only
// bookkeeping on the side.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            self.add(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            self.add(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        self.sub(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                self.add(new_size - layout.size());
            } else {
                self.sub(layout.size() - new_size);
            }
        }
        p
    }
}

//! Practical memory on the CPU: a counting global allocator with a resettable high-water mark.
//!
//! A binary opts in with
//! `#[global_allocator] static ALLOC: fedolf::memory::CountingAllocator = CountingAllocator::new();`
//! and measures a region with [`CountingAllocator::measure`]: the peak of live heap bytes
//! during the region, above the live bytes just before it (the paper's analogue is
//! `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`). Counters are per
//! allocator instance, not global statics, and count every thread (rayon workers included).
//!
//! Concurrent clients: every allocation is also charged to the *account* of the thread that
//! makes it (a deallocation to the thread that frees). A worker tags every thread of its own
//! rayon pool with its account ([`tag_thread`]), so a client measured on that worker sees only
//! its own allocations, never another client's (`measure` on a tagged thread reads the
//! thread's account; on an untagged thread, the whole heap).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

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
    current: AtomicUsize,
    peak: AtomicUsize,
    accounts: [Account; MAX_ACCOUNTS],
}

impl CountingAllocator {
    pub const fn new() -> Self {
        Self { current: AtomicUsize::new(0), peak: AtomicUsize::new(0), accounts: [const { Account::new() }; MAX_ACCOUNTS] }
    }

    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Restart the high-water mark from the current live bytes.
    pub fn reset_peak(&self) -> usize {
        let now = self.current();
        self.peak.store(now, Ordering::Relaxed);
        now
    }

    /// Run `f`; return its result and the peak extra heap bytes it needed. On a thread tagged
    /// with an account, only that account's threads count (concurrent clients stay apart);
    /// elsewhere, the whole heap.
    pub fn measure<T>(&self, f: impl FnOnce() -> T) -> (T, usize) {
        match thread_account() {
            0 => {
                let base = self.reset_peak();
                let out = f();
                (out, self.peak().saturating_sub(base))
            }
            id => {
                let account = &self.accounts[id];
                let base = account.net.load(Ordering::Relaxed);
                account.peak.store(base, Ordering::Relaxed);
                let out = f();
                (out, (account.peak.load(Ordering::Relaxed) - base).max(0) as usize)
            }
        }
    }

    fn add(&self, size: usize) {
        let now = self.current.fetch_add(size, Ordering::Relaxed) + size;
        self.peak.fetch_max(now, Ordering::Relaxed);
        let id = thread_account();
        if id != 0 {
            let account = &self.accounts[id];
            let now = account.net.fetch_add(size as isize, Ordering::Relaxed) + size as isize;
            account.peak.fetch_max(now, Ordering::Relaxed);
        }
    }

    fn sub(&self, size: usize) {
        self.current.fetch_sub(size, Ordering::Relaxed);
        let id = thread_account();
        if id != 0 {
            self.accounts[id].net.fetch_sub(size as isize, Ordering::Relaxed);
        }
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

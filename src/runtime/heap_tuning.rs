//! glibc's heap settings for training: tensors of a few MB are allocated and freed every
//! step, and with glibc's defaults each comes from a fresh `mmap` (or a trimmed heap top), so
//! every step page-faults its working set back in — measured 40 % of a ResNet20 step on the
//! project's 2-core machine (`examples/profile_step resnet20 128 0`: 0.51–0.62 s with the
//! defaults, 0.34–0.37 s with these settings). Binaries call [`keep_freed_memory`] once at
//! start; the library never changes process settings by itself.
//!
//! What it costs: memory freed by the process stays mapped (up to the trim threshold) for the
//! next step instead of going back to the OS, as PyTorch's caching allocator does. The heap
//! bytes fedolf reports (the counting allocator) are what is requested, unchanged by this.

/// Allocations up to this size come from the heap, never from their own `mmap` (glibc's
/// maximum on 64-bit; the default starts at 128 kB and adapts).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory at the heap top is returned to the OS only beyond this.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = 512 << 20;

/// Keeps freed heap memory mapped for reuse (glibc on Linux; elsewhere nothing). Returns
/// whether the settings were applied.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only adjusts allocator parameters; it is called before the
        // process starts its worker threads.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

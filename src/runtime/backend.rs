//! The one place that maps cargo features to Burn backends.
//!
//! `flex` (default): `Autodiff<Flex>` on the CPU, multi-threaded with rayon.
//! `cuda`: `Autodiff<Cuda>` (NVIDIA; kernels compiled at run time with NVRTC).
//! `wgpu`: `Autodiff<Wgpu>` (Vulkan / Metal / DX12).
//! The CLI's `--device` picks among the ones compiled in; code is generic over
//! [`AutodiffBackend`] and reached through [`with_backend`].

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    #[default]
    Cpu,
    Cuda,
    Wgpu,
}

impl DeviceKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Wgpu => "wgpu",
        }
    }

    pub fn parse(s: &str) -> Result<Self, BackendError> {
        match s {
            "cpu" | "flex" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            "wgpu" | "vulkan" => Ok(Self::Wgpu),
            other => Err(BackendError::Unknown(other.to_string())),
        }
    }

    /// Devices this binary was built with.
    pub fn compiled() -> Vec<Self> {
        let mut v = Vec::new();
        if cfg!(feature = "flex") {
            v.push(Self::Cpu);
        }
        if cfg!(feature = "cuda") {
            v.push(Self::Cuda);
        }
        if cfg!(feature = "wgpu") {
            v.push(Self::Wgpu);
        }
        v
    }
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum BackendError {
    #[error("unknown device `{0}` (cpu, cuda, wgpu)")]
    Unknown(String),
    #[error("device `{0}` is not compiled into this binary; rebuild with `--features {0}`")]
    NotCompiled(&'static str),
    #[error("device `{device}` is not available: {why}")]
    Unavailable { device: &'static str, why: String },
}

/// Work that runs on whichever backend the user picked.
pub trait BackendTask {
    type Output;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output;
}

#[cfg(feature = "flex")]
pub type CpuBackend = burn::backend::Autodiff<burn::backend::Flex>;
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Autodiff<burn::backend::Cuda>;
#[cfg(feature = "wgpu")]
pub type WgpuBackend = burn::backend::Autodiff<burn::backend::Wgpu>;

/// Run `task` on the backend for `kind`.
pub fn with_backend<T: BackendTask>(kind: DeviceKind, task: T) -> Result<T::Output, BackendError> {
    match kind {
        #[cfg(feature = "flex")]
        DeviceKind::Cpu => Ok(task.run::<CpuBackend>(Default::default())),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => Ok(task.run::<CudaBackend>(Default::default())),
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => Ok(task.run::<WgpuBackend>(Default::default())),
        #[allow(unreachable_patterns)]
        other => Err(BackendError::NotCompiled(other.name())),
    }
}

/// Check that `kind`'s device answers (one tiny tensor sent and read back) before anything
/// runs, so a missing driver or adapter is an error that names the device and what is
/// missing, instead of a panic on CubeCL's device thread. Call it on the main thread before
/// any worker starts: it swaps the panic hook while it runs, to keep the device thread's panic
/// off the terminal and keep its message.
pub fn probe(kind: DeviceKind) -> Result<(), BackendError> {
    struct Roundtrip;
    impl BackendTask for Roundtrip {
        type Output = ();
        fn run<B: AutodiffBackend>(self, device: B::Device) {
            let _ = burn::tensor::Tensor::<B, 1>::zeros([1], &device).into_data();
        }
    }
    if kind == DeviceKind::Cpu {
        return with_backend(kind, Roundtrip);
    }
    let first = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let previous = std::panic::take_hook();
    let seen = first.clone();
    std::panic::set_hook(Box::new(move |info| {
        let message = info.payload().downcast_ref::<String>().cloned().or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()));
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.is_none() {
            *seen = message;
        }
    }));
    // CubeCL logs the failed device task too; the error below says it once.
    let level = log::max_level();
    log::set_max_level(log::LevelFilter::Off);
    let outcome = std::panic::catch_unwind(|| with_backend(kind, Roundtrip));
    log::set_max_level(level);
    std::panic::set_hook(previous);
    match outcome {
        Ok(result) => result,
        Err(_) => {
            let message = first.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
            Err(BackendError::Unavailable { device: kind.name(), why: unavailable_reason(kind, &message) })
        }
    }
}

/// The first clause of a device thread's panic message, and what to install.
fn unavailable_reason(kind: DeviceKind, message: &str) -> String {
    let line = message.lines().next().unwrap_or_default();
    let clause = [" - ", ". ", ".:"].iter().filter_map(|sep| line.find(sep)).min().map_or(line, |i| &line[..i]).trim();
    let clause = if clause.is_empty() { "the device did not start" } else { clause };
    let hint = match kind {
        DeviceKind::Cuda => "no NVIDIA driver: libcuda is not on this machine",
        DeviceKind::Wgpu => "no Vulkan device; without a GPU, Mesa's lavapipe is one: apt-get install mesa-vulkan-drivers libvulkan1",
        DeviceKind::Cpu => "",
    };
    format!("{clause} ({hint})")
}

/// Bytes in use on the calling thread's stream of a CubeCL device (cuda, wgpu), read from
/// CubeCL's memory statistics (`ComputeClient::memory_usage().bytes_in_use`): the memory
/// pages' slices handed out to live tensors on this stream (each worker thread has its own
/// stream and memory manager, so other clients' tensors are not in it), not the pool reserved
/// around them. The caller syncs first (`Backend::sync`) so queued kernels have run. `None` on
/// the CPU, whose memory the counting allocator measures.
pub fn device_bytes_in_use<D: std::any::Any>(device: &D) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let Some(device) = (device as &dyn std::any::Any).downcast_ref::<burn::backend::cuda::CudaDevice>() {
        let client = <cubecl::cuda::CudaRuntime as cubecl::Runtime>::client(device);
        return client.memory_usage().ok().map(|usage| usage.bytes_in_use);
    }
    #[cfg(feature = "wgpu")]
    if let Some(device) = (device as &dyn std::any::Any).downcast_ref::<burn::backend::wgpu::WgpuDevice>() {
        let client = <cubecl::wgpu::WgpuRuntime as cubecl::Runtime>::client(device);
        return client.memory_usage().ok().map(|usage| usage.bytes_in_use);
    }
    let _ = device;
    None
}

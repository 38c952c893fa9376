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

//! Choosing the device natively (`--backend`).

use burn::tensor::{Device, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// wgpu: Vulkan, Metal or DX12 on the GPU (Mesa lavapipe on a CPU-only machine).
    Wgpu,
    /// Burn's pure-Rust multi-threaded CPU backend.
    Flex,
    /// NVIDIA CUDA (build with `--features cuda`).
    #[cfg(feature = "cuda")]
    Cuda,
    /// Burn's deprecated ndarray CPU backend (build with `--features ndarray`), for comparison.
    #[cfg(feature = "ndarray")]
    Ndarray,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Self::Wgpu => "wgpu",
            Self::Flex => "flex",
            #[cfg(feature = "cuda")]
            Self::Cuda => "cuda",
            #[cfg(feature = "ndarray")]
            Self::Ndarray => "ndarray",
        };
        f.write_str(name)
    }
}

/// The device for `backend`, checked with a tiny computation so that a missing GPU adapter
/// is reported as an error here rather than as a panic in the middle of training.
pub fn device(backend: Backend) -> Result<Device, String> {
    let device = match backend {
        // Initialised eagerly (once per process: the runtime cannot be initialised twice) so
        // that a missing adapter is an error here, not a panic in the middle of training.
        Backend::Wgpu => {
            static WGPU: std::sync::OnceLock<Result<Device, String>> = std::sync::OnceLock::new();
            WGPU.get_or_init(|| {
                Device::wgpu_options().init().map_err(|e| {
                    format!(
                        "backend wgpu could not start ({e}). On a machine without a GPU use \
                         --backend flex, or install Mesa's Vulkan drivers (lavapipe)"
                    )
                })
            })
            .clone()?
        }
        Backend::Flex => Device::flex(),
        #[cfg(feature = "cuda")]
        Backend::Cuda => Device::cuda(0),
        #[cfg(feature = "ndarray")]
        Backend::Ndarray => Device::ndarray(),
    };
    let probe = device.clone();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(move || {
        let t = Tensor::<1>::from_floats([1.0, 2.0], &probe);
        t.sum().into_scalar::<f32>()
    });
    std::panic::set_hook(hook);
    match result {
        Ok(v) if v == 3.0 => Ok(device),
        Ok(v) => Err(format!("backend {backend}: a self-test computed {v} instead of 3")),
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!(
                "backend {backend} could not start ({msg}). On a machine without a GPU use \
                 --backend flex, or install Mesa's Vulkan drivers (lavapipe) for wgpu"
            ))
        }
    }
}

//! Choosing the device natively (`--backend`), and saying which one it was.

use crate::error::Error;
use burn::tensor::{Device, Tensor};
use cifar_core::train::limits::BufferLimits;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// wgpu on a real GPU adapter; flex when the only adapters are CPU implementations
    /// (lavapipe, llvmpipe, SwiftShader, WARP) or there is none.
    Auto,
    /// wgpu: Vulkan, Metal or DX12 on the GPU (Mesa lavapipe on a CPU-only machine).
    Wgpu,
    /// Burn's pure-Rust multi-threaded CPU backend.
    Flex,
    /// NVIDIA CUDA (build with tools/cuda_build.sh: `--features cuda` and Debian's LLVM).
    #[cfg(feature = "cuda")]
    Cuda,
    /// Burn's deprecated ndarray CPU backend (build with `--features ndarray`), for comparison.
    #[cfg(feature = "ndarray")]
    Ndarray,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Self::Auto => "auto",
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

/// The arithmetic of the CPU kernels' convolutions (`--precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    /// bf16 convolutions on flex where the CPU has AMX-BF16, f32 otherwise and on GPUs.
    Auto,
    /// Exact f32 everywhere.
    F32,
    /// bf16 operands with f32 sums in the convolutions (flex on a CPU with AMX-BF16 only).
    Bf16,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}

/// How GPU runs compute the 3×3 convolution's forward (`--gpu-conv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GpuConv {
    /// `gemm` on a real GPU; `burn` on a CPU adapter (lavapipe, SwiftShader), where Burn's
    /// direct kernel is the faster of the two.
    Auto,
    /// GEMMs over im2col, Burn's backward kernels (`cifar_core::model::gpu_conv`).
    Gemm,
    /// `gemm` with f16 operands and f32 sums in all three GEMMs (forward, input and weight
    /// gradients; the gradient scaled per tensor first). Needs an adapter with f16 shaders.
    GemmF16,
    /// Burn's `conv2d`: its direct kernel through WGSL (no cooperative matrices); through CUDA
    /// autotuned among implicit GEMMs on tensor cores as well.
    Burn,
}

/// The device a run used, as printed at its start and recorded in `config.json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeviceInfo {
    /// The backend that runs (`wgpu`, `flex`, `cuda`): never `auto`.
    pub backend: String,
    /// The adapter's name (wgpu), the CPU's (flex), the GPU's ordinal (cuda).
    pub adapter: String,
    /// wgpu's adapter type: DiscreteGpu, IntegratedGpu, VirtualGpu, Cpu, Other; `Cpu` for flex.
    pub device_type: String,
    /// Driver and driver version as the adapter reports them (empty where unknown).
    pub driver: String,
    /// Graphics API (Vulkan, Metal, Dx12, Gl) for wgpu; empty otherwise.
    pub api: String,
    /// The convolutions' arithmetic: `f32`, or `bf16` (flex with AMX-BF16; f32 sums).
    pub precision: String,
    /// GPUs: how the 3×3 convolution runs, `gemm`, `gemm-f16` or `burn` (`--gpu-conv`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_conv: Option<String>,
    /// CUDA: the card's compute capability, major and minor (`[9, 0]` on an H100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compute_capability: Option<[u32; 2]>,
    /// Why `--backend auto` chose this backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The GPU's buffer limits (wgpu); runs are checked against them before they start.
    #[serde(skip)]
    pub limits: Option<BufferLimits>,
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {} ({}", self.backend, self.adapter, self.device_type)?;
        if !self.api.is_empty() {
            write!(f, ", {}", self.api)?;
        }
        if !self.driver.is_empty() {
            write!(f, ", driver {}", self.driver)?;
        }
        f.write_str(")")?;
        if self.precision != "f32" {
            write!(f, ", {} convolutions", self.precision)?;
        }
        if let Some(c) = &self.gpu_conv {
            write!(f, ", {c} convolutions")?;
        }
        if let Some(r) = &self.reason {
            write!(f, ": {r}")?;
        }
        Ok(())
    }
}

/// The processor's model name (Linux), else the architecture.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|n| n.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn flex_info(reason: Option<String>) -> DeviceInfo {
    DeviceInfo {
        backend: "flex".into(),
        adapter: cpu_name(),
        device_type: "Cpu".into(),
        driver: String::new(),
        api: String::new(),
        precision: "f32".into(),
        gpu_conv: None,
        compute_capability: None,
        reason,
        limits: None,
    }
}

/// The graphics API and the language CubeCL compiles kernels to on it: SPIR-V on Vulkan in
/// builds with the `vulkan` feature (CubeCL falls back to WGSL only on a Vulkan driver
/// without the features its SPIR-V compiler needs), WGSL otherwise.
fn shader_api(api: impl std::fmt::Debug) -> String {
    let api = format!("{api:?}");
    let spirv = cfg!(feature = "vulkan") && api == "Vulkan";
    format!("{api} ({})", if spirv { "SPIR-V" } else { "WGSL" })
}

/// wgpu's device and adapter, initialised once per process (the runtime cannot be
/// initialised twice), or why it could not start.
fn wgpu_device() -> Result<(Device, DeviceInfo), String> {
    static WGPU: std::sync::OnceLock<Result<(Device, DeviceInfo), String>> = std::sync::OnceLock::new();
    WGPU.get_or_init(|| {
        let (device, setup) = Device::wgpu_options().init_with_setup().map_err(|e| e.to_string())?;
        let a = setup.adapter.get_info();
        let driver = [a.driver.trim(), a.driver_info.trim()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        let info = DeviceInfo {
            backend: "wgpu".into(),
            adapter: a.name.clone(),
            device_type: format!("{:?}", a.device_type),
            driver,
            api: shader_api(a.backend),
            precision: "f32".into(),
            gpu_conv: None,
            compute_capability: None,
            reason: None,
            limits: Some(BufferLimits {
                max_binding: setup.device.limits().max_storage_buffer_binding_size,
                max_buffer: setup.device.limits().max_buffer_size,
            }),
        };
        Ok((device, info))
    })
    .clone()
}

/// CUDA device 0 and what it is, asked of the driver first (cudarc loads `libcuda` at run
/// time), so that a machine without an NVIDIA driver or GPU gets a sentence, not a panic in
/// CubeCL's runtime.
#[cfg(feature = "cuda")]
fn cuda_device() -> Result<(Device, DeviceInfo), Error> {
    use cudarc::driver::{CudaContext, sys};
    let fail = |why: String| Error::Backend(format!("backend cuda could not start: {why}"));
    // SAFETY: only looks for the driver library; nothing is called through it.
    if !unsafe { sys::is_culib_present() } {
        return Err(fail(
            "the NVIDIA driver's library (libcuda.so) was not found; this needs an NVIDIA GPU \
             and its driver (--backend wgpu or flex otherwise)"
                .into(),
        ));
    }
    let count = CudaContext::device_count().map_err(|e| fail(format!("the driver found no GPU ({e})")))?;
    if count < 1 {
        return Err(fail("the driver reports no CUDA device".into()));
    }
    let ctx = CudaContext::new(0).map_err(|e| fail(format!("device 0: {e}")))?;
    let name = ctx.name().map_err(|e| fail(format!("device 0's name: {e}")))?;
    let (major, minor) = ctx.compute_capability().map_err(|e| fail(format!("device 0: {e}")))?;
    let memory = ctx.total_mem().map_err(|e| fail(format!("device 0: {e}")))?;
    let mut driver = 0;
    // SAFETY: the driver writes one int; the library was found above.
    unsafe { sys::cuDriverGetVersion(&mut driver) }.result().map_err(|e| fail(format!("the driver's version: {e}")))?;
    let info = DeviceInfo {
        backend: "cuda".into(),
        adapter: format!("{name} (device 0 of {count}, sm_{major}{minor}, {} MiB)", memory >> 20),
        device_type: "DiscreteGpu".into(),
        // cuDriverGetVersion: 1000 × major + 10 × minor, the CUDA version the driver supports.
        driver: format!("CUDA {}.{}", driver / 1000, (driver % 1000) / 10),
        api: "CUDA".into(),
        precision: "f32".into(),
        gpu_conv: None,
        compute_capability: Some([major as u32, minor as u32]),
        reason: None,
        limits: None,
    };
    drop(ctx);
    Ok((Device::cuda(0), info))
}

/// The device for `backend` and what it is. `auto` picks wgpu on a real GPU adapter, flex
/// otherwise, and says why. Every device is checked with a tiny computation so that a broken
/// one is reported here rather than as a panic in the middle of training. `precision` is then
/// resolved and set for the process (the CPU kernels read it), and on a GPU `gpu_conv` (the
/// model reads it).
pub fn select(backend: Backend, precision: Precision, gpu_conv: GpuConv) -> Result<(Device, DeviceInfo), Error> {
    // Refused before a GPU is started where the answer is known already.
    if precision == Precision::Bf16 && !matches!(backend, Backend::Flex | Backend::Auto) {
        return Err(bf16_off_host(&backend.to_string()));
    }
    let (device, mut info) = select_device(backend)?;
    use_tuning_environment(&info);
    let on_host = info.backend == "flex";
    let chosen = match precision {
        Precision::Auto if on_host => flex_kernels::Precision::fastest(),
        Precision::Auto | Precision::F32 => flex_kernels::Precision::F32,
        Precision::Bf16 if on_host => flex_kernels::Precision::Bf16,
        Precision::Bf16 => return Err(bf16_off_host(&info.backend)),
    };
    flex_kernels::precision::set(chosen).map_err(|e| Error::Backend(e.to_string()))?;
    info.precision = chosen.name().into();
    if cifar_core::model::ops::is_cube(&device) {
        use cifar_core::model::ops::{GpuConvPath, set_gpu_conv_path};
        let path = match gpu_conv {
            GpuConv::Gemm => GpuConvPath::Gemm,
            GpuConv::GemmF16 => GpuConvPath::GemmF16,
            GpuConv::Burn => GpuConvPath::Burn,
            GpuConv::Auto => GpuConvPath::auto(info.device_type == "Cpu"),
        };
        if !path.supported_on(&device) {
            return Err(Error::Backend(format!(
                "--gpu-conv {} needs f16 shaders, and {} ({}) has none (--gpu-conv gemm runs in f32)",
                path.name(),
                info.adapter,
                info.api
            )));
        }
        set_gpu_conv_path(path);
        info.gpu_conv = Some(path.name().into());
    }
    Ok((device, info))
}

/// The CubeCL environment that autotune results on this device are kept in
/// (`target/environment/<name>.db` beside the outermost Cargo.toml above the working
/// folder, else the user's cache folder). CubeCL keys its results by the device's kind and the
/// runtime, not by the adapter, so one environment per backend, adapter and driver keeps a
/// choice tuned on one GPU (or on lavapipe) from being applied to another, where it might not
/// even run. Readable, and unique through a hash of the whole identity.
pub fn tuning_environment(info: &DeviceInfo) -> String {
    let id = format!("{}-{}-{}", info.backend, info.adapter, info.driver);
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let readable: String = id.chars().take(48).collect();
    format!("{readable}-{:08x}", hash >> 32)
}

/// Makes [`tuning_environment`] CubeCL's active environment, unless it is already: every
/// switch empties the tuners' memory and reads the database again (`bench` selects each device
/// twice, and rows of one device one after the other).
fn use_tuning_environment(info: &DeviceInfo) {
    static ACTIVE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let name = tuning_environment(info);
    let mut active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
    if active.as_deref() != Some(name.as_str()) {
        cubecl_environment::environment::activate(&name);
        *active = Some(name);
    }
}

fn bf16_off_host(backend: &str) -> Error {
    Error::Backend(format!(
        "--precision bf16 is implemented by the CPU kernels (flex) only; {backend} trains in f32 \
         (--precision f32 or auto)"
    ))
}

fn select_device(backend: Backend) -> Result<(Device, DeviceInfo), Error> {
    let (device, info) = match backend {
        Backend::Auto => match wgpu_device() {
            Ok((device, info)) if info.device_type != "Cpu" => {
                let reason = format!("a {} GPU adapter", info.device_type);
                (device, DeviceInfo { reason: Some(reason), ..info })
            }
            Ok((_, info)) => {
                let reason = format!(
                    "wgpu's only adapter, {} ({}), is a CPU implementation: flex trains faster on this CPU; \
                     --backend wgpu forces it",
                    info.adapter, info.api
                );
                (Device::flex(), flex_info(Some(reason)))
            }
            Err(e) => (Device::flex(), flex_info(Some(format!("no wgpu adapter ({e})")))),
        },
        Backend::Wgpu => wgpu_device().map_err(|e| {
            Error::Backend(format!(
                "backend wgpu could not start ({e}). On a machine without a GPU use \
                 --backend flex, or install Mesa's Vulkan drivers (lavapipe)"
            ))
        })?,
        Backend::Flex => (Device::flex(), flex_info(None)),
        #[cfg(feature = "cuda")]
        Backend::Cuda => cuda_device()?,
        #[cfg(feature = "ndarray")]
        Backend::Ndarray => (Device::ndarray(), DeviceInfo { backend: "ndarray".into(), ..flex_info(None) }),
    };
    self_test(&device, &info.backend)?;
    Ok((device, info))
}

/// The device for `backend` (see [`select`]), leaving the precision as it is.
pub fn device(backend: Backend) -> Result<Device, Error> {
    select_device(backend).map(|(device, _)| device)
}

fn self_test(device: &Device, backend: &str) -> Result<(), Error> {
    let probe = device.clone();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(move || {
        let t = Tensor::<1>::from_floats([1.0, 2.0], &probe);
        t.sum().into_scalar::<f32>()
    });
    std::panic::set_hook(hook);
    match result {
        Ok(3.0) => Ok(()),
        Ok(v) => Err(Error::Backend(format!("backend {backend}: a self-test computed {v} instead of 3"))),
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(Error::Backend(format!(
                "backend {backend} could not start ({msg}). On a machine without a GPU use \
                 --backend flex, or install Mesa's Vulkan drivers (lavapipe) for wgpu"
            )))
        }
    }
}

/// One line of `check-device`: a computation on the device against the same one in f64 on
/// the host.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub what: String,
    /// Largest |device − host| over the largest |host| value.
    pub rel_err: f64,
    /// The largest `rel_err` that passes.
    pub tolerance: f64,
    /// Whether training depends on it (our BatchNorm) or it is Burn's op, kept to show the
    /// upstream defect that `src/batchnorm.rs` works around.
    pub ours: bool,
}

impl Check {
    pub fn ok(&self) -> bool {
        self.rel_err <= self.tolerance
    }
}

/// Tolerance of [`check_device`]: f32 sums of up to 2²¹ values of about one.
pub const CHECK_TOLERANCE: f64 = 1e-4;

/// Tolerance of the f32 convolution checks where f32 matmuls may run in TF32 (10-bit
/// mantissas, ~5e-4 per rounded operand): the GEMM path and Burn's `conv2d` may round
/// differently, while a wrong result is off by 1e-2 and more.
pub const TF32_TOLERANCE: f64 = 5e-3;

/// Whether the device's f32 matmuls may run on TF32 tensor cores: CubeCL registers TF32 on
/// CUDA from compute capability 8.0, and Burn's matmul autotune then includes TF32 kernels
/// for f32 operands (cubek's `adjust_dtypes`), as PyTorch's default does for convolutions.
pub fn tf32_matmuls(info: &DeviceInfo) -> bool {
    info.backend == "cuda" && info.compute_capability.is_some_and(|[major, _]| major >= 8)
}

fn rel_err(want: &[f64], got: &[f32]) -> f64 {
    let scale = want.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
    want.iter().zip(got).fold(0.0, |m, (w, g)| m.max((w - *g as f64).abs() / scale))
}

/// Per-channel mean and biased variance of an NCHW tensor's values, in f64 on the host: the
/// reference the device's BatchNorm statistics are checked against.
pub fn channel_stats(values: &[f32], [b, c, h, w]: [usize; 4]) -> (Vec<f64>, Vec<f64>) {
    let n = (b * h * w) as f64;
    let channel = |i: usize| i / (h * w) % c;
    let mut mean = vec![0f64; c];
    for (i, v) in values.iter().enumerate() {
        mean[channel(i)] += *v as f64 / n;
    }
    let mut var = vec![0f64; c];
    for (i, v) in values.iter().enumerate() {
        var[channel(i)] += (*v as f64 - mean[channel(i)]).powi(2) / n;
    }
    (mean, var)
}

/// Reductions and BatchNorm statistics on `device` against the host: sums over rows of 2¹⁰
/// to 2²¹ values (Burn's `sum_dim`), the batch statistics of Burn's `batch_norm_train` and of
/// our [`cifar_core::model::batchnorm::BatchNorm`] at the shape of the first layer (width 0.25, batch 128);
/// on a GPU our convolutions. `tf32`: the device's f32 matmuls may run in TF32
/// ([`tf32_matmuls`]), so the f32 convolution checks take [`TF32_TOLERANCE`].
pub fn check_device(device: &Device, tf32: bool) -> Vec<Check> {
    use burn::tensor::TensorData;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let mut out = Vec::new();
    for log2 in [10, 14, 15, 16, 17, 19, 21] {
        let n = 1usize << log2;
        let host: Vec<f32> = (0..n).map(|_| uniform()).collect();
        let want = host.iter().map(|v| *v as f64).sum::<f64>();
        let t = Tensor::<2>::from_data(TensorData::new(host, [1, n]), device);
        let got: Vec<f32> = t.sum_dim(1).into_data().try_to_vec::<f32>().unwrap_or_default();
        out.push(Check {
            what: format!("Burn sum_dim over a row of 2^{log2} values"),
            rel_err: rel_err(&[want], &got),
            tolerance: CHECK_TOLERANCE,
            ours: false,
        });
    }
    let shape = [128, 16, 32, 32];
    let [b, c, h, w] = shape;
    let host: Vec<f32> = (0..b * c * h * w).map(|i| uniform() + (i / (h * w) % c) as f32 * 0.1).collect();
    let n = (b * h * w) as f64;
    let (mean, var) = channel_stats(&host, shape);
    let ad = device.clone().autodiff();
    let x = Tensor::<4>::from_data(TensorData::new(host, shape), &ad);
    let stats =
        burn::tensor::module::batch_norm_train(x.clone(), Tensor::ones([c], &ad), Tensor::zeros([c], &ad), 1e-5);
    let read = |t: Tensor<1>| -> Vec<f32> { t.inner().into_data().try_to_vec::<f32>().unwrap_or_default() };
    out.push(Check {
        what: format!("Burn batch_norm_train mean, {shape:?}"),
        rel_err: rel_err(&mean, &read(stats.mean)),
        tolerance: CHECK_TOLERANCE,
        ours: false,
    });
    out.push(Check {
        what: format!("Burn batch_norm_train variance, {shape:?}"),
        rel_err: rel_err(&var, &read(stats.variance)),
        tolerance: CHECK_TOLERANCE,
        ours: false,
    });
    // Ours: the running statistics after one step from (mean 0, variance 1), momentum 0.1,
    // with PyTorch's unbiased variance.
    let bn = cifar_core::model::batchnorm::BatchNorm::new(c, &ad);
    let _ = bn.forward(x);
    let running_mean: Vec<f64> = mean.iter().map(|m| 0.1 * m).collect();
    let running_var: Vec<f64> = var.iter().map(|v| 0.9 + 0.1 * v * n / (n - 1.0)).collect();
    out.push(Check {
        what: format!("our BatchNorm running mean, {shape:?}"),
        rel_err: rel_err(&running_mean, &read(bn.running_mean.value_sync())),
        tolerance: CHECK_TOLERANCE,
        ours: true,
    });
    out.push(Check {
        what: format!("our BatchNorm running variance, {shape:?}"),
        rel_err: rel_err(&running_var, &read(bn.running_var.value_sync())),
        tolerance: CHECK_TOLERANCE,
        ours: true,
    });
    if cifar_core::model::ops::is_cube(device) {
        out.extend(check_gpu_conv(&ad, tf32, &mut uniform));
    }
    out
}

/// A device tensor's values as f32 on the host; empty if they cannot be read (a check then
/// fails rather than passing on an empty comparison).
fn host_values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default()
}

/// Our GPU convolution (GEMMs over im2col, `--gpu-conv gemm` and `gemm-f16`) against Burn's
/// `conv2d` on the same device: output, input gradient and weight gradient, at a batch that
/// takes three im2col chunks.
fn check_gpu_conv(ad: &Device, tf32: bool, uniform: &mut impl FnMut() -> f32) -> Vec<Check> {
    use burn::tensor::TensorData;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use cifar_core::model::gpu_conv;
    let [n, c, h, w, o] = [64, 64, 32, 32, 16];
    debug_assert!(n > 2 * gpu_conv::chunk_images(c, h, w));
    let xs: Vec<f32> = (0..n * c * h * w).map(|_| uniform() - 0.5).collect();
    let ws: Vec<f32> = (0..o * c * 9).map(|_| uniform() - 0.5).collect();
    let opts = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    // A weighted sum is the loss, so that every output position has its own gradient.
    let upstream: Vec<f32> = (0..n * o * h * w).map(|i| (i % 7) as f32 - 3.0).collect();
    // Output, input gradient and weight gradient of `path` (None: Burn's conv2d; Some(half): ours).
    let run = |path: Option<bool>, xs: &[f32], ws: &[f32], upstream: &[f32]| -> [Vec<f32>; 3] {
        let x = Tensor::<4>::from_data(TensorData::new(xs.to_vec(), [n, c, h, w]), ad).require_grad();
        let wt = Tensor::<4>::from_data(TensorData::new(ws.to_vec(), [o, c, 3, 3]), ad).require_grad();
        let y = match path {
            Some(half) => gpu_conv::conv3x3(x.clone(), wt.clone(), half),
            None => conv2d(x.clone(), wt.clone(), None, opts.clone()),
        };
        let weights = Tensor::<4>::from_data(TensorData::new(upstream.to_vec(), [n, o, h, w]), ad);
        let grads = (y.clone() * weights).sum().backward();
        let dx = x.grad(&grads).map(host_values).unwrap_or_default();
        let dw = wt.grad(&grads).map(host_values).unwrap_or_default();
        [host_values(y.inner()), dx, dw]
    };
    let (want, got) = (run(None, &xs, &ws, &upstream), run(Some(false), &xs, &ws, &upstream));
    let shape = [n, c, h, w];
    // A missing tensor must not pass as an empty comparison.
    let compare = |want: &[f32], got: &[f32]| {
        let want: Vec<f64> = want.iter().map(|v| *v as f64).collect();
        if got.len() == want.len() && !want.is_empty() { rel_err(&want, got) } else { f64::INFINITY }
    };
    let what = ["output", "input gradient", "weight gradient"];
    let mut checks: Vec<Check> = what
        .iter()
        .zip(want.iter().zip(&got))
        .map(|(what, (want, got))| Check {
            what: format!(
                "our GPU 3x3 conv (GEMM{}) {what}, {shape:?} -> {o}",
                if tf32 { ", TF32 tolerance" } else { "" }
            ),
            rel_err: compare(want, got),
            tolerance: if tf32 { TF32_TOLERANCE } else { CHECK_TOLERANCE },
            ours: true,
        })
        .collect();
    // gemm-f16 against Burn's f32 conv2d of what it specifies: x and w rounded to f16, and the
    // upstream gradient scaled to a peak of HALF_GRAD_PEAK and rounded to f16, the gradients
    // then scaled back on the host. The same products, so only the summation order differs if
    // the sums are f32 (f16 sums would be ~1e-3 off); f16 values are exact in TF32 too, so
    // this holds where Burn's conv2d runs in TF32.
    if cifar_core::model::ops::GpuConvPath::GemmF16.supported_on(&ad.clone().inner()) {
        let round = |v: &f32| burn::tensor::f16::from_f32(*v).to_f32();
        let peak = upstream.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = peak.recip() * gpu_conv::HALF_GRAD_PEAK;
        let unscale = peak / gpu_conv::HALF_GRAD_PEAK;
        let scaled: Vec<f32> = upstream.iter().map(|v| round(&(v * scale))).collect();
        let rounded = |vs: &[f32]| vs.iter().map(round).collect::<Vec<f32>>();
        let [y, dx, dw] = run(None, &rounded(&xs), &rounded(&ws), &scaled);
        let unscaled = |g: Vec<f32>| g.into_iter().map(|v| v * unscale).collect::<Vec<f32>>();
        let want = [y, unscaled(dx), unscaled(dw)];
        let got = run(Some(true), &xs, &ws, &upstream);
        checks.extend(what.iter().zip(want.iter().zip(&got)).map(|(what, (want, got))| Check {
            what: format!("our GPU 3x3 conv (GEMM, f16 operands, f32 sums) {what}, {shape:?} -> {o}"),
            rel_err: compare(want, got),
            tolerance: CHECK_TOLERANCE,
            ours: true,
        }));
    }
    let plain = ad.clone().inner();
    // The im2col kernel alone, from a channels-last input (the layout our BatchNorm op leaves),
    // for a chunk in the middle of the batch; a copy, so it must be exact.
    let (start, m) = (3, 5);
    let nhwc = Tensor::<4>::from_data(TensorData::new(xs.clone(), [n, h, w, c]), &plain);
    let x = nhwc.permute([0, 3, 1, 2]);
    let nchw = host_values(x.clone());
    let cols = host_values(gpu_conv::im2col3x3(x, start, m, false));
    checks.push(Check {
        what: format!("our GPU im2col, channels-last {shape:?}, images {start}..{}", start + m),
        rel_err: compare(&gpu_conv::im2col3x3_host(&nchw, shape, start, m), &cols),
        tolerance: CHECK_TOLERANCE,
        ours: true,
    });
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf32_tolerance_is_for_cuda_cards_from_compute_capability_8() {
        let gpu = |backend: &str, cc: Option<[u32; 2]>| DeviceInfo {
            backend: backend.into(),
            compute_capability: cc,
            ..flex_info(None)
        };
        assert!(tf32_matmuls(&gpu("cuda", Some([8, 0]))));
        assert!(tf32_matmuls(&gpu("cuda", Some([9, 0]))));
        assert!(!tf32_matmuls(&gpu("cuda", Some([7, 5]))), "Turing has no TF32");
        assert!(!tf32_matmuls(&gpu("cuda", None)));
        assert!(!tf32_matmuls(&gpu("wgpu", None)), "WGSL has no tensor cores");
    }

    #[test]
    fn autotune_results_are_kept_per_backend_adapter_and_driver() {
        let device = |backend: &str, adapter: &str, driver: &str| DeviceInfo {
            backend: backend.into(),
            adapter: adapter.into(),
            driver: driver.into(),
            ..flex_info(None)
        };
        let h200 = device("wgpu", "NVIDIA H200", "NVIDIA 580.159.04");
        let name = tuning_environment(&h200);
        assert!(name.starts_with("wgpu-NVIDIA H200-NVIDIA 580.159.04-"), "{name}");
        assert_eq!(name, tuning_environment(&h200.clone()), "the same device, the same results");
        for other in [
            device("wgpu", "NVIDIA H100 80GB HBM3", "NVIDIA 580.159.04"),
            device("wgpu", "NVIDIA H200", "NVIDIA 580.95.05"),
            device("cuda", "NVIDIA H200", "NVIDIA 580.159.04"),
        ] {
            assert_ne!(tuning_environment(&other), name, "{other:?}");
        }
        // Names past the readable part differ by their hash.
        let long = |driver: &str| device("wgpu", &"x".repeat(60), driver);
        assert_ne!(tuning_environment(&long("1")), tuning_environment(&long("2")));
        assert!(tuning_environment(&long("1")).len() <= 48 + 9);
    }
}

//! Where the model's hot ops run, decided here and nowhere else. On flex, in builds with the
//! `flex-kernels` feature (the native CLI), the 3×3 convolution, the 2×2 max pooling and
//! BatchNorm → ReLU → dropout run on our CPU kernels (crate `flex-kernels`, each with its own
//! backward). On GPUs (CubeCL: wgpu, CUDA) the convolution's forward is GEMMs over im2col
//! (`gpu_conv.rs`) where [`gpu_conv_path`] says so, and in training BatchNorm → ReLU →
//! dropout is one op with its own backward (`gpu_bn.rs`); everything else is Burn's ops.

use std::sync::atomic::{AtomicU8, Ordering};

use burn::nn::Relu;
use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::tensor::{Device, Tensor};

use super::batchnorm::BatchNorm;
use super::dropout::Dropout;

/// Whether `device` is the host CPU (flex): the CPU kernels run there, and batches are built
/// on the host without tensor ops (`data/augment.rs`).
pub fn is_host(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    return *device == Device::flex();
    #[cfg(not(feature = "flex"))]
    {
        let _ = device;
        false
    }
}

/// Reseeds the host-side dropout masks of the CPU kernels (the backend RNG is reseeded by the
/// trainer beside it), so that a resumed run draws the same masks as an unbroken one.
pub fn seed_host_masks(seed: u64) {
    #[cfg(feature = "flex-kernels")]
    flex_kernels::mask::seed(seed);
    let _ = seed;
}

/// Whether `device` (or the device an autodiff one wraps) is a CubeCL GPU device.
pub fn is_cube(device: &Device) -> bool {
    matches!(device.clone().inner().as_dispatch(), burn::backend::DispatchDevice::Cube(_))
}

/// How the 3×3 convolution runs on a CubeCL GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuConvPath {
    /// Forward as GEMMs over im2col, backward Burn's kernels (`gpu_conv.rs`), all f32.
    Gemm,
    /// [`GpuConvPath::Gemm`] with f16 operands in all three GEMMs (forward, input and weight
    /// gradients), the products summed in f32 and the results f32 (the GPU's AMP: half the
    /// im2col bytes, and the operand type of tensor-core matmuls; the gradient is scaled per
    /// tensor before it is rounded). Needs an adapter with f16 shaders.
    GemmF16,
    /// Burn's `conv2d`: its forward is `conv_direct` without cooperative matrices (WGSL);
    /// through CUDA its autotune also has implicit GEMMs on tensor cores.
    Burn,
}

impl GpuConvPath {
    pub const ALL: [GpuConvPath; 3] = [GpuConvPath::Gemm, GpuConvPath::GemmF16, GpuConvPath::Burn];

    /// `--gpu-conv auto` (and the page's `auto`): GEMM on a GPU, Burn's direct kernel on a CPU
    /// implementation of the API (lavapipe, SwiftShader), where the GEMM path does not pay.
    /// Measured through WGSL (an H200); on CUDA, where Burn's own has tensor-core kernels, not
    /// yet (README, "On a real GPU").
    pub fn auto(cpu_adapter: bool) -> Self {
        if cpu_adapter { GpuConvPath::Burn } else { GpuConvPath::Gemm }
    }

    pub fn name(self) -> &'static str {
        match self {
            GpuConvPath::Gemm => "gemm",
            GpuConvPath::GemmF16 => "gemm-f16",
            GpuConvPath::Burn => "burn",
        }
    }

    /// The path [`GpuConvPath::name`] names (not `auto`, which depends on the adapter).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Whether `device` can run this path: f16 shaders for [`GpuConvPath::GemmF16`].
    pub fn supported_on(self, device: &Device) -> bool {
        self != GpuConvPath::GemmF16 || device.supports_dtype(burn::tensor::DType::F16)
    }
}

static PATH: AtomicU8 = AtomicU8::new(GpuConvPath::Burn as u8);

/// Sets the GPU convolution for the process (the CLI's `--gpu-conv`; `bench` measures each).
pub fn set_gpu_conv_path(path: GpuConvPath) {
    PATH.store(path as u8, Ordering::Relaxed);
}

/// The GPU convolution in use: Burn's unless set. The native CLI (`--gpu-conv auto`) and the
/// page set GEMM on a real GPU and keep Burn's direct kernel on CPU adapters (lavapipe,
/// SwiftShader).
pub fn gpu_conv_path() -> GpuConvPath {
    let stored = PATH.load(Ordering::Relaxed);
    GpuConvPath::ALL.into_iter().find(|p| *p as u8 == stored).unwrap_or(GpuConvPath::Burn)
}

/// 3×3 convolution, stride 1, padding 1, no bias.
pub fn conv3x3(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    #[cfg(feature = "flex-kernels")]
    if is_host(&x.device()) {
        return flex_kernels::conv3x3(x, conv.weight.val());
    }
    let path = gpu_conv_path();
    if path != GpuConvPath::Burn && is_cube(&x.device()) {
        return super::gpu_conv::conv3x3(x, conv.weight.val(), path == GpuConvPath::GemmF16);
    }
    conv.forward(x)
}

/// 3×3 convolution then 2×2 max pooling. On flex one op: the full-size convolution output is
/// only ever pooled, so the kernels pool it while in cache (bf16) and keep just the winning cells.
pub fn conv3x3_pool2(conv: &Conv2d, pool: &MaxPool2d, x: Tensor<4>) -> Tensor<4> {
    #[cfg(feature = "flex-kernels")]
    if is_host(&x.device()) {
        return flex_kernels::conv3x3_pool2(x, conv.weight.val());
    }
    max_pool2(pool, conv3x3(conv, x))
}

/// 2×2 max pooling, stride 2.
pub fn max_pool2(pool: &MaxPool2d, x: Tensor<4>) -> Tensor<4> {
    #[cfg(feature = "flex-kernels")]
    if is_host(&x.device()) {
        return flex_kernels::max_pool2(x);
    }
    pool.forward(x)
}

/// The convolution (then the pool, if any), then BatchNorm → ReLU → dropout. Training on the
/// host, the batch statistics come with the convolution's output, taken while it was in cache.
pub fn conv_bn_relu_dropout(
    conv: &Conv2d,
    pool: Option<&MaxPool2d>,
    bn: &BatchNorm,
    relu: &Relu,
    dropout: &Dropout,
    x: Tensor<4>,
) -> Tensor<4> {
    #[cfg(feature = "flex-kernels")]
    if is_host(&x.device()) && x.device().is_autodiff() {
        let drop = dropout.prob_on(&x.device());
        let (y, stats) = match pool {
            Some(_) => flex_kernels::conv3x3_pool2_stats(x, conv.weight.val()),
            None => flex_kernels::conv3x3_stats(x, conv.weight.val()),
        };
        return train_on_host(bn, drop, y, stats);
    }
    let x = match pool {
        Some(pool) => conv3x3_pool2(conv, pool, x),
        None => conv3x3(conv, x),
    };
    bn_relu_dropout(bn, relu, dropout, x)
}

/// BatchNorm, then ReLU, then dropout (outside training: running statistics, no dropout).
pub fn bn_relu_dropout(bn: &BatchNorm, relu: &Relu, dropout: &Dropout, x: Tensor<4>) -> Tensor<4> {
    #[cfg(feature = "flex-kernels")]
    if is_host(&x.device()) {
        return fused_on_host(bn, dropout.prob_on(&x.device()), x);
    }
    let device = x.device();
    if device.is_autodiff() && is_cube(&device) {
        return fused_on_gpu(bn, dropout.prob_on(&device), x);
    }
    dropout.forward(relu.forward(bn.forward(x)))
}

/// Training on a CubeCL GPU: the three as one op with a closed-form backward (`gpu_bn.rs`), on
/// `[1, c, 1, 1]` columns of the parameters and statistics, the statistics taken from the
/// detached input (the op's backward differentiates through them), the running ones updated as
/// `BatchNorm::forward` does.
fn fused_on_gpu(bn: &BatchNorm, drop: f64, x: Tensor<4>) -> Tensor<4> {
    let dims = x.dims();
    let column = [1, dims[1], 1, 1];
    let (mean, variance) = super::batchnorm::batch_stats(x.clone().detach());
    let out = super::gpu_bn::bn_relu_dropout_train(
        x,
        bn.gamma.val().reshape(column),
        bn.beta.val().reshape(column),
        mean.clone(),
        variance.clone(),
        bn.epsilon,
        drop,
    );
    bn.update_running(mean, variance, dims);
    out
}

/// The three as one kernel per direction; in training the batch statistics come from a
/// kernel too and update the running ones as `BatchNorm::forward` does.
#[cfg(feature = "flex-kernels")]
fn fused_on_host(bn: &BatchNorm, drop: f64, x: Tensor<4>) -> Tensor<4> {
    let c = bn.gamma.dims()[0];
    let (gamma, beta, eps) = (bn.gamma.val(), bn.beta.val(), bn.epsilon);
    if !x.device().is_autodiff() {
        let stats = Tensor::cat(vec![bn.running_mean.value(), bn.running_var.value()], 0).reshape([2, c]);
        return flex_kernels::batch_norm_relu_dropout(x, gamma, beta, stats, eps, drop);
    }
    let stats = flex_kernels::batch_stats(x.clone().detach());
    train_on_host(bn, drop, x, stats)
}

/// Training-mode BatchNorm → ReLU → dropout on the host with the batch statistics `stats`
/// (`[mean; var]`, `[2, c]`), which also update the running ones.
#[cfg(feature = "flex-kernels")]
fn train_on_host(bn: &BatchNorm, drop: f64, x: Tensor<4>, stats: Tensor<2>) -> Tensor<4> {
    let c = bn.gamma.dims()[0];
    let dims = x.dims();
    let out = flex_kernels::batch_norm_relu_dropout(x, bn.gamma.val(), bn.beta.val(), stats.clone(), bn.epsilon, drop);
    let mean = stats.clone().slice([0..1, 0..c]).reshape([c]);
    let variance = stats.slice([1..2, 0..c]).reshape([c]);
    bn.update_running(mean, variance, dims);
    out
}

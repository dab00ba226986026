//! CPU-backend (flex) ops with their own backward: BatchNorm fused with the ReLU and dropout
//! that follow it, 2×2 max pooling, and the 3×3 convolution, alone or followed by the pool;
//! and the optimizers' updates, each one pass.
//!
//! Burn runs these generically on flex: BatchNorm as a dozen tensor ops (axis swaps that copy,
//! reductions, broadcasts: 194 ms of a 3.0 s step at width 1, batch 128), max pooling through a
//! general 3-D pooling kernel with 64-bit indices (153 ms), and convolutions through a tiled
//! NHWC im2col, with the weight gradient as a convolution with batch and channels swapped
//! (1.7× the forward). Here BatchNorm → ReLU → dropout and pooling are one or two passes over
//! the data per direction, parallel over channel planes, without per-element branches, and
//! the conv is `conv.rs` (GEMMs over shifted copies of the input; Winograd F(2×2, 3×3)
//! where channels are many). They plug into Burn as a backend extension
//! (`#[backend_extension]`) with a hand-written autodiff backward, and only run when the device
//! is flex: GPU backends keep Burn's fused kernels.
//!
//! This crate depends on Burn only. Files: `lib.rs` the op trait and the tensor-level API,
//! `forward.rs` / `backward.rs` the ops on flex and under autodiff, `kernels.rs` the
//! BatchNorm, pooling and optimizer kernels, `conv.rs` / `winograd.rs` / `blocks.rs` the
//! convolution, `mask.rs` the dropout-mask generator, `simd.rs` the run-time AVX dispatch, `precision.rs` /
//! `amx.rs` the bf16 GEMMs on CPUs with AMX.

pub mod amx;
mod backward;
mod blocks;
pub mod conv;
mod forward;
mod kernels;
pub mod mask;
pub mod precision;
mod simd;
pub mod winograd;

pub use blocks::{Dims, Tuning, tuning};

/// The unit tests allocate as the binary does (`src/memory.rs`): blocks from 4 KiB up on a
/// cache line, so that the convolution's in-place output path runs here too.
#[cfg(test)]
#[global_allocator]
static TEST_ALLOCATOR: tests_alloc::LargeOnLines = tests_alloc::LargeOnLines;

#[cfg(test)]
mod tests_alloc {
    use std::alloc::{GlobalAlloc, Layout, System};

    pub struct LargeOnLines;

    fn actual(layout: Layout) -> Layout {
        if layout.size() >= 4096 && layout.align() < 64 {
            Layout::from_size_align(layout.size(), 64).unwrap_or(layout)
        } else {
            layout
        }
    }

    // SAFETY: every block goes to and comes back from `System` with the same (actual) layout.
    unsafe impl GlobalAlloc for LargeOnLines {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            unsafe { System.alloc(actual(layout)) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            unsafe { System.alloc_zeroed(actual(layout)) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, actual(layout)) }
        }
    }
}
pub use precision::Precision;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Dispatch, backend_extension};
use burn::tensor::{Device, Tensor};

#[backend_extension(Autodiff, Flex)]
pub trait CpuOps: burn::backend::Backend {
    /// Per-channel mean and biased variance of `[n, c, h, w]`, as `[2, c]`; not differentiated.
    fn bn_stats(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `dropout(relu((x - mean) / sqrt(var + eps) * gamma + beta))` with `stats = [mean; var]`
    /// (`[2, c]`) and a mask from [`mask::Mask::draw`]`(drop)` (none when `drop` is 0).
    /// Differentiated as training-mode BatchNorm: the statistics are taken to be the batch's
    /// own, so the gradient of `x` flows through them too.
    fn bn_relu_dropout(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        eps: f64,
        drop: f64,
    ) -> FloatTensor<Self>;
    /// 2×2 max pooling, stride 2 (floor for odd sizes).
    fn max_pool2(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// 3×3 convolution, stride 1, padding 1, no bias: `x [n, c, h, w]`, `w [o, c, 3, 3]`.
    fn conv3x3(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;
    /// [`conv3x3`](CpuOps::conv3x3) then [`max_pool2`](CpuOps::max_pool2), in one pass where the
    /// kernels allow it (bf16: [`conv::forward_pooled`]).
    fn conv3x3_pool2(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;
    /// [`conv3x3`](CpuOps::conv3x3) and its output's per-channel mean and biased variance, as
    /// [`bn_stats`](CpuOps::bn_stats) gives them (not differentiated), taken from the output
    /// while it is in cache ([`conv::forward_stats`]).
    fn conv3x3_stats(x: FloatTensor<Self>, w: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>);
    /// [`conv3x3_pool2`](CpuOps::conv3x3_pool2) and the pooled output's statistics, likewise.
    fn conv3x3_pool2_stats(x: FloatTensor<Self>, w: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>);
    /// One Adam step (PyTorch's rule: L2 decay added to the gradient, eps outside the root) on
    /// a parameter `p` with gradient `g` and moments `m`, `v`: `(p', m', v')`. The same f32
    /// operations, in the same order, as the optimizer on Burn's tensor ops, in one parallel
    /// pass instead of 16 (on flex some of those ran on one thread: 32 ms of a step at width 1).
    fn adam_step(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        s: AdamStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
    /// One SGD-Nesterov step (no dampening) with momentum buffer `buf`: `(p', buf')`, as
    /// [`adam_step`](CpuOps::adam_step) is for Adam.
    fn sgd_step(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        buf: FloatTensor<Self>,
        weight_decay: f64,
        momentum: f64,
        lr: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// Whether the fused kernels serve this device.
pub fn applies(device: &Device) -> bool {
    *device == Device::flex()
}

pub fn batch_stats(x: Tensor<4>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as CpuOps>::bn_stats(x.into_dispatch()))
}

/// BatchNorm → ReLU → dropout (`drop` 0: none) in one pass per direction.
pub fn batch_norm_relu_dropout(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    stats: Tensor<2>,
    eps: f64,
    drop: f64,
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as CpuOps>::bn_relu_dropout(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        stats.into_dispatch(),
        eps,
        drop,
    ))
}

/// [`conv3x3`] and its output's `[mean; var]` (`[2, o]`, as [`batch_stats`] gives them): a
/// BatchNorm's batch statistics without another pass over the output.
pub fn conv3x3_stats(x: Tensor<4>, w: Tensor<4>) -> (Tensor<4>, Tensor<2>) {
    let (out, stats) = <Dispatch as CpuOps>::conv3x3_stats(x.into_dispatch(), w.into_dispatch());
    (Tensor::from_dispatch(out), Tensor::from_dispatch(stats))
}

/// [`conv3x3_pool2`] and the pooled output's `[mean; var]`, as [`conv3x3_stats`].
pub fn conv3x3_pool2_stats(x: Tensor<4>, w: Tensor<4>) -> (Tensor<4>, Tensor<2>) {
    let (out, stats) = <Dispatch as CpuOps>::conv3x3_pool2_stats(x.into_dispatch(), w.into_dispatch());
    (Tensor::from_dispatch(out), Tensor::from_dispatch(stats))
}

/// Adam's hyperparameters for one step of [`adam_step`].
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// `√(1 − beta2^t)`.
    pub root_bc2: f64,
    pub eps: f64,
    /// `lr / (1 − beta1^t)`.
    pub step_size: f64,
}

/// One Adam step on the host: `(p', m', v')` ([`CpuOps::adam_step`]).
pub fn adam_step<const D: usize>(
    p: Tensor<D>,
    g: Tensor<D>,
    m: Tensor<D>,
    v: Tensor<D>,
    s: AdamStep,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    let (p, m, v) =
        <Dispatch as CpuOps>::adam_step(p.into_dispatch(), g.into_dispatch(), m.into_dispatch(), v.into_dispatch(), s);
    (Tensor::from_dispatch(p), Tensor::from_dispatch(m), Tensor::from_dispatch(v))
}

/// One SGD-Nesterov step on the host: `(p', buf')` ([`CpuOps::sgd_step`]).
pub fn sgd_step<const D: usize>(
    p: Tensor<D>,
    g: Tensor<D>,
    buf: Tensor<D>,
    weight_decay: f64,
    momentum: f64,
    lr: f64,
) -> (Tensor<D>, Tensor<D>) {
    let (p, buf) = <Dispatch as CpuOps>::sgd_step(
        p.into_dispatch(),
        g.into_dispatch(),
        buf.into_dispatch(),
        weight_decay,
        momentum,
        lr,
    );
    (Tensor::from_dispatch(p), Tensor::from_dispatch(buf))
}

pub fn max_pool2(x: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as CpuOps>::max_pool2(x.into_dispatch()))
}

pub fn conv3x3(x: Tensor<4>, w: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as CpuOps>::conv3x3(x.into_dispatch(), w.into_dispatch()))
}

/// 3×3 convolution then 2×2 max pooling: the layers with a pool, whose full-size convolution
/// output is only ever pooled.
pub fn conv3x3_pool2(x: Tensor<4>, w: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as CpuOps>::conv3x3_pool2(x.into_dispatch(), w.into_dispatch()))
}

//! The 3×3 convolution on CubeCL GPUs: forward as GEMMs over an im2col matrix; backward
//! Burn's own kernels in f32, GEMMs with f16 operands.
//!
//! Without cooperative matrices (wgpu through WGSL, every browser) Burn's only forward kernel
//! for a dense 3×3 convolution is `conv_direct`. On an H200 it was 202 ms of a 228 ms training
//! step (width 1, batch 512; CubeCL's kernel profile, `examples/gpu_probe.rs`), about 2 TFLOP/s,
//! while Burn's backward kernels (im2col + matmul) took a tenth of that and a matmul of
//! layer1's im2col shape ran at 17 TFLOP/s. So the forward here is an im2col matrix (one
//! kernel, `gpu_im2col.rs`; as tensor ops it was three quarters of layer1's forward) times the
//! weights as one `[9·c_in, c_out]` matrix, Burn's matmul. The backward keeps
//! `conv2d_x_backward` / `conv2d_weight_backward`, not the backward of those slices (nine
//! zero-filled scatters: 4× slower than Burn's at layer1's shape).
//!
//! With `half` (`--gpu-conv gemm-f16`) all three GEMMs take f16 operands and sum in f32 into
//! f32 results, the mixed precision of PyTorch's AMP: the forward's im2col matrix is written in
//! f16 and the weights rounded to f16; the backward is GEMMs too (`half_backward`), since
//! Burn's takes one type for operands and result. It halves the im2col bytes and gives Burn's
//! matmul the operands that cooperative-matrix (tensor-core) kernels take where the compiler
//! has them (CUDA, SPIR-V). Tensor cores are the only way to PyTorch's speed: at width 1,
//! batch 512, a step's convolutions are 1.17 TFLOP, 70 ms at the 16.6 TFLOP/s Burn's WGSL
//! matmul reached on an H200, where PyTorch's whole fp32 step took 31.5 ms.
//!
//! The im2col matrix is 9× the input. It is built for a few images at a time so that no
//! buffer exceeds [`CHUNK_BYTES`]: below WebGPU's 128 MiB binding limit, and small enough
//! that the matrix never dominates memory (at width 1, batch 512, layer1's whole matrix would
//! be 1.2 GB).

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, TensorMetadata, backend_extension};
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{DType, FloatDType, Shape, Slice, Tensor};

/// The most bytes of im2col matrix built at once.
pub const CHUNK_BYTES: usize = 64 << 20;

#[backend_extension(Autodiff, Cube, Fusion)]
pub trait GpuConv: Backend {
    /// 3×3 convolution, stride 1, padding 1, no bias: `x [n, c, h, w]`, `w [o, c, 3, 3]`;
    /// with `half`, f16 operands and f32 sums.
    #[fusion(default)]
    fn conv3x3_gemm(x: FloatTensor<Self>, w: FloatTensor<Self>, half: bool) -> FloatTensor<Self> {
        im2col_forward::<Self>(x, w, half)
    }

    /// The im2col matrix `[m·h·w, 9·c]` of images `start..start + m` of `x [n, c, h, w]`:
    /// row `(i·h + y)·w + x`, column `k·c + ch` is `x[start + i, ch, y + k/3 − 1, x + k%3 − 1]`,
    /// zero outside the image; in f16 with `half`, else in `x`'s type. The default body is
    /// tensor ops (the reference); CubeCL devices run one kernel (`gpu_im2col.rs`).
    #[fusion(dtype = if *half { DType::F16 } else { x }, shape = im2col_shape(x, *m))]
    fn im2col3x3(x: FloatTensor<Self>, start: usize, m: usize, half: bool) -> FloatTensor<Self> {
        let cols = im2col_slices::<Self>(x, start, m);
        if half { Self::float_cast(cols, FloatDType::F16) } else { cols }
    }

    /// `x` rounded to f16. An op of its own, not Burn's `float_cast`: a cast in the forward's
    /// stream made Burn's fusion explorer run past its five blocks per segment and fall back
    /// to unfused execution ("[repair] falling back to unfused stream order" in
    /// `BURN_FUSION_LOG=full`): BatchNorm's element-wise ops became 71 more kernels per step at
    /// width 0.125 (`examples/kernel_phases.rs`).
    #[fusion(dtype = DType::F16, shape = x)]
    fn to_half(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_cast(x, FloatDType::F16)
    }

    /// `a [r, k] · b [k, o]` with both operands rounded to f16 (if they are not f16 already),
    /// the products summed in f32, and an f32 result: `gemm-f16`'s GEMM. The default body is
    /// that arithmetic in tensor ops.
    #[fusion(dtype = DType::F32, shape = Shape::new([a.dims::<2>()[0], b.dims::<2>()[1]]))]
    fn half_matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let rounded = |t| Self::float_cast(Self::float_cast(t, FloatDType::F16), FloatDType::F32);
        Self::float_matmul(rounded(a), rounded(b))
    }
}

impl GpuConv for burn_cubecl::CubeBackend {
    fn to_half(x: FloatTensor<Self>) -> FloatTensor<Self> {
        burn_cubecl::kernel::cast(x, DType::F16)
    }

    fn im2col3x3(x: FloatTensor<Self>, start: usize, m: usize, half: bool) -> FloatTensor<Self> {
        let dtype = if half { DType::F16 } else { x.dtype };
        super::gpu_im2col::im2col3x3(x, start, m, dtype)
    }

    fn half_matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        use burn_cubecl::kernel::cast;
        use burn_cubecl::kernel::matmul::{MatmulStrategy, matmul};
        // No-ops for f16 operands (the forward passes both in f16). Burn's float_matmul takes
        // one dtype for all three; its kernel takes each apart and sums f16 operands in f32
        // (`MatmulElems::from_globals`).
        let (a, b) = (cast(a, DType::F16), cast(b, DType::F16));
        matmul(a, b, None, MatmulStrategy::default(), DType::F32)
            .unwrap_or_else(|e| panic!("matmul of f16 operands into f32 could not launch: {e:?}"))
    }
}

/// The shape of [`GpuConv::im2col3x3`]'s matrix for `m` images of `x`'s shape.
pub fn im2col_shape(x: &Shape, m: usize) -> Shape {
    let [_, c, h, w] = x.dims::<4>();
    Shape::new([m * h * w, 9 * c])
}

/// Images per im2col chunk for images of `h × w` with `c` channels (at least one).
pub fn chunk_images(c: usize, h: usize, w: usize) -> usize {
    (CHUNK_BYTES / (9 * c * h * w * 4).max(1)).max(1)
}

/// The im2col chunks of `n` images of `c × h × w`, in order: (first image, images).
fn chunks(n: usize, c: usize, h: usize, w: usize) -> impl Iterator<Item = (usize, usize)> {
    let per = chunk_images(c, h, w);
    (0..n).step_by(per).map(move |start| (start, per.min(n - start)))
}

fn im2col_forward<B: GpuConv>(x: FloatTensor<B>, w: FloatTensor<B>, half: bool) -> FloatTensor<B> {
    let [n, c, h, wd] = x.shape().dims::<4>();
    let o = w.shape().dims::<4>()[0];
    // Row k·c + i of the weight matrix is tap k = 3·dy + dx of input channel i.
    let wm = B::float_reshape(B::float_permute(w, &[2, 3, 1, 0]), Shape::new([9 * c, o]));
    let wm = if half { B::to_half(wm) } else { wm };
    let mut outs: Vec<_> = chunks(n, c, h, wd)
        .map(|(start, m)| {
            let cols = B::im2col3x3(x.clone(), start, m, half);
            if half { B::half_matmul(cols, wm.clone()) } else { B::float_matmul(cols, wm.clone()) }
        })
        .collect();
    let y = if outs.len() == 1 { outs.pop().expect("one chunk") } else { B::float_cat(outs, 0) };
    B::float_permute(B::float_reshape(y, Shape::new([n, h, wd, o])), &[0, 3, 1, 2])
}

/// [`GpuConv::im2col3x3`] as tensor ops: the padded NHWC input, nine shifted slices of it,
/// concatenated along the channels (so that a tap's slice keeps each pixel's channels together).
fn im2col_slices<B: Backend>(x: FloatTensor<B>, start: usize, m: usize) -> FloatTensor<B> {
    let [_, c, h, w] = x.shape().dims::<4>();
    let x = B::float_permute(x, &[0, 2, 3, 1]);
    let x = B::float_slice(x, &[Slice::from(start..start + m), Slice::from(..), Slice::from(..), Slice::from(..)]);
    let padded = B::float_pad(x, &[(0, 0), (1, 1), (1, 1), (0, 0)], PadMode::Constant(0.0));
    let taps = (0..9)
        .map(|k| {
            let (dy, dx) = (k / 3, k % 3);
            let s = [Slice::from(0..m), Slice::from(dy..dy + h), Slice::from(dx..dx + w), Slice::from(0..c)];
            B::float_slice(padded.clone(), &s)
        })
        .collect();
    B::float_reshape(B::float_cat(taps, 3), Shape::new([m * h * w, 9 * c]))
}

/// [`GpuConv::im2col3x3`] on tensors of a CubeCL device: the kernel, or on an autodiff device
/// the tensor-op body; in f16 with `half`.
pub fn im2col3x3(x: Tensor<4>, start: usize, m: usize, half: bool) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as GpuConv>::im2col3x3(x.into_dispatch(), start, m, half))
}

/// [`GpuConv::half_matmul`] on tensors of a CubeCL device: `a · b` with operands rounded to
/// f16, f32 sums and an f32 result (`gemm-f16`'s GEMM).
pub fn half_matmul(a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as GpuConv>::half_matmul(a.into_dispatch(), b.into_dispatch()))
}

/// [`im2col3x3`] on the host, from `xs` in NCHW order: the reference of the tests and
/// `check-device`.
pub fn im2col3x3_host(xs: &[f32], [_, c, h, w]: [usize; 4], start: usize, m: usize) -> Vec<f32> {
    let mut cols = Vec::with_capacity(m * h * w * 9 * c);
    for i in start..start + m {
        for (y, x) in (0..h).flat_map(|y| (0..w).map(move |x| (y, x))) {
            for (dy, dx) in (0..3).flat_map(|dy| (0..3).map(move |dx| (dy, dx))) {
                let (sy, sx) = ((y + dy).wrapping_sub(1), (x + dx).wrapping_sub(1));
                let inside = sy < h && sx < w;
                cols.extend((0..c).map(|ch| if inside { xs[((i * c + ch) * h + sy) * w + sx] } else { 0.0 }));
            }
        }
    }
    cols
}

fn options() -> ConvOptions<2> {
    ConvOptions::new([1, 1], [1, 1], [1, 1], 1)
}

#[derive(Debug)]
struct ConvBackward {
    half: bool,
}

impl<B: GpuConv> Backward<B, 2> for ConvBackward {
    /// x, w.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (x, w) = ops.state;
        if self.half {
            let (dx, dw) = half_backward::<B>(x, w, dy, node_x.is_some(), node_w.is_some());
            if let (Some(node), Some(dw)) = (node_w, dw) {
                grads.register::<B>(node.id, dw);
            }
            if let (Some(node), Some(dx)) = (node_x, dx) {
                grads.register::<B>(node.id, dx);
            }
            return;
        }
        if let Some(node) = node_w {
            let dw = B::conv2d_weight_backward(x.clone(), w.clone(), dy.clone(), options());
            grads.register::<B>(node.id, dw);
        }
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::conv2d_x_backward(x, w, dy, options()));
        }
    }
}

/// The largest |dy| after `half_backward`'s scaling: 2 binades of headroom below f16's largest
/// value (65,504) and 28 binades of normal f16 numbers below it, so that nothing that matters
/// to the sums underflows. (The scale `HALF_GRAD_PEAK / max|dy|` itself is not a power of two:
/// scaling and unscaling each round in f32, far below f16's rounding.)
pub const HALF_GRAD_PEAK: f32 = 16384.0;

/// The smallest |dy| peak `half_backward` scales from; an all-zero dy stays zero.
const HALF_GRAD_FLOOR: f32 = 1e-30;

/// `gemm-f16`'s backward: `dx` and `dw` as GEMMs with f16 operands and f32 sums.
///
/// Gradients are small (the loss is a mean over the batch): at width 1 most of a layer's dy
/// would be f16 subnormals or zeros. So dy is scaled first, the loss scaling of AMP but per
/// tensor and without a step to skip: `s = HALF_GRAD_PEAK / max|dy|`, computed on the device
/// (no read-back), and the f32 results are multiplied by `1/s`.
/// - `dx` is the convolution of dy with the weights flipped and transposed (`[c, o, 3, 3]`):
///   the forward's im2col GEMMs on f16 dy.
/// - `dw` is `im2col(x)ᵀ · dy`, both in f16, summed chunk by chunk in f32.
fn half_backward<B: GpuConv>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    dy: FloatTensor<B>,
    want_x: bool,
    want_w: bool,
) -> (Option<FloatTensor<B>>, Option<FloatTensor<B>>) {
    let [n, c, h, wd] = x.shape().dims::<4>();
    let o = w.shape().dims::<4>()[0];
    // max|dy| in four reductions of at most max(n, c, h, w) values each: one reduction over a
    // whole activation is wrong on Mesa 22.3.6's lavapipe (README, "tested at chance").
    let mut peak = B::float_max_abs_dim(dy.clone(), 3);
    for dim in (0..3).rev() {
        peak = B::float_max_dim(peak, dim);
    }
    let peak = B::float_clamp_min(peak, HALF_GRAD_FLOOR.into());
    let scale = B::float_mul_scalar(B::float_recip(peak.clone()), HALF_GRAD_PEAK.into());
    let unscale = B::float_div_scalar(peak, HALF_GRAD_PEAK.into());
    let dy = B::to_half(B::float_mul(dy, scale));
    let dx = want_x.then(|| {
        let flipped = B::float_swap_dims(B::float_flip(w, &[2, 3]), 0, 1);
        B::float_mul(im2col_forward::<B>(dy.clone(), flipped, true), unscale.clone())
    });
    let dw = want_w.then(|| {
        let rows = B::float_reshape(B::float_permute(dy, &[0, 2, 3, 1]), Shape::new([n * h * wd, o]));
        let mut sum: Option<FloatTensor<B>> = None;
        for (start, m) in chunks(n, c, h, wd) {
            let cols = B::float_swap_dims(B::im2col3x3(x.clone(), start, m, true), 0, 1);
            let slice = [Slice::from(start * h * wd..(start + m) * h * wd), Slice::from(..)];
            let part = B::half_matmul(cols, B::float_slice(rows.clone(), &slice));
            sum = Some(match sum {
                Some(acc) => B::float_add(acc, part),
                None => part,
            });
        }
        let dw = B::float_mul(sum.expect("at least one image"), B::float_reshape(unscale, Shape::new([1, 1])));
        // Row k·c + i is tap k = 3·ky + kx of input channel i, as in the forward.
        B::float_permute(B::float_reshape(dw, Shape::new([3, 3, c, o])), &[3, 2, 0, 1])
    });
    (dx, dw)
}

type Ad<B, C> = FloatTensor<Autodiff<B, C>>;

impl<B: GpuConv, C: CheckpointStrategy> GpuConv for Autodiff<B, C> {
    fn conv3x3_gemm(x: Ad<B, C>, w: Ad<B, C>, half: bool) -> Ad<B, C> {
        match (ConvBackward { half }).prepare::<C>([x.node(), w.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (xp, wp) = (x.into_primitive(), w.into_primitive());
                let out = B::conv3x3_gemm(xp.clone(), wp.clone(), half);
                prep.finish((xp, wp), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv3x3_gemm(x.into_primitive(), w.into_primitive(), half)),
        }
    }
}

/// [`GpuConv::conv3x3_gemm`] on tensors of a CubeCL device (wgpu, CUDA), autodiff or not;
/// with `half`, f16 operands and f32 sums in the forward's and the backward's GEMMs.
pub fn conv3x3(x: Tensor<4>, w: Tensor<4>, half: bool) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as GpuConv>::conv3x3_gemm(x.into_dispatch(), w.into_dispatch(), half))
}

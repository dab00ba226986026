//! CPU-backend (flex) kernels with their own backward: BatchNorm, 2×2 max pooling, and a 3×3
//! convolution whose weight gradient is a single GEMM.
//!
//! Burn runs these generically on flex: BatchNorm as a dozen tensor ops (axis swaps that copy,
//! reductions, broadcasts: 194 ms of a 3.0 s step at width 1, batch 128), max pooling through a
//! general 3-D pooling kernel with 64-bit indices (153 ms), and a conv weight gradient as a
//! convolution with batch and channels swapped (1.7× the forward). Here BatchNorm and pooling
//! are one or two passes over the data per direction, parallel over channel planes; the conv
//! keeps flex's forward and input gradient. They plug into Burn as a backend extension
//! (`#[backend_extension]`) with a hand-written autodiff backward, and only run when the device
//! is flex: GPU backends keep Burn's fused kernels.

use std::borrow::Cow;
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::ops::{FloatTensorOps, ModuleOps};
use burn::backend::{Dispatch, Flex, backend_extension};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;

#[backend_extension(Autodiff, Flex)]
pub trait CpuOps: burn::backend::Backend {
    /// Per-channel mean and biased variance of `[n, c, h, w]`, as `[2, c]`; not differentiated.
    fn bn_stats(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `(x - mean) / sqrt(var + eps) * gamma + beta` with `stats = [mean; var]` (`[2, c]`).
    /// Differentiated as training-mode BatchNorm: the statistics are taken to be the batch's
    /// own, so the gradient of `x` flows through them too.
    fn bn_apply(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, stats: FloatTensor<Self>, eps: f64)
    -> FloatTensor<Self>;
    /// 2×2 max pooling, stride 2 (floor for odd sizes).
    fn max_pool2(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// 3×3 convolution, stride 1, padding 1, no bias: `x [n, c, h, w]`, `w [o, c, 3, 3]`.
    fn conv3x3(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Whether the fused kernels serve this device.
pub fn applies(device: &Device) -> bool {
    *device == Device::flex()
}

pub fn batch_stats(x: Tensor<4>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as CpuOps>::bn_stats(x.into_dispatch()))
}

pub fn batch_norm(x: Tensor<4>, gamma: Tensor<1>, beta: Tensor<1>, stats: Tensor<2>, eps: f64) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as CpuOps>::bn_apply(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        stats.into_dispatch(),
        eps,
    ))
}

pub fn max_pool2(x: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as CpuOps>::max_pool2(x.into_dispatch()))
}

pub fn conv3x3(x: Tensor<4>, w: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as CpuOps>::conv3x3(x.into_dispatch(), w.into_dispatch()))
}

fn conv_options() -> ConvOptions<2> {
    ConvOptions::new([1, 1], [1, 1], [1, 1], 1)
}

/// Maps at least this large (pixels per image) take the single-GEMM weight gradient; on the
/// 4×4 maps Burn's is faster (measured per layer at widths 0.25 and 1 with
/// `PROFILE_DW=1 cargo run --release --example profile_ops`).
const GEMM_DW_MIN_PIXELS: usize = 64;

// ------------------------------------------------------------------------------ host data

fn values(t: &FlexTensor) -> Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(t.to_contiguous().as_slice::<f32>().expect("contiguous f32").to_vec()),
    }
}

fn dims4(t: &FlexTensor) -> [usize; 4] {
    let s = t.layout().shape();
    assert_eq!(s.num_dims(), 4, "expected a [n, c, h, w] tensor");
    [s[0], s[1], s[2], s[3]]
}

fn tensor(v: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape))
}

// ------------------------------------------------------------------------------ kernels

/// `[mean; var]` per channel, accumulated in f64.
fn stats_kernel(x: &[f32], [n, c, h, w]: [usize; 4]) -> Vec<f32> {
    let hw = h * w;
    let count = (n * hw) as f64;
    let per_channel: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = || (0..n).map(move |b| &x[(b * c + ch) * hw..][..hw]);
            let mean = planes().map(|p| p.iter().map(|&v| v as f64).sum::<f64>()).sum::<f64>() / count;
            let var = planes()
                .map(|p| p.iter().map(|&v| (v as f64 - mean) * (v as f64 - mean)).sum::<f64>())
                .sum::<f64>()
                / count;
            (mean as f32, var as f32)
        })
        .collect();
    per_channel.iter().map(|s| s.0).chain(per_channel.iter().map(|s| s.1)).collect()
}

fn inv_std(stats: &[f32], c: usize, eps: f64) -> Vec<f32> {
    stats[c..2 * c].iter().map(|&v| (1.0 / (v as f64 + eps).sqrt()) as f32).collect()
}

fn apply_kernel(x: &[f32], gamma: &[f32], beta: &[f32], stats: &[f32], eps: f64, [n, c, h, w]: [usize; 4]) -> Vec<f32> {
    let hw = h * w;
    let inv = inv_std(stats, c, eps);
    let mut out = vec![0.0f32; n * c * hw];
    out.par_chunks_mut(hw).zip(x.par_chunks(hw)).enumerate().for_each(|(plane, (o, xs))| {
        let ch = plane % c;
        let scale = gamma[ch] * inv[ch];
        let shift = beta[ch] - stats[ch] * scale;
        for (o, &v) in o.iter_mut().zip(xs) {
            *o = v * scale + shift;
        }
    });
    out
}

/// Training-mode BatchNorm backward: `(dx, dgamma, dbeta)`.
fn bn_backward_kernel(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    stats: &[f32],
    eps: f64,
    [n, c, h, w]: [usize; 4],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let hw = h * w;
    let count = (n * hw) as f32;
    let inv = inv_std(stats, c, eps);
    // Σ dy and Σ dy·x̂ per channel.
    let sums: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mean, is) = (stats[ch], inv[ch]);
            let (mut s, mut sx) = (0.0f64, 0.0f64);
            for b in 0..n {
                let at = (b * c + ch) * hw;
                let (xs, ds) = (&x[at..][..hw], &dy[at..][..hw]);
                let (mut ps, mut psx) = (0.0f32, 0.0f32);
                for (&v, &d) in xs.iter().zip(ds) {
                    ps += d;
                    psx += d * (v - mean) * is;
                }
                s += ps as f64;
                sx += psx as f64;
            }
            (s as f32, sx as f32)
        })
        .collect();
    let mut dx = vec![0.0f32; x.len()];
    dx.par_chunks_mut(hw).enumerate().for_each(|(plane, out)| {
        let ch = plane % c;
        let (mean, is) = (stats[ch], inv[ch]);
        let (s, sx) = sums[ch];
        let scale = gamma[ch] * is;
        let (mean_dy, mean_dyx) = (s / count, sx / count);
        let at = plane * hw;
        for ((o, &v), &d) in out.iter_mut().zip(&x[at..][..hw]).zip(&dy[at..][..hw]) {
            let xhat = (v - mean) * is;
            *o = scale * (d - mean_dy - xhat * mean_dyx);
        }
    });
    let dgamma = sums.iter().map(|s| s.1).collect();
    let dbeta = sums.iter().map(|s| s.0).collect();
    (dx, dgamma, dbeta)
}

/// Pixels (images × height × width) per weight-gradient GEMM. Measured: 1024–4096 run best
/// (the chunk's im2col stays in cache); 16384 and up are up to twice slower.
const CHUNK_PIXELS: usize = 4096;

/// dW of a 3×3 / stride 1 / pad 1 convolution as one `out × 9·in` GEMM per chunk of images,
/// reducing over all of the chunk's pixels:
/// `dW[o, (c,ky,kx)] = Σ_(n,y,x) dY[o, (n,y,x)] · X̃[(c,ky,kx), (n,y,x)]` (X̃: the input shifted
/// by each tap). Burn's generic weight gradient is a convolution with batch and channels
/// swapped, i.e. 9-column GEMMs, which is slower on large maps (measured per layer in
/// `examples/profile_ops.rs`).
pub fn conv3x3_weight_grad(x: &[f32], dy: &[f32], [n, c, h, w]: [usize; 4], o: usize) -> Vec<f32> {
    let hw = h * w;
    assert_eq!(x.len(), n * c * hw, "conv3x3_weight_grad: x has the wrong size");
    assert_eq!(dy.len(), n * o * hw, "conv3x3_weight_grad: dy has the wrong size");
    let c9 = c * 9;
    let per_chunk = (CHUNK_PIXELS / hw).clamp(1, n.max(1));
    let chunks: Vec<usize> = (0..n).step_by(per_chunk).collect();
    // Each thread reduces its own chunks into its own dW (a GEMM this narrow has too little
    // output to split), then the partial sums are added.
    let partial = chunks
        .into_par_iter()
        .fold(
            || (vec![0.0f32; o * c9], Vec::new(), Vec::new(), true),
            |(mut dw, mut cols, mut grads, first), start| {
                let images = per_chunk.min(n - start);
                let k = images * hw;
                cols.resize(c9 * k, 0.0f32);
                grads.resize(o * k, 0.0f32);
                im2col(x, &mut cols, start, images, [c, h, w]);
                for (oc, dst) in grads.chunks_mut(k).enumerate() {
                    for i in 0..images {
                        dst[i * hw..][..hw].copy_from_slice(&dy[((start + i) * o + oc) * hw..][..hw]);
                    }
                }
                // dw (o × c9) += grads (o × k) · colsᵀ (k × c9).
                // SAFETY: the pointers cover the stated extents with these strides.
                unsafe {
                    gemm::gemm(
                        o,
                        c9,
                        k,
                        dw.as_mut_ptr(),
                        1,
                        c9 as isize,
                        !first,
                        grads.as_ptr(),
                        1,
                        k as isize,
                        cols.as_ptr(),
                        k as isize,
                        1,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                (dw, cols, grads, false)
            },
        )
        .map(|(dw, ..)| dw)
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
            a
        });
    partial.unwrap_or_else(|| vec![0.0; o * c9])
}

/// X̃ rows for `images` images from `start`: (channel, tap) → pixels, zero where the tap
/// falls in the padding.
fn im2col(x: &[f32], cols: &mut [f32], start: usize, images: usize, [c, h, w]: [usize; 3]) {
    let hw = h * w;
    let k = images * hw;
    for (row, dst) in cols.chunks_mut(k).enumerate().take(c * 9) {
        let (ci, tap) = (row / 9, row % 9);
        let (ty, tx) = (tap / 3, tap % 3);
        for i in 0..images {
            let src = &x[((start + i) * c + ci) * hw..][..hw];
            let out = &mut dst[i * hw..][..hw];
            for yy in 0..h {
                let sy = yy as isize + ty as isize - 1;
                let line = &mut out[yy * w..][..w];
                if sy < 0 || sy >= h as isize {
                    line.fill(0.0);
                    continue;
                }
                let s = &src[sy as usize * w..][..w];
                match tx {
                    0 => {
                        line[0] = 0.0;
                        line[1..].copy_from_slice(&s[..w - 1]);
                    }
                    1 => line.copy_from_slice(s),
                    _ => {
                        line[..w - 1].copy_from_slice(&s[1..]);
                        line[w - 1] = 0.0;
                    }
                }
            }
        }
    }
}

/// Max of each 2×2 window and which of its four cells won (row-major), per plane.
fn pool_kernel(x: &[f32], [n, c, h, w]: [usize; 4]) -> (Vec<f32>, Vec<u8>) {
    let (oh, ow) = (h / 2, w / 2);
    let mut out = vec![0.0f32; n * c * oh * ow];
    let mut arg = vec![0u8; n * c * oh * ow];
    out.par_chunks_mut(oh * ow).zip(arg.par_chunks_mut(oh * ow)).enumerate().for_each(|(plane, (o, a))| {
        let xs = &x[plane * h * w..][..h * w];
        for y in 0..oh {
            let (r0, r1) = (&xs[2 * y * w..][..w], &xs[(2 * y + 1) * w..][..w]);
            for xx in 0..ow {
                let cand = [r0[2 * xx], r0[2 * xx + 1], r1[2 * xx], r1[2 * xx + 1]];
                let mut best = 0;
                for k in 1..4 {
                    // NaN wins, as in PyTorch, so a diverging run still shows NaN.
                    if cand[k] > cand[best] || (cand[k].is_nan() && !cand[best].is_nan()) {
                        best = k;
                    }
                }
                o[y * ow + xx] = cand[best];
                a[y * ow + xx] = best as u8;
            }
        }
    });
    (out, arg)
}

fn pool_backward_kernel(dy: &[f32], arg: &[u8], [n, c, h, w]: [usize; 4]) -> Vec<f32> {
    let (oh, ow) = (h / 2, w / 2);
    let mut dx = vec![0.0f32; n * c * h * w];
    dx.par_chunks_mut(h * w).enumerate().for_each(|(plane, out)| {
        let (d, a) = (&dy[plane * oh * ow..][..oh * ow], &arg[plane * oh * ow..][..oh * ow]);
        for y in 0..oh {
            for xx in 0..ow {
                let k = a[y * ow + xx] as usize;
                out[(2 * y + k / 2) * w + 2 * xx + k % 2] = d[y * ow + xx];
            }
        }
    });
    dx
}

// ------------------------------------------------------------------------------ flex

impl CpuOps for Flex {
    fn bn_stats(x: FlexTensor) -> FlexTensor {
        let dims = dims4(&x);
        tensor(stats_kernel(&values(&x), dims), vec![2, dims[1]])
    }

    fn bn_apply(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, stats: FlexTensor, eps: f64) -> FlexTensor {
        let dims = dims4(&x);
        let out = apply_kernel(&values(&x), &values(&gamma), &values(&beta), &values(&stats), eps, dims);
        tensor(out, dims.to_vec())
    }

    fn max_pool2(x: FlexTensor) -> FlexTensor {
        let [n, c, h, w] = dims4(&x);
        tensor(pool_kernel(&values(&x), [n, c, h, w]).0, vec![n, c, h / 2, w / 2])
    }

    fn conv3x3(x: FlexTensor, w: FlexTensor) -> FlexTensor {
        Flex::conv2d(x, w, None, conv_options())
    }
}

// ------------------------------------------------------------------------------ autodiff

#[derive(Debug)]
struct BnBackward;

impl Backward<Flex, 3> for BnBackward {
    /// x, gamma, stats, eps.
    type State = (FlexTensor, FlexTensor, FlexTensor, f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, gamma, stats, eps) = ops.state;
        let dims = dims4(&x);
        let (dx, dgamma, dbeta) = bn_backward_kernel(&values(&x), &values(&dy), &values(&gamma), &values(&stats), eps, dims);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, tensor(dx, dims.to_vec()));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, tensor(dgamma, vec![dims[1]]));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, tensor(dbeta, vec![dims[1]]));
        }
    }
}

#[derive(Debug)]
struct PoolBackward;

impl Backward<Flex, 1> for PoolBackward {
    /// Which cell of each window won, and the input's dims.
    type State = (Arc<Vec<u8>>, [usize; 4]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (arg, dims) = ops.state;
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, tensor(pool_backward_kernel(&values(&dy), &arg, dims), dims.to_vec()));
        }
    }
}

#[derive(Debug)]
struct ConvBackward;

impl Backward<Flex, 2> for ConvBackward {
    /// x, w.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, w) = ops.state;
        if let Some(node) = node_w {
            let [n, c, h, wd] = dims4(&x);
            let o = dims4(&w)[0];
            let dw = if h * wd >= GEMM_DW_MIN_PIXELS {
                tensor(conv3x3_weight_grad(&values(&x), &values(&dy), [n, c, h, wd], o), vec![o, c, 3, 3])
            } else {
                // Burn's: a convolution of x (channels as batch) by dy (batch as channels).
                let g = Flex::conv2d(Flex::float_swap_dims(x, 0, 1), Flex::float_swap_dims(dy.clone(), 0, 1), None, conv_options());
                Flex::float_swap_dims(g, 0, 1)
            };
            grads.register::<Flex>(node.id, dw);
        }
        if let Some(node) = node_x {
            let options = ConvTransposeOptions::new([1, 1], [1, 1], [0, 0], [1, 1], 1);
            grads.register::<Flex>(node.id, Flex::conv_transpose2d(dy, w, None, options));
        }
    }
}

/// Burn's autodiff tensor over flex (its type is not exported by name).
type Ad<C> = FloatTensor<Autodiff<Flex, C>>;

impl<C: CheckpointStrategy> CpuOps for Autodiff<Flex, C> {
    fn bn_stats(x: Ad<C>) -> Ad<C> {
        Ad::<C>::new(<Flex as CpuOps>::bn_stats(x.into_primitive()))
    }

    fn bn_apply(
        x: Ad<C>,
        gamma: Ad<C>,
        beta: Ad<C>,
        stats: Ad<C>,
        eps: f64,
    ) -> Ad<C> {
        let stats = stats.into_primitive();
        match BnBackward.prepare::<C>([x.node(), gamma.node(), beta.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (xp, gp) = (x.primitive().clone(), gamma.primitive().clone());
                let out = <Flex as CpuOps>::bn_apply(xp.clone(), gp.clone(), beta.into_primitive(), stats.clone(), eps);
                prep.finish((xp, gp, stats, eps), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as CpuOps>::bn_apply(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                stats,
                eps,
            )),
        }
    }

    fn conv3x3(x: Ad<C>, w: Ad<C>) -> Ad<C> {
        match ConvBackward.prepare::<C>([x.node(), w.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (xp, wp) = (x.into_primitive(), w.into_primitive());
                let out = <Flex as CpuOps>::conv3x3(xp.clone(), wp.clone());
                prep.finish((xp, wp), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as CpuOps>::conv3x3(x.into_primitive(), w.into_primitive())),
        }
    }

    fn max_pool2(x: Ad<C>) -> Ad<C> {
        match PoolBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let xp = x.into_primitive();
                let [n, c, h, w] = dims4(&xp);
                let (out, arg) = pool_kernel(&values(&xp), [n, c, h, w]);
                prep.finish((Arc::new(arg), [n, c, h, w]), tensor(out, vec![n, c, h / 2, w / 2]))
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as CpuOps>::max_pool2(x.into_primitive())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_backward_routes_each_gradient_to_its_window_max() {
        // One 4×4 plane: window maxima at different cells, odd-sized input floors.
        let x = [1., 5., 0., 0., 2., 3., 0., 9., 7., 0., 4., 4., 0., 0., 4., 8.];
        let (out, arg) = pool_kernel(&x, [1, 1, 4, 4]);
        assert_eq!(out, vec![5., 9., 7., 8.]);
        assert_eq!(arg, vec![1, 3, 0, 3]);
        let dx = pool_backward_kernel(&[1., 2., 3., 4.], &arg, [1, 1, 4, 4]);
        assert_eq!(dx, vec![0., 1., 0., 0., 0., 0., 0., 2., 3., 0., 0., 0., 0., 0., 0., 4.]);
    }

    fn naive(x: &[f32], dy: &[f32], [n, c, h, w]: [usize; 4], o: usize) -> Vec<f32> {
        let mut dw = vec![0.0f64; o * c * 9];
        for b in 0..n {
            for oc in 0..o {
                for ci in 0..c {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let mut s = 0.0f64;
                            for y in 0..h {
                                for xx in 0..w {
                                    let (sy, sx) = (y as isize + ky as isize - 1, xx as isize + kx as isize - 1);
                                    if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                                        continue;
                                    }
                                    let xv = x[((b * c + ci) * h + sy as usize) * w + sx as usize] as f64;
                                    s += xv * dy[((b * o + oc) * h + y) * w + xx] as f64;
                                }
                            }
                            dw[((oc * c + ci) * 3 + ky) * 3 + kx] += s;
                        }
                    }
                }
            }
        }
        dw.into_iter().map(|v| v as f32).collect()
    }

    #[test]
    fn matches_the_definition() {
        let mut rng = crate::rng::Rng::new(3);
        let mut rand = |len: usize| (0..len).map(|_| rng.below(2001) as f32 / 1000.0 - 1.0).collect::<Vec<f32>>();
        // 5×7 maps (rows and columns differ) and more images than one chunk holds.
        for (n, c, o, h, w) in [(3, 2, 4, 5, 7), (400, 3, 2, 5, 7), (2, 5, 3, 1, 1)] {
            let x = rand(n * c * h * w);
            let dy = rand(n * o * h * w);
            let got = conv3x3_weight_grad(&x, &dy, [n, c, h, w], o);
            let want = naive(&x, &dy, [n, c, h, w], o);
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!((g - e).abs() <= 1e-3 * (1.0 + e.abs()), "{n}×{c}→{o} at {h}×{w}: index {i}: {g} vs {e}");
            }
        }
    }
}

//! The host kernels of BatchNorm → ReLU → dropout and of 2×2 max pooling, forward and
//! backward: one or two passes over the data per direction, parallel over channel planes,
//! without per-element branches.

use std::borrow::Cow;
use std::mem::MaybeUninit;

use burn::backend::flex::FlexTensor;
use burn::tensor::TensorData;
use rayon::prelude::*;

use crate::blocks::{assume_init, uninit, written};
use crate::mask::Mask;
use crate::simd::simd_fn;

// Host data.

pub(crate) fn values(t: &FlexTensor) -> Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(t.to_contiguous().as_slice::<f32>().expect("contiguous f32").to_vec()),
    }
}

pub(crate) fn dims4(t: &FlexTensor) -> [usize; 4] {
    let s = t.layout().shape();
    assert_eq!(s.num_dims(), 4, "expected a [n, c, h, w] tensor");
    [s[0], s[1], s[2], s[3]]
}

pub(crate) fn tensor(v: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape))
}

/// Per-channel sums over the `n` images, in f64: `f(b, acc)` adds image `b`'s `c` planes into
/// `acc` (one entry per channel), image by image, each thread over its own run of images in
/// memory order, the runs' sums added in order, so the order is the same on every run.
/// Channel by channel (planes `c · hw` floats apart: one to four cache lines each on the 4×4
/// and 8×8 maps) the hardware prefetchers found no stream to follow.
fn channel_sums<const K: usize>(n: usize, c: usize, f: impl Fn(usize, &mut [[f64; K]]) + Sync + Send) -> Vec<[f64; K]> {
    if n == 0 {
        return vec![[0.0; K]; c];
    }
    let per_thread = n.div_ceil(rayon::current_num_threads().max(1));
    let images: Vec<usize> = (0..n).collect();
    let runs: Vec<Vec<[f64; K]>> = images
        .par_chunks(per_thread)
        .map(|run| {
            let mut acc = vec![[0.0; K]; c];
            for &b in run {
                f(b, &mut acc);
            }
            acc
        })
        .collect();
    let mut runs = runs.into_iter();
    let mut sum = runs.next().unwrap_or_else(|| vec![[0.0; K]; c]);
    for run in runs {
        for (a, r) in sum.iter_mut().zip(run) {
            a.iter_mut().zip(r).for_each(|(a, v)| *a += v);
        }
    }
    sum
}

/// `[mean; var]` per channel: each plane summed in f32 lanes (vectorised), planes added in f64.
pub(crate) fn stats_kernel(x: &[f32], [n, c, h, w]: [usize; 4]) -> Vec<f32> {
    let hw = h * w;
    let count = (n * hw) as f64;
    let planes = |b: usize| x[b * c * hw..][..c * hw].chunks_exact(hw.max(1)).enumerate();
    let means: Vec<f32> =
        channel_sums::<1>(n, c, |b, acc| planes(b).for_each(|(ch, p)| acc[ch][0] += plane_sum(p) as f64))
            .iter()
            .map(|s| (s[0] / count) as f32)
            .collect();
    let vars = channel_sums::<1>(n, c, |b, acc| {
        planes(b).for_each(|(ch, p)| acc[ch][0] += plane_squares(p, means[ch]) as f64)
    });
    means.iter().copied().chain(vars.iter().map(|v| (v[0] / count) as f32)).collect()
}

/// A plane's mean (rounded to f32) and the sum of its squared deviations from it, `[mean, M2]`,
/// summed as [`stats_kernel`] sums: for Chan's combination of planes (`conv::forward_stats`).
pub(crate) fn plane_moments(v: &[f32]) -> [f64; 2] {
    let mean = (plane_sum(v) as f64 / v.len().max(1) as f64) as f32;
    [mean as f64, plane_squares(v, mean) as f64]
}

simd_fn!(
    /// `Σ v` in eight independent f32 lanes (vectorisable, unlike one running sum).
    fn plane_sum(v: &[f32]) -> f32 => plane_sum_body
);
simd_fn!(
    /// `Σ (v − m)²`, the same way.
    fn plane_squares(v: &[f32], m: f32) -> f32 => plane_squares_body
);

#[inline(always)]
fn plane_sum_body(v: &[f32]) -> f32 {
    lanes_sum(v, |x| x)
}

#[inline(always)]
fn plane_squares_body(v: &[f32], m: f32) -> f32 {
    lanes_sum(v, |x| (x - m) * (x - m))
}

/// `Σ f(v)` in eight independent f32 lanes, the remainder summed after them.
#[inline(always)]
fn lanes_sum(v: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] += f(c[l]);
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|&v| f(v)).sum::<f32>()
}

fn inv_std(stats: &[f32], c: usize, eps: f64) -> Vec<f32> {
    stats[c..2 * c].iter().map(|&v| (1.0 / (v as f64 + eps).sqrt()) as f32).collect()
}

/// `relu(x·scale + shift)`, times the mask if there is one.
#[allow(clippy::too_many_arguments)]
pub(crate) fn apply_kernel(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    stats: &[f32],
    eps: f64,
    mask: Option<Mask>,
    [n, c, h, w]: [usize; 4],
) -> Vec<f32> {
    let hw = h * w;
    let inv = inv_std(stats, c, eps);
    assert_eq!(x.len(), n * c * hw, "bn_relu_dropout: input has the wrong size");
    let mut out = uninit(n * c * hw);
    if out.is_empty() {
        return Vec::new();
    }
    let scale: Vec<f32> = (0..c).map(|ch| gamma[ch] * inv[ch]).collect();
    let shift: Vec<f32> = (0..c).map(|ch| beta[ch] - stats[ch] * scale[ch]).collect();
    out.par_chunks_mut(c * hw).zip(x.par_chunks(c * hw)).enumerate().for_each(|(b, (o, xs))| {
        apply_image(o, xs, &scale, &shift, mask, b * c * hw);
    });
    // SAFETY: `apply_image` writes every element of its image, and the images cover `out`.
    unsafe { assume_init(out) }
}

/// Floats per group of planes that [`apply_image`] masks after their ReLU pass: in L1.
const MASK_GROUP: usize = 4096;

simd_fn!(
    /// One image of [`apply_kernel`] (its `c = scale.len()` planes); `start` is its first
    /// element's index in the tensor. Image by image: a call (and a channel's constants) per
    /// plane cost more than the plane on the 4×4 maps (16 values).
    fn apply_image(o: &mut [MaybeUninit<f32>], xs: &[f32], scale: &[f32], shift: &[f32], mask: Option<Mask>, start: usize) => apply_image_body
);

#[inline(always)]
fn apply_image_body(
    o: &mut [MaybeUninit<f32>],
    xs: &[f32],
    scale: &[f32],
    shift: &[f32],
    mask: Option<Mask>,
    start: usize,
) {
    assert!(o.len() == xs.len() && scale.len() == shift.len(), "apply_image: lengths differ");
    let hw = xs.len() / scale.len().max(1);
    // Planes per group: masked while they are in cache.
    let group = (MASK_GROUP / hw.max(1)).max(1);
    for (g, (o, xs)) in o.chunks_mut(group * hw).zip(xs.chunks(group * hw)).enumerate() {
        for (i, (o, xs)) in o.chunks_exact_mut(hw).zip(xs.chunks_exact(hw)).enumerate() {
            let (scale, shift) = (scale[g * group + i], shift[g * group + i]);
            for (o, &v) in o.iter_mut().zip(xs) {
                o.write(relu(v * scale + shift));
            }
        }
        // SAFETY: the loop above wrote every element of the group.
        let o = unsafe { written(o) };
        if let Some(mask) = mask {
            mask.apply(start + g * group * hw, o);
        }
    }
}

/// `v` where `keep`, else 0, without a branch: ReLU's sign is a coin flip, and a mispredicted
/// branch per element cost more than the rest of the kernel (measured: 6 ns per element).
#[inline(always)]
fn select(keep: bool, v: f32) -> f32 {
    f32::from_bits(v.to_bits() & (keep as u32).wrapping_neg())
}

/// ReLU that lets NaN through, as PyTorch's does, so a diverging run shows NaN (hence the
/// negated comparison: `!(NaN <= 0)` is true).
#[inline(always)]
#[allow(clippy::neg_cmp_op_on_partial_ord)]
fn relu(y: f32) -> f32 {
    select(!(y <= 0.0), y)
}

simd_fn!(
    /// For each plane of one image (its `c = mean.len()` planes), `(Σ d, Σ d·(v − mean))`
    /// added into `acc` as `[Σ d, Σ d·(v − mean) · inv]` in f64, where `d` is the gradient at
    /// the BatchNorm output: `dy · keep` where the fused op's output `out` is positive (ReLU
    /// active, element kept), else 0. Each plane in eight independent lanes, which the
    /// compiler vectorises (one running f32 sum is a chain of dependent adds). Image by image
    /// as [`apply_image`].
    #[allow(clippy::too_many_arguments)]
    fn gated_sums(dy: &[f32], out: &[f32], v: &[f32], keep: f32, mean: &[f32], inv: &[f32], acc: &mut [[f64; 2]]) => gated_sums_body
);

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gated_sums_body(dy: &[f32], out: &[f32], v: &[f32], keep: f32, mean: &[f32], inv: &[f32], acc: &mut [[f64; 2]]) {
    let hw = dy.len() / mean.len().max(1);
    assert!(out.len() == dy.len() && v.len() == dy.len() && acc.len() == mean.len(), "gated_sums: lengths differ");
    if hw == 0 {
        return;
    }
    let planes = dy.chunks_exact(hw).zip(out.chunks_exact(hw)).zip(v.chunks_exact(hw));
    for (ch, ((dy, out), v)) in planes.enumerate() {
        let mean = mean[ch];
        let (mut s, mut sx) = ([0.0f32; 8], [0.0f32; 8]);
        let (dc, oc, vc) = (dy.chunks_exact(8), out.chunks_exact(8), v.chunks_exact(8));
        let (dr, or, vr) = (dc.remainder(), oc.remainder(), vc.remainder());
        for ((d, o), v) in dc.zip(oc).zip(vc) {
            for l in 0..8 {
                let g = select(o[l] > 0.0, d[l] * keep);
                s[l] += g;
                sx[l] += g * (v[l] - mean);
            }
        }
        for ((&d, &o), &v) in dr.iter().zip(or).zip(vr) {
            let g = select(o > 0.0, d * keep);
            s[0] += g;
            sx[0] += g * (v - mean);
        }
        let (ps, psx): (f32, f32) = (s.iter().sum(), sx.iter().sum());
        acc[ch][0] += ps as f64;
        acc[ch][1] += (psx * inv[ch]) as f64;
    }
}

/// A channel's constants in the input gradient: mean, 1/σ, γ/σ, mean(d), mean(d · x̂).
type DxConstants = [f32; 5];

simd_fn!(
    /// One image of the input gradient: `scale · (d − mean(d) − x̂ · mean(d · x̂))` per plane,
    /// `d` gated as in [`gated_sums`].
    fn dx_image(dx: &mut [MaybeUninit<f32>], dy: &[f32], out: &[f32], v: &[f32], keep: f32, constants: &[DxConstants]) => dx_image_body
);

#[inline(always)]
fn dx_image_body(
    dx: &mut [MaybeUninit<f32>],
    dy: &[f32],
    out: &[f32],
    v: &[f32],
    keep: f32,
    constants: &[DxConstants],
) {
    assert!(dy.len() == dx.len() && out.len() == dx.len() && v.len() == dx.len(), "dx_image: lengths differ");
    let hw = dx.len() / constants.len().max(1);
    if hw == 0 {
        return;
    }
    let planes = dx.chunks_exact_mut(hw).zip(dy.chunks_exact(hw)).zip(out.chunks_exact(hw)).zip(v.chunks_exact(hw));
    for ((((dx, dy), out), v), &[mean, is, scale, mean_dy, mean_dyx]) in planes.zip(constants) {
        for (((o, &d), &y), &v) in dx.iter_mut().zip(dy).zip(out).zip(v) {
            let g = select(y > 0.0, d * keep);
            let xhat = (v - mean) * is;
            o.write(scale * (g - mean_dy - xhat * mean_dyx));
        }
    }
}

/// Backward of the fused training-mode BatchNorm → ReLU → dropout whose output was `out`:
/// `(dx, dgamma, dbeta)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn bn_backward_kernel(
    x: &[f32],
    dy: &[f32],
    (out, keep): (&[f32], f32),
    gamma: &[f32],
    stats: &[f32],
    eps: f64,
    [n, c, h, w]: [usize; 4],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let hw = h * w;
    let count = (n * hw) as f32;
    let inv = inv_std(stats, c, eps);
    fn image(a: &[f32], b: usize, len: usize) -> &[f32] {
        &a[b * len..][..len]
    }
    let len = c * hw;
    // Σ dy and Σ dy·x̂ per channel.
    let sums: Vec<(f32, f32)> = channel_sums(n, c, |b, acc| {
        gated_sums(image(dy, b, len), image(out, b, len), image(x, b, len), keep, &stats[..c], &inv, acc)
    })
    .into_iter()
    .map(|[s, sx]| (s as f32, sx as f32))
    .collect();
    let constants: Vec<DxConstants> = (0..c)
        .map(|ch| {
            let (s, sx) = sums[ch];
            [stats[ch], inv[ch], gamma[ch] * inv[ch], s / count, sx / count]
        })
        .collect();
    let mut dx = uninit(n * c * hw);
    if !dx.is_empty() {
        dx.par_chunks_mut(c * hw).enumerate().for_each(|(b, dx_out)| {
            dx_image(dx_out, image(dy, b, len), image(out, b, len), image(x, b, len), keep, &constants);
        });
    }
    let dgamma = sums.iter().map(|s| s.1).collect();
    let dbeta = sums.iter().map(|s| s.0).collect();
    // SAFETY: `dx_image` writes every element of its image, and the images cover `dx`.
    (unsafe { assume_init(dx) }, dgamma, dbeta)
}

/// Adam's scalars for one step, as f32 (what Burn's scalar ops multiply by): weight decay,
/// beta1, 1 − beta1, beta2, 1 − beta2, √(1 − beta2^t), eps, lr / (1 − beta1^t).
pub(crate) type AdamScalars = [f32; 8];

/// Elements per parallel chunk of the optimizer kernels: 256 KiB of each array.
const UPDATE_CHUNK: usize = 1 << 16;

/// One Adam step over flat `p, g, m, v`: `(p', m', v')`.
pub(crate) fn adam_kernel(
    p: &[f32],
    g: &[f32],
    m: &[f32],
    v: &[f32],
    s: AdamScalars,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let len = p.len();
    assert!(g.len() == len && m.len() == len && v.len() == len, "adam_step: the tensors differ in size");
    let (mut po, mut mo, mut vo) = (uninit(len), uninit(len), uninit(len));
    po.par_chunks_mut(UPDATE_CHUNK)
        .zip(mo.par_chunks_mut(UPDATE_CHUNK))
        .zip(vo.par_chunks_mut(UPDATE_CHUNK))
        .enumerate()
        .for_each(|(i, ((po, mo), vo))| {
            let r = i * UPDATE_CHUNK..i * UPDATE_CHUNK + po.len();
            adam_chunk([po, mo, vo], [&p[r.clone()], &g[r.clone()], &m[r.clone()], &v[r]], s);
        });
    // SAFETY: `adam_chunk` writes every element of its chunks, and the chunks cover all three.
    unsafe { (assume_init(po), assume_init(mo), assume_init(vo)) }
}

simd_fn!(
    /// One chunk of [`adam_kernel`]: `out = [p', m', v']` from `input = [p, g, m, v]`.
    fn adam_chunk(out: [&mut [MaybeUninit<f32>]; 3], input: [&[f32]; 4], s: AdamScalars) => adam_chunk_body
);

/// The f32 operations of `cifar_core`'s optimizer on Burn's tensors, in its order (Rust never
/// fuses them into FMAs), so the bits are those of the tensor-op path.
#[inline(always)]
fn adam_chunk_body([po, mo, vo]: [&mut [MaybeUninit<f32>]; 3], [p, g, m, v]: [&[f32]; 4], s: AdamScalars) {
    let [wd, b1, one_b1, b2, one_b2, root_bc2, eps, step] = s;
    let n = po.len();
    assert!(mo.len() == n && vo.len() == n && p.len() == n && g.len() == n && m.len() == n && v.len() == n);
    let decay = wd != 0.0;
    for i in 0..n {
        let g = if decay { g[i] + p[i] * wd } else { g[i] };
        let m = m[i] * b1 + g * one_b1;
        let v = v[i] * b2 + g * g * one_b2;
        let update = m / (v.sqrt() / root_bc2 + eps) * step;
        po[i].write(p[i] - update);
        mo[i].write(m);
        vo[i].write(v);
    }
}

/// SGD's scalars for one step, as f32: weight decay, momentum, lr.
pub(crate) type SgdScalars = [f32; 3];

/// One SGD-Nesterov step over flat `p, g, buf`: `(p', buf')`.
pub(crate) fn sgd_kernel(p: &[f32], g: &[f32], buf: &[f32], s: SgdScalars) -> (Vec<f32>, Vec<f32>) {
    let len = p.len();
    assert!(g.len() == len && buf.len() == len, "sgd_step: the tensors differ in size");
    let (mut po, mut bo) = (uninit(len), uninit(len));
    po.par_chunks_mut(UPDATE_CHUNK).zip(bo.par_chunks_mut(UPDATE_CHUNK)).enumerate().for_each(|(i, (po, bo))| {
        let r = i * UPDATE_CHUNK..i * UPDATE_CHUNK + po.len();
        sgd_chunk([po, bo], [&p[r.clone()], &g[r.clone()], &buf[r]], s);
    });
    // SAFETY: `sgd_chunk` writes every element of its chunks, and the chunks cover both.
    unsafe { (assume_init(po), assume_init(bo)) }
}

simd_fn!(
    /// One chunk of [`sgd_kernel`]: `out = [p', buf']` from `input = [p, g, buf]`.
    fn sgd_chunk(out: [&mut [MaybeUninit<f32>]; 2], input: [&[f32]; 3], s: SgdScalars) => sgd_chunk_body
);

/// As [`adam_chunk_body`], for `cifar_core`'s SGD-Nesterov.
#[inline(always)]
fn sgd_chunk_body([po, bo]: [&mut [MaybeUninit<f32>]; 2], [p, g, buf]: [&[f32]; 3], s: SgdScalars) {
    let [wd, momentum, lr] = s;
    let n = po.len();
    assert!(bo.len() == n && p.len() == n && g.len() == n && buf.len() == n);
    let decay = wd != 0.0;
    for i in 0..n {
        let g = if decay { g[i] + p[i] * wd } else { g[i] };
        let b = buf[i] * momentum + g;
        po[i].write(p[i] - (g + b * momentum) * lr);
        bo[i].write(b);
    }
}

/// The larger of two (value, cell) pairs, the first on ties; NaN wins, as in PyTorch, so a
/// diverging run still shows NaN. Bit masks, not `if`s: which cell wins is a coin flip, and
/// the compiler turned `if`s into branches that mispredicted half the time (the pool was
/// 13 % of a step at width 0.25, `perf`); masks also let it vectorise the loop.
#[inline(always)]
fn wins(a: (f32, u8), b: (f32, u8)) -> (f32, u8) {
    let second = (b.0 > a.0) | (b.0.is_nan() & !a.0.is_nan());
    let m = (second as u32).wrapping_neg();
    (f32::from_bits((a.0.to_bits() & !m) | (b.0.to_bits() & m)), (a.1 & !(m as u8)) | (b.1 & m as u8))
}

/// Max of each 2×2 window and which of its four cells won (row-major), per plane.
pub(crate) fn pool_kernel(x: &[f32], [n, c, h, w]: [usize; 4]) -> (Vec<f32>, Vec<u8>) {
    let (oh, ow) = (h / 2, w / 2);
    assert_eq!(x.len(), n * c * h * w, "max_pool2: input has the wrong size");
    let (mut out, mut arg) = (uninit(n * c * oh * ow), uninit(n * c * oh * ow));
    if oh * ow > 0 {
        out.par_chunks_mut(oh * ow).zip(arg.par_chunks_mut(oh * ow)).enumerate().for_each(|(plane, (o, a))| {
            pool_plane(o, a, &x[plane * h * w..][..h * w], w);
        });
    }
    // SAFETY: `pool_plane` writes every element of its two planes, and the planes cover both.
    unsafe { (assume_init(out), assume_init(arg)) }
}

simd_fn!(
    /// One plane of [`pool_kernel`]: `xs` is `h × w`, `o` and `a` `h/2 × w/2`.
    pub(crate) fn pool_plane(o: &mut [MaybeUninit<f32>], a: &mut [MaybeUninit<u8>], xs: &[f32], w: usize) => pool_plane_body
);

#[inline(always)]
fn pool_plane_body(o: &mut [MaybeUninit<f32>], a: &mut [MaybeUninit<u8>], xs: &[f32], w: usize) {
    let ow = w / 2;
    assert!(o.len() == a.len() && o.len() == xs.len() / w / 2 * ow, "pool_plane: sizes differ");
    for (y, (o, a)) in o.chunks_exact_mut(ow).zip(a.chunks_exact_mut(ow)).enumerate() {
        let (r0, r1) = (&xs[2 * y * w..][..2 * ow], &xs[(2 * y + 1) * w..][..2 * ow]);
        for (((o, a), p0), p1) in o.iter_mut().zip(a).zip(r0.chunks_exact(2)).zip(r1.chunks_exact(2)) {
            let (v01, i01) = wins((p0[0], 0), (p0[1], 1));
            let (v23, i23) = wins((p1[0], 2), (p1[1], 3));
            let (v, i) = wins((v01, i01), (v23, i23));
            o.write(v);
            a.write(i);
        }
    }
}

pub(crate) fn pool_backward_kernel(dy: &[f32], arg: &[u8], [n, c, h, w]: [usize; 4]) -> Vec<f32> {
    let (oh, ow) = (h / 2, w / 2);
    assert!(dy.len() == n * c * oh * ow && arg.len() == dy.len(), "max_pool2 backward: gradient has the wrong size");
    let mut dx = uninit(n * c * h * w);
    if h * w > 0 {
        dx.par_chunks_mut(h * w).enumerate().for_each(|(plane, out)| {
            pool_backward_plane(out, &dy[plane * oh * ow..][..oh * ow], &arg[plane * oh * ow..][..oh * ow], w);
        });
    }
    // SAFETY: `pool_backward_plane` writes every element of its plane, and the planes cover `dx`.
    unsafe { assume_init(dx) }
}

simd_fn!(
    /// One plane of [`pool_backward_kernel`].
    fn pool_backward_plane(out: &mut [MaybeUninit<f32>], d: &[f32], a: &[u8], w: usize) => pool_backward_plane_body
);

#[inline(always)]
pub(crate) fn pool_backward_plane_body(out: &mut [MaybeUninit<f32>], d: &[f32], a: &[u8], w: usize) {
    let (ow, oh) = (w / 2, out.len() / w / 2);
    assert!(d.len() == oh * ow && a.len() == d.len(), "pool_backward_plane: sizes differ");
    for y in 0..oh {
        let (d, a) = (&d[y * ow..][..ow], &a[y * ow..][..ow]);
        let (top, bottom) = out[2 * y * w..][..2 * w].split_at_mut(w);
        // All four cells of every window are written (the gradient or 0), with no branch on
        // which cell won.
        let cells = top.chunks_exact_mut(2).zip(bottom.chunks_exact_mut(2));
        for (((t, b), &k), &g) in cells.zip(a).zip(d) {
            t[0].write(select(k == 0, g));
            t[1].write(select(k == 1, g));
            b[0].write(select(k == 2, g));
            b[1].write(select(k == 3, g));
        }
        // An odd last column, which no window covers.
        if w % 2 == 1 {
            top[w - 1].write(0.0);
            bottom[w - 1].write(0.0);
        }
    }
    // An odd last row, likewise.
    out[2 * oh * w..].fill(MaybeUninit::new(0.0));
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

    /// Odd sides floor, and the last row and column, which no window covers, get a zero
    /// gradient: the outputs are not zero-filled first, so each cell must be written. Two
    /// planes, allocated after larger non-zero ones were freed (their memory comes back).
    #[test]
    fn odd_sides_floor_and_every_gradient_cell_is_written() {
        drop((vec![7.0f32; 4096], vec![7u8; 4096]));
        let x: Vec<f32> = (0..2 * 3 * 5).map(|i| ((i * 7) % 11) as f32).collect();
        let (out, arg) = pool_kernel(&x, [1, 2, 3, 5]);
        let dy = [1., 2., 3., 4.];
        let dx = pool_backward_kernel(&dy, &arg, [1, 2, 3, 5]);
        assert_eq!(dx.len(), 30);
        for plane in 0..2 {
            let xs = &x[plane * 15..][..15];
            for ox in 0..2 {
                let cells = [0, 1, 5, 6].map(|d| 2 * ox + d);
                let best = cells.iter().map(|&i| xs[i]).fold(f32::MIN, f32::max);
                let first = cells.iter().position(|&i| xs[i] == best).unwrap();
                assert_eq!(out[plane * 2 + ox], best, "plane {plane}, window {ox}");
                assert_eq!(arg[plane * 2 + ox] as usize, first, "plane {plane}, window {ox}");
                for (cell, &i) in cells.iter().enumerate() {
                    let want = if cell == first { dy[plane * 2 + ox] } else { 0.0 };
                    assert_eq!(dx[plane * 15 + i], want, "plane {plane}, cell {i}");
                }
            }
            // Column 4 and row 2: no window.
            for i in [4, 9, 10, 11, 12, 13, 14] {
                assert_eq!(dx[plane * 15 + i], 0.0, "plane {plane}, uncovered cell {i}");
            }
        }
    }

    #[test]
    fn pool_ties_go_to_the_first_cell_and_nan_wins() {
        // One 2×6 plane, three windows: all equal; a tie between cells 1 and 2; NaN in cells 1
        // and 2 beside a larger number.
        let nan = f32::NAN;
        let x = [2., 2., 1., 3., 1., nan, 2., 2., 3., 0., nan, 5.];
        let (out, arg) = pool_kernel(&x, [1, 1, 2, 6]);
        assert_eq!(arg, vec![0, 1, 1]);
        assert_eq!(&out[..2], &[2., 3.]);
        assert!(out[2].is_nan());
        let dx = pool_backward_kernel(&[1., 2., 3.], &arg, [1, 1, 2, 6]);
        assert_eq!(dx, vec![1., 0., 0., 2., 0., 3., 0., 0., 0., 0., 0., 0.]);
    }
}

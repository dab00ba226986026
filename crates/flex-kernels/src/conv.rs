//! Host kernels for the network's only convolution: 3×3, stride 1, padding 1, no bias, f32,
//! NCHW in and out. Forward, input gradient and weight gradient are each three GEMMs (one per
//! kernel row) over a "row-shifted" copy of the input, built per block of images so it stays
//! in cache:
//!
//! ```text
//! S[(kx, c), r·w + x] = input[b, c, y, x + kx − 1]   (zero outside the image)
//! ```
//! where the rows `r` of all images follow each other with **one zero row between images**
//! (row `b·(h+1)` is zero, image `b`'s row `y` is row `b·(h+1) + 1 + y`). Shifting a column
//! index by `ky·w` then moves one image row up or down, and the zero rows supply the vertical
//! padding, so output row `r' = b·(h+1) + y` is
//!
//! ```text
//! out[:, r'·w + x] = Σ_ky  W_ky (o × 3c) · S[:, (r' + ky)·w + x]
//! ```
//! with contiguous operands: K = 3c (kx and channels), and the only wasted work is the one
//! separator row per image (1/h of the columns). flex's own conv makes an im2col with K = 9c
//! per tile and converts to and from NHWC around it; im2col copies 9× the input, this 3×.
//! On maps under 16×16 the separator rows would waste 1/8 and more, so there `Plan::Taps` (a
//! plain im2col, one GEMM) is used instead. Layers with 64 channels and more take Winograd
//! (`winograd.rs`) in all three directions. In bf16 (`amx.rs`) the operands are packed
//! straight from the input, and the plans are chosen by where the tile unit's rows start
//! ([`Plan::for_map`]).

use crate::Precision;
use crate::blocks::{
    Dims, Extras, aligned_for_overwrite, assume_init, capped_for_threads, gemm, gemm_into, par_images_with,
    partial_sums_over_blocks, tuning, uninit, write, written,
};
use crate::kernels::{plane_moments, pool_plane, stats_kernel};
use crate::{amx, winograd};
use rayon::prelude::*;

/// A block's shifted input is about this many floats (1 MiB: half of this CPU's L2), so the
/// GEMMs find it in cache...
const BLOCK_FLOATS: usize = 1 << 18;
/// ... but has at least this many columns (output pixels), below which the GEMMs' own
/// overhead shows (deep layers on small maps). Both measured with
/// `PROFILE_CONV=1 cargo run --release --example profile_ops`.
const MIN_BLOCK_COLUMNS: usize = 1024;
/// In bf16 the GEMMs' overhead is smaller, and a block's packed input (`6c` bytes per column)
/// larger than L2 costs more: on the 4×4 and 8×8 maps (512 and 256 channels, a 3 MB operand
/// at 1,024 columns) 512 columns took the 256→512 and both 512→512 layers from 450 to 390 ms
/// per step (forward, input and weight gradients; 256 columns: 416 ms, 2,048: 584 ms).
const MIN_BLOCK_COLUMNS_BF16: usize = 512;
/// The same for `Plan::Taps` in bf16, whose operand is 9c rows: 256 columns took the
/// 512 → 512 layer at 4×4 from 26.7 / 30.2 ms (forward / input gradient) to 25.5 / 29.9
/// (128: 28.2 / 30.6).
const MIN_BLOCK_COLUMNS_BF16_TAPS: usize = 256;

/// How a block's input is laid out for the GEMMs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Plan {
    /// Three horizontal shifts (K = 3c) with one zero row between images; one GEMM per kernel
    /// row, which moves the columns by whole image rows. Copies 3× the input, computes
    /// (h+1)/h of the output.
    Rows,
    /// All nine shifts (K = 9c, an im2col) and one GEMM: 9× the input, no wasted columns.
    Taps,
}

impl Plan {
    /// Shifts per GEMM (the K dimension is this times the channels).
    fn taps(self) -> usize {
        match self {
            Plan::Rows => 3,
            Plan::Taps => 9,
        }
    }

    fn gemms(self) -> usize {
        match self {
            Plan::Rows => 3,
            Plan::Taps => 1,
        }
    }

    /// Zero rows between images.
    fn separator(self) -> usize {
        match self {
            Plan::Rows => 1,
            Plan::Taps => 0,
        }
    }

    /// `(ky, kx)` of shift `t` of GEMM `g`.
    fn tap(self, g: usize, t: usize) -> (usize, usize) {
        match self {
            Plan::Rows => (g, t),
            Plan::Taps => (t / 3, t % 3),
        }
    }

    /// The plan of the forward and the input gradient on `h × w` maps. In bf16 `Rows` where
    /// the kernel rows' column offsets (`w`, `2w`) start on cache lines, so one packing
    /// serves all three GEMMs; on narrower maps `Rows` packs once per GEMM, and `Taps` packs
    /// the same nine shifts once without the separator rows (a fifth of the columns on 4×4
    /// maps). Per layer, width 1, batch 512, ms forward / input gradient, `Rows` → `Taps`:
    /// 512 → 512 at 4×4 31.3 / 35.5 → 25.5 / 29.9, 256 → 512 at 8×8 (pooled) 45.0 / 60.1 →
    /// 41.1 / 45.6. In f32 `Taps` also on large maps from fewer than [`ROWS_MIN_CHANNELS`]
    /// input channels `c`: the first layer (3 → 64) then runs one GEMM with K = 27 instead of
    /// three with K = 9, each adding into the output (forward 14.3 → 11.6 ms at width 1,
    /// batch 512; its weight gradient is as fast either way).
    pub fn for_map(p: Precision, c: usize, h: usize, w: usize) -> Plan {
        if let Some(plan) = Plan::forced() {
            return plan;
        }
        match p {
            Precision::Bf16 if w.is_multiple_of(16) => Plan::Rows,
            Precision::Bf16 => Plan::Taps,
            Precision::F32 if h * w >= TAPS_BELOW_PIXELS && c >= ROWS_MIN_CHANNELS => Plan::Rows,
            Precision::F32 => Plan::Taps,
        }
    }

    /// The weight gradient's plan. In bf16 always `Rows`: there the shifted input is the left
    /// operand, whose offsets are taken as rows of the output gradient (`weight_grad_blocks`),
    /// and `Taps`' 9c-row operand measured slower (512 → 512 at 4×4: 37.0 → 38.2 ms).
    pub fn for_weight_grad(p: Precision, c: usize, h: usize, w: usize) -> Plan {
        match (Plan::forced(), p) {
            (Some(plan), _) => plan,
            (None, Precision::Bf16) => Plan::Rows,
            (None, Precision::F32) => Plan::for_map(p, c, h, w),
        }
    }

    /// The plan `CONV_PLAN` forces, if any.
    fn forced() -> Option<Plan> {
        match tuning().plan.as_deref() {
            Some("rows") => Some(Plan::Rows),
            Some("taps") => Some(Plan::Taps),
            _ => None,
        }
    }
}

/// Maps smaller than this take `Plan::Taps`, where a separator row would waste 1/h.
const TAPS_BELOW_PIXELS: usize = 256;
/// In f32, fewer input channels than this take `Plan::Taps` (see [`Plan::for_map`]).
const ROWS_MIN_CHANNELS: usize = 8;

/// Images per block, so that a block's shifted input and output (`o` rows) are about
/// `BLOCK_FLOATS` large and there are enough blocks for every thread. (Counting the input
/// alone, the first layer's blocks held 27 images and a 7.5 MB output.)
fn images_per_block(p: Precision, plan: Plan, [n, c, h, w]: Dims, o: usize) -> usize {
    let floats = tuning().block_floats.unwrap_or(BLOCK_FLOATS);
    let min = tuning().min_columns.unwrap_or(match (p, plan) {
        (Precision::Bf16, Plan::Rows) => MIN_BLOCK_COLUMNS_BF16,
        (Precision::Bf16, Plan::Taps) => MIN_BLOCK_COLUMNS_BF16_TAPS,
        (Precision::F32, _) => MIN_BLOCK_COLUMNS,
    });
    let columns = (floats / (plan.taps() * c + o)).max(min);
    capped_for_threads(columns / ((h + plan.separator()) * w), n)
}

/// The shifted copy of images `b0..b0 + k` of `x` into `s`: `plan.taps()·c` rows of
/// `stride(plan, k, h, w)` floats.
fn shift_block(plan: Plan, x: &[f32], [_, c, h, w]: Dims, b0: usize, k: usize, s: &mut Vec<f32>) {
    let hw = h * w;
    let sep = plan.separator();
    let stride = stride(plan, k, h, w);
    // Every element is written below (zeros included), so a reused buffer is not cleared
    // first: zeroing whole buffers was 8 % of a step at width 0.25 (`perf`).
    s.resize(plan.taps() * c * stride, 0.0);
    for (row, dst) in s.chunks_mut(stride).enumerate() {
        let (t, ci) = (row / c, row % c);
        // Rows: the vertical shift is the GEMM's column offset; Taps: it is built in here.
        let (ky, kx) = plan.tap(1, t);
        for i in 0..=k {
            if sep > 0 {
                dst[i * (h + 1) * w..][..w].fill(0.0);
            }
            if i == k {
                break;
            }
            let src = &x[((b0 + i) * c + ci) * hw..][..hw];
            let image = &mut dst[(i * (h + sep) + sep) * w..][..hw];
            shifted_plane(src, image, w, ky, kx);
        }
    }
}

/// `image[y, x] = src[y + ky − 1, x + kx − 1]`, zero outside `src`: one copy of the whole
/// plane moved by the shift, then zeros on the row and column it exposes (a copy per image
/// row cost a `memmove` call per 32–128 bytes: 4 % of a step at width 0.25, `perf`).
fn shifted_plane(src: &[f32], image: &mut [f32], w: usize, ky: usize, kx: usize) {
    let hw = image.len();
    let d = (ky as isize - 1) * w as isize + kx as isize - 1;
    let (from, to) = ((-d).max(0) as usize, (hw as isize - d.max(0)).max(0) as usize);
    if from < to {
        image[from..to].copy_from_slice(&src[(from as isize + d) as usize..][..to - from]);
    }
    image[..from.min(hw)].fill(0.0);
    image[to.max(from).min(hw)..].fill(0.0);
    match (ky, hw >= w) {
        (0, true) => image[..w].fill(0.0),
        (2, true) => image[hw - w..].fill(0.0),
        _ => {}
    }
    match kx {
        0 => image.iter_mut().step_by(w).for_each(|v| *v = 0.0),
        2 => image.iter_mut().skip(w - 1).step_by(w).for_each(|v| *v = 0.0),
        _ => {}
    }
}

/// Where a convolution reads its input planes from: a tensor, or, in the backward of a
/// convolution followed by a 2×2 max pool ([`backward_pooled`]), the pooled output's gradient
/// and its winning cells, each plane unpooled as it is read (the full-size gradient, 256 MiB
/// after the 64 → 128 layer at width 1 and batch 512, is then never written to memory).
#[derive(Clone, Copy)]
pub(crate) enum Planes<'a> {
    Dense(&'a [f32]),
    Unpooled { dy: &'a [f32], cells: &'a [u8] },
}

impl<'a> Planes<'a> {
    /// Plane `index` of `h × w` (even sides for `Unpooled`), unpooled into `buf` if need be.
    #[inline(always)]
    fn plane<'b>(self, index: usize, [h, w]: [usize; 2], buf: &'b mut Vec<f32>) -> &'b [f32]
    where
        'a: 'b,
    {
        match self {
            Planes::Dense(x) => &x[index * h * w..][..h * w],
            Planes::Unpooled { .. } => {
                buf.resize(h * w, 0.0);
                self.unpool_into(index, w, buf);
                buf
            }
        }
    }

    /// Plane `index` of `Unpooled` (`out.len()` = its `h × w`) into `out`.
    #[inline(always)]
    fn unpool_into(self, index: usize, w: usize, out: &mut [f32]) {
        let Planes::Unpooled { dy, cells } = self else { unreachable!("unpool_into on dense planes") };
        let q = out.len() / w / 2 * (w / 2);
        // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and the unpooling writes only
        // initialised values (every element: the gradient or 0).
        let out = unsafe { &mut *(out as *mut [f32] as *mut [std::mem::MaybeUninit<f32>]) };
        crate::kernels::pool_backward_plane_body(out, &dy[index * q..][..q], &cells[index * q..][..q], w);
    }

    /// Asks the caches for `count` planes from `index` (of `h × w`), ahead of their reading:
    /// a plane is one to four KiB, and the hardware prefetchers, which do not cross 4 KiB pages,
    /// left the first loads of each to wait on memory (`perf`: two fifths of the packing's
    /// samples on them).
    #[inline(always)]
    fn prefetch(self, index: usize, count: usize, [h, w]: [usize; 2]) {
        // Clipped to the data: the last planes prefetch nothing past it.
        let clipped = |len: usize, at: usize, count: usize| at.min(len)..(at + count).min(len);
        match self {
            Planes::Dense(x) => prefetch(&x[clipped(x.len(), index * h * w, count * h * w)]),
            Planes::Unpooled { dy, cells } => {
                let q = h / 2 * (w / 2);
                prefetch(&dy[clipped(dy.len(), index * q, count * q)]);
                prefetch(&cells[clipped(cells.len(), index * q, count * q)]);
            }
        }
    }

    fn dense(self) -> Option<&'a [f32]> {
        match self {
            Planes::Dense(x) => Some(x),
            Planes::Unpooled { .. } => None,
        }
    }

    /// Panics with `what` unless these are the planes of `[n, c, h, w]`.
    fn check(self, [n, c, h, w]: Dims, what: &str) {
        match self {
            Planes::Dense(x) => assert_eq!(x.len(), n * c * h * w, "{what}"),
            Planes::Unpooled { dy, cells } => {
                assert!(h % 2 == 0 && w % 2 == 0, "{what}: unpooled planes need even sides");
                assert!(dy.len() == n * c * (h / 2) * (w / 2) && cells.len() == dy.len(), "{what}");
            }
        }
    }
}

/// The shifted input of `plan` for images `b0..b0 + k`, its columns `col0..col0 + n`, converted
/// straight into a packed bf16 operand (as `shift_block` then packing would give it, without the
/// f32 copy in between: `memmove` and packing were 19 % of a bf16 step). `rows`, `row_len`
/// apart, are the operand's packed rows; each holds `per_row` channels (1: a [`amx::Left`]
/// row of bf16, 2: a [`amx::Right`] pair row), packed row `t·c/per_row + u` being shift `t`
/// (`plan.tap(1, t)`) of channels `u·per_row ..`; `convert(even, odd)` packs one column.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn shifted_operand_body<T: Copy + Default>(
    plan: Plan,
    x: Planes,
    [_, c, h, w]: Dims,
    [b0, k]: [usize; 2],
    [col0, n]: [usize; 2],
    rows: &mut [T],
    row_len: usize,
    per_row: usize,
    convert: impl Fn(f32, f32) -> T,
) {
    let (hw, units, sep, taps) = (h * w, c / per_row, plan.separator(), plan.taps());
    // One plane converted once, with a zero row and one more zero before and after it; the
    // shifts are copies of it (converting each shift on its own ran a third of the time in
    // remainder loops). Plane position `p` shifted by `(ky, kx)` reads `line[p + ky·w + kx]`.
    let pad = w + 1;
    // (`CHUNK` more: the copies below read whole chunks.)
    let mut line = vec![T::default(); hw + 2 * pad + CHUNK];
    // Unpooled planes (an even and an odd channel), when `x` is a pooled gradient.
    let (mut even, mut odd) = (Vec::new(), Vec::new());
    // Planes are read `ahead` (image, unit) steps after they are prefetched.
    let ahead = (PREFETCH_BYTES / (4 * hw * per_row).max(1)).max(1);
    for u in 0..units {
        // How far each shift's row is written.
        let mut written = [0; 9];
        for i in 0..k {
            let next = u * k + i + ahead;
            if next < units * k {
                x.prefetch((b0 + next % k) * c + next / k * per_row, per_row, [h, w]);
            }
            // Image `i`'s plane in the block's columns, clipped to `col0..col0 + n`; the
            // columns between planes are the separator rows (zeros).
            let start = (i * (h + sep) + sep) * w;
            let (lo, hi) = (start.max(col0), (start + hw).min(col0 + n));
            if lo >= hi {
                continue;
            }
            let plane = (b0 + i) * c + u * per_row;
            let e = x.plane(plane, [h, w], &mut even);
            let o = x.plane(plane + per_row - 1, [h, w], &mut odd);
            for ((l, e), o) in line[pad..pad + hw].iter_mut().zip(e).zip(o) {
                *l = convert(*e, *o);
            }
            let (a, b) = (lo - start, hi - start);
            for (t, written) in written[..taps].iter_mut().enumerate() {
                // `Rows` takes the vertical shift in its GEMMs' column offsets: `ky` is 1 here.
                let (ky, kx) = plan.tap(1, t);
                // The whole row: the chunks run up to `CHUNK − 1` values past `n`, into its
                // padding (`row_len ≥ n + 32`), which no product reads.
                let dst = &mut rows[(t * units + u) * row_len..][..row_len];
                zero_chunks(&mut dst[*written..], lo - col0 - *written);
                let s = ky * w + kx;
                // Past `hi`, the chunks write what the next image's copy or zeros overwrite.
                copy_chunks(&mut dst[lo - col0..], &line[a + s..], b - a);
                let d = &mut dst[lo - col0..hi - col0];
                // The column the shift exposes (x = 0 for kx = 0, x = w − 1 for kx = 2) reads
                // across the plane's edge: zero. (The rows it exposes read the line's zeros.)
                if kx != 1 {
                    let edge = if kx == 0 { 0 } else { w - 1 };
                    let mut p = a / w * w + edge;
                    if p < a {
                        p += w;
                    }
                    while p < b {
                        d[p - a] = T::default();
                        p += w;
                    }
                }
                *written = hi - col0;
            }
        }
        for (t, written) in written[..taps].iter().enumerate() {
            zero_chunks(&mut rows[(t * units + u) * row_len..][..row_len][*written..], n - *written);
        }
    }
}

/// Values per copy in [`copy_chunks`] and [`zero_chunks`].
const CHUNK: usize = 16;

/// `dst[..len] = src[..len]`, in whole chunks of [`CHUNK`] values: also up to `CHUNK − 1`
/// values past `len` of both. On the 4×4 and 8×8 maps a plane's row is 16–64 values, and a
/// `memcpy` call per plane and shift was a third of the packing (`perf`).
#[inline(always)]
fn copy_chunks<T: Copy>(dst: &mut [T], src: &[T], len: usize) {
    for j in (0..len).step_by(CHUNK) {
        dst[j..][..CHUNK].copy_from_slice(&src[j..][..CHUNK]);
    }
}

/// `dst[..len]` zeroed in whole chunks, as [`copy_chunks`].
#[inline(always)]
fn zero_chunks<T: Copy + Default>(dst: &mut [T], len: usize) {
    for j in (0..len).step_by(CHUNK) {
        dst[j..][..CHUNK].fill(T::default());
    }
}

/// How far ahead of its reading the packing prefetches the input.
const PREFETCH_BYTES: usize = 4096;

/// Asks the caches for the lines of `data`.
#[inline(always)]
fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let (p, bytes) = (data.as_ptr().cast::<i8>(), std::mem::size_of_val(data));
        for off in (0..bytes).step_by(64) {
            // SAFETY: a prefetch reads nothing architecturally and cannot fault; the address is
            // inside `data` anyway.
            #[allow(unused_unsafe)]
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.wrapping_add(off))
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

#[inline(always)]
fn bf16_single(v: f32, _: f32) -> u16 {
    amx::bf16(v)
}

crate::simd::simd_fn!(
    /// [`shifted_operand_body`] for a [`amx::Left`] (one channel per row), images
    /// `b0..b0 + k` and columns `col0..col0 + n` given as `[b0, k]` and `[col0, n]`.
    #[allow(clippy::too_many_arguments)]
    fn shifted_left(plan: Plan, x: Planes, dims: Dims, images: [usize; 2], span: [usize; 2], rows: &mut [u16], row_len: usize) => shifted_left_body
);

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn shifted_left_body(
    plan: Plan,
    x: Planes,
    dims: Dims,
    images: [usize; 2],
    span: [usize; 2],
    rows: &mut [u16],
    row_len: usize,
) {
    shifted_operand_body(plan, x, dims, images, span, rows, row_len, 1, bf16_single)
}

crate::simd::simd_fn!(
    /// As [`shifted_left`], for a [`amx::Right`] (two channels per pair row; `c` even).
    #[allow(clippy::too_many_arguments)]
    fn shifted_right(plan: Plan, x: Planes, dims: Dims, images: [usize; 2], span: [usize; 2], rows: &mut [u32], row_len: usize) => shifted_right_body
);

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn shifted_right_body(
    plan: Plan,
    x: Planes,
    dims: Dims,
    images: [usize; 2],
    span: [usize; 2],
    rows: &mut [u32],
    row_len: usize,
) {
    shifted_operand_body(plan, x, dims, images, span, rows, row_len, 2, amx::pair)
}

/// Row length of a block's shifted input.
fn stride(plan: Plan, k: usize, h: usize, w: usize) -> usize {
    let sep = plan.separator();
    (k * (h + sep) + sep) * w
}

/// Output columns of a block (the last image needs no separator after it).
fn columns(plan: Plan, k: usize, h: usize, w: usize) -> usize {
    let sep = plan.separator();
    (k * (h + sep) - sep) * w
}

/// Column offset of GEMM `g` into the shifted input.
fn offset(plan: Plan, g: usize, w: usize) -> usize {
    match plan {
        Plan::Rows => g * w,
        Plan::Taps => 0,
    }
}

/// For bf16: `count` left operands of `o × k` each, packed for AMX once per call.
pub(crate) fn packed_lefts(p: Precision, a: &[f32], count: usize, o: usize, k: usize) -> Option<Vec<amx::Left>> {
    (p == Precision::Bf16).then(|| {
        (0..count)
            .into_par_iter()
            .map(|i| {
                let mut left = amx::Left::default();
                left.pack(&a[i * o * k..][..o * k], k, o, k);
                left
            })
            .collect()
    })
}

/// The weights of a convolution with `o` outputs and `c` inputs, as [`blocks_forward`] reads
/// them: `[o, c, 3, 3]` as given, or (the input gradient's) another convolution's `[c, o, 3, 3]`
/// with each kernel rotated by 180° and the channels swapped, read so rather than copied
/// first (a pass over all weights per step).
#[derive(Clone, Copy)]
enum Kernel<'a> {
    Given(&'a [f32]),
    Flipped(&'a [f32]),
}

impl Kernel<'_> {
    /// Weight `(oc, ci, ky, kx)` of the `o × c` convolution.
    #[inline(always)]
    fn at(self, [o, c]: [usize; 2], oc: usize, ci: usize, ky: usize, kx: usize) -> f32 {
        match self {
            Kernel::Given(wt) => wt[((oc * c + ci) * 3 + ky) * 3 + kx],
            Kernel::Flipped(wt) => wt[((ci * o + oc) * 3 + 2 - ky) * 3 + 2 - kx],
        }
    }

    fn len(self) -> usize {
        match self {
            Kernel::Given(wt) | Kernel::Flipped(wt) => wt.len(),
        }
    }
}

/// [`weights_for`] packed for AMX: one [`amx::Left`] per GEMM, each row converted from `wt`
/// directly and in parallel (reordering first, then packing each GEMM's matrix on one thread,
/// was two passes over the weights, 1.5 % of a bf16 step, `perf`).
fn packed_weights(plan: Plan, wt: Kernel, o: usize, c: usize) -> Vec<amx::Left> {
    assert_eq!(wt.len(), o * c * 9, "conv3x3: weight has the wrong size");
    let k = plan.taps() * c;
    (0..plan.gemms())
        .map(|g| {
            let mut left = amx::Left::default();
            left.pack_with(o, k, |rows, row_len| {
                if row_len == 0 {
                    return;
                }
                rows.par_chunks_mut(row_len).enumerate().for_each(|(oc, row)| {
                    weight_row(plan, g, wt, [o, c], oc, row, amx::bf16);
                });
            });
            left
        })
        .collect()
}

/// Row `oc` of GEMM `g`'s weight matrix (`plan.taps() · c` values, `[t·c + ci]`), each
/// weight through `convert`.
#[inline(always)]
fn weight_row<T>(
    plan: Plan,
    g: usize,
    wt: Kernel,
    [o, c]: [usize; 2],
    oc: usize,
    row: &mut [T],
    convert: impl Fn(f32) -> T,
) {
    for t in 0..plan.taps() {
        let (ky, kx) = plan.tap(g, t);
        for (ci, d) in row[t * c..][..c].iter_mut().enumerate() {
            *d = convert(wt.at([o, c], oc, ci, ky, kx));
        }
    }
}

/// Weights `[o, c, 3, 3]` as `plan.gemms()` matrices `o × taps·c`: `[g][o][t·c + ci]`. This
/// and the other reorderings of the weights run in parallel: on one thread they were 2–3 % of
/// a bf16 step with the other core idle (`perf`, the main thread's samples).
fn weights_for(plan: Plan, wt: Kernel, o: usize, c: usize) -> Vec<f32> {
    let k = plan.taps() * c;
    let mut out = vec![0.0f32; plan.gemms() * o * k];
    if k == 0 {
        return out;
    }
    out.par_chunks_mut(k).enumerate().for_each(|(row, dst)| {
        weight_row(plan, row / o, wt, [o, c], row % o, dst, |v| v);
    });
    out
}

/// The forward convolution: `x [n, c, h, w]`, `wt [o, c, 3, 3]` → `[n, o, h, w]`. Winograd
/// where there are enough channels for its transforms to pay, else the GEMMs of a [`Plan`].
pub fn forward(p: Precision, x: &[f32], wt: &[f32], dims: Dims, o: usize) -> Vec<f32> {
    let p = precision_for(p, dims[1], o);
    if use_winograd(p, dims, o) {
        return winograd::forward(p, x, wt, dims, o);
    }
    forward_with(p, Plan::for_map(p, dims[1], dims[2], dims[3]), x, wt, dims, o)
}

/// [`forward`] and its output's per-channel mean and biased variance, `[mean; var]` (`2·o`,
/// what a BatchNorm after it normalises with). On the GEMM paths each output plane's moments
/// are taken while it is in cache, and combined per channel in f64; a separate pass over the
/// output (two reads of 420 MB per step at width 1, batch 512) was 2.7 % of a bf16 step.
pub fn forward_stats(p: Precision, x: &[f32], wt: &[f32], dims: Dims, o: usize) -> (Vec<f32>, Vec<f32>) {
    let [n, c, h, w] = dims;
    let q = precision_for(p, c, o);
    if use_winograd(q, dims, o) {
        let out = winograd::forward(q, x, wt, dims, o);
        let stats = stats_kernel(&out, [n, o, h, w]);
        return (out, stats);
    }
    let (out, _, moments) =
        blocks_forward(q, Plan::for_map(q, c, h, w), Planes::Dense(x), Kernel::Given(wt), dims, o, [false, true]);
    (out, combined_moments(&moments, [n, o], h * w))
}

/// `[mean; var]` per channel from each plane's `[mean, M2]` (`len` values each; `n` images of
/// `o` planes): Chan's combination in f64, images in order, so the same on every run.
fn combined_moments(moments: &[f64], [n, o]: [usize; 2], len: usize) -> Vec<f32> {
    assert_eq!(moments.len(), n * o * 2, "combined_moments: wrong size");
    let count = (n * len) as f64;
    let plane = |i: usize, oc: usize| &moments[(i * o + oc) * 2..][..2];
    let means: Vec<f64> = (0..o).map(|oc| (0..n).map(|i| plane(i, oc)[0]).sum::<f64>() / n as f64).collect();
    let vars = (0..o).map(|oc| {
        let m2: f64 = (0..n).map(|i| plane(i, oc)[1] + len as f64 * (plane(i, oc)[0] - means[oc]).powi(2)).sum();
        (m2 / count) as f32
    });
    means.iter().map(|&m| m as f32).chain(vars).collect()
}

/// f32 for a layer with fewer than this many input or output channels (the first layer's 3),
/// whose GEMMs would be mostly the tile unit's padding (K = 9 of 32). `PROFILE_CONV=1
/// profile_ops flex 1.0 512 bf16`, one run each: the 3→64 layer's weight gradient 45.0 ms in
/// bf16, 30.7 in f32; its forward 82.8 and 78.1, bound by writing its output.
const BF16_MIN_CHANNELS: usize = 16;

fn precision_for(p: Precision, c: usize, o: usize) -> Precision {
    if c.min(o) < BF16_MIN_CHANNELS { Precision::F32 } else { p }
}

/// Channels (input and output) from which Winograd beats the GEMMs, measured per layer with
/// `CONV_WINOGRAD=0|1 PROFILE_CONV=1 cargo run --release --example profile_ops`: at width 1,
/// batch 128, 64→128 at 32×32 takes 86 ms against 102, 256→512 at 8×8 65 against 115; at
/// width 0.25 the 16- and 32-channel layers are faster without it (16→32: 15 against 10 ms).
const WINOGRAD_MIN_CHANNELS: usize = 64;

fn use_winograd(p: Precision, [_, c, h, w]: Dims, o: usize) -> bool {
    match tuning().winograd {
        Some(false) => return false,
        Some(true) => return winograd::fits(h, w),
        None => {}
    }
    // bf16: the GEMMs are so fast that Winograd's transforms cost more than they save.
    p == Precision::F32 && winograd::fits(h, w) && c.min(o) >= WINOGRAD_MIN_CHANNELS
}

pub fn forward_with(p: Precision, plan: Plan, x: &[f32], wt: &[f32], dims: Dims, o: usize) -> Vec<f32> {
    blocks_forward(p, plan, Planes::Dense(x), Kernel::Given(wt), dims, o, [false, false]).0
}

/// The forward convolution followed by 2×2 max pooling, stride 2: `[n, o, h/2, w/2]` and which
/// cell of each window won (as [`crate::kernels::pool_kernel`] gives them). In bf16 each block's
/// output is pooled from its block buffer while it is in cache, so the full-size output (at
/// width 1 and batch 512, 256 MiB after the 64 → 128 layer) is never written to memory nor read
/// back; the backward needs only the winning cells. Elsewhere (f32, odd maps): the
/// convolution, then the pool.
pub fn forward_pooled(p: Precision, x: &[f32], wt: &[f32], dims: Dims, o: usize) -> (Vec<f32>, Vec<u8>) {
    let [n, c, h, w] = dims;
    let q = precision_for(p, c, o);
    if pooled_in_blocks(q, dims, o) {
        let (out, cells, _) =
            blocks_forward(q, Plan::for_map(q, c, h, w), Planes::Dense(x), Kernel::Given(wt), dims, o, [true, false]);
        return (out, cells);
    }
    crate::kernels::pool_kernel(&forward(p, x, wt, dims, o), [n, o, h, w])
}

/// Whether the pooled forward runs fused, in blocks (bf16, even sides).
fn pooled_in_blocks(q: Precision, dims: Dims, o: usize) -> bool {
    let [_, _, h, w] = dims;
    q == Precision::Bf16 && !use_winograd(q, dims, o) && h >= 2 && w >= 2 && h.is_multiple_of(2) && w.is_multiple_of(2)
}

/// [`forward_pooled`] and the pooled output's `[mean; var]`, as [`forward_stats`].
pub fn forward_pooled_stats(
    p: Precision,
    x: &[f32],
    wt: &[f32],
    dims: Dims,
    o: usize,
) -> (Vec<f32>, Vec<u8>, Vec<f32>) {
    let [n, c, h, w] = dims;
    let q = precision_for(p, c, o);
    if pooled_in_blocks(q, dims, o) {
        let (out, cells, moments) =
            blocks_forward(q, Plan::for_map(q, c, h, w), Planes::Dense(x), Kernel::Given(wt), dims, o, [true, true]);
        let stats = combined_moments(&moments, [n, o], (h / 2) * (w / 2));
        return (out, cells, stats);
    }
    let (out, cells) = forward_pooled(p, x, wt, dims, o);
    let stats = stats_kernel(&out, [n, o, h / 2, w / 2]);
    (out, cells, stats)
}

/// The gradients of [`forward_pooled`] from the pooled output's, `dp [n, o, h/2, w/2]`, and the
/// winning cells: `(dx, dw)`, each computed where `want` asks. In bf16 both read `dp`
/// unpooled plane by plane, in cache ([`Planes`]); elsewhere `dp` is unpooled whole first.
#[allow(clippy::too_many_arguments)]
pub fn backward_pooled(
    p: Precision,
    x: &[f32],
    wt: &[f32],
    dp: &[f32],
    cells: &[u8],
    dims: Dims,
    o: usize,
    [want_dx, want_dw]: [bool; 2],
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let [n, c, h, w] = dims;
    let q = precision_for(p, c, o);
    let fused = q == Precision::Bf16
        && !use_winograd(q, dims, o)
        && !use_winograd(q, [n, o, h, w], c)
        // The input gradient's packed operand is built from pairs of its input's channels.
        && o.is_multiple_of(2)
        && h >= 2
        && w >= 2
        && h.is_multiple_of(2)
        && w.is_multiple_of(2);
    if !fused {
        let dy = crate::kernels::pool_backward_kernel(dp, cells, [n, o, h, w]);
        return (want_dx.then(|| input_grad(p, &dy, wt, dims, o)), want_dw.then(|| weight_grad(p, x, &dy, dims, o)));
    }
    let dy = Planes::Unpooled { dy: dp, cells };
    (
        want_dx.then(|| {
            blocks_forward(q, Plan::for_map(q, o, h, w), dy, Kernel::Flipped(wt), [n, o, h, w], c, [false; 2]).0
        }),
        want_dw.then(|| weight_grad_blocks(q, Plan::for_weight_grad(q, c, h, w), x, dy, dims, o)),
    )
}

/// [`forward_with`], pooled ([`forward_pooled`], bf16 only) or not.
fn blocks_forward(
    p: Precision,
    plan: Plan,
    x: Planes,
    wt: Kernel,
    dims: Dims,
    o: usize,
    [pooled, moments]: [bool; 2],
) -> (Vec<f32>, Vec<u8>, Vec<f64>) {
    let [n, c, h, w] = dims;
    let hw = h * w;
    x.check(dims, "conv3x3: input has the wrong size");
    assert_eq!(wt.len(), o * c * 9, "conv3x3: weight has the wrong size");
    let kc = plan.taps() * c;
    // bf16: the weights packed once for all blocks, straight from `wt`; f32: reordered.
    let packed = (p == Precision::Bf16).then(|| packed_weights(plan, wt, o, c));
    let weights = if packed.is_some() { Vec::new() } else { weights_for(plan, wt, o, c) };
    // bf16 on `Rows` with pairs of channels: the packed operand is built from `x` directly.
    let direct = packed.is_some() && c.is_multiple_of(2);
    // Image `i`'s output columns start at `i · per_image` in a block's shifted input.
    let per_image = (h + plan.separator()) * w;
    assert!(!pooled || packed.is_some(), "conv3x3: the pooled forward runs in bf16 only");
    // Per image: the output's floats and the pooled output's winning cells.
    let (image, cells) = if pooled { (o * (h / 2) * (w / 2), o * (h / 2) * (w / 2)) } else { (o * hw, 0) };
    let per_block = images_per_block(p, plan, dims, o);
    let per_moments = if moments { 2 * o } else { 0 };
    par_images_with(n, [image, cells, per_moments], per_block, |b0, dst, extras, [s, acc, _]| {
        let Extras { bytes: arg, moments: mom } = extras;
        // Output plane `oc` of image `i` is final: its moments, while it is in cache.
        let mut moments_of = |i: usize, oc: usize, plane: &[f32]| {
            if moments {
                let at = (i * o + oc) * 2;
                let [m, m2] = plane_moments(plane);
                mom[at].write(m);
                mom[at + 1].write(m2);
            }
        };
        let k = dst.len() / image;
        if !direct {
            let x = x.dense().expect("conv3x3: unpooled planes are read on the direct bf16 path only");
            shift_block(plan, x, dims, b0, k, s);
        }
        let (stride, cols) = (stride(plan, k, h, w), columns(plan, k, h, w));
        let Some(lefts) = &packed else {
            // f32: each image's output written in place, one GEMM per image and kernel row.
            for (i, image) in dst.chunks_exact_mut(o * hw).enumerate() {
                for g in 0..plan.gemms() {
                    let (a, b) = (&weights[g * o * kc..][..o * kc], &s[offset(plan, g, w) + i * per_image..]);
                    if g == 0 {
                        gemm_into([o, hw, kc], image, hw, (a, [kc, 1]), (b, [stride, 1]));
                    } else {
                        // SAFETY: the first GEMM wrote the whole image.
                        let image = unsafe { written(image) };
                        gemm(p, [o, hw, kc], image, [hw, 1], true, a, [kc, 1], b, [stride, 1]);
                    }
                }
                // SAFETY: the first GEMM wrote the whole image.
                let image = unsafe { written(image) };
                image.chunks_exact(hw).enumerate().for_each(|(oc, plane)| moments_of(i, oc, plane));
            }
            return;
        };
        amx::with_scratch(|_, right| {
            // The shifted input packed once, each kernel row's GEMM starting at its own
            // column, where those columns start on cache lines (maps 16 and 32 wide);
            // else packed per GEMM from its first column: a tile row straddling two
            // cache lines slows the tile unit by 15–20 % (`amx_product`).
            let shared = (0..plan.gemms()).all(|g| offset(plan, g, w).is_multiple_of(16));
            let pack = |right: &mut amx::Right, off: usize, n: usize| {
                if direct {
                    right.pack_with(kc, n, |rows, rl| shifted_right(plan, x, dims, [b0, k], [off, n], rows, rl));
                } else {
                    right.pack(&s[off..], stride, kc, n);
                }
            };
            if shared {
                pack(right, 0, stride);
            }
            // Each image's output written in place, one product per image and kernel row,
            // where its columns and its rows all start on cache lines (maps 16 and 32 wide,
            // in an output the allocator aligned: the binary's aligns large blocks): copying
            // the outputs out of a block buffer was 6 % of a bf16 step (`perf`).
            let lines = |v: usize| v.is_multiple_of(16);
            if !pooled
                && plan == Plan::Rows
                && shared
                && lines(per_image)
                && lines(hw)
                && dst.as_ptr().addr().is_multiple_of(64)
            {
                for (i, image) in dst.chunks_exact_mut(o * hw).enumerate() {
                    for (g, left) in lefts.iter().enumerate() {
                        let n0 = offset(plan, g, w) + i * per_image;
                        if g == 0 {
                            amx::product_into(left, 0, right, [0, n0], [o, hw, kc], image, hw);
                        } else {
                            // SAFETY: the first product wrote the whole image.
                            let image = unsafe { written(image) };
                            amx::product(left, 0, right, [0, n0], [o, hw, kc], image, hw, true);
                        }
                    }
                    // SAFETY: the first product wrote the whole image.
                    let image = unsafe { written(image) };
                    image.chunks_exact(hw).enumerate().for_each(|(oc, plane)| moments_of(i, oc, plane));
                }
                return;
            }
            // Else through a block buffer, its rows padded to 16 floats and 64-byte aligned so
            // that the tile unit stores whole cache lines. The first product overwrites it.
            let acc_rs = cols.next_multiple_of(16);
            let acc = aligned_for_overwrite(acc, o * acc_rs);
            for (g, left) in lefts.iter().enumerate() {
                let off = offset(plan, g, w);
                let n0 = if shared {
                    off
                } else {
                    pack(right, off, cols);
                    0
                };
                amx::product(left, 0, right, [0, n0], [o, cols, kc], acc, acc_rs, g > 0);
            }
            for i in 0..k {
                for oc in 0..o {
                    let plane = &acc[oc * acc_rs + i * per_image..][..hw];
                    if pooled {
                        let at = (i * o + oc) * (image / o);
                        let out = &mut dst[at..][..image / o];
                        pool_plane(out, &mut arg[at..][..image / o], plane, w);
                        // SAFETY: `pool_plane` wrote the whole plane.
                        moments_of(i, oc, unsafe { written(out) });
                    } else {
                        write(&mut dst[(i * o + oc) * hw..][..hw], plane);
                        moments_of(i, oc, plane);
                    }
                }
            }
        });
    })
}

/// The input gradient: the forward convolution of `dy [n, o, h, w]` by the weights flipped in
/// both spatial axes with input and output channels swapped → `[n, c, h, w]`.
pub fn input_grad(p: Precision, dy: &[f32], wt: &[f32], [n, c, h, w]: Dims, o: usize) -> Vec<f32> {
    let q = precision_for(p, o, c);
    if use_winograd(q, [n, o, h, w], c) {
        return winograd::forward(q, dy, &flipped(wt, o, c), [n, o, h, w], c);
    }
    input_grad_with(q, Plan::for_map(q, o, h, w), dy, wt, [n, c, h, w], o)
}

pub fn input_grad_with(p: Precision, plan: Plan, dy: &[f32], wt: &[f32], [n, c, h, w]: Dims, o: usize) -> Vec<f32> {
    assert_eq!(wt.len(), o * c * 9, "conv3x3 input grad: weight has the wrong size");
    blocks_forward(p, plan, Planes::Dense(dy), Kernel::Flipped(wt), [n, o, h, w], c, [false; 2]).0
}

/// `[o, c, 3, 3]` → `[c, o, 3, 3]`, each kernel rotated by 180°.
fn flipped(wt: &[f32], o: usize, c: usize) -> Vec<f32> {
    assert_eq!(wt.len(), o * c * 9, "conv3x3 input grad: weight has the wrong size");
    let mut out = vec![0.0f32; wt.len()];
    if o > 0 {
        out.par_chunks_mut(o * 9).enumerate().for_each(|(ci, dst)| {
            for (oc, kernel) in dst.chunks_exact_mut(9).enumerate() {
                for (t, d) in kernel.iter_mut().enumerate() {
                    *d = wt[(oc * c + ci) * 9 + 8 - t];
                }
            }
        });
    }
    out
}

/// The weight gradient `[o, c, 3, 3]`: Winograd where the forward takes it, else (`_with`)
/// the GEMMs of a [`Plan`], computed transposed:
/// `dW_gᵀ (taps·c × o) = Σ_blocks S[:, offset_g ..] (taps·c × cols) · dYᵀ (cols × o)`, with
/// `dYᵀ` copied out pixel-major. Both operands are then row-major, which the `gemm` crate
/// packs 1.3–5× faster than a transposed right operand (`dY · Sᵀ`, the first version: 20–50
/// GFLOP/s on one thread at this network's shapes against 105–113). Each thread sums its own
/// blocks, then the partial sums are added.
pub fn weight_grad(p: Precision, x: &[f32], dy: &[f32], dims: Dims, o: usize) -> Vec<f32> {
    let p = precision_for(p, dims[1], o);
    if use_winograd(p, dims, o) {
        return winograd::weight_grad(p, x, dy, dims, o);
    }
    weight_grad_with(p, Plan::for_weight_grad(p, dims[1], dims[2], dims[3]), x, dy, dims, o)
}

pub fn weight_grad_with(p: Precision, plan: Plan, x: &[f32], dy: &[f32], dims: Dims, o: usize) -> Vec<f32> {
    weight_grad_blocks(p, plan, x, Planes::Dense(dy), dims, o)
}

fn weight_grad_blocks(p: Precision, plan: Plan, x: &[f32], dy: Planes, dims: Dims, o: usize) -> Vec<f32> {
    let [n, c, h, w] = dims;
    let hw = h * w;
    assert_eq!(x.len(), n * c * hw, "conv3x3 weight grad: input has the wrong size");
    dy.check([n, o, h, w], "conv3x3 weight grad: output gradient has the wrong size");
    let kc = plan.taps() * c;
    // bf16: the output gradient goes in with `lead` zero rows before and after it, so that
    // each kernel row's GEMM can start at its own row of it (an even row of the pair layout)
    // rather than at its own column of the shifted input, which starts on a cache line only
    // on maps 32 wide (see `forward_with`). The GEMMs then run over `lead` more columns.
    let last = offset(plan, plan.gemms() - 1, w);
    let shifts_rows = p == Precision::Bf16 && (0..plan.gemms()).all(|g| (last - offset(plan, g, w)).is_multiple_of(2));
    let lead = if shifts_rows { last } else { 0 };
    // bf16 on `Rows`: the packed left operand is built from `x` directly.
    let direct = p == Precision::Bf16;
    // bf16: the sums' rows `o + 16` floats apart. At `o` (a power of two) the tile unit's
    // 16-row loads and stores of them fell on two to eight cache sets: the 512-channel layers'
    // weight gradients took 46–53 and 35 ms against 42–43 and 30–31 (width 1, batch 512).
    let os = if p == Precision::Bf16 { o + 16 } else { o };
    // bf16 with even widths: the output gradient goes straight into the packed right operand,
    // two pixels of one channel per element ([`transposed_pairs`]), without an f32 copy.
    let pairs = p == Precision::Bf16 && w.is_multiple_of(2) && lead.is_multiple_of(2);
    let partial = partial_sums_over_blocks(
        n,
        images_per_block(p, plan, dims, o),
        plan.gemms() * kc * os,
        |b0, k, dw, [s, gt, unpooled]| {
            if !direct {
                shift_block(plan, x, dims, b0, k, s);
            }
            let (stride, cols) = (stride(plan, k, h, w), columns(plan, k, h, w));
            if !pairs {
                gt.resize((cols + 2 * lead) * o, 0.0);
                gt[..lead * o].fill(0.0);
                gt[(lead + cols) * o..].fill(0.0);
                transposed_block(plan, dy, [n, o, h, w], b0, k, &mut gt[lead * o..][..cols * o], unpooled);
            }
            if p == Precision::Bf16 {
                // Both packed once.
                amx::with_scratch(|left, right| {
                    if direct {
                        left.pack_with(kc, stride, |rows, rl| {
                            shifted_left(plan, Planes::Dense(x), dims, [b0, k], [0, stride], rows, rl)
                        });
                    } else {
                        left.pack(s, stride, kc, stride);
                    }
                    if pairs {
                        right.pack_with(cols + 2 * lead, o, |rows, rl| {
                            transposed_pairs(plan, dy, [n, o, h, w], [b0, k], lead, rows, rl)
                        });
                    } else {
                        right.pack(gt, o, cols + 2 * lead, o);
                    }
                    for gi in 0..plan.gemms() {
                        let d = &mut dw[gi * kc * os..][..kc * os];
                        let (k0, k1) =
                            if shifts_rows { (0, last - offset(plan, gi, w)) } else { (offset(plan, gi, w), 0) };
                        amx::product(left, k0, right, [k1, 0], [kc, o, cols + lead], d, os, true);
                    }
                });
                return;
            }
            for gi in 0..plan.gemms() {
                let d = &mut dw[gi * kc * os..][..kc * os];
                gemm(p, [kc, o, cols], d, [os, 1], true, &s[offset(plan, gi, w)..], [stride, 1], gt, [o, 1]);
            }
        },
    );
    // The threads' sums added and reordered to `[o, c, 3, 3]` in one parallel pass, a group
    // of output channels at a time, so that each sum row's read is one cache line: a gather
    // one float per row (`os` apart) after a sum on one thread was a tenth of the 512 → 512
    // layer's weight gradient (`perf`).
    const GROUP: usize = 16;
    let sums: Vec<&[f32]> = partial.iter().map(|s| s.values()).collect();
    let mut out = uninit::<f32>(o * c * 9);
    if c > 0 {
        out.par_chunks_mut(GROUP * c * 9).enumerate().for_each(|(group, dst)| {
            let (oc0, g) = (group * GROUP, dst.len() / (c * 9));
            let mut line = [0.0f32; GROUP];
            for gi in 0..plan.gemms() {
                for t in 0..plan.taps() {
                    let (ky, kx) = plan.tap(gi, t);
                    for ci in 0..c {
                        let at = (gi * kc + t * c + ci) * os + oc0;
                        // The same additions, in the same order, as `sum_over_blocks`.
                        line[..g].copy_from_slice(&sums[0][at..][..g]);
                        for sum in &sums[1..] {
                            line[..g].iter_mut().zip(&sum[at..][..g]).for_each(|(l, v)| *l += v);
                        }
                        for (l, v) in line[..g].iter().enumerate() {
                            dst[l * c * 9 + (ci * 3 + ky) * 3 + kx].write(*v);
                        }
                    }
                }
            }
        });
    }
    // SAFETY: each group's `g` output channels × `c` inputs × nine taps (`gemms · taps`,
    // every `(ky, kx)` once) were written.
    unsafe { assume_init(out) }
}

/// Images `b0..b0 + k` of `dy [n, o, h, w]` as a `columns(plan, k, h, w) × o` matrix
/// (pixel-major, in the output's column layout: zero on the separator rows) into `gt`.
fn transposed_block(
    plan: Plan,
    dy: Planes,
    [_, o, h, w]: Dims,
    b0: usize,
    k: usize,
    gt: &mut [f32],
    buf: &mut Vec<f32>,
) {
    let hw = h * w;
    let sep = plan.separator();
    assert_eq!(gt.len(), columns(plan, k, h, w) * o, "conv3x3 weight grad: wrong block size");
    for i in 0..k {
        let image = match dy {
            Planes::Dense(dy) => &dy[(b0 + i) * o * hw..][..o * hw],
            // Unpooled plane by plane into `buf` (in cache), then transposed from there.
            Planes::Unpooled { .. } => {
                buf.resize(o * hw, 0.0);
                for (oc, dst) in buf.chunks_exact_mut(hw).enumerate() {
                    unpool_plane(dy, (b0 + i) * o + oc, w, dst);
                }
                &buf[..]
            }
        };
        transposed_image(image, o, hw, &mut gt[i * (h + sep) * w * o..][..hw * o]);
        if sep > 0 && i + 1 < k {
            gt[((i + 1) * (h + sep) - sep) * w * o..][..sep * w * o].fill(0.0);
        }
    }
}

crate::simd::simd_fn!(
    /// Images `b0..b0 + k` of `dy [n, o, h, w]` (`w` even) as the pair rows of an
    /// [`amx::Right`] (`row_len` apart) of `2·lead + columns(plan, k, h, w)` rows by `o`
    /// columns: the block's pixels in the output's column layout after `lead` zero rows (`lead`
    /// even), zero on the separator rows and the `lead` rows after them. Pair row `p`, column
    /// `oc` holds pixels `2p` and `2p + 1` of channel `oc`, from one image row (`w` even), so
    /// an unpooled gradient's pair is its 2×2 window's value or zero, one element per window
    /// row. Converted plane by plane, 16 channels at a time, then transposed in 8 × 8 blocks.
    /// Replaces unpooling, an f32 transpose and packing (a third of the 64 → 128 layer's
    /// weight gradient, `perf`).
    #[allow(clippy::too_many_arguments)]
    fn transposed_pairs(plan: Plan, dy: Planes, dims: Dims, images: [usize; 2], lead: usize, rows: &mut [u32], row_len: usize) => transposed_pairs_body
);

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn transposed_pairs_body(
    plan: Plan,
    dy: Planes,
    [_, o, h, w]: Dims,
    [b0, k]: [usize; 2],
    lead: usize,
    rows: &mut [u32],
    row_len: usize,
) {
    const G: usize = 16;
    let (sep, half) = (plan.separator(), w / 2);
    // Pair rows per image plane.
    let per_plane = h * half;
    assert!(w.is_multiple_of(2) && lead.is_multiple_of(2), "transposed_pairs: odd width or lead");
    let zero = |rows: &mut [u32], from: usize, count: usize| {
        for r in from..from + count {
            rows[r * row_len..][..o].fill(0);
        }
    };
    zero(rows, 0, lead / 2);
    let mut planes = vec![0u32; G * per_plane];
    for i in 0..k {
        let base = (lead + i * (h + sep) * w) / 2;
        if i > 0 {
            zero(rows, base - sep * half, sep * half);
        }
        for oc0 in (0..o).step_by(G) {
            let g = G.min(o - oc0);
            for (l, t) in planes.chunks_exact_mut(per_plane).take(g).enumerate() {
                let index = (b0 + i) * o + oc0 + l;
                match dy {
                    Planes::Dense(d) => {
                        for (t, q) in t.iter_mut().zip(d[index * h * w..][..h * w].chunks_exact(2)) {
                            *t = amx::pair(q[0], q[1]);
                        }
                    }
                    Planes::Unpooled { dy, cells } => {
                        let q = h / 2 * half;
                        let (d, c) = (&dy[index * q..][..q], &cells[index * q..][..q]);
                        for (wy, (d, c)) in d.chunks_exact(half).zip(c.chunks_exact(half)).enumerate() {
                            let (top, bottom) = t[2 * wy * half..][..2 * half].split_at_mut(half);
                            for (((t, b), &v), &cell) in top.iter_mut().zip(bottom).zip(d).zip(c) {
                                // Cells are row-major in the window: 0 and 1 on top, odd ones
                                // on the right (the pair's high half).
                                let v = (amx::bf16(v) as u32) << (16 * (cell & 1) as u32);
                                let on_top = ((cell < 2) as u32).wrapping_neg();
                                *t = v & on_top;
                                *b = v & !on_top;
                            }
                        }
                    }
                }
            }
            transpose_into(&planes[..g * per_plane], g, per_plane, &mut rows[base * row_len + oc0..], row_len);
        }
    }
    zero(rows, (lead + k * (h + sep) * w - sep * w) / 2, lead / 2);
}

/// `dst[c · dst_rs + r] = src[r · cols + c]` for the `n × cols` matrix `src`: 8 × 8 blocks
/// transposed in registers, the edges one by one.
#[inline(always)]
fn transpose_into<T: Copy + Default>(src: &[T], n: usize, cols: usize, dst: &mut [T], dst_rs: usize) {
    const B: usize = 8;
    let (n8, c8) = (n / B * B, cols / B * B);
    for r in (0..n8).step_by(B) {
        for c in (0..c8).step_by(B) {
            let mut t = [[T::default(); B]; B];
            for (l, row) in t.iter_mut().enumerate() {
                row.copy_from_slice(&src[(r + l) * cols + c..][..B]);
            }
            for q in 0..B {
                let run = &mut dst[(c + q) * dst_rs + r..][..B];
                for (l, v) in run.iter_mut().enumerate() {
                    *v = t[l][q];
                }
            }
        }
        for c in c8..cols {
            for l in 0..B {
                dst[c * dst_rs + r + l] = src[(r + l) * cols + c];
            }
        }
    }
    for r in n8..n {
        for c in 0..cols {
            dst[c * dst_rs + r] = src[r * cols + c];
        }
    }
}

crate::simd::simd_fn!(
    /// [`Planes::unpool_into`], compiled for the CPU's vectors.
    fn unpool_plane(dy: Planes, index: usize, w: usize, out: &mut [f32]) => unpool_plane_body
);

#[inline(always)]
fn unpool_plane_body(dy: Planes, index: usize, w: usize, out: &mut [f32]) {
    dy.unpool_into(index, w, out)
}

crate::simd::simd_fn!(
    /// One image `[o, hw]` as `[hw, o]`.
    fn transposed_image(image: &[f32], o: usize, hw: usize, dst: &mut [f32]) => transposed_image_body
);

#[inline(always)]
fn transposed_image_body(image: &[f32], o: usize, hw: usize, dst: &mut [f32]) {
    // In 8 × 8 blocks, transposed in registers (the loop of single floats before it ran four
    // lanes wide at best: 4.5 % of a bf16 step, `perf`).
    transpose_into(image, o, hw, dst, o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Precision::F32;

    /// A small LCG: the crate has no RNG of its own but the masks'.
    struct TestRng(u64);

    impl TestRng {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % n
        }
    }

    /// Every (output element, input element, weight) triple of the convolution's definition,
    /// as indices into `[n, o, h, w]`, `[n, c, h, w]` and `[o, c, 3, 3]`; taps that fall in
    /// the padding are skipped.
    fn each_product([n, c, h, w]: Dims, o: usize, mut f: impl FnMut(usize, usize, usize)) {
        for b in 0..n {
            for oc in 0..o {
                for y in 0..h {
                    for xx in 0..w {
                        for ci in 0..c {
                            for t in 0..9 {
                                let (sy, sx) = (y as isize + (t / 3) as isize - 1, xx as isize + (t % 3) as isize - 1);
                                if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                                    continue;
                                }
                                let input = ((b * c + ci) * h + sy as usize) * w + sx as usize;
                                f(((b * o + oc) * h + y) * w + xx, input, (oc * c + ci) * 9 + t);
                            }
                        }
                    }
                }
            }
        }
    }

    /// `Σ a[i]·b[j]` into `out[k]` for every product, accumulated in f64.
    fn naive(len: usize, dims: Dims, o: usize, pick: impl Fn(usize, usize, usize) -> (usize, f32, f32)) -> Vec<f32> {
        let mut out = vec![0.0f64; len];
        each_product(dims, o, |oi, ii, wi| {
            let (k, a, b) = pick(oi, ii, wi);
            out[k] += a as f64 * b as f64;
        });
        out.into_iter().map(|v| v as f32).collect()
    }

    fn naive_forward(x: &[f32], wt: &[f32], dims: Dims, o: usize) -> Vec<f32> {
        let [n, _, h, w] = dims;
        naive(n * o * h * w, dims, o, |oi, ii, wi| (oi, wt[wi], x[ii]))
    }

    fn naive_weight_grad(x: &[f32], dy: &[f32], dims: Dims, o: usize) -> Vec<f32> {
        naive(o * dims[1] * 9, dims, o, |oi, ii, wi| (wi, dy[oi], x[ii]))
    }

    /// Each output gradient scattered back to the inputs that made it.
    fn naive_input_grad(dy: &[f32], wt: &[f32], dims: Dims, o: usize) -> Vec<f32> {
        let [n, c, h, w] = dims;
        naive(n * c * h * w, dims, o, |oi, ii, wi| (ii, dy[oi], wt[wi]))
    }

    /// f32, and bf16 where this CPU has AMX.
    fn test_precisions() -> Vec<Precision> {
        if crate::amx::available() {
            vec![F32, Precision::Bf16]
        } else {
            eprintln!("bf16 skipped: this CPU has no AMX-BF16");
            vec![F32]
        }
    }

    #[track_caller]
    fn close(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, e)) in got.iter().zip(want).enumerate() {
            assert!((g - e).abs() <= 1e-3 * (1.0 + e.abs()), "{what}: index {i}: {g} vs {e}");
        }
    }

    #[test]
    fn forward_and_both_gradients_match_the_definition() {
        let mut rng = TestRng(3);
        let mut rand = |len: usize| (0..len).map(|_| rng.below(2001) as f32 / 1000.0 - 1.0).collect::<Vec<f32>>();
        // Rows ≠ columns, 1×1 and 1-wide maps, more images than one block holds, and more output
        // channels than one run of the transposed output gradient.
        for (n, c, o, h, w) in [
            (3, 2, 4, 5, 7),
            (400, 3, 2, 5, 7),
            (2, 5, 3, 1, 1),
            (3, 2, 3, 4, 1),
            (5, 1, 2, 1, 6),
            (3, 3, 5, 6, 4),
            (70, 4, 3, 2, 8),
            (6, 3, 11, 5, 6),
            (5, 3, 19, 4, 6),
        ] {
            let dims = [n, c, h, w];
            let (x, wt, dy) = (rand(n * c * h * w), rand(o * c * 9), rand(n * o * h * w));
            let (fwd, dx, dw) = (
                naive_forward(&x, &wt, dims, o),
                naive_input_grad(&dy, &wt, dims, o),
                naive_weight_grad(&x, &dy, dims, o),
            );
            for plan in [Plan::Rows, Plan::Taps] {
                let what = format!("{plan:?}, {n}×{c}→{o} at {h}×{w}");
                close(&format!("forward {what}"), &forward_with(F32, plan, &x, &wt, dims, o), &fwd);
                close(&format!("dx {what}"), &input_grad_with(F32, plan, &dy, &wt, dims, o), &dx);
                close(&format!("dw {what}"), &weight_grad_with(F32, plan, &x, &dy, dims, o), &dw);
            }
            if winograd::fits(h, w) {
                let what = format!("Winograd, {n}×{c}→{o} at {h}×{w}");
                close(&format!("forward {what}"), &winograd::forward(F32, &x, &wt, dims, o), &fwd);
                close(&format!("dw {what}"), &winograd::weight_grad(F32, &x, &dy, dims, o), &dw);
            }
        }
    }

    /// The packed operands built straight from the input are those of the f32 shifted copy
    /// packed, bit for bit, for both plans and every span a GEMM reads (the whole block, and
    /// each kernel row's columns), on maps down to 1 × 1 and 1 wide. Plain code: runs without
    /// AMX too.
    #[test]
    fn operands_packed_from_the_input_match_the_shifted_copy() {
        let mut rng = TestRng(11);
        for (n, c, h, w, b0, k) in
            [(3, 2, 5, 7, 0, 3), (5, 4, 4, 8, 1, 3), (2, 6, 1, 1, 0, 2), (4, 2, 3, 1, 2, 2), (1, 8, 2, 16, 0, 1)]
        {
            let dims = [n, c, h, w];
            // Values with a NaN and an infinity among them, as rounding sees them.
            let mut x: Vec<f32> = (0..n * c * h * w).map(|_| rng.below(4001) as f32 / 997.0 - 2.0).collect();
            x[1] = f32::NAN;
            x[2] = f32::INFINITY;
            for plan in [Plan::Rows, Plan::Taps] {
                let mut s = Vec::new();
                shift_block(plan, &x, dims, b0, k, &mut s);
                let (stride, cols) = (stride(plan, k, h, w), columns(plan, k, h, w));
                let kc = plan.taps() * c;
                // Spans starting at each GEMM's offset (`Rows`), and inside the block.
                let spans = match plan {
                    Plan::Rows => vec![[0, stride], [0, cols], [w, cols], [2 * w, cols]],
                    Plan::Taps => vec![[0, stride], [w, stride - w], [1, stride - 1]],
                };
                for [col0, len] in spans {
                    let what = format!(
                        "{plan:?}, {n}×{c} at {h}×{w}, images {b0}..{}, columns {col0}..{}",
                        b0 + k,
                        col0 + len
                    );
                    let (mut want, mut got) = (amx::Right::default(), amx::Right::default());
                    want.pack(&s[col0..], stride, kc, len);
                    got.pack_with(kc, len, |rows, rl| {
                        shifted_right(plan, Planes::Dense(&x), dims, [b0, k], [col0, len], rows, rl)
                    });
                    assert!(want.packed() == got.packed(), "right operand, {what}");
                    let (mut want, mut got) = (amx::Left::default(), amx::Left::default());
                    want.pack(&s[col0..], stride, kc, len);
                    got.pack_with(kc, len, |rows, rl| {
                        shifted_left(plan, Planes::Dense(&x), dims, [b0, k], [col0, len], rows, rl)
                    });
                    assert!(want.packed() == got.packed(), "left operand, {what}");
                }
            }
        }
    }

    /// The weight gradient's right operand built straight from the output gradient, dense or
    /// unpooled, is the f32 transpose packed, bit for bit: both plans, with and without lead
    /// rows, channel counts off the 8 × 8 and 16-channel blocks, maps down to 2 × 2. Plain
    /// code: runs without AMX too.
    #[test]
    fn output_gradient_pairs_match_the_transpose_packed() {
        let mut rng = TestRng(23);
        for (n, o, h, w, b0, k) in [(3, 5, 4, 6, 0, 3), (4, 19, 2, 2, 1, 3), (2, 16, 8, 8, 1, 1), (3, 33, 4, 4, 0, 2)] {
            let mut dy: Vec<f32> = (0..n * o * h * w).map(|_| rng.below(4001) as f32 / 997.0 - 2.0).collect();
            dy[3] = f32::NAN;
            let q = n * o * (h / 2) * (w / 2);
            let pooled: Vec<f32> = (0..q).map(|_| rng.below(4001) as f32 / 997.0 - 2.0).collect();
            let cells: Vec<u8> = (0..q).map(|_| rng.below(4) as u8).collect();
            for planes in [Planes::Dense(&dy), Planes::Unpooled { dy: &pooled, cells: &cells }] {
                for plan in [Plan::Rows, Plan::Taps] {
                    for lead in [0, 2 * w] {
                        let what = format!("{plan:?}, lead {lead}, {n}×{o} at {h}×{w}, images {b0}..{}", b0 + k);
                        let cols = columns(plan, k, h, w);
                        let mut gt = vec![0.0f32; (cols + 2 * lead) * o];
                        let mut buf = Vec::new();
                        transposed_block(plan, planes, [n, o, h, w], b0, k, &mut gt[lead * o..][..cols * o], &mut buf);
                        let (mut want, mut got) = (amx::Right::default(), amx::Right::default());
                        want.pack(&gt, o, cols + 2 * lead, o);
                        // A used buffer, so that every element must be written.
                        got.pack_with(cols + 2 * lead, o, |rows, _| rows.fill(u32::MAX));
                        got.pack_with(cols + 2 * lead, o, |rows, rl| {
                            transposed_pairs(plan, planes, [n, o, h, w], [b0, k], lead, rows, rl)
                        });
                        assert!(want.packed() == got.packed(), "{what}");
                    }
                }
            }
        }
    }

    /// The pooled forward is the forward, then the pool: in bf16 where the CPU has AMX (the
    /// fused path: maps 32, 16, 8 and 4 wide, several images per block, channels odd and
    /// even), and in f32 (the convolution, then the pool), odd sides included. The fused path
    /// sums the edge tiles of a block in another order than the per-image products do, so
    /// values are compared within rounding, and each winning cell must hold its window's max.
    /// The statistics taken with the forward are its output's, pooled or not, on every path:
    /// f32 (few channels; Winograd at 64, where they are taken after), bf16 in place (16 and 32
    /// wide), through the block buffer (`Taps`, 8 and 4 wide), pooled in blocks, and odd maps;
    /// the outputs are the plain forward's, bit for bit.
    #[test]
    fn statistics_taken_with_the_forward_are_its_outputs() {
        let mut rng = TestRng(29);
        // Values off zero, so that a mean is not lost in its variance.
        let mut rand = |len: usize| (0..len).map(|_| rng.below(2001) as f32 / 1000.0 - 0.7).collect::<Vec<f32>>();
        for (n, c, o, h, w) in
            [(3, 32, 48, 32, 32), (5, 64, 64, 16, 16), (9, 40, 64, 8, 8), (20, 34, 16, 4, 4), (2, 3, 5, 5, 7)]
        {
            let dims = [n, c, h, w];
            let (x, wt) = (rand(n * c * h * w), rand(o * c * 9));
            for p in test_precisions() {
                let what = format!("{p:?} {n}×{c}→{o} at {h}×{w}");
                let (out, stats) = forward_stats(p, &x, &wt, dims, o);
                assert!(out == forward(p, &x, &wt, dims, o), "outputs, {what}");
                close(&format!("statistics, {what}"), &stats, &stats_kernel(&out, [n, o, h, w]));
                let (out, cells, stats) = forward_pooled_stats(p, &x, &wt, dims, o);
                let (want, want_cells) = forward_pooled(p, &x, &wt, dims, o);
                assert!(out == want && cells == want_cells, "pooled outputs, {what}");
                close(&format!("pooled statistics, {what}"), &stats, &stats_kernel(&out, [n, o, h / 2, w / 2]));
            }
        }
    }

    #[test]
    fn pooled_forward_is_the_forward_then_the_pool() {
        let mut rng = TestRng(17);
        let mut rand = |len: usize| (0..len).map(|_| rng.below(2001) as f32 / 1000.0 - 1.0).collect::<Vec<f32>>();
        let precisions = test_precisions();
        for (n, c, o, h, w) in [
            (3, 32, 48, 32, 32),
            (5, 64, 32, 16, 16),
            (9, 40, 64, 8, 8),
            (20, 33, 16, 4, 4),
            (3, 16, 16, 6, 10),
            (2, 3, 5, 5, 7),
        ] {
            let dims = [n, c, h, w];
            let (x, wt) = (rand(n * c * h * w), rand(o * c * 9));
            for &p in &precisions {
                let full = forward(p, &x, &wt, dims, o);
                let (want, _) = crate::kernels::pool_kernel(&full, [n, o, h, w]);
                let (got, cells) = forward_pooled(p, &x, &wt, dims, o);
                let what = format!("{p:?} {n}×{c}→{o} at {h}×{w}");
                close(&format!("pooled values, {what}"), &got, &want);
                let (oh, ow) = (h / 2, w / 2);
                assert_eq!(cells.len(), got.len(), "winning cells, {what}");
                for (i, &cell) in cells.iter().enumerate() {
                    let (plane, y, xx) = (i / (oh * ow), i / ow % oh, i % ow);
                    let (cy, cx) = (2 * y + cell as usize / 2, 2 * xx + cell as usize % 2);
                    assert!(cell < 4, "winning cell {cell} at {i}, {what}");
                    let at = full[plane * h * w + cy * w + cx];
                    assert!((at - want[i]).abs() <= 1e-3 * (1.0 + want[i].abs()), "winning cell {cell} at {i}, {what}");
                }
            }
        }
    }

    /// The pooled backward (each plane of the output gradient unpooled as it is read) gives the
    /// gradients of the gradient unpooled whole, within rounding, in bf16 where the CPU has
    /// AMX and in f32; only the gradients asked for are computed.
    #[test]
    fn pooled_backward_is_the_unpool_then_the_gradients() {
        let mut rng = TestRng(23);
        let mut rand = |len: usize| (0..len).map(|_| rng.below(2001) as f32 / 1000.0 - 1.0).collect::<Vec<f32>>();
        let precisions = test_precisions();
        for (n, c, o, h, w) in
            [(3, 32, 48, 32, 32), (5, 64, 32, 16, 16), (9, 40, 64, 8, 8), (20, 33, 16, 4, 4), (2, 3, 5, 6, 10)]
        {
            let dims = [n, c, h, w];
            let (x, wt) = (rand(n * c * h * w), rand(o * c * 9));
            let q = (h / 2) * (w / 2);
            let dp = rand(n * o * q);
            // Cells from the values drawn: 0..4 in turn, shuffled by the values' own digits.
            let cells: Vec<u8> =
                dp.iter().enumerate().map(|(i, v)| ((i + (v.to_bits() >> 7) as usize) % 4) as u8).collect();
            let dy = crate::kernels::pool_backward_kernel(&dp, &cells, [n, o, h, w]);
            for &p in &precisions {
                let what = format!("{p:?} {n}×{c}→{o} at {h}×{w}");
                let (dx, dw) = backward_pooled(p, &x, &wt, &dp, &cells, dims, o, [true, true]);
                close(&format!("dx, {what}"), &dx.expect("dx asked"), &input_grad(p, &dy, &wt, dims, o));
                close(&format!("dw, {what}"), &dw.expect("dw asked"), &weight_grad(p, &x, &dy, dims, o));
                let (dx, dw) = backward_pooled(p, &x, &wt, &dp, &cells, dims, o, [false, true]);
                assert!(dx.is_none() && dw.is_some(), "only dw asked, {what}");
            }
        }
    }

    /// bf16 operands (8 significant bits) with f32 sums. The direct GEMMs multiply the
    /// rounded inputs themselves, so they match the definition computed on rounded inputs
    /// closely; Winograd rounds transformed values, so it is held to bf16's relative error over
    /// the whole output. Neither may be bit-identical to f32 (the AMX GEMMs did run).
    #[test]
    fn bf16_paths_match_the_definition_within_rounding() {
        if !crate::amx::available() {
            eprintln!("skipped: this CPU has no AMX-BF16");
            return;
        }
        let rounded = |v: &[f32]| v.iter().map(|x| crate::amx::f32_of(crate::amx::bf16(*x))).collect::<Vec<f32>>();
        let rms = |v: &[f32]| (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        let relative_rms = |got: &[f32], want: &[f32]| {
            let diff: Vec<f32> = got.iter().zip(want).map(|(g, w)| g - w).collect();
            rms(&diff) / rms(want)
        };
        let differs = |what: &str, got: &[f32], exact: &[f32]| {
            assert!(got.iter().zip(exact).any(|(g, f)| g != f), "{what}: identical to f32, so not computed in bf16");
        };
        let mut rng = TestRng(5);
        let mut rand = |len: usize| (0..len).map(|_| rng.below(2001) as f32 / 1000.0 - 1.0).collect::<Vec<f32>>();
        for (n, c, o, h, w) in [(3, 2, 4, 5, 7), (6, 3, 11, 5, 6), (4, 40, 70, 8, 8), (2, 64, 33, 16, 16)] {
            let dims = [n, c, h, w];
            let (x, wt, dy) = (rand(n * c * h * w), rand(o * c * 9), rand(n * o * h * w));
            let (xr, wr, dyr) = (rounded(&x), rounded(&wt), rounded(&dy));
            let on_rounded = [
                naive_forward(&xr, &wr, dims, o),
                naive_input_grad(&dyr, &wr, dims, o),
                naive_weight_grad(&xr, &dyr, dims, o),
            ];
            let exact = [
                naive_forward(&x, &wt, dims, o),
                naive_input_grad(&dy, &wt, dims, o),
                naive_weight_grad(&x, &dy, dims, o),
            ];
            for plan in [Plan::Rows, Plan::Taps] {
                let got = [
                    forward_with(Precision::Bf16, plan, &x, &wt, dims, o),
                    input_grad_with(Precision::Bf16, plan, &dy, &wt, dims, o),
                    weight_grad_with(Precision::Bf16, plan, &x, &dy, dims, o),
                ];
                for (i, name) in ["forward", "dx", "dw"].into_iter().enumerate() {
                    let what = format!("{name} {plan:?} {n}×{c}→{o} at {h}×{w}");
                    close(&what, &got[i], &on_rounded[i]);
                    differs(&what, &got[i], &exact[i]);
                }
            }
            if winograd::fits(h, w) {
                let got = [
                    winograd::forward(Precision::Bf16, &x, &wt, dims, o),
                    winograd::weight_grad(Precision::Bf16, &x, &dy, dims, o),
                ];
                for (g, (name, want)) in got.iter().zip([("forward", &exact[0]), ("dw", &exact[2])]) {
                    let what = format!("Winograd {name} {n}×{c}→{o} at {h}×{w}");
                    let err = relative_rms(g, want);
                    assert!(err < 1.0 / 64.0, "{what}: relative RMS error {err}");
                    differs(&what, g, want);
                }
            }
        }
    }
}

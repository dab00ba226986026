//! What the convolution kernels share: blocks of images processed in parallel with
//! per-thread scratch buffers, a strided GEMM, and the run-time tuning knobs (read once).

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::precision::Precision;

/// `[n, c, h, w]`.
pub type Dims = [usize; 4];

/// `by_size` images per block (at least one), but few enough that each thread gets two
/// blocks of the `n` images.
pub fn capped_for_threads(by_size: usize, n: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    by_size.max(1).min(n.div_ceil(threads * 2).max(1))
}

/// Grows `v` to hold `len` elements from its first 64-byte boundary, and returns where that is.
/// What `v` held stays (the callers overwrite it); new elements are `T::default()`. The system
/// allocator aligns large blocks to 16 bytes only, and an AMX tile row (64 bytes) straddling
/// two cache lines costs the tile unit 15–20 % (`amx_product`).
pub fn aligned<T: Copy + Default>(v: &mut Vec<T>, len: usize) -> usize {
    let slack = 64 / std::mem::size_of::<T>();
    v.resize(len + slack, T::default());
    let start = v.as_ptr().align_offset(64);
    assert!(start < slack, "cannot align a buffer to 64 bytes");
    start
}

/// `len` floats of `v` from its first 64-byte boundary ([`aligned`]).
pub fn aligned_for_overwrite(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    let start = aligned(v, len);
    &mut v[start..][..len]
}

/// `len` values not yet written, for an output its kernel writes whole: `vec![0.0; len]`
/// zero-fills it first, a pass over every output on the calling thread alone (`memset` was
/// 9–11 % of a bf16 training step at width 1, `perf`).
pub fn uninit<T>(len: usize) -> Vec<MaybeUninit<T>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: the capacity is `len`, and `MaybeUninit` needs no initialisation.
    unsafe { v.set_len(len) };
    v
}

/// `v`'s values, once all are written.
///
/// # Safety
/// Every element of `v` has been written.
pub unsafe fn assume_init<T>(v: Vec<MaybeUninit<T>>) -> Vec<T> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: `MaybeUninit<T>` has `T`'s size and alignment, so the allocation keeps its layout;
    // the caller guarantees that every element is initialised.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<T>(), v.len(), v.capacity()) }
}

/// `dst` filled from `src` (of the same length).
#[inline(always)]
pub fn write(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "write: lengths differ");
    for (d, s) in dst.iter_mut().zip(src) {
        d.write(*s);
    }
}

/// A slice's values, once all are written.
///
/// # Safety
/// Every element of `s` has been written.
#[inline(always)]
pub unsafe fn written(s: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: same layout; the caller guarantees every element is initialised.
    unsafe { &mut *(s as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<[Vec<f32>; 3]> = const { std::cell::RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// Runs `f` with this thread's three scratch buffers. They outlive the call, so a block's
/// buffers are grown (and zero-filled) once per thread, not once per rayon job: per-job
/// buffers were 3 % of a step at width 0.25, all of it `memset` (`perf`). `f` must not
/// start parallel work (a job stolen meanwhile would find the buffers borrowed).
fn with_scratch<R>(f: impl FnOnce(&mut [Vec<f32>; 3]) -> R) -> R {
    SCRATCH.with(|s| f(&mut s.borrow_mut()))
}

/// `n` images of `image` floats, written block by block in parallel: `f(b0, dst, scratch)`
/// writes **every element** of `dst`, images `b0..b0 + dst.len() / image`.
pub fn par_images(
    n: usize,
    image: usize,
    per_block: usize,
    f: impl Fn(usize, &mut [MaybeUninit<f32>], &mut [Vec<f32>; 3]) + Sync + Send,
) -> Vec<f32> {
    let mut out = uninit(n * image);
    if !out.is_empty() {
        out.par_chunks_mut(per_block * image)
            .enumerate()
            .for_each(|(block, dst)| with_scratch(|s| f(block * per_block, dst, s)));
    }
    // SAFETY: every block was written whole (the contract of `f`).
    unsafe { assume_init(out) }
}

/// Per-image outputs besides the floats of [`par_images_with`].
pub struct Extras<'a> {
    /// A pooled forward's winning cells.
    pub bytes: &'a mut [MaybeUninit<u8>],
    /// Each output plane's moments (`[mean, M2]`).
    pub moments: &'a mut [MaybeUninit<f64>],
}

/// As [`par_images`], with two more outputs of `bytes` bytes and `moments` f64 per image
/// (0: none): `f(b0, dst, extras, scratch)` writes every element of all three.
pub fn par_images_with(
    n: usize,
    [image, bytes, moments]: [usize; 3],
    per_block: usize,
    f: impl Fn(usize, &mut [MaybeUninit<f32>], Extras, &mut [Vec<f32>; 3]) + Sync + Send,
) -> (Vec<f32>, Vec<u8>, Vec<f64>) {
    assert!(image > 0 || n == 0 || bytes + moments == 0, "par_images_with: extras for images without floats");
    let (mut out, mut extra, mut moment) = (uninit(n * image), uninit(n * bytes), uninit(n * moments));
    if !out.is_empty() {
        let blocks = n.div_ceil(per_block);
        // One (possibly empty) piece of each extra per block.
        fn pieces<T>(v: &mut [T], len: usize, blocks: usize) -> Vec<&mut [T]> {
            if len == 0 { (0..blocks).map(|_| &mut [][..]).collect() } else { v.chunks_mut(len).collect() }
        }
        out.par_chunks_mut(per_block * image)
            .zip(pieces(&mut extra, per_block * bytes, blocks))
            .zip(pieces(&mut moment, per_block * moments, blocks))
            .enumerate()
            .for_each(|(block, ((dst, bytes), moments))| {
                with_scratch(|s| f(block * per_block, dst, Extras { bytes, moments }, s))
            });
    }
    // SAFETY: every block of all three was written whole (the contract of `f`).
    unsafe { (assume_init(out), assume_init(extra), assume_init(moment)) }
}

/// `len` floats summed over the blocks of `n` images: `f(b0, k, acc, scratch)` adds the
/// contribution of images `b0..b0 + k` into `acc` (64-byte aligned, for the tile unit). Each
/// thread sums its own blocks, then the partial sums are added in order.
pub fn sum_over_blocks(
    n: usize,
    per_block: usize,
    len: usize,
    f: impl Fn(usize, usize, &mut [f32], &mut [Vec<f32>; 3]) + Sync + Send,
) -> Vec<f32> {
    let mut partial = partial_sums_over_blocks(n, per_block, len, f).into_iter();
    let Partial { data: mut sum, start } = partial.next().expect("partial_sums_over_blocks gives one sum or more");
    for b in partial {
        sum[start..].iter_mut().zip(b.values()).for_each(|(x, y)| *x += y);
    }
    sum.drain(..start);
    sum
}

/// One thread's sum over its blocks, from its first 64-byte boundary.
pub struct Partial {
    data: Vec<f32>,
    start: usize,
}

impl Partial {
    pub fn values(&self) -> &[f32] {
        &self.data[self.start..]
    }
}

/// [`sum_over_blocks`] before the last addition: one sum per thread (at least one, zeros when
/// there are no images), each over a run of consecutive blocks, in block order. A caller that
/// reorders the result anyway adds them as it goes, in parallel, instead of in a pass of its
/// own on one thread.
pub fn partial_sums_over_blocks(
    n: usize,
    per_block: usize,
    len: usize,
    f: impl Fn(usize, usize, &mut [f32], &mut [Vec<f32>; 3]) + Sync + Send,
) -> Vec<Partial> {
    let blocks: Vec<usize> = (0..n).step_by(per_block.max(1)).collect();
    let zeros = || {
        let mut data = Vec::new();
        let start = aligned(&mut data, len);
        data.truncate(start + len);
        Partial { data, start }
    };
    // One run of consecutive blocks per thread, each into its own sum: as many zero-filled
    // sums as threads (rayon's `fold` made one per split it stole, each zero-filled and added:
    // the deep layers' sums are 9.4 MB), and the same order of additions on every run.
    let threads = rayon::current_num_threads().max(1);
    let per_thread = blocks.len().div_ceil(threads).max(1);
    let mut sums: Vec<Partial> = blocks
        .par_chunks(per_thread)
        .map(|run| {
            let mut acc = zeros();
            for &b0 in run {
                let start = acc.start;
                with_scratch(|s| f(b0, per_block.min(n - b0), &mut acc.data[start..], s));
            }
            acc
        })
        .collect();
    if sums.is_empty() {
        sums.push(zeros());
    }
    sums
}

/// `dst (m × n) = [dst +] a (m × k) · b (k × n)`, all given by (row stride, column stride); in
/// bf16 on AMX for [`Precision::Bf16`] (every caller's operands are row-major).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    precision: Precision,
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    dst_strides: [usize; 2],
    accumulate: bool,
    a: &[f32],
    a_strides: [usize; 2],
    b: &[f32],
    b_strides: [usize; 2],
) {
    check([m, n, k], dst.len(), dst_strides, (a, a_strides), (b, b_strides));
    if precision == Precision::Bf16 && [dst_strides[1], a_strides[1], b_strides[1]] == [1, 1, 1] {
        crate::amx::gemm([m, n, k], dst, dst_strides[0], accumulate, a, a_strides[0], b, b_strides[0]);
        return;
    }
    // SAFETY: `check` kept every index the strides reach inside the slices.
    unsafe { f32_gemm([m, n, k], dst.as_mut_ptr(), dst_strides, accumulate, (a, a_strides), (b, b_strides)) }
}

/// As [`gemm`] in f32 without accumulating, into a row-major destination not written yet
/// (`dst_rs` apart): afterwards every element of its `m × n` block is written.
pub fn gemm_into(
    [m, n, k]: [usize; 3],
    dst: &mut [MaybeUninit<f32>],
    dst_rs: usize,
    a: (&[f32], [usize; 2]),
    b: (&[f32], [usize; 2]),
) {
    check([m, n, k], dst.len(), [dst_rs, 1], a, b);
    // SAFETY: as in `gemm`; without `read_dst` the destination is only written.
    unsafe { f32_gemm([m, n, k], dst.as_mut_ptr().cast(), [dst_rs, 1], false, a, b) }
}

/// Every index a GEMM's strides reach is inside its slices.
fn check(
    [m, n, k]: [usize; 3],
    dst_len: usize,
    dst_strides: [usize; 2],
    a: (&[f32], [usize; 2]),
    b: (&[f32], [usize; 2]),
) {
    let last = |rows: usize, cols: usize, [rs, cs]: [usize; 2]| {
        if rows == 0 || cols == 0 { 0 } else { (rows - 1) * rs + (cols - 1) * cs + 1 }
    };
    assert!(dst_len >= last(m, n, dst_strides), "gemm: destination too small");
    assert!(a.0.len() >= last(m, k, a.1), "gemm: left operand too small");
    assert!(b.0.len() >= last(k, n, b.1), "gemm: right operand too small");
}

/// The `gemm` crate's f32 GEMM, one thread.
///
/// # Safety
/// [`check`] passed for these shapes, `dst` pointing at that many floats.
unsafe fn f32_gemm(
    [m, n, k]: [usize; 3],
    dst: *mut f32,
    [dst_rs, dst_cs]: [usize; 2],
    read_dst: bool,
    (a, [a_rs, a_cs]): (&[f32], [usize; 2]),
    (b, [b_rs, b_cs]): (&[f32], [usize; 2]),
) {
    // SAFETY: the caller's guarantee.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            read_dst,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Tuning overrides from the environment, for measurements with `profile_ops` (README):
/// `CONV_PLAN=rows|taps`, `CONV_BLOCK=<floats>`, `CONV_WINOGRAD=0|1`. Read once per process.
#[derive(Debug, Default)]
pub struct Tuning {
    /// `Some("rows" | "taps")`: every map takes that plan.
    pub plan: Option<String>,
    /// Floats per block of shifted input, instead of the measured default.
    pub block_floats: Option<usize>,
    /// The fewest columns (output pixels) per block, instead of the measured default.
    pub min_columns: Option<usize>,
    /// `Some(false)`: never Winograd; `Some(true)`: wherever it fits.
    pub winograd: Option<bool>,
}

pub fn tuning() -> &'static Tuning {
    static TUNING: OnceLock<Tuning> = OnceLock::new();
    TUNING.get_or_init(|| Tuning {
        plan: std::env::var("CONV_PLAN").ok(),
        block_floats: std::env::var("CONV_BLOCK").ok().and_then(|v| v.parse().ok()),
        min_columns: std::env::var("CONV_MIN_COLUMNS").ok().and_then(|v| v.parse().ok()),
        winograd: match std::env::var("CONV_WINOGRAD").as_deref() {
            Ok("0") => Some(false),
            Ok("1") => Some(true),
            _ => None,
        },
    })
}

//! bf16 GEMMs on Intel AMX (Xeon 4th generation, Sapphire Rapids, and later; Linux):
//! `dst (f32) [+]= a · b` with both operands rounded to bf16 (to nearest, ties to even) and
//! the products summed in f32 by the tile unit. One `tdpbf16ps` multiplies a 16 × 32 by a
//! 32 × 16 block (8,192 multiply-adds): about 700–950 GFLOP/s on one core here, against 90–140
//! for the `gemm` crate's AVX-512 f32 kernels.
//!
//! Operands are packed once ([`Left`] as bf16 rows, [`Right`] in the tile unit's pair
//! layout), padded so that a product may start anywhere inside them: a caller packs a block's
//! input once for its several GEMMs. Linux hands the tile registers to a process only on
//! request (`arch_prctl`), which [`available`] makes once; without AMX (or off x86-64 Linux)
//! it is false and nothing here runs.
//!
//! CPUs with AVX512-BF16 but no AMX (AMD Zen 4) run f32: a `vdpbf16ps` kernel over the same
//! packed operands (8 rows × 32 columns per step) was written and measured at 0.46× the f32
//! GEMMs on this Xeon (38 against 83 train img/s at width 1), so it was not kept.

use std::mem::MaybeUninit;

/// Whether this CPU has AMX-BF16 and the OS let this process use the tile registers.
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(imp::detect)
}

/// `x` rounded to the nearest bf16 (ties to even); NaN stays NaN.
#[inline(always)]
pub fn bf16(x: f32) -> u16 {
    let u = x.to_bits();
    let rounded = ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16;
    if u & 0x7fff_ffff > 0x7f80_0000 { ((u >> 16) | 0x40) as u16 } else { rounded }
}

/// The f32 value of a bf16.
#[inline(always)]
pub fn f32_of(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// bf16 values in one tile row (64 bytes), the k of one `tdpbf16ps` step.
const TILE_K: usize = 32;
/// Rows of a left tile, columns of a right tile.
const TILE: usize = 16;
/// k steps (of 32) per chunk of a product's whole blocks (see `imp::product`).
const K_CHUNK_STEPS: usize = 16;

/// A left operand (`m × k`) in bf16, row-major, rows padded with zero rows to a multiple of 32
/// and each row to `k` rounded up to 32 plus 32 (values not read, see [`shape`]): a product
/// may start at any column `k0` and read `kk` columns as long as `k0 + kk ≤ k`.
#[derive(Default)]
pub struct Left {
    data: Vec<u16>,
    /// Where the packed rows start in `data`: its first 64-byte boundary, so that every tile
    /// row is one cache line.
    start: usize,
    rows: usize,
    cols: usize,
    row_len: usize,
    /// The layout whose padding rows are zero (see [`shape`]).
    zeroed: Zeroed,
}

impl Left {
    /// Packs `a` (`m × k`, row stride `rs`), reusing this buffer.
    pub fn pack(&mut self, a: &[f32], rs: usize, m: usize, k: usize) {
        assert!(m == 0 || k == 0 || a.len() >= (m - 1) * rs + k, "amx: left operand too small");
        self.pack_with(m, k, |rows, row_len| pack_left(a, rs, k, row_len, rows));
    }

    /// Shapes this buffer for an `m × k` operand whose rows the caller converts itself:
    /// `fill(rows, row_len)` writes the first `k` values of each of the `m` rows (`row_len`
    /// apart); the padding rows are zeroed here.
    pub fn pack_with(&mut self, m: usize, k: usize, fill: impl FnOnce(&mut [u16], usize)) {
        self.rows = m;
        self.cols = k;
        self.row_len = k.next_multiple_of(TILE_K) + TILE_K;
        self.start = shape(&mut self.data, [m, m.next_multiple_of(2 * TILE)], self.row_len, &mut self.zeroed, fill);
    }

    /// What a product may read: the used rows' first `cols` values, then the padding rows.
    #[cfg(test)]
    pub(crate) fn packed(&self) -> Vec<u16> {
        meaningful(&self.data[self.start..], [self.rows, self.rows.next_multiple_of(2 * TILE)], self.row_len, self.cols)
    }
}

/// Lays out `rows` rows of `row_len` in `data` from its first 64-byte boundary (returned):
/// `fill(used rows, row_len)` writes the first `cols` values of each used row, and the padding
/// rows after them are zeroed here, unless `zeroed` says they still are (the same layout as
/// the last call: `fill` is given the used rows alone, so nothing else writes them). The rest
/// of each used row is left as it was, or as `fill` left it: no product reads it. A left row is read up to column
/// `k0 + k` (a partial k step goes through a copy with zeros after it), and a right column
/// past `n` only feeds output columns that are dropped. Zeroing it (one `memset` call per row)
/// and the padding on every pack was 1–2 % of a bf16 step (`perf`).
fn shape<T: Copy + Default>(
    data: &mut Vec<T>,
    [used, rows]: [usize; 2],
    row_len: usize,
    zeroed: &mut Zeroed,
    fill: impl FnOnce(&mut [T], usize),
) -> usize {
    let start = crate::blocks::aligned(data, rows * row_len);
    let (filled, padding) = data[start..][..rows * row_len].split_at_mut(used * row_len);
    fill(filled, row_len);
    let layout = Zeroed([start, used, rows, row_len]);
    if *zeroed != layout {
        padding.fill(T::default());
        *zeroed = layout;
    }
    start
}

/// The layout (start, used rows, rows, row length) whose padding rows hold zeros.
#[derive(Default, PartialEq)]
struct Zeroed([usize; 4]);

/// The used rows' first `cols` values of `data`, then its padding rows.
#[cfg(test)]
fn meaningful<T: Copy>(data: &[T], [used, rows]: [usize; 2], row_len: usize, cols: usize) -> Vec<T> {
    let rows_of =
        |from: usize, to: usize, len: usize| (from..to).flat_map(move |r| data[r * row_len..][..len].iter().copied());
    rows_of(0, used, cols).chain(rows_of(used, rows, row_len)).collect()
}

crate::simd::simd_fn!(
    fn pack_left(a: &[f32], rs: usize, k: usize, row_len: usize, out: &mut [u16]) => pack_left_body
);

#[inline(always)]
fn pack_left_body(a: &[f32], rs: usize, k: usize, row_len: usize, out: &mut [u16]) {
    if k == 0 {
        return;
    }
    for (r, dst) in out.chunks_exact_mut(row_len).enumerate() {
        for (d, s) in dst[..k].iter_mut().zip(&a[r * rs..][..k]) {
            *d = bf16(*s);
        }
    }
}

/// A right operand (`k × n`) in the tile unit's pair layout: row `p` holds, per column, rows
/// `2p` and `2p + 1` as two bf16 in one u32. Columns are padded to `n` rounded up to 32 plus
/// 32 (values not read into kept outputs, see [`shape`]) and pair rows likewise (zeros), so a
/// product may start at any column and at any even row.
#[derive(Default)]
pub struct Right {
    data: Vec<u32>,
    /// As [`Left::start`].
    start: usize,
    rows: usize,
    cols: usize,
    row_len: usize,
    /// As [`Left::zeroed`].
    zeroed: Zeroed,
}

impl Right {
    /// Packs `b` (`k × n`, row stride `rs`), reusing this buffer.
    pub fn pack(&mut self, b: &[f32], rs: usize, k: usize, n: usize) {
        assert!(k == 0 || n == 0 || b.len() >= (k - 1) * rs + n, "amx: right operand too small");
        self.pack_with(k, n, |rows, row_len| pack_right(b, rs, k, n, row_len, rows));
    }

    /// Shapes this buffer for a `k × n` operand whose pair rows the caller converts itself:
    /// `fill(rows, row_len)` writes the first `n` values of each of the `⌈k / 2⌉` pair rows
    /// (`row_len` apart; for an odd `k` the last one's odd halves zero); the padding is zeroed
    /// here.
    pub fn pack_with(&mut self, k: usize, n: usize, fill: impl FnOnce(&mut [u32], usize)) {
        self.rows = k;
        self.cols = n;
        self.row_len = n.next_multiple_of(2 * TILE) + 2 * TILE;
        let pairs = k.div_ceil(2);
        let rows = [pairs, pairs.next_multiple_of(TILE) + TILE];
        self.start = shape(&mut self.data, rows, self.row_len, &mut self.zeroed, fill);
    }

    /// As [`Left::packed`].
    #[cfg(test)]
    pub(crate) fn packed(&self) -> Vec<u32> {
        let pairs = self.rows.div_ceil(2);
        meaningful(&self.data[self.start..], [pairs, pairs.next_multiple_of(TILE) + TILE], self.row_len, self.cols)
    }
}

crate::simd::simd_fn!(
    fn pack_right(b: &[f32], rs: usize, k: usize, n: usize, row_len: usize, out: &mut [u32]) => pack_right_body
);

#[inline(always)]
fn pack_right_body(b: &[f32], rs: usize, k: usize, n: usize, row_len: usize, out: &mut [u32]) {
    if n == 0 {
        return;
    }
    for (p, dst) in out.chunks_exact_mut(row_len).enumerate() {
        let even = &b[2 * p * rs..][..n];
        if 2 * p + 1 < k {
            for ((d, e), o) in dst[..n].iter_mut().zip(even).zip(&b[(2 * p + 1) * rs..][..n]) {
                *d = pair(*e, *o);
            }
        } else {
            for (d, e) in dst[..n].iter_mut().zip(even) {
                *d = bf16(*e) as u32;
            }
        }
    }
}

/// Two values as one element of the pair layout: `even` in the low half.
#[inline(always)]
pub fn pair(even: f32, odd: f32) -> u32 {
    (bf16(odd) as u32) << 16 | bf16(even) as u32
}

/// `dst (m × n) = [dst +] left[0..m, k0..k0 + k] · right[k1..k1 + k, n0..n0 + n]` (`k1`
/// even). Only called when [`available`].
#[allow(clippy::too_many_arguments)]
pub fn product(
    left: &Left,
    k0: usize,
    right: &Right,
    [k1, n0]: [usize; 2],
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
) {
    if checked(left, k0, right, [k1, n0], [m, n, k], dst.len(), dst_rs) {
        imp::product(left, k0, right, [k1, n0], [m, n, k], dst.as_mut_ptr(), dst_rs, accumulate)
    }
}

/// Whether there is anything to compute, after checking that the product lies inside both
/// operands and a destination of `dst_len` floats.
fn checked(
    left: &Left,
    k0: usize,
    right: &Right,
    [k1, n0]: [usize; 2],
    [m, n, k]: [usize; 3],
    dst_len: usize,
    dst_rs: usize,
) -> bool {
    if m == 0 || n == 0 {
        return false;
    }
    // Also what asks the OS for the tile registers: without it the first tile instruction
    // is an illegal instruction.
    assert!(available(), "amx: this CPU has no AMX-BF16 (check amx::available first)");
    assert!(m <= left.rows && k0 + k <= left.cols, "amx: product outside the left operand");
    assert!(k1 % 2 == 0 && k1 + k <= right.rows && n0 + n <= right.cols, "amx: product outside the right operand");
    assert!(dst_len >= (m - 1) * dst_rs + n, "amx: destination too small");
    true
}

/// As [`product`] without accumulating, into a destination not written yet: afterwards every
/// element of its `m × n` block (rows `dst_rs` apart) is written.
#[allow(clippy::too_many_arguments)]
pub fn product_into(
    left: &Left,
    k0: usize,
    right: &Right,
    [k1, n0]: [usize; 2],
    [m, n, k]: [usize; 3],
    dst: &mut [MaybeUninit<f32>],
    dst_rs: usize,
) {
    if checked(left, k0, right, [k1, n0], [m, n, k], dst.len(), dst_rs) {
        imp::product(left, k0, right, [k1, n0], [m, n, k], dst.as_mut_ptr().cast(), dst_rs, false)
    }
}

thread_local! {
    static PACKED: std::cell::RefCell<(Left, Right)> = std::cell::RefCell::new(Default::default());
}

/// Runs `f` with this thread's packing buffers (kept across calls, like the conv blocks'
/// scratch). `f` must not call [`gemm`] or this again.
pub fn with_scratch<R>(f: impl FnOnce(&mut Left, &mut Right) -> R) -> R {
    PACKED.with(|p| {
        let (left, right) = &mut *p.borrow_mut();
        f(left, right)
    })
}

/// `dst (m × n) = [dst +] a (m × k) · b (k × n)` in bf16 × bf16 → f32, all operands row-major
/// with the given row strides, both packed for this call. Only called when [`available`].
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    a: &[f32],
    a_rs: usize,
    b: &[f32],
    b_rs: usize,
) {
    with_scratch(|left, right| {
        left.pack(a, a_rs, m, k);
        right.pack(b, b_rs, k, n);
        product(left, 0, right, [0, 0], [m, n, k], dst, dst_rs, accumulate);
    })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod imp {
    use std::arch::asm;

    use super::{K_CHUNK_STEPS, Left, Right, TILE, TILE_K};

    pub fn detect() -> bool {
        // CPUID.(EAX = 7, ECX = 0): EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
        #[allow(unused_unsafe)]
        // SAFETY: CPUID exists on every x86-64 CPU.
        let leaf = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
        if leaf.edx & (1 << 22) == 0 || leaf.edx & (1 << 24) == 0 {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain system call with integer arguments; it fails cleanly where the
        // kernel does not know it or the CPU lacks the state.
        unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
    }

    /// Palette 1 with eight tiles of 16 rows × 64 bytes: 0–3 the f32 accumulators, 4–5 left,
    /// 6–7 right.
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    static CONFIG: Config = {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = TILE as u8;
            t += 1;
        }
        Config(c)
    };

    #[allow(clippy::too_many_arguments)]
    pub fn product(
        left: &Left,
        k0: usize,
        right: &Right,
        [k1, n0]: [usize; 2],
        [m, n, k]: [usize; 3],
        dst: *mut f32,
        dst_rs: usize,
        accumulate: bool,
    ) {
        let (mp, np) = (m.next_multiple_of(2 * TILE), n.next_multiple_of(2 * TILE));
        let (full, rest) = (k / TILE_K, k % TILE_K);
        // SAFETY (of every pointer below): rows `..mp` of `left` exist (packed to a multiple
        // of 32) and hold `k0 + full · 32 ≤ cols < row_len` columns; pair rows
        // `k1 / 2 + ⌈k / 32⌉ · 16 ≤ ⌈rows / 2⌉ + 15` and columns `n0 + np ≤ cols + 31` of
        // `right` exist (its padding; `product` asserted `k1 + k ≤ rows`, `n0 + n ≤ cols`).
        let lp = left.data[left.start..].as_ptr().wrapping_add(k0);
        let rp = right.data[right.start..].as_ptr().wrapping_add(k1 / 2 * right.row_len + n0);
        let (ls, rs) = (left.row_len * 2, right.row_len * 4);
        let left_tile = |rb: usize, j: usize| lp.wrapping_add(rb * TILE * left.row_len + j * TILE_K);
        let right_tile = |cb: usize, j: usize| rp.wrapping_add(j * TILE * right.row_len + cb * TILE);
        // The last, partial k block: the left's columns past `k0 + k` may hold data (another
        // product's) where the right's rows hold data too, so they are copied out with zeros
        // after them (a zero there makes the product's extra terms zero).
        let mut tail_data = Vec::new();
        let tail = if rest == 0 {
            &[][..]
        } else {
            let start = crate::blocks::aligned(&mut tail_data, mp * TILE_K);
            let t = &mut tail_data[start..][..mp * TILE_K];
            for (r, row) in t.chunks_exact_mut(TILE_K).enumerate() {
                row[..rest].copy_from_slice(&left.data[left.start + r * left.row_len + k0 + full * TILE_K..][..rest]);
                row[rest..].fill(0);
            }
            t
        };
        // Aligned like the packed operands, so its tile rows are whole cache lines.
        #[repr(C, align(64))]
        struct Block([f32; 4 * TILE * TILE]);
        let mut block = Block([0.0; 4 * TILE * TILE]);
        let block = &mut block.0;
        // Rows `..m` of `dst`, columns `..n`, rows `dst_rs` apart, exist (`product` asserted
        // it); without `accumulate` they are only written.
        let dp = dst;
        let steps = full + (rest > 0) as usize;
        // Block (rb, cb) over k steps `js`; `first`: the first steps of this block.
        let mut one = |rb: usize, cb: usize, js: std::ops::Range<usize>, first: bool| {
            let rows = (m - rb * TILE).min(2 * TILE);
            let cols = (n - cb * TILE).min(2 * TILE);
            // A whole 32 × 32 block of `dst` is loaded (when accumulating, or after its first
            // steps) and stored by the tile unit itself; a block on the edge goes through
            // `block`, all its steps at once.
            let whole = rows == 2 * TILE && cols == 2 * TILE;
            let (c, cs) = if whole {
                (dp.wrapping_add(rb * TILE * dst_rs + cb * TILE), dst_rs * 4)
            } else {
                (block.as_mut_ptr(), 2 * TILE * 4)
            };
            let c_rows = if whole { dst_rs } else { 2 * TILE };
            // SAFETY: see above; `c` is 32 rows of at least 32 floats, `c_rows` apart: inside
            // `dst` for a whole block (asserted by `product`), else `block`.
            unsafe {
                if whole && (accumulate || !first) {
                    asm!(
                        "tileloadd tmm0, [{c0} + {s}]",
                        "tileloadd tmm1, [{c1} + {s}]",
                        "tileloadd tmm2, [{c2} + {s}]",
                        "tileloadd tmm3, [{c3} + {s}]",
                        c0 = in(reg) c,
                        c1 = in(reg) c.add(TILE),
                        c2 = in(reg) c.add(TILE * c_rows),
                        c3 = in(reg) c.add(TILE * c_rows + TILE),
                        s = in(reg) cs,
                        options(nostack, readonly),
                    );
                } else {
                    asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
                }
                for j in js {
                    let (a0, a1, ls) = if j < full {
                        (left_tile(rb, j), left_tile(rb + 1, j), ls)
                    } else {
                        (tail.as_ptr().add(rb * TILE * TILE_K), tail.as_ptr().add((rb + 1) * TILE * TILE_K), 2 * TILE_K)
                    };
                    asm!(
                        "tileloadd tmm4, [{a0} + {ls}]",
                        "tileloadd tmm5, [{a1} + {ls}]",
                        "tileloadd tmm6, [{b0} + {rs}]",
                        "tileloadd tmm7, [{b1} + {rs}]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        a0 = in(reg) a0,
                        a1 = in(reg) a1,
                        b0 = in(reg) right_tile(cb, j),
                        b1 = in(reg) right_tile(cb + 1, j),
                        ls = in(reg) ls,
                        rs = in(reg) rs,
                        options(nostack, readonly),
                    );
                }
                asm!(
                    "tilestored [{c0} + {s}], tmm0",
                    "tilestored [{c1} + {s}], tmm1",
                    "tilestored [{c2} + {s}], tmm2",
                    "tilestored [{c3} + {s}], tmm3",
                    c0 = in(reg) c,
                    c1 = in(reg) c.add(TILE),
                    c2 = in(reg) c.add(TILE * c_rows),
                    c3 = in(reg) c.add(TILE * c_rows + TILE),
                    s = in(reg) cs,
                    options(nostack),
                );
            }
            if !whole {
                for r in 0..rows {
                    // SAFETY: row `rb·16 + r < m`, columns `cb·16 .. + cols ≤ n`: inside `dst`,
                    // and written before when accumulating.
                    let out = dp.wrapping_add((rb * TILE + r) * dst_rs + cb * TILE);
                    let got = &block[r * 2 * TILE..][..cols];
                    if accumulate {
                        let out = unsafe { std::slice::from_raw_parts_mut(out, cols) };
                        out.iter_mut().zip(got).for_each(|(o, g)| *o += g);
                    } else {
                        unsafe { std::ptr::copy_nonoverlapping(got.as_ptr(), out, cols) };
                    }
                }
            }
        };
        // SAFETY: configures this thread's tiles for the loop below (a thread's own state).
        unsafe { asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly)) };
        // Whole blocks k chunk by k chunk, a row pair's chunk of the left operand (32 KiB)
        // kept in L1 while the right one streams past it. Timed with `amx_product` on one
        // thread (README, "bf16 on AMX"): row pairs outside made the 512-row products 1.3×
        // faster than column pairs outside; chunks of 16 steps were as fast as 32 and faster
        // than 8 or none.
        let (whole_rows, whole_cols) = (m / (2 * TILE) * 2, n / (2 * TILE) * 2);
        for chunk in (0..steps).step_by(K_CHUNK_STEPS) {
            let js = chunk..(chunk + K_CHUNK_STEPS).min(steps);
            for rb in (0..whole_rows).step_by(2) {
                for cb in (0..whole_cols).step_by(2) {
                    one(rb, cb, js.clone(), chunk == 0);
                }
            }
        }
        // The edges: the last row pair and the last column pair where they are partial.
        for cb in (0..np / TILE).step_by(2) {
            for rb in (0..mp / TILE).step_by(2) {
                if rb >= whole_rows || cb >= whole_cols {
                    one(rb, cb, 0..steps, true);
                }
            }
        }
        // SAFETY: releases this thread's tile state.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod imp {
    use super::{Left, Right};

    pub fn detect() -> bool {
        false
    }

    #[allow(clippy::too_many_arguments)]
    pub fn product(_: &Left, _: usize, _: &Right, _: [usize; 2], _: [usize; 3], _: *mut f32, _: usize, _: bool) {
        unreachable!("AMX is never reported available off x86-64 Linux")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_nearest_even() {
        assert_eq!(bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and the next bf16 (1 + 2^-7): ties go to even (1).
        assert_eq!(bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: to the even one above.
        assert_eq!(bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16(1.0 + 1.0 / 256.0 + 1.0 / 65536.0), 0x3f81);
        assert_eq!(bf16(-2.5), 0xc020);
        assert_eq!(bf16(f32::MAX), 0x7f80, "overflow rounds to infinity");
        assert_eq!(bf16(f32::INFINITY), 0x7f80);
        assert!(f32_of(bf16(f32::NAN)).is_nan());
        assert!(f32_of(bf16(f32::from_bits(0x7f80_0001))).is_nan(), "a NaN with a low payload stays NaN");
    }

    /// The product of the bf16-rounded operands, summed in f64.
    fn reference([m, n, k]: [usize; 3], a: &[f32], a_rs: usize, b: &[f32], b_rs: usize) -> Vec<f64> {
        let mut out = vec![0.0f64; m * n];
        for r in 0..m {
            for j in 0..n {
                out[r * n + j] = (0..k)
                    .map(|kk| f32_of(bf16(a[r * a_rs + kk])) as f64 * f32_of(bf16(b[kk * b_rs + j])) as f64)
                    .sum();
            }
        }
        out
    }

    /// Products of parts of packed operands, starting inside them, where both hold data past
    /// the part's k (as Winograd's weight gradient reads them): only the part counts.
    #[test]
    fn parts_of_packed_operands() {
        if !available() {
            eprintln!("skipped: this CPU has no AMX-BF16");
            return;
        }
        let value = |i: usize| ((i * 7919) % 2003) as f32 / 1000.0 - 1.0;
        let (m, kt, nt) = (37, 130, 70);
        let a: Vec<f32> = (0..m * kt).map(value).collect();
        let b: Vec<f32> = (0..kt * nt).map(|i| value(i + 17)).collect();
        let (mut left, mut right) = (Left::default(), Right::default());
        left.pack(&a, kt, m, kt);
        right.pack(&b, nt, kt, nt);
        let parts = [(0, 0, 0, 130, 70), (5, 6, 3, 37, 40), (64, 32, 1, 66, 69), (1, 2, 30, 7, 9)];
        check_parts((&left, &right), (&a, &b), [m, kt, nt], &parts);
    }

    /// Each part `(k0, k1, n0, k, n)` of the packed `a` (`m × kt`) and `b` (`kt × nt`)
    /// multiplied, against the product of the rounded values summed in f64.
    fn check_parts(
        (left, right): (&Left, &Right),
        (a, b): (&[f32], &[f32]),
        [m, kt, nt]: [usize; 3],
        parts: &[(usize, usize, usize, usize, usize)],
    ) {
        for &(k0, k1, n0, k, n) in parts {
            let mut dst = vec![0.0f32; m * n];
            product(left, k0, right, [k1, n0], [m, n, k], &mut dst, n, false);
            for r in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|kk| {
                            f32_of(bf16(a[r * kt + k0 + kk])) as f64 * f32_of(bf16(b[(k1 + kk) * nt + n0 + j])) as f64
                        })
                        .sum();
                    let got = dst[r * n + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{m}×{kt}×{nt}, k0 {k0} k1 {k1} n0 {n0} k {k} at ({r}, {j}): {got} vs {want}"
                    );
                }
            }
        }
    }

    /// Buffers that held NaN everywhere before, as reused scratch may: the rows' tails (not
    /// cleared on packing) must not reach a kept output, and rows that were used and are now
    /// padding must be zeroed again (a partial k step reads them).
    #[test]
    fn reused_buffers_with_nan_left_behind() {
        if !available() {
            eprintln!("skipped: this CPU has no AMX-BF16");
            return;
        }
        let value = |i: usize| ((i * 7919) % 2003) as f32 / 1000.0 - 1.0;
        let (mut left, mut right) = (Left::default(), Right::default());
        for (m, kt, nt) in [(37, 70, 45), (64, 33, 32), (5, 7, 3)] {
            // A larger operand first (more used rows), all of it NaN.
            left.pack_with(m + 40, kt, |rows, _| rows.fill(bf16(f32::NAN)));
            right.pack_with(kt + 64, nt, |rows, _| rows.fill(pair(f32::NAN, f32::NAN)));
            let a: Vec<f32> = (0..m * kt).map(value).collect();
            let b: Vec<f32> = (0..kt * nt).map(|i| value(i + 5)).collect();
            left.pack(&a, kt, m, kt);
            right.pack(&b, nt, kt, nt);
            let parts = [(0, 0, 0, kt, nt), (1, 2, 1, kt - 2, nt - 1), (kt / 2, 0, 0, kt - kt / 2, 1)];
            check_parts((&left, &right), (&a, &b), [m, kt, nt], &parts);
        }
    }

    #[test]
    fn matches_the_rounded_product() {
        if !available() {
            eprintln!("skipped: this CPU has no AMX-BF16");
            return;
        }
        let mut state = 7u64;
        let mut rand = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
                })
                .collect()
        };
        // Exact multiples of the tiles, one of everything, edges in each dimension, odd k, and
        // strides wider than the rows.
        for (m, n, k, pad) in
            [(32, 32, 32, 0), (1, 1, 1, 0), (17, 45, 33, 3), (64, 16, 97, 0), (5, 100, 7, 11), (40, 3, 300, 1)]
        {
            let (a_rs, b_rs, d_rs) = (k + pad, n + pad, n + 2 * pad);
            let (a, b) = (rand(m * a_rs), rand(k * b_rs));
            let want = reference([m, n, k], &a, a_rs, &b, b_rs);
            for accumulate in [false, true] {
                let start = rand(m * d_rs);
                let mut dst = start.clone();
                gemm([m, n, k], &mut dst, d_rs, accumulate, &a, a_rs, &b, b_rs);
                for r in 0..m {
                    for j in 0..n {
                        let base = if accumulate { start[r * d_rs + j] as f64 } else { 0.0 };
                        let (got, expect) = (dst[r * d_rs + j] as f64, base + want[r * n + j]);
                        assert!(
                            (got - expect).abs() <= 1e-5 * (1.0 + expect.abs()) * (k as f64).sqrt(),
                            "{m}×{n}×{k} at ({r}, {j}): {got} vs {expect}"
                        );
                    }
                    // Padding columns of the destination are left alone.
                    for j in n..d_rs.min(if r + 1 < m { d_rs } else { n }) {
                        assert_eq!(
                            dst[r * d_rs + j],
                            start[r * d_rs + j],
                            "{m}×{n}×{k}: column {j} of row {r} written"
                        );
                    }
                }
            }
        }
    }
}

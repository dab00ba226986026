//! The 3×3 / stride 1 / pad 1 convolution by Winograd's minimal filtering F(2×2, 3×3) (Lavin &
//! Gray, 2015): each 2×2 output tile is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` for its 4×4 input patch
//! `d`, so a tile takes 16 multiplies per (input, output) channel pair instead of 36. Across a
//! block of tiles the products are 16 GEMMs, `M_ξ (o × tiles) = U_ξ (o × c) · V_ξ (c × tiles)`,
//! one per position ξ of the 4×4 transformed tile: 2.25× fewer flops than the direct GEMMs of
//! `conv.rs`, for the cost of transforming inputs and outputs (cheap when channels are
//! many). Used on flex for all three directions of the layers with 64 channels and more.
//! (The first weight gradient here measured 1.7× slower than the direct GEMMs: its GEMMs had
//! a transposed right operand, which the `gemm` crate packs slowly; with `Σ_tiles V_ξ · dM_ξᵀ`
//! and `dM` stored tile-major it is 1.2–1.7× faster than them.)

use std::mem::MaybeUninit;

use crate::blocks::{Dims, capped_for_threads, gemm, par_images, sum_over_blocks};
use crate::simd::simd_fn;
use crate::{Precision, amx};

/// A block's transformed input is about this many floats...
const BLOCK_FLOATS: usize = 1 << 18;
/// ... with at least this many tiles, the GEMMs' N.
const MIN_BLOCK_TILES: usize = 256;

/// `G g Gᵀ` for every (output, input) channel pair: `[16][o][c]`.
fn transform_weights(wt: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut u = vec![0.0f32; 16 * o * c];
    for oc in 0..o {
        for ci in 0..c {
            let g = &wt[(oc * c + ci) * 9..][..9];
            // G g: 4×3, G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]].
            let mut gg = [[0.0f32; 3]; 4];
            for kx in 0..3 {
                let (g0, g1, g2) = (g[kx], g[3 + kx], g[6 + kx]);
                gg[0][kx] = g0;
                gg[1][kx] = 0.5 * (g0 + g1 + g2);
                gg[2][kx] = 0.5 * (g0 - g1 + g2);
                gg[3][kx] = g2;
            }
            for (i, r) in gg.iter().enumerate() {
                let row = [r[0], 0.5 * (r[0] + r[1] + r[2]), 0.5 * (r[0] - r[1] + r[2]), r[2]];
                for (j, v) in row.into_iter().enumerate() {
                    u[((i * 4 + j) * o + oc) * c + ci] = v;
                }
            }
        }
    }
    u
}

simd_fn!(
    /// `V[ci][ξ][tile]` (`[c][16][k · tiles per image]`) for images `b0..b0 + k`: `Bᵀ d B` of every
    /// 4×4 patch `d` of the zero-padded planes, Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0],
    /// [0, 1, 0, −1]]. Each padded row is kept as its even and its odd columns, so that Bᵀ
    /// (across rows) and B (across columns) are element-wise operations on contiguous runs, one
    /// per tile row, which the compiler vectorises.
    fn transform_input(x: &[f32], dims: Dims, b0: usize, k: usize, v: &mut Vec<f32>, scratch: &mut Vec<f32>) => transform_input_body
);

#[inline(always)]
fn transform_input_body(x: &[f32], [_, c, h, w]: Dims, b0: usize, k: usize, v: &mut Vec<f32>, scratch: &mut Vec<f32>) {
    let (hw, th, tw) = (h * w, h / 2, w / 2);
    let t = k * th * tw;
    // Every element is written below.
    v.resize(16 * c * t, 0.0);
    // Padded row p, column q (q = 0..w + 2) is even[p][q / 2] or odd[p][q / 2]; each half row
    // has tw + 1 entries. Then four row combinations, as halves too.
    let half = tw + 1;
    let plane = (h + 2) * half;
    scratch.clear();
    scratch.resize(2 * plane + 8 * half, 0.0);
    let (even, rest) = scratch.split_at_mut(plane);
    let (odd, combos) = rest.split_at_mut(plane);
    for i in 0..k {
        for ci in 0..c {
            let src = &x[((b0 + i) * c + ci) * hw..][..hw];
            for (y, row) in src.chunks_exact(w).enumerate() {
                let (e, o) = (&mut even[(y + 1) * half..][..half], &mut odd[(y + 1) * half..][..half]);
                // Padded column 2j is source column 2j − 1, padded column 2j + 1 source 2j.
                for j in 0..tw {
                    e[j + 1] = row[2 * j + 1];
                    o[j] = row[2 * j];
                }
            }
            for ty in 0..th {
                let (cs, _) = combos.split_at_mut(8 * half);
                for (parity, rows) in [&*even, &*odd].into_iter().enumerate() {
                    let r = |q: usize| &rows[(2 * ty + q) * half..][..half];
                    let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
                    let out = &mut cs[parity * 4 * half..][..4 * half];
                    let (c0, out) = out.split_at_mut(half);
                    let (c1, out) = out.split_at_mut(half);
                    let (c2, c3) = out.split_at_mut(half);
                    for q in 0..half {
                        c0[q] = r0[q] - r2[q];
                        c1[q] = r1[q] + r2[q];
                        c2[q] = r2[q] - r1[q];
                        c3[q] = r1[q] - r3[q];
                    }
                }
                let tile0 = (i * th + ty) * tw;
                for row_i in 0..4 {
                    let (e, o) = (&cs[row_i * half..][..half], &cs[(4 + row_i) * half..][..half]);
                    let start = (ci * 16 + row_i * 4) * t + tile0;
                    let region = &mut v[start..start + 3 * t + tw];
                    let (v0, region) = region.split_at_mut(t);
                    let (v1, region) = region.split_at_mut(t);
                    let (v2, v3) = region.split_at_mut(t);
                    let (v0, v1, v2, v3) = (&mut v0[..tw], &mut v1[..tw], &mut v2[..tw], &mut v3[..tw]);
                    // Patch columns 2tx..2tx + 4 are e[tx], o[tx], e[tx + 1], o[tx + 1].
                    for tx in 0..tw {
                        v0[tx] = e[tx] - e[tx + 1];
                        v1[tx] = o[tx] + e[tx + 1];
                        v2[tx] = e[tx + 1] - o[tx];
                        v3[tx] = o[tx] - o[tx + 1];
                    }
                }
            }
        }
    }
}

simd_fn!(
    /// The output planes of images `0..k` of a block from `M[oc][ξ][tile]`: `Aᵀ m A` per tile,
    /// Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]], again on runs of tiles (a tile row's 16 values are
    /// contiguous runs of M).
    fn transform_output(m: &[f32], dims: Dims, dst: &mut [MaybeUninit<f32>]) => transform_output_body
);

#[inline(always)]
fn transform_output_body(m: &[f32], [k, o, h, w]: Dims, dst: &mut [MaybeUninit<f32>]) {
    let (hw, th, tw) = (h * w, h / 2, w / 2);
    let t = k * th * tw;
    let mut y = vec![0.0f32; 4 * tw];
    for i in 0..k {
        for oc in 0..o {
            let plane = &mut dst[(i * o + oc) * hw..][..hw];
            for ty in 0..th {
                let tile0 = (i * th + ty) * tw;
                let r = |xi: usize| &m[(oc * 16 + xi) * t + tile0..][..tw];
                let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
                let (r4, r5, r6, r7) = (r(4), r(5), r(6), r(7));
                let (r8, r9, r10, r11) = (r(8), r(9), r(10), r(11));
                let (r12, r13, r14, r15) = (r(12), r(13), r(14), r(15));
                let (y00, rest) = y.split_at_mut(tw);
                let (y01, rest) = rest.split_at_mut(tw);
                let (y10, y11) = rest.split_at_mut(tw);
                for tx in 0..tw {
                    // Aᵀ across rows (t0, t1), then across columns.
                    let t00 = r0[tx] + r4[tx] + r8[tx];
                    let t01 = r1[tx] + r5[tx] + r9[tx];
                    let t02 = r2[tx] + r6[tx] + r10[tx];
                    let t03 = r3[tx] + r7[tx] + r11[tx];
                    let t10 = r4[tx] - r8[tx] - r12[tx];
                    let t11 = r5[tx] - r9[tx] - r13[tx];
                    let t12 = r6[tx] - r10[tx] - r14[tx];
                    let t13 = r7[tx] - r11[tx] - r15[tx];
                    y00[tx] = t00 + t01 + t02;
                    y01[tx] = t01 - t02 - t03;
                    y10[tx] = t10 + t11 + t12;
                    y11[tx] = t11 - t12 - t13;
                }
                let (top, bottom) = plane[2 * ty * w..][..2 * w].split_at_mut(w);
                for tx in 0..tw {
                    top[2 * tx].write(y00[tx]);
                    top[2 * tx + 1].write(y01[tx]);
                    bottom[2 * tx].write(y10[tx]);
                    bottom[2 * tx + 1].write(y11[tx]);
                }
            }
        }
    }
}

/// Images per block: about `BLOCK_FLOATS` of transformed input, at least `MIN_BLOCK_TILES`
/// tiles, and enough blocks for every thread.
fn images_per_block([n, c, h, w]: Dims) -> usize {
    let tiles = (BLOCK_FLOATS / (16 * c)).max(MIN_BLOCK_TILES);
    capped_for_threads(tiles / (h / 2 * w / 2).max(1), n)
}

/// Whether the maps can be tiled (even sides).
pub fn fits(h: usize, w: usize) -> bool {
    h.is_multiple_of(2) && w.is_multiple_of(2) && h > 0 && w > 0
}

/// The forward convolution `x [n, c, h, w]` by `wt [o, c, 3, 3]` → `[n, o, h, w]`; `h` and `w`
/// even.
pub fn forward(p: Precision, x: &[f32], wt: &[f32], [n, c, h, w]: Dims, o: usize) -> Vec<f32> {
    assert!(fits(h, w), "Winograd F(2×2, 3×3) needs even map sides, got {h}×{w}");
    let hw = h * w;
    assert_eq!(x.len(), n * c * hw, "conv3x3: input has the wrong size");
    assert_eq!(wt.len(), o * c * 9, "conv3x3: weight has the wrong size");
    let (th, tw) = (h / 2, w / 2);
    let tiles_per_image = th * tw;
    let u = transform_weights(wt, o, c);
    let packed = crate::conv::packed_lefts(p, &u, 16, o, c);
    par_images(n, o * hw, images_per_block([n, c, h, w]), |b0, dst, [v, m, padded]| {
        let k = dst.len() / (o * hw);
        let t = k * tiles_per_image;
        transform_input(x, [n, c, h, w], b0, k, v, padded);
        // The GEMMs overwrite it.
        m.resize(16 * o * t, 0.0);
        // M and V are [channel][ξ][tile], so that a tile row's 16 runs sit together for the
        // transforms (as [ξ][channel][tile] they were 16 far-apart cache lines per tile row:
        // the output transform took 12% of a step).
        if let Some(lefts) = &packed {
            // V packed once (c × 16·tiles); position ξ's GEMM starts at its column.
            amx::with_scratch(|_, right| {
                right.pack(v, 16 * t, c, 16 * t);
                for (xi, left) in lefts.iter().enumerate() {
                    amx::product(left, 0, right, [0, xi * t], [o, t, c], &mut m[xi * t..], 16 * t, false);
                }
            });
        } else {
            for xi in 0..16 {
                let ux = &u[xi * o * c..][..o * c];
                gemm(p, [o, t, c], &mut m[xi * t..], [16 * t, 1], false, ux, [c, 1], &v[xi * t..], [16 * t, 1]);
            }
        }
        transform_output(m, [k, o, h, w], dst);
    })
}

/// The weight gradient `[o, c, 3, 3]` of [`forward`]: with `M = U ⊙ V` per tile, `dM = A dY Aᵀ`,
/// so `dU_ξ (c × o, transposed) = Σ_tiles V_ξ (c × tiles) · dM_ξᵀ (tiles × o)`, 16 GEMMs over
/// the tiles with both operands row-major, then `dW = Gᵀ dU G` per channel pair.
pub fn weight_grad(p: Precision, x: &[f32], dy: &[f32], [n, c, h, w]: Dims, o: usize) -> Vec<f32> {
    assert!(fits(h, w), "Winograd F(2×2, 3×3) needs even map sides, got {h}×{w}");
    let hw = h * w;
    assert_eq!(x.len(), n * c * hw, "conv3x3 weight grad: input has the wrong size");
    assert_eq!(dy.len(), n * o * hw, "conv3x3 weight grad: output gradient has the wrong size");
    let tiles_per_image = (h / 2) * (w / 2);
    let du = sum_over_blocks(n, images_per_block([n, c.max(o), h, w]), 16 * c * o, |b0, k, du, [v, dm, padded]| {
        let t = k * tiles_per_image;
        transform_input(x, [n, c, h, w], b0, k, v, padded);
        transform_gradient(dy, [n, o, h, w], b0, k, dm);
        // bf16 with an even tile count (every map of this network): V and dM packed once,
        // position ξ's GEMM starting at row ξ·t of both (pairs of rows: `ξ·t` even).
        if p == Precision::Bf16 && t % 2 == 0 {
            amx::with_scratch(|left, right| {
                left.pack(v, 16 * t, c, 16 * t);
                right.pack(dm, o, 16 * t, o);
                for xi in 0..16 {
                    amx::product(left, xi * t, right, [xi * t, 0], [c, o, t], &mut du[xi * c * o..][..c * o], o, true);
                }
            });
            return;
        }
        for xi in 0..16 {
            let d = &mut du[xi * c * o..][..c * o];
            gemm(p, [c, o, t], d, [o, 1], true, &v[xi * t..], [16 * t, 1], &dm[xi * t * o..][..t * o], [o, 1]);
        }
    });
    // Gᵀ dU G, G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]: the same three combinations
    // of four values along each axis.
    let g_t = |u: [f32; 4]| [u[0] + 0.5 * (u[1] + u[2]), 0.5 * (u[1] - u[2]), 0.5 * (u[1] + u[2]) + u[3]];
    let mut out = vec![0.0f32; o * c * 9];
    for ci in 0..c {
        for oc in 0..o {
            let at = |i: usize, j: usize| du[((i * 4 + j) * c + ci) * o + oc];
            let cols: [[f32; 3]; 4] = std::array::from_fn(|j| g_t([at(0, j), at(1, j), at(2, j), at(3, j)]));
            for a in 0..3 {
                let row = g_t([cols[0][a], cols[1][a], cols[2][a], cols[3][a]]);
                out[((oc * c + ci) * 3 + a) * 3..][..3].copy_from_slice(&row);
            }
        }
    }
    out
}

simd_fn!(
    /// `dM[ξ][tile][oc]` (`[16][k · tiles per image][o]`) for images `b0..b0 + k` of `dy`:
    /// `A dY Aᵀ` of every 2×2 tile, A = [[1, 0], [1, 1], [1, −1], [0, −1]], eight output
    /// channels at a time so that each ξ gets a contiguous run of eight.
    fn transform_gradient(dy: &[f32], dims: Dims, b0: usize, k: usize, dm: &mut Vec<f32>) => transform_gradient_body
);

#[inline(always)]
fn transform_gradient_body(dy: &[f32], [_, o, h, w]: Dims, b0: usize, k: usize, dm: &mut Vec<f32>) {
    const LANES: usize = 8;
    let (hw, th, tw) = (h * w, h / 2, w / 2);
    let t = k * th * tw;
    // Every element is written below.
    dm.resize(16 * t * o, 0.0);
    for i in 0..k {
        let image = &dy[(b0 + i) * o * hw..][..o * hw];
        for og in (0..o).step_by(LANES) {
            let lanes = LANES.min(o - og);
            for ty in 0..th {
                for tx in 0..tw {
                    let tile = (i * th + ty) * tw + tx;
                    let mut m = [[0.0f32; LANES]; 16];
                    let at = 2 * ty * w + 2 * tx;
                    for l in 0..lanes {
                        let p = &image[(og + l) * hw + at..];
                        let (y00, y01, y10, y11) = (p[0], p[1], p[w], p[w + 1]);
                        // A across rows, then across columns.
                        let rows = [(y00, y01), (y00 + y10, y01 + y11), (y00 - y10, y01 - y11), (-y10, -y11)];
                        for (r, (a, b)) in rows.into_iter().enumerate() {
                            m[r * 4][l] = a;
                            m[r * 4 + 1][l] = a + b;
                            m[r * 4 + 2][l] = a - b;
                            m[r * 4 + 3][l] = -b;
                        }
                    }
                    for (xi, run) in m.iter().enumerate() {
                        let dst = &mut dm[(xi * t + tile) * o + og..];
                        // A fixed-length copy where it can be: a `copy_from_slice` of a
                        // run-time length is a `memmove` call per 32 bytes.
                        if lanes == LANES {
                            let dst: &mut [f32; LANES] = (&mut dst[..LANES]).try_into().expect("eight lanes");
                            *dst = *run;
                        } else {
                            dst[..lanes].copy_from_slice(&run[..lanes]);
                        }
                    }
                }
            }
        }
    }
}

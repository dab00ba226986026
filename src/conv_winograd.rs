//! The 3×3 / stride 1 / pad 1 convolution by Winograd's minimal filtering F(2×2, 3×3) (Lavin &
//! Gray, 2015): each 2×2 output tile is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` for its 4×4 input patch
//! `d`, so a tile takes 16 multiplies per (input, output) channel pair instead of 36. Across a
//! block of tiles the products are 16 GEMMs, `M_ξ (o × tiles) = U_ξ (o × c) · V_ξ (c × tiles)`,
//! one per position ξ of the 4×4 transformed tile: 2.25× fewer flops than the direct GEMMs of
//! `conv_kernels`, for the cost of transforming inputs and outputs (cheap when channels are
//! many). Used on flex for the forward and the input gradient of the layers with 64 channels
//! and more. (A Winograd weight gradient, `dU_ξ = Σ_tiles (A dY Aᵀ)_ξ · V_ξᵀ`, measured 1.7×
//! slower than the GEMMs of `conv_kernels`: the reduction over tiles suits the GEMM poorly.)

use rayon::prelude::*;

use crate::conv_kernels::{Dims, gemm};

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

/// `V_ξ[ci][tile]` (`[16][c][k · tiles per image]`) for images `b0..b0 + k`: `Bᵀ d B` of every
/// 4×4 patch `d` of the zero-padded planes, Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0],
/// [0, 1, 0, −1]]. Applied to whole rows at once (rows of patches, then columns), so every loop
/// runs over contiguous memory and a tile row writes 16 contiguous runs: 2.5× faster than
/// transforming patch by patch.
fn transform_input(x: &[f32], [_, c, h, w]: Dims, b0: usize, k: usize, v: &mut Vec<f32>, padded: &mut Vec<f32>) {
    let (hw, th, tw) = (h * w, h / 2, w / 2);
    let t = k * th * tw;
    v.clear();
    v.resize(16 * c * t, 0.0);
    let pw = w + 2;
    padded.clear();
    padded.resize((h + 2) * pw + 4 * pw, 0.0);
    for i in 0..k {
        for ci in 0..c {
            let src = &x[((b0 + i) * c + ci) * hw..][..hw];
            for (y, row) in src.chunks(w).enumerate() {
                padded[(y + 1) * pw + 1..][..w].copy_from_slice(row);
            }
            let (rows, combos) = padded.split_at_mut((h + 2) * pw);
            for ty in 0..th {
                let p = |r: usize| &rows[(2 * ty + r) * pw..][..pw];
                let (r0, r1, r2, r3) = (p(0), p(1), p(2), p(3));
                let (c0, rest) = combos.split_at_mut(pw);
                let (c1, rest) = rest.split_at_mut(pw);
                let (c2, c3) = rest.split_at_mut(pw);
                for s in 0..pw {
                    c0[s] = r0[s] - r2[s];
                    c1[s] = r1[s] + r2[s];
                    c2[s] = r2[s] - r1[s];
                    c3[s] = r1[s] - r3[s];
                }
                let tile0 = (i * th + ty) * tw;
                for (row_i, comb) in [&*c0, &*c1, &*c2, &*c3].into_iter().enumerate() {
                    let at = |j: usize| ((row_i * 4 + j) * c + ci) * t + tile0;
                    let (a0, a1, a2, a3) = (at(0), at(1), at(2), at(3));
                    for tx in 0..tw {
                        let q = &comb[2 * tx..][..4];
                        v[a0 + tx] = q[0] - q[2];
                        v[a1 + tx] = q[1] + q[2];
                        v[a2 + tx] = q[2] - q[1];
                        v[a3 + tx] = q[1] - q[3];
                    }
                }
            }
        }
    }
}

/// Images per block: about `BLOCK_FLOATS` of transformed input, at least `MIN_BLOCK_TILES`
/// tiles, and enough blocks for every thread.
fn images_per_block([n, c, h, w]: Dims) -> usize {
    let tiles = (BLOCK_FLOATS / (16 * c)).max(MIN_BLOCK_TILES);
    let threads = rayon::current_num_threads().max(1);
    (tiles / (h / 2 * w / 2).max(1)).max(1).min(n.div_ceil(threads * 2).max(1))
}

/// Whether the maps can be tiled (even sides).
pub fn fits(h: usize, w: usize) -> bool {
    h % 2 == 0 && w % 2 == 0 && h > 0 && w > 0
}

/// The forward convolution `x [n, c, h, w]` by `wt [o, c, 3, 3]` → `[n, o, h, w]`; `h` and `w`
/// even.
pub fn forward(x: &[f32], wt: &[f32], [n, c, h, w]: Dims, o: usize) -> Vec<f32> {
    assert!(fits(h, w), "Winograd F(2×2, 3×3) needs even map sides, got {h}×{w}");
    let hw = h * w;
    assert_eq!(x.len(), n * c * hw, "conv3x3: input has the wrong size");
    assert_eq!(wt.len(), o * c * 9, "conv3x3: weight has the wrong size");
    let (th, tw) = (h / 2, w / 2);
    let tiles_per_image = th * tw;
    let u = transform_weights(wt, o, c);
    let per_block = images_per_block([n, c, h, w]);
    let mut out = vec![0.0f32; n * o * hw];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(per_block * o * hw).enumerate().for_each_init(
        || (Vec::new(), Vec::new(), Vec::new()),
        |(v, m, padded), (block, dst)| {
            let k = dst.len() / (o * hw);
            let t = k * tiles_per_image;
            transform_input(x, [n, c, h, w], block * per_block, k, v, padded);
            m.clear();
            m.resize(16 * o * t, 0.0);
            for xi in 0..16 {
                let (mx, ux, vx) = (&mut m[xi * o * t..][..o * t], &u[xi * o * c..][..o * c], &v[xi * c * t..][..c * t]);
                gemm([o, t, c], mx, [t, 1], false, ux, [c, 1], vx, [t, 1]);
            }
            // Aᵀ · A, again on runs of tiles: the 16 values of a tile row are contiguous runs
            // of M.
            for i in 0..k {
                for oc in 0..o {
                    let plane = &mut dst[(i * o + oc) * hw..][..hw];
                    for ty in 0..th {
                        let tile0 = i * tiles_per_image + ty * tw;
                        let run: [&[f32]; 16] = std::array::from_fn(|xi| &m[(xi * o + oc) * t + tile0..][..tw]);
                        let (top, bottom) = plane[2 * ty * w..][..2 * w].split_at_mut(w);
                        for tx in 0..tw {
                            let mut t0 = [0.0f32; 4];
                            let mut t1 = [0.0f32; 4];
                            for s in 0..4 {
                                t0[s] = run[s][tx] + run[4 + s][tx] + run[8 + s][tx];
                                t1[s] = run[4 + s][tx] - run[8 + s][tx] - run[12 + s][tx];
                            }
                            top[2 * tx] = t0[0] + t0[1] + t0[2];
                            top[2 * tx + 1] = t0[1] - t0[2] - t0[3];
                            bottom[2 * tx] = t1[0] + t1[1] + t1[2];
                            bottom[2 * tx + 1] = t1[1] - t1[2] - t1[3];
                        }
                    }
                }
            }
        },
    );
    out
}

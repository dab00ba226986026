//! The 3×3 / stride 1 / pad 1 convolution by Winograd's minimal filtering F(2×2, 3×3) (Lavin &
//! Gray, 2015): each 2×2 output tile is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` for its 4×4 input patch
//! `d`, so a tile takes 16 multiplies per (input, output) channel pair instead of 36. Across a
//! block of tiles the products are 16 GEMMs, `M_ξ (o × tiles) = U_ξ (o × c) · V_ξ (c × tiles)`,
//! one per position ξ of the 4×4 transformed tile: 2.25× fewer flops than the direct GEMMs of
//! `conv_kernels`, for the cost of transforming inputs and outputs (cheap when channels are
//! many). Used on flex for the forward and the input gradient of the wide layers.

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

/// `Bᵀ d B` of a 4×4 patch, Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]].
#[inline(always)]
fn transform_patch(d: [[f32; 4]; 4]) -> [f32; 16] {
    let mut t = [[0.0f32; 4]; 4];
    for s in 0..4 {
        t[0][s] = d[0][s] - d[2][s];
        t[1][s] = d[1][s] + d[2][s];
        t[2][s] = d[2][s] - d[1][s];
        t[3][s] = d[1][s] - d[3][s];
    }
    let mut v = [0.0f32; 16];
    for i in 0..4 {
        v[i * 4] = t[i][0] - t[i][2];
        v[i * 4 + 1] = t[i][1] + t[i][2];
        v[i * 4 + 2] = t[i][2] - t[i][1];
        v[i * 4 + 3] = t[i][1] - t[i][3];
    }
    v
}

/// `Aᵀ m A` of a transformed tile, Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]: the 2×2 output.
#[inline(always)]
fn output_tile(m: [f32; 16]) -> [[f32; 2]; 2] {
    let mut t = [[0.0f32; 4]; 2];
    for s in 0..4 {
        t[0][s] = m[s] + m[4 + s] + m[8 + s];
        t[1][s] = m[4 + s] - m[8 + s] - m[12 + s];
    }
    [[t[0][0] + t[0][1] + t[0][2], t[0][1] - t[0][2] - t[0][3]], [t[1][0] + t[1][1] + t[1][2], t[1][1] - t[1][2] - t[1][3]]]
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
    let tiles = (BLOCK_FLOATS / (16 * c)).max(MIN_BLOCK_TILES);
    let threads = rayon::current_num_threads().max(1);
    let per_block = (tiles / tiles_per_image).max(1).min(n.div_ceil(threads * 2).max(1));
    let mut out = vec![0.0f32; n * o * hw];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(per_block * o * hw).enumerate().for_each_init(
        || (Vec::new(), Vec::new(), Vec::new()),
        |(v, m, padded), (block, dst)| {
            let k = dst.len() / (o * hw);
            let t = k * tiles_per_image;
            // V_ξ[ci][tile]: every 4×4 patch of the zero-padded planes, transformed.
            v.clear();
            v.resize(16 * c * t, 0.0);
            padded.clear();
            padded.resize((h + 2) * (w + 2), 0.0);
            for i in 0..k {
                for ci in 0..c {
                    let src = &x[((block * per_block + i) * c + ci) * hw..][..hw];
                    for (y, row) in src.chunks(w).enumerate() {
                        padded[(y + 1) * (w + 2) + 1..][..w].copy_from_slice(row);
                    }
                    for ty in 0..th {
                        for tx in 0..tw {
                            let mut d = [[0.0f32; 4]; 4];
                            for (r, line) in d.iter_mut().enumerate() {
                                line.copy_from_slice(&padded[(2 * ty + r) * (w + 2) + 2 * tx..][..4]);
                            }
                            let tile = i * tiles_per_image + ty * tw + tx;
                            for (xi, val) in transform_patch(d).into_iter().enumerate() {
                                v[(xi * c + ci) * t + tile] = val;
                            }
                        }
                    }
                }
            }
            m.clear();
            m.resize(16 * o * t, 0.0);
            for xi in 0..16 {
                let (mx, ux, vx) = (&mut m[xi * o * t..][..o * t], &u[xi * o * c..][..o * c], &v[xi * c * t..][..c * t]);
                gemm([o, t, c], mx, [t, 1], false, ux, [c, 1], vx, [t, 1]);
            }
            for i in 0..k {
                for oc in 0..o {
                    let plane = &mut dst[(i * o + oc) * hw..][..hw];
                    for ty in 0..th {
                        for tx in 0..tw {
                            let tile = i * tiles_per_image + ty * tw + tx;
                            let mut mt = [0.0f32; 16];
                            for (xi, val) in mt.iter_mut().enumerate() {
                                *val = m[(xi * o + oc) * t + tile];
                            }
                            let y = output_tile(mt);
                            plane[2 * ty * w + 2 * tx..][..2].copy_from_slice(&y[0]);
                            plane[(2 * ty + 1) * w + 2 * tx..][..2].copy_from_slice(&y[1]);
                        }
                    }
                }
            }
        },
    );
    out
}

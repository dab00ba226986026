//! Batch construction and augmentation as tensor ops on the training device.
//!
//! Only a handful of integers per image are drawn on the host (crop offset, flip, CutOut
//! corner, from the run's seeded [`Rng`]); on a GPU the pixels never leave the device.
//! Reflect-pad, crop and flip are one index map per axis applied with two `gather`s, CutOut is
//! a mask built from `arange` comparisons. On the CPU backend [`batch`] does the same in one host pass. No
//! threads, no filesystem: the browser runs this same code.

use burn::config::Config;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::data::{IMAGE_BYTES, MEAN, STD};
use crate::error::ConfigError;
use crate::io::traffic::uploaded;
use crate::rng::Rng;

pub const SIDE: usize = 32;

#[derive(Config, Debug, PartialEq)]
pub struct AugmentConfig {
    /// Reflect padding before the random 32×32 crop (0 disables the crop).
    #[config(default = 4)]
    pub pad: usize,
    #[config(default = true)]
    pub flip: bool,
    /// Side of the CutOut square, filled with the dataset mean (0 disables it).
    #[config(default = 8)]
    pub cutout: usize,
}

impl AugmentConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.pad >= SIDE {
            return Err(ConfigError::new("pad", format!("must be < {SIDE}, got {}", self.pad)));
        }
        if self.cutout > SIDE {
            return Err(ConfigError::new("cutout", format!("must be <= {SIDE}, got {}", self.cutout)));
        }
        Ok(())
    }
}

/// The random choices for one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleAug {
    /// Crop offset into the padded image, each in `0..=2*pad`.
    pub dy: usize,
    pub dx: usize,
    pub flip: bool,
    /// Top-left corner of the CutOut square, chosen so the square lies inside the image
    /// (exactly cutout² pixels are erased).
    pub cut: Option<(usize, usize)>,
}

pub fn draw(config: &AugmentConfig, rng: &mut Rng, n: usize) -> Vec<SampleAug> {
    (0..n)
        .map(|_| SampleAug {
            dy: rng.below(2 * config.pad + 1),
            dx: rng.below(2 * config.pad + 1),
            flip: config.flip && rng.coin(),
            cut: (config.cutout > 0).then(|| {
                let span = SIDE - config.cutout + 1;
                (rng.below(span), rng.below(span))
            }),
        })
        .collect()
}

/// Index of the source pixel for output position `i` of a crop starting at `offset` in an
/// image reflect-padded by `pad` (PyTorch's `reflect`: the edge pixel is not repeated).
fn reflect(offset: usize, i: usize, pad: usize) -> usize {
    let p = (offset + i) as i64 - pad as i64;
    let last = SIDE as i64 - 1;
    let p = if p < 0 {
        -p
    } else if p > last {
        2 * last - p
    } else {
        p
    };
    p as usize
}

/// u8 CHW images (`n × 3072` bytes) → `[n, 3, 32, 32]` normalised with the CIFAR-10 mean/std,
/// computed on the host and uploaded once (see [`batch`]).
pub fn to_tensor(pixels: &[u8], device: &Device) -> Tensor<4> {
    host_tensor(pixels, None, device)
}

/// A training batch: [`augment`] of [`to_tensor`], computed in one pass over the bytes on the
/// host and uploaded once, on every device.
///
/// On the CPU backend the tensor ops (a broadcast normalisation, two `gather`s through
/// broadcast indices, a mask from a dozen comparisons) took 8.5 ms per batch of 128, 5 % of a
/// training step at width 0.25; the host pass takes under a millisecond (`cargo run --release
/// --example profile_ops`). On a GPU the same ops cost 7 uploads per step against 1
/// (`bench`'s counts, README).
pub fn batch(pixels: &[u8], params: &[SampleAug], config: &AugmentConfig, device: &Device) -> Tensor<4> {
    host_tensor(pixels, Some((params, config)), device)
}

/// [`batch`] (or [`to_tensor`] without augmentation) computed on the host, element by
/// element with the tensor path's arithmetic.
fn host_tensor(pixels: &[u8], aug: Option<(&[SampleAug], &AugmentConfig)>, device: &Device) -> Tensor<4> {
    assert_eq!(pixels.len() % IMAGE_BYTES, 0, "pixels must be whole {IMAGE_BYTES}-byte images");
    let n = pixels.len() / IMAGE_BYTES;
    if let Some((params, _)) = aug {
        assert_eq!(params.len(), n, "one SampleAug per image");
    }
    let identity: [usize; SIDE] = std::array::from_fn(|i| i);
    let mut out = Vec::with_capacity(pixels.len());
    for (b, image) in pixels.chunks_exact(IMAGE_BYTES).enumerate() {
        let (rows, cols, cut) = match aug {
            Some((params, config)) => {
                let p = &params[b];
                let rows = std::array::from_fn(|i| reflect(p.dy, i, config.pad));
                let cols = std::array::from_fn(|j| reflect(p.dx, if p.flip { SIDE - 1 - j } else { j }, config.pad));
                let cut =
                    p.cut.filter(|_| config.cutout > 0).map(|(y, x)| (y..y + config.cutout, x..x + config.cutout));
                (rows, cols, cut)
            }
            None => (identity, identity, None),
        };
        for (ch, plane) in image.chunks_exact(SIDE * SIDE).enumerate() {
            let (mean, std) = (MEAN[ch] * 255.0, STD[ch] * 255.0);
            for (i, &r) in rows.iter().enumerate() {
                let line = &plane[r * SIDE..][..SIDE];
                out.extend(cols.iter().enumerate().map(|(j, &c)| {
                    let erased = cut.as_ref().is_some_and(|(ys, xs)| ys.contains(&i) && xs.contains(&j));
                    // After normalisation the dataset mean is 0: CutOut's fill.
                    if erased { 0.0 } else { (line[c] as f32 - mean) / std }
                }));
            }
        }
    }
    uploaded(out.len() * 4);
    Tensor::from_data(TensorData::new(out, [n, 3, SIDE, SIDE]), device)
}

/// [`to_tensor`] as device ops: the reference the host pass is tested against
/// (`tests/integration/augment.rs`), and what GPUs ran before the host pass served them too.
pub fn normalised_by_ops(pixels: &[u8], device: &Device) -> Tensor<4> {
    let n = pixels.len() / IMAGE_BYTES;
    let floats: Vec<f32> = pixels.iter().map(|&p| p as f32).collect();
    uploaded(floats.len() * 4);
    let x = Tensor::<4>::from_data(TensorData::new(floats, [n, 3, SIDE, SIDE]), device);
    (0..2).for_each(|_| uploaded(3 * 4));
    let mean = Tensor::<1>::from_floats(MEAN.map(|m| m * 255.0), device).reshape([1, 3, 1, 1]);
    let std = Tensor::<1>::from_floats(STD.map(|s| s * 255.0), device).reshape([1, 3, 1, 1]);
    (x - mean) / std
}

/// Applies crop/flip/CutOut to a normalised batch; `params.len()` must equal the batch size.
pub fn augment(x: Tensor<4>, params: &[SampleAug], config: &AugmentConfig) -> Tensor<4> {
    let device = x.device();
    let [n, c, h, w] = x.dims();
    assert_eq!(params.len(), n, "one SampleAug per image");
    assert_eq!([h, w], [SIDE, SIDE], "augmentation expects 32×32 images");

    let mut rows = Vec::with_capacity(n * SIDE);
    let mut cols = Vec::with_capacity(n * SIDE);
    for p in params {
        rows.extend((0..SIDE).map(|i| reflect(p.dy, i, config.pad) as i64));
        cols.extend((0..SIDE).map(|j| {
            let j = if p.flip { SIDE - 1 - j } else { j };
            reflect(p.dx, j, config.pad) as i64
        }));
    }
    (0..2).for_each(|_| uploaded(rows.len() * 8));
    let rows = Tensor::<4, Int>::from_data(TensorData::new(rows, [n, 1, SIDE, 1]), &device);
    let cols = Tensor::<4, Int>::from_data(TensorData::new(cols, [n, 1, 1, SIDE]), &device);
    let x = x.gather(2, rows.expand([n, c, SIDE, SIDE]));
    let mut x = x.gather(3, cols.expand([n, c, SIDE, SIDE]));

    if config.cutout > 0 {
        let corners: Vec<(usize, usize)> = params.iter().map(|p| p.cut.unwrap_or((SIDE, SIDE))).collect();
        let keep = keep_mask(&corners, config.cutout, n, &device);
        // After normalisation the dataset mean is 0, so "fill with the mean" is a multiply.
        x = x * keep.expand([n, c, SIDE, SIDE]);
    }
    x
}

/// `[n, 1, 32, 32]`: 0 inside each image's CutOut square, 1 elsewhere. A corner of
/// `(32, 32)` erases nothing.
fn keep_mask(corners: &[(usize, usize)], size: usize, n: usize, device: &Device) -> Tensor<4> {
    let ys: Vec<f32> = corners.iter().map(|c| c.0 as f32).collect();
    let xs: Vec<f32> = corners.iter().map(|c| c.1 as f32).collect();
    let full = [n, 1, SIDE, SIDE];
    (0..2).for_each(|_| uploaded(n * 4));
    let y0 = Tensor::<4>::from_data(TensorData::new(ys, [n, 1, 1, 1]), device).expand(full);
    let x0 = Tensor::<4>::from_data(TensorData::new(xs, [n, 1, 1, 1]), device).expand(full);
    let coord = Tensor::<1, Int>::arange(0..SIDE as i64, device).float();
    let yy = coord.clone().reshape([1, 1, SIDE, 1]).expand(full);
    let xx = coord.reshape([1, 1, 1, SIDE]).expand(full);
    let inside = |v: Tensor<4>, start: Tensor<4>| {
        let ge = v.clone().greater_equal(start.clone()).float();
        let lt = v.lower(start.add_scalar(size as f32)).float();
        ge * lt
    };
    let erased = inside(yy, y0) * inside(xx, x0);
    erased.neg().add_scalar(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_matches_pytorch_reflect_padding() {
        // Padded row for pad 2 of [0..32): 2 1 | 0 1 2 ... 31 | 30 29
        assert_eq!(reflect(0, 0, 2), 2);
        assert_eq!(reflect(0, 1, 2), 1);
        assert_eq!(reflect(0, 2, 2), 0);
        assert_eq!(reflect(4, 31, 2), 29);
        assert_eq!(reflect(2, 5, 2), 5);
    }

    #[test]
    fn draw_stays_in_range_and_is_seeded() {
        let cfg = AugmentConfig::new();
        let a = draw(&cfg, &mut Rng::new(5), 500);
        assert_eq!(a, draw(&cfg, &mut Rng::new(5), 500));
        assert_ne!(a, draw(&cfg, &mut Rng::new(6), 500));
        assert!(a.iter().all(|p| p.dy <= 8 && p.dx <= 8));
        assert!(a.iter().all(|p| matches!(p.cut, Some((y, x)) if y <= 24 && x <= 24)));
        assert!(a.iter().any(|p| p.flip) && a.iter().any(|p| !p.flip));
        assert!(a.iter().any(|p| p.dy == 0) && a.iter().any(|p| p.dy == 8));
    }
}

//! Augmentation properties against a plain host implementation of pad/crop/flip/CutOut.

use burn::tensor::Tensor;
use cifar_core::data::augment::{AugmentConfig, SampleAug, augment, batch, draw, normalised_by_ops, to_tensor};
use cifar_core::rng::Rng;

use crate::common::{flex, synthetic};

fn host(t: Tensor<4>) -> (Vec<f32>, [usize; 4]) {
    let dims = t.dims();
    (t.into_data().try_into_vec::<f32>().unwrap(), dims)
}

fn px(v: &[f32], n: usize, c: usize, y: usize, x: usize) -> f32 {
    v[((n * 3 + c) * 32 + y) * 32 + x]
}

/// Reference: reflect-pad by 4 (PyTorch `reflect`), so padded coordinate p maps to source r(p).
fn r(p: i64) -> usize {
    let p = p - 4;
    (if p < 0 {
        -p
    } else if p > 31 {
        62 - p
    } else {
        p
    }) as usize
}

const NONE: SampleAug = SampleAug { dy: 4, dx: 4, flip: false, cut: None };

#[test]
fn crop_is_a_shift_of_the_reflect_padded_image() {
    let data = synthetic(3, 1);
    let cfg = AugmentConfig::new().with_cutout(0);
    let x = to_tensor(&data.images, &flex());
    let (src, _) = host(x.clone());
    let params =
        [SampleAug { dy: 0, dx: 8, ..NONE }, SampleAug { dy: 8, dx: 0, ..NONE }, SampleAug { dy: 3, dx: 5, ..NONE }];
    let (out, dims) = host(augment(x, &params, &cfg));
    assert_eq!(dims, [3, 3, 32, 32]);
    for (n, p) in params.iter().enumerate() {
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    let want = px(&src, n, c, r((p.dy + y) as i64), r((p.dx + x) as i64));
                    assert_eq!(px(&out, n, c, y, x), want, "image {n} c {c} y {y} x {x}");
                }
            }
        }
    }
}

#[test]
fn flip_mirrors_and_centre_crop_is_identity() {
    let data = synthetic(2, 2);
    let cfg = AugmentConfig::new().with_cutout(0);
    let x = to_tensor(&data.images, &flex());
    let (src, _) = host(x.clone());
    let params = [NONE, SampleAug { flip: true, ..NONE }];
    let (out, _) = host(augment(x, &params, &cfg));
    for c in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                assert_eq!(px(&out, 0, c, y, x), px(&src, 0, c, y, x));
                assert_eq!(px(&out, 1, c, y, x), px(&src, 1, c, y, 31 - x));
            }
        }
    }
}

#[test]
fn cutout_erases_exactly_an_8x8_square_to_the_mean() {
    let data = synthetic(2, 3);
    let cfg = AugmentConfig::new();
    let x = to_tensor(&data.images, &flex());
    let (src, _) = host(x.clone());
    let params = [SampleAug { cut: Some((0, 24)), ..NONE }, SampleAug { cut: Some((10, 3)), ..NONE }];
    let (out, _) = host(augment(x, &params, &cfg));
    for (n, p) in params.iter().enumerate() {
        let (cy, cx) = p.cut.unwrap();
        let mut erased = 0;
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    let inside = (cy..cy + 8).contains(&y) && (cx..cx + 8).contains(&x);
                    let v = px(&out, n, c, y, x);
                    if inside {
                        // 0 after normalisation is the dataset mean.
                        assert_eq!(v, 0.0, "image {n} ({y},{x}) not erased");
                        erased += 1;
                    } else {
                        assert_eq!(v, px(&src, n, c, y, x), "image {n} ({y},{x}) changed");
                    }
                }
            }
        }
        assert_eq!(erased, 3 * 64);
    }
}

#[test]
fn normalisation_uses_the_cifar10_mean_and_std() {
    let pixels = vec![255u8; 3072];
    let (v, _) = host(to_tensor(&pixels, &flex()));
    let expected = [(1.0 - 0.4914) / 0.2470, (1.0 - 0.4822) / 0.2435, (1.0 - 0.4465) / 0.2616];
    for (c, want) in expected.iter().enumerate() {
        assert!((px(&v, 0, c, 5, 5) - want).abs() < 1e-4);
    }
}

#[test]
fn augmentation_is_reproducible_from_the_seed() {
    let data = synthetic(8, 4);
    let cfg = AugmentConfig::new();
    let run = |seed| {
        let params = draw(&cfg, &mut Rng::new(seed), 8);
        host(augment(to_tensor(&data.images, &flex()), &params, &cfg)).0
    };
    assert_eq!(run(11), run(11));
    assert_ne!(run(11), run(12));
}

#[test]
fn host_batch_matches_the_tensor_ops() {
    // `batch` and `to_tensor` build CPU batches on the host; `augment(normalised_by_ops(..))`
    // is the tensor-op path GPUs take.
    let data = synthetic(24, 5);
    let (ours, ops) = (host(to_tensor(&data.images, &flex())), host(normalised_by_ops(&data.images, &flex())));
    assert_eq!((ours.0, ours.1), (ops.0, ops.1));
    let configs = [
        AugmentConfig::new(),
        AugmentConfig::new().with_pad(0),
        AugmentConfig::new().with_flip(false).with_cutout(0),
        AugmentConfig::new().with_pad(7).with_cutout(32),
        AugmentConfig::new().with_cutout(1),
    ];
    for (k, cfg) in configs.iter().enumerate() {
        let params = draw(cfg, &mut Rng::new(k as u64), 24);
        let ours = host(batch(&data.images, &params, cfg, &flex()));
        let ops = host(augment(normalised_by_ops(&data.images, &flex()), &params, cfg));
        assert_eq!(ours.1, ops.1);
        // CutOut multiplies by 0 there, so the tensor path's zeros may be −0.
        assert!(ours.0.iter().zip(&ops.0).all(|(a, b)| a == b), "config {k}: {cfg:?}");
    }
}

//! Where a GPU's training step goes, measured the ways this project measures it, side by side.
//!
//! `cargo run --release --example gpu_probe -- [wgpu|flex] [width] [batch]`
//!
//! On the H100 `bench` timed inference at 117,000 img/s (width 1, batch 512: 89 TFLOP/s, above
//! the card's fp32 peak) while `profile_ops` timed the same forward pass at 209 ms per batch.
//! Each phase here runs 3 untimed calls, then 5 calls each followed by `device.sync()`, and
//! prints the wall time per call (min and median). With `CUBECL_DEBUG_OPTION=profile` (and a
//! `cubecl.toml` naming a log file) CubeCL also logs each kernel's time; the log is flushed at
//! every sync, so each phase's kernels come out as one block.

use std::time::Instant;

use burn::module::Module;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Device, Distribution, Tensor};
use cifar_core::io::readback;
use cifar_core::model::ModelConfig;
use cifar_core::model::gpu_conv::{chunk_images, conv3x3 as conv3x3_gemm, half_matmul, im2col3x3};
use cifar_core::model::ops::{GpuConvPath, set_gpu_conv_path};
use cifar_core::train::{Trainer, TrainingConfig, predict};
use cifar_webgpu::backend::{self, Backend};

fn phase(name: &str, device: &Device, images: usize, mut f: impl FnMut()) {
    for _ in 0..3 {
        f();
    }
    let _ = device.sync();
    eprintln!("=== phase: {name}");
    let mut ms = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        f();
        let _ = device.sync();
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    println!(
        "{name:<58} min {:>8.2} ms  median {:>8.2} ms  ({:>9.0} img/s at the min)",
        ms[0],
        ms[2],
        images as f64 / ms[0] * 1000.0
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kind = match args.get(1).map(String::as_str) {
        Some("flex") => Backend::Flex,
        _ => Backend::Wgpu,
    };
    let width: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(512);
    let plain = backend::device(kind).expect("device");
    let ad = plain.clone().autodiff();
    println!("{kind:?} width {width} batch {n}: wall ms per call, synced");

    let pixels: Vec<u8> = (0..n * 3072).map(|i| (i * 7 % 251) as u8).collect();
    let labels: Vec<i64> = (0..n as i64).map(|i| i % 10).collect();
    let half = GpuConvPath::GemmF16.supported_on(&plain);
    for path in GpuConvPath::ALL.into_iter().filter(|p| p.supported_on(&plain)) {
        set_gpu_conv_path(path);
        let p = path.name();
        let config = TrainingConfig::new(ModelConfig::new().with_width(width)).with_batch_size(n).with_epochs(1);
        let mut trainer = Trainer::new(config, &plain, n).expect("trainer");
        phase(&format!("[{p}] training step (Trainer::step_on, loss read back)"), &plain, n, || {
            let _ = trainer.step_on(&pixels, &labels, 1e-3, 0.9).0.into_scalar::<f32>();
        });
        let model = trainer.model.clone();
        let valid = model.valid();
        phase(&format!("[{p}] inference (predict + read-back)"), &plain, n, || {
            let probs = predict(&valid, &pixels, &plain, false);
            let _ = pollster::block_on(readback::f32s(probs));
        });
        let xa = Tensor::<4>::random([n, 3, 32, 32], Distribution::Normal(0.0, 1.0), &ad);
        phase(&format!("[{p}] training-mode forward only"), &plain, n, || {
            let _ = model.forward(xa.clone()).sum().into_scalar::<f32>();
        });
    }

    let [c0, c1, _, c3] = ModelConfig::new().with_width(width).channels();
    let opts = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    for (ci, co, side) in [(c0, c1, 32), (c3, c3, 4)] {
        let x = Tensor::<4>::random([n, ci, side, side], Distribution::Normal(0.0, 1.0), &plain);
        let w = Tensor::<4>::random([co, ci, 3, 3], Distribution::Normal(0.0, 0.1), &plain);
        let name = format!("conv2d alone {ci}->{co} at {side}x{side}, forward");
        let gflop = 2.0 * (n * co * ci * 9 * side * side) as f64 / 1e9;
        phase(&name, &plain, n, || {
            let _ = conv2d(x.clone(), w.clone(), None, opts.clone()).sum().into_scalar::<f32>();
        });
        println!("{:<58} {gflop:.3} GFLOP per call", "");
        let name = "  GEMMs over im2col chunks (model::gpu_conv)";
        phase(name, &plain, n, || {
            let _ = conv3x3_gemm(x.clone(), w.clone(), false).sum().into_scalar::<f32>();
        });
        if half {
            phase("  the same in f16 (f16 im2col and weights, f32 sums)", &plain, n, || {
                let _ = conv3x3_gemm(x.clone(), w.clone(), true).sum().into_scalar::<f32>();
            });
        }
        // The im2col matrices alone, chunk by chunk as the forward builds them; the first
        // element read back, so that nothing is left unexecuted.
        let chunk = chunk_images(ci, side, side);
        let chunks = move || (0..n).step_by(chunk).map(move |s| (s, chunk.min(n - s)));
        phase("  its im2col chunks, one kernel each (model::gpu_im2col)", &plain, n, || {
            for (s, m) in chunks() {
                let _ = im2col3x3(x.clone(), s, m, false).slice([0..1, 0..1]).into_scalar::<f32>();
            }
        });
        if half {
            phase("  its im2col chunks in f16, one kernel each", &plain, n, || {
                for (s, m) in chunks() {
                    let _ = im2col3x3(x.clone(), s, m, true).slice([0..1, 0..1]).cast(DType::F32).into_scalar::<f32>();
                }
            });
        }
        // On an autodiff device the extension runs its default body, the tensor ops the
        // forward used before the kernel (padded NHWC copy, nine shifted slices, a concatenation).
        let x_ad = Tensor::<4>::from_data(x.clone().into_data(), &ad);
        phase("  its im2col chunks as tensor ops (pad, 9 slices, cat)", &plain, n, || {
            for (s, m) in chunks() {
                let _ = im2col3x3(x_ad.clone(), s, m, false).slice([0..1, 0..1]).into_scalar::<f32>();
            }
        });
        let a = Tensor::<2>::random([n * side * side, ci * 9], Distribution::Normal(0.0, 1.0), &plain);
        let b = Tensor::<2>::random([ci * 9, co], Distribution::Normal(0.0, 0.1), &plain);
        phase("  the GEMM alone (matmul of the im2col shape)", &plain, n, || {
            let _ = a.clone().matmul(b.clone()).sum().into_scalar::<f32>();
        });
        if half {
            let a = a.clone().cast(DType::F16);
            phase("  the same GEMM, f16 operands, f32 sums (gpu_conv::half_matmul)", &plain, n, || {
                let _ = half_matmul(a.clone(), b.clone()).sum().into_scalar::<f32>();
            });
        }
        let diff =
            (conv2d(x.clone(), w.clone(), None, opts.clone()) - conv3x3_gemm(x.clone(), w.clone(), false)).abs().max();
        println!("{:<58} max |conv2d - im2col GEMM| = {:e}", "", diff.into_scalar::<f32>());
        let xa = x.clone().detach();
        let xa = Tensor::<4>::from_data(xa.into_data(), &ad).require_grad();
        let wa = Tensor::<4>::from_data(w.clone().into_data(), &ad).require_grad();
        phase("  conv2d forward + backward (dx, dw)", &plain, n, || {
            let g = conv2d(xa.clone(), wa.clone(), None, opts.clone()).sum().backward();
            let _ = (xa.grad(&g).unwrap().sum() + wa.grad(&g).unwrap().sum()).into_scalar::<f32>();
        });
        phase("  im2col GEMM forward + backward (dx, dw)", &plain, n, || {
            let g = conv3x3_gemm(xa.clone(), wa.clone(), false).sum().backward();
            let _ = (xa.grad(&g).unwrap().sum() + wa.grad(&g).unwrap().sum()).into_scalar::<f32>();
        });
        if half {
            phase("  the same in f16 (backward: scaled dy, f16 GEMMs)", &plain, n, || {
                let g = conv3x3_gemm(xa.clone(), wa.clone(), true).sum().backward();
                let _ = (xa.grad(&g).unwrap().sum() + wa.grad(&g).unwrap().sum()).into_scalar::<f32>();
            });
        }
    }
}

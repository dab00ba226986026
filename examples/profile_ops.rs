//! Where a training step's time goes, op by op, at the network's real shapes.
//!
//! `cargo run --release --example profile_ops -- [flex|wgpu] [width] [batch] [f32|bf16]`
//!
//! Each op runs forward + backward (autodiff) on its own, repeated; the table lists ms per
//! call summed over the layers that use it, so the rows add up to roughly one step.

use std::time::Instant;

use burn::module::Module;
use burn::tensor::module::{batch_norm_train, conv2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};
use cifar_core::model::ModelConfig;
use cifar_webgpu::backend::{self, Backend};

/// As the binary allocates (src/memory.rs): without the cache of large blocks every op's
/// output is page-faulted in again, which the training loop does not pay.
#[global_allocator]
static ALLOCATOR: cifar_webgpu::memory::CachingAllocator = cifar_webgpu::memory::CachingAllocator;

fn time(reps: usize, device: &Device, mut f: impl FnMut() -> Tensor<1>) -> f64 {
    // Three untimed calls: kernel compilation and autotuning of this shape happen there.
    for _ in 0..3 {
        let _ = f().into_scalar::<f32>();
    }
    let t = Instant::now();
    let mut acc = Vec::new();
    for _ in 0..reps {
        acc.push(f());
    }
    let _ = Tensor::cat(acc, 0).sum().into_scalar::<f32>();
    let _ = device.sync();
    t.elapsed().as_secs_f64() * 1000.0 / reps as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let backend = match args.get(1).map(String::as_str) {
        Some("wgpu") => Backend::Wgpu,
        _ => Backend::Flex,
    };
    let width: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0.25);
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(128);
    let precision = match args.get(4).map(String::as_str) {
        Some("bf16") => flex_kernels::Precision::Bf16,
        _ => flex_kernels::Precision::F32,
    };
    flex_kernels::precision::set(precision).unwrap();
    let reps = 5;
    let plain = backend::device(backend).unwrap();
    let ad = plain.clone().autodiff();
    let [c0, c1, c2, c3] = ModelConfig::new().with_width(width).channels();
    // (c_in, c_out, side, pooled): the 8 conv blocks in forward order.
    let layers = [
        (3, c0, 32, false),
        (c0, c1, 32, true),
        (c1, c1, 16, false),
        (c1, c1, 16, false),
        (c1, c2, 16, true),
        (c2, c3, 8, true),
        (c3, c3, 4, false),
        (c3, c3, 4, false),
    ];
    let opts = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let mut rows: Vec<(&str, f64, f64)> = Vec::new();
    let mut add = |name: &'static str, fwd: f64, both: f64| match rows.iter_mut().find(|r| r.0 == name) {
        Some(r) => {
            r.1 += fwd;
            r.2 += both;
        }
        None => rows.push((name, fwd, both)),
    };
    for &(ci, co, side, pooled) in &layers {
        let x = Tensor::<4>::random([n, ci, side, side], Distribution::Normal(0.0, 1.0), &ad).require_grad();
        let w = Tensor::<4>::random([co, ci, 3, 3], Distribution::Normal(0.0, 0.1), &ad).require_grad();
        let fwd = time(reps, &plain, || {
            let y = conv2d(x.clone().inner(), w.clone().inner(), None, opts.clone());
            y.sum()
        });
        let both = time(reps, &plain, || {
            let y = conv2d(x.clone(), w.clone(), None, opts.clone());
            let g = y.sum().backward();
            w.grad(&g).unwrap().sum()
        });
        add("conv 3x3", fwd, both);
        let xc = x.clone().inner();
        let dw = time(reps, &plain, || {
            let y = conv2d(xc.clone(), w.clone(), None, opts.clone());
            let g = y.sum().backward();
            w.grad(&g).unwrap().sum()
        });
        add("  conv fwd+dw only", 0.0, dw);
        let wc = w.clone().inner();
        let dx = time(reps, &plain, || {
            let y = conv2d(x.clone(), wc.clone(), None, opts.clone());
            let g = y.sum().backward();
            x.grad(&g).unwrap().sum()
        });
        add("  conv fwd+dx only", 0.0, dx);
        if flex_kernels::applies(&plain) {
            let fwd_ours = time(reps, &plain, || flex_kernels::conv3x3(x.clone().inner(), w.clone().inner()).sum());
            let both = time(reps, &plain, || {
                let y = flex_kernels::conv3x3(x.clone(), w.clone());
                let g = y.sum().backward();
                w.grad(&g).unwrap().sum() + x.grad(&g).unwrap().sum()
            });
            add("  ours (cpu_ops)  ", fwd_ours, both);
            if std::env::var_os("PROFILE_CONV").is_some() {
                // Each of our three kernels alone on host data, against Burn's (by difference).
                use flex_kernels::conv;
                let host = |t: Tensor<4>| t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
                let dyt = Tensor::<4>::random([n, co, side, side], Distribution::Normal(0.0, 1.0), &plain);
                let (xh, wh, dyh) = (host(x.clone().inner()), host(w.clone().inner()), host(dyt));
                let dims = [n, ci, side, side];
                let ms = |f: &dyn Fn() -> Vec<f32>| {
                    let t = Instant::now();
                    for _ in 0..reps {
                        std::hint::black_box(f());
                    }
                    t.elapsed().as_secs_f64() * 1000.0 / reps as f64
                };
                let gf = |ms: f64| 2.0 * (co * ci * 9 * n * side * side) as f64 / ms / 1e6;
                let (f, dx_, dw_) = (
                    ms(&|| conv::forward(precision, &xh, &wh, dims, co)),
                    ms(&|| conv::input_grad(precision, &dyh, &wh, dims, co)),
                    ms(&|| conv::weight_grad(precision, &xh, &dyh, dims, co)),
                );
                eprintln!(
                    "{ci:>4}->{co:<4} at {side:>2}: ours fwd {f:6.1} ({:3.0} GF/s) dx {dx_:6.1} ({:3.0}) dw {dw_:6.1} ({:3.0}) | Burn fwd {fwd:6.1} dx {:6.1} dw {:6.1}",
                    gf(f),
                    gf(dx_),
                    gf(dw_),
                    dx - fwd,
                    dw - fwd
                );
            }
        }

        let out_side = if pooled { side / 2 } else { side };
        let y = Tensor::<4>::random([n, co, side, side], Distribution::Normal(0.0, 1.0), &ad).require_grad();
        let pool = burn::nn::pool::MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init();
        if pooled {
            let fwd = time(reps, &plain, || pool.forward(y.clone().inner()).sum());
            let both = time(reps, &plain, || {
                let g = pool.forward(y.clone()).sum().backward();
                y.grad(&g).unwrap().sum()
            });
            add("max pool 2", fwd, both);
            if flex_kernels::applies(&plain) {
                let fwd = time(reps, &plain, || flex_kernels::max_pool2(y.clone().inner()).sum());
                let both = time(reps, &plain, || {
                    let g = flex_kernels::max_pool2(y.clone()).sum().backward();
                    y.grad(&g).unwrap().sum()
                });
                add("  ours (cpu_ops)", fwd, both);
            }
        }
        let z = Tensor::<4>::random([n, co, out_side, out_side], Distribution::Normal(0.0, 1.0), &ad).require_grad();
        let gamma = Tensor::<1>::ones([co], &ad).require_grad();
        let beta = Tensor::<1>::zeros([co], &ad).require_grad();
        let both = time(reps, &plain, || {
            let out = batch_norm_train(z.clone(), gamma.clone(), beta.clone(), 1e-5);
            let g = out.output.sum().backward();
            z.grad(&g).unwrap().sum()
        });
        add("batch norm (train)", 0.0, both);
        let bn = cifar_core::model::batchnorm::BatchNorm::new(co, &ad);
        let both = time(reps, &plain, || {
            let g = bn.forward(z.clone()).sum().backward();
            z.grad(&g).unwrap().sum()
        });
        add("  ours: BatchNorm", 0.0, both);
        if flex_kernels::applies(&plain) {
            use flex_kernels::{batch_norm_relu_dropout, batch_stats};
            let both = time(reps, &plain, || {
                let stats = batch_stats(z.clone().detach());
                let out = batch_norm_relu_dropout(
                    z.clone(),
                    gamma.clone(),
                    beta.clone(),
                    stats,
                    1e-5,
                    std::env::var("PROFILE_DROP").ok().and_then(|v| v.parse().ok()).unwrap_or(0.05),
                );
                let g = out.sum().backward();
                z.grad(&g).unwrap().sum()
            });
            add("  ours: BN+ReLU+dropout", 0.0, both);
        }
        let both = time(reps, &plain, || {
            let r = burn::tensor::activation::relu(z.clone());
            let g = r.sum().backward();
            z.grad(&g).unwrap().sum()
        });
        add("relu", 0.0, both);
        let drop = cifar_core::model::dropout::Dropout::new(0.05);
        let both = time(reps, &plain, || {
            let r = drop.forward(z.clone());
            let g = r.sum().backward();
            z.grad(&g).unwrap().sum()
        });
        add("dropout 0.05", 0.0, both);
    }
    {
        use cifar_core::data::augment::{AugmentConfig, augment, batch, draw, normalised_by_ops};
        let pixels: Vec<u8> = (0..n * 3072).map(|i| (i * 7 % 251) as u8).collect();
        let config = AugmentConfig::new();
        let params = draw(&config, &mut cifar_core::rng::Rng::new(1), n);
        let ops = time(reps, &plain, || augment(normalised_by_ops(&pixels, &ad), &params, &config).sum().reshape([1]));
        add("batch + augment (ops)", ops, ops);
        let ours = time(reps, &plain, || batch(&pixels, &params, &config, &ad).sum().reshape([1]));
        add("  host pass (CPU)", ours, ours);
    }
    let model = ModelConfig::new().with_width(width).init(&ad).train();
    let x = Tensor::<4>::random([n, 3, 32, 32], Distribution::Normal(0.0, 1.0), &ad);
    let fwd = time(reps, &plain, || model.valid().forward(x.clone().inner()).sum().reshape([1]));
    let both = time(reps, &plain, || {
        let g = model.forward(x.clone()).sum().backward();
        model.prep.conv.weight.val().grad(&g).unwrap().sum()
    });
    // The whole training step (augmentation, forward, backward, Adam), as `bench` runs it.
    let step = {
        use cifar_core::train::{Trainer, TrainingConfig};
        let config = TrainingConfig::new(ModelConfig::new().with_width(width)).with_batch_size(n).with_epochs(1);
        let pixels: Vec<u8> = (0..n * 3072).map(|i| (i * 7 % 251) as u8).collect();
        let labels: Vec<i64> = (0..n as i64).map(|i| i % 10).collect();
        let mut trainer = Trainer::new(config, &plain, n).unwrap();
        for _ in 0..3 {
            let _ = trainer.step_on(&pixels, &labels, 1e-3, 0.9).0.into_scalar::<f32>();
        }
        let t = Instant::now();
        let mut last = None;
        for _ in 0..reps {
            last = Some(trainer.step_on(&pixels, &labels, 1e-3, 0.9).0);
        }
        let _ = last.map(|l| l.into_scalar::<f32>());
        t.elapsed().as_secs_f64() * 1000.0 / reps as f64
    };
    println!("{backend} width {width} batch {n}: ms per step (forward, forward+backward)");
    for (name, f, b) in &rows {
        println!("{name:<20} {f:>9.1} {b:>9.1}");
    }
    let total: f64 = rows.iter().filter(|r| !r.0.starts_with(' ')).map(|r| r.2).sum();
    println!("{:<20} {:>9} {total:>9.1}", "sum of ops", "");
    println!("{:<20} {fwd:>9.1} {both:>9.1}", "whole model");
    println!("{:<20} {:>9} {step:>9.1}", "training step", "");
}

//! Forward + backward time of BatchNorm formulations at the network's BN shapes (width 1,
//! batch 512), Burn's `batch_norm_train` beside the sums `src/batchnorm.rs` could use: how its
//! formulation was chosen (README, "On a real GPU").
//!
//! `cargo run --release --example bn_variants -- [flex|wgpu]`
use std::time::Instant;

use burn::tensor::{Distribution, Tensor};
use cifar_webgpu::backend::{self, Backend};

fn time(reps: usize, mut f: impl FnMut() -> Tensor<1>) -> f64 {
    let _ = f().into_scalar::<f32>();
    let _ = f().into_scalar::<f32>();
    let t = Instant::now();
    let mut acc = Vec::new();
    for _ in 0..reps {
        acc.push(f());
    }
    let _ = Tensor::cat(acc, 0).sum().into_scalar::<f32>();
    t.elapsed().as_secs_f64() * 1000.0 / reps as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let backend = if args.get(1).map(String::as_str) == Some("wgpu") { Backend::Wgpu } else { Backend::Flex };
    let plain = backend::device(backend).unwrap();
    let ad = plain.clone().autodiff();
    for [b, c, h, w] in [[512, 64, 32, 32], [512, 128, 16, 16], [512, 256, 8, 8], [512, 512, 4, 4]] {
        let z = Tensor::<4>::random([b, c, h, w], Distribution::Normal(0.3, 1.0), &ad).require_grad();
        let gamma = Tensor::<1>::ones([c], &ad).require_grad();
        let beta = Tensor::<1>::zeros([c], &ad).require_grad();
        let n = (b * h * w) as f64;
        let run = |f: &dyn Fn(Tensor<4>) -> Tensor<4>| {
            time(5, || {
                let g = f(z.clone()).sum().backward();
                z.grad(&g).unwrap().sum() + gamma.grad(&g).unwrap().sum()
            })
        };
        let burn_op = run(&|x| burn::tensor::module::batch_norm_train(x, gamma.clone(), beta.clone(), 1e-5).output);
        let finish = |centered: Tensor<4>, var: Tensor<4>| {
            centered * (var.add_scalar(1e-5).sqrt().recip() * gamma.clone().reshape([1, c, 1, 1]))
                + beta.clone().reshape([1, c, 1, 1])
        };
        // Mean, then the variance of the centred values, each with the given per-channel mean.
        let two_pass = |x: Tensor<4>, per: &dyn Fn(Tensor<4>) -> Tensor<4>| {
            let cen = x.clone() - per(x);
            let var = per(cen.clone() * cen.clone());
            finish(cen, var)
        };
        let by_plane =
            |t: Tensor<4>| t.reshape([b, c, h * w]).sum_dim(2).sum_dim(0).reshape([1, c, 1, 1]).div_scalar(n);
        let a = run(&|x| two_pass(x, &|t| t.sum_dim(3).sum_dim(2).sum_dim(0).div_scalar(n)));
        let bv = run(&|x| two_pass(x, &by_plane));
        let cv = run(&|x| {
            let mean = by_plane(x.clone());
            let var = by_plane(x.clone() * x.clone()) - mean.clone() * mean.clone();
            finish(x - mean, var)
        });
        let dv = run(&|x| two_pass(x, &|t| t.reshape([b, c, h * w]).mean_dim(2).mean_dim(0).reshape([1, c, 1, 1])));
        println!(
            "{:?}: burn batch_norm_train {burn_op:.1} ms | W,H,B sums {a:.1} | [b,c,hw] sums {bv:.1} | one-pass E[x²]-m² {cv:.1} | [b,c,hw] means {dv:.1}",
            [b, c, h, w]
        );
    }
}

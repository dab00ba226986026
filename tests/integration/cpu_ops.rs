//! The flex-only kernels of `cpu_ops` against Burn's generic ops on the same device: values and
//! gradients, on shapes unlike the network's (odd sides, 3 channels, 1×1 maps) and on both of
//! the conv weight-gradient paths (large maps: one GEMM; small maps: Burn's).

use burn::tensor::module::{batch_norm_train, conv2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};
use cifar_webgpu::cpu_ops;

use crate::common::{rel_diff, rng_lock, values};

#[track_caller]
fn close(what: &str, got: Vec<f32>, want: Vec<f32>) {
    assert_eq!(got.len(), want.len(), "{what}");
    let d = rel_diff(&got, &want);
    assert!(d < 1e-4, "{what}: differs from Burn's op by {d:.2e} (relative)");
}

fn input(shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::random(shape, Distribution::Normal(0.5, 2.0), device).require_grad()
}

#[test]
fn batch_norm_matches_burn_forward_and_backward() {
    let device = Device::flex().autodiff();
    // The inputs come from the backend RNG: seeded, and ours while we draw them.
    let _rng = rng_lock();
    device.seed(1);
    assert!(cpu_ops::applies(&device));
    for shape in [[4, 3, 5, 7], [3, 6, 1, 1], [16, 8, 4, 4]] {
        let x = input(shape, &device);
        let c = shape[1];
        let gamma = Tensor::<1>::random([c], Distribution::Uniform(0.5, 1.5), &device).require_grad();
        let beta = Tensor::<1>::random([c], Distribution::Uniform(-0.5, 0.5), &device).require_grad();
        // Weight the output so the gradient is not the trivial one of a plain sum.
        let r = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);

        let theirs = batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5);
        let stats = cpu_ops::batch_stats(x.clone().detach());
        close("mean", values(stats.clone().slice([0..1, 0..c])), values(theirs.mean.clone().inner()));
        close("variance", values(stats.clone().slice([1..2, 0..c])), values(theirs.variance.clone().inner()));
        let ours = cpu_ops::batch_norm(x.clone(), gamma.clone(), beta.clone(), stats, 1e-5);
        close("output", values(ours.clone().inner()), values(theirs.output.clone().inner()));

        let g_ours = (ours * r.clone()).sum().backward();
        let g_theirs = (theirs.output * r).sum().backward();
        close(&format!("dx {shape:?}"), values(x.grad(&g_ours).unwrap()), values(x.grad(&g_theirs).unwrap()));
        close("dgamma", values(gamma.grad(&g_ours).unwrap()), values(gamma.grad(&g_theirs).unwrap()));
        close("dbeta", values(beta.grad(&g_ours).unwrap()), values(beta.grad(&g_theirs).unwrap()));
    }
}

#[test]
fn max_pool_matches_burn_forward_and_backward() {
    let device = Device::flex().autodiff();
    let _rng = rng_lock();
    device.seed(2);
    let pool = burn::nn::pool::MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init();
    for shape in [[2, 3, 6, 8], [1, 4, 5, 7], [3, 2, 2, 2]] {
        let x = input(shape, &device);
        let r = Tensor::<4>::random([shape[0], shape[1], shape[2] / 2, shape[3] / 2], Distribution::Normal(0.0, 1.0), &device);
        let ours = cpu_ops::max_pool2(x.clone());
        let theirs = pool.forward(x.clone());
        close("pooled", values(ours.clone().inner()), values(theirs.clone().inner()));
        let g_ours = (ours * r.clone()).sum().backward();
        let g_theirs = (theirs * r).sum().backward();
        close("pool dx", values(x.grad(&g_ours).unwrap()), values(x.grad(&g_theirs).unwrap()));
    }
}

#[test]
fn conv3x3_matches_burn_on_both_weight_gradient_paths() {
    let device = Device::flex().autodiff();
    let _rng = rng_lock();
    device.seed(3);
    let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    // 20×18 (360 pixels) takes the single-GEMM weight gradient, 6×5 Burn's.
    for (shape, out) in [([3, 3, 20, 18], 5), ([4, 6, 6, 5], 7), ([70, 2, 16, 16], 3)] {
        let x = input(shape, &device);
        let w = Tensor::<4>::random([out, shape[1], 3, 3], Distribution::Normal(0.0, 0.3), &device).require_grad();
        let ours = cpu_ops::conv3x3(x.clone(), w.clone());
        let theirs = conv2d(x.clone(), w.clone(), None, options.clone());
        close("conv output", values(ours.clone().inner()), values(theirs.clone().inner()));
        let r = Tensor::<4>::random(theirs.dims(), Distribution::Normal(0.0, 1.0), &device);
        let g_ours = (ours * r.clone()).sum().backward();
        let g_theirs = (theirs * r).sum().backward();
        close("conv dw", values(w.grad(&g_ours).unwrap()), values(w.grad(&g_theirs).unwrap()));
        close("conv dx", values(x.grad(&g_ours).unwrap()), values(x.grad(&g_theirs).unwrap()));
    }
}

//! The flex-only kernels of `cpu_ops` against Burn's generic ops on the same device: values and
//! gradients, on shapes unlike the network's (odd sides, 3 channels, 1×1 maps): the fused
//! BatchNorm → ReLU → dropout, pooling, and both layouts of the conv kernels (`Plan::Rows` on
//! maps of 256 pixels and more, `Plan::Taps` below) and Winograd.

use burn::tensor::activation::relu;
use burn::tensor::module::{batch_norm_train, conv2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use flex_kernels as cpu_ops;
use flex_kernels::mask as dropout;

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
fn batch_norm_relu_dropout_matches_burn_forward_and_backward() {
    let device = Device::flex().autodiff();
    // The inputs come from the backend RNG: seeded, and ours while we draw them.
    let _rng = rng_lock();
    device.seed(1);
    assert!(cpu_ops::applies(&device));
    // The last: images of more than one group of planes that the host kernel masks at once.
    for (shape, drop) in
        [([4, 3, 5, 7], 0.0), ([3, 6, 1, 1], 0.0), ([16, 8, 4, 4], 0.0), ([5, 4, 6, 3], 0.3), ([2, 5, 30, 30], 0.2)]
    {
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
        // The same mask as the fused op draws: the host generator, reseeded.
        dropout::seed(11);
        let ours = cpu_ops::batch_norm_relu_dropout(x.clone(), gamma.clone(), beta.clone(), stats, 1e-5, drop);
        dropout::seed(11);
        let mut theirs = relu(theirs.output);
        if drop > 0.0 {
            let mask = dropout::host_mask(theirs.shape().num_elements(), drop);
            theirs = theirs * Tensor::<4>::from_data(TensorData::new(mask, shape), &device);
        }
        close(&format!("output {shape:?}"), values(ours.clone().inner()), values(theirs.clone().inner()));
        if drop > 0.0 {
            let zeros = values(ours.clone().inner()).iter().filter(|v| **v == 0.0).count();
            assert!(zeros > shape.iter().product::<usize>() / 2, "ReLU and dropout zero more than half: {zeros}");
        }

        let g_ours = (ours * r.clone()).sum().backward();
        let g_theirs = (theirs * r).sum().backward();
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
        let r = Tensor::<4>::random(
            [shape[0], shape[1], shape[2] / 2, shape[3] / 2],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let ours = cpu_ops::max_pool2(x.clone());
        let theirs = pool.forward(x.clone());
        close("pooled", values(ours.clone().inner()), values(theirs.clone().inner()));
        let g_ours = (ours * r.clone()).sum().backward();
        let g_theirs = (theirs * r).sum().backward();
        close("pool dx", values(x.grad(&g_ours).unwrap()), values(x.grad(&g_theirs).unwrap()));
    }
}

#[test]
fn conv3x3_matches_burn_on_every_path() {
    let device = Device::flex().autodiff();
    let _rng = rng_lock();
    device.seed(3);
    let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    // 20×18 (360 pixels) and 16×16 take `Plan::Rows`, 6×5 `Plan::Taps`; 256 channels on 8×6
    // and 4×4 maps Winograd (forward and input gradient).
    let shapes =
        [([3, 3, 20, 18], 5), ([4, 6, 6, 5], 7), ([70, 2, 16, 16], 3), ([2, 256, 8, 6], 256), ([3, 256, 4, 4], 320)];
    for (shape, out) in shapes {
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

#[test]
fn conv3x3_pool2_matches_burn_conv_then_pool() {
    let device = Device::flex().autodiff();
    let _rng = rng_lock();
    device.seed(4);
    let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let pool = burn::nn::pool::MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init();
    for (shape, out) in [([3, 3, 20, 18], 5), ([2, 16, 16, 16], 32), ([4, 6, 7, 5], 7)] {
        let x = input(shape, &device);
        let w = Tensor::<4>::random([out, shape[1], 3, 3], Distribution::Normal(0.0, 0.3), &device).require_grad();
        let ours = cpu_ops::conv3x3_pool2(x.clone(), w.clone());
        let theirs = pool.forward(conv2d(x.clone(), w.clone(), None, options.clone()));
        assert_eq!(ours.dims(), theirs.dims(), "conv + pool dims, {shape:?}");
        close("conv + pool output", values(ours.clone().inner()), values(theirs.clone().inner()));
        let r = Tensor::<4>::random(theirs.dims(), Distribution::Normal(0.0, 1.0), &device);
        let g_ours = (ours * r.clone()).sum().backward();
        let g_theirs = (theirs * r).sum().backward();
        close("conv + pool dw", values(w.grad(&g_ours).unwrap()), values(w.grad(&g_theirs).unwrap()));
        close("conv + pool dx", values(x.grad(&g_ours).unwrap()), values(x.grad(&g_theirs).unwrap()));
    }
}

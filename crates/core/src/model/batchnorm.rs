//! BatchNorm2d with PyTorch's running statistics.
//!
//! Burn's `nn::BatchNorm` feeds the *biased* batch variance into `running_var`; PyTorch feeds
//! the unbiased one (`× n/(n-1)`, n = batch·height·width). The difference is small at batch 512
//! on 32×32 maps but not at the 4×4 maps of `res3` (n = 16·batch), and it decides whether
//! weights trained here evaluate the same in PyTorch.
//!
//! On GPUs the batch statistics are sums over each image's plane, then over the batch: no
//! reduction is longer than h·w or the batch size. Burn's `batch_norm_train` reduces each
//! channel in one pass over batch·height·width values, and CubeCL's reduction over rows of
//! 65,536 values or more comes out wrong on Mesa 22.3.6's lavapipe (Debian 12's; right on Mesa
//! 25.0.7) and in Chromium's WebGPU (SwiftShader): models trained there tested at chance
//! (issue 14; the README has the reproduction). On flex the
//! normalisation is one CPU kernel with the ReLU and dropout that follow it (`ops.rs`).

use burn::module::{Module, Param, RunningState};
use burn::nn::Initializer;
use burn::tensor::{Device, Tensor};

#[derive(Module, Debug)]
pub struct BatchNorm {
    /// PyTorch `weight`.
    pub gamma: Param<Tensor<1>>,
    /// PyTorch `bias`.
    pub beta: Param<Tensor<1>>,
    pub running_mean: RunningState<Tensor<1>>,
    pub running_var: RunningState<Tensor<1>>,
    /// PyTorch's default: running = 0.9·running + 0.1·batch.
    pub momentum: f64,
    pub epsilon: f64,
}

impl BatchNorm {
    pub fn new(features: usize, device: &Device) -> Self {
        Self {
            gamma: Initializer::Ones.init([features], device),
            beta: Initializer::Zeros.init([features], device),
            running_mean: RunningState::new(Tensor::zeros([features], device)),
            running_var: RunningState::new(Tensor::ones([features], device)),
            momentum: 0.1,
            epsilon: 1e-5,
        }
    }

    /// Batch statistics (and a running-statistics update) on an autodiff device, running
    /// statistics otherwise.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let device = x.device();
        if !device.is_autodiff() {
            return burn::tensor::module::batch_norm(
                x,
                self.gamma.val(),
                self.beta.val(),
                self.running_mean.value(),
                self.running_var.value(),
                self.epsilon,
            );
        }
        let dims = x.dims();
        let c = dims[1];
        let (mean, variance) = batch_stats(x.clone());
        let centered = x - mean.clone();
        let scale = (variance.clone().add_scalar(self.epsilon)).sqrt().recip() * self.gamma.val().reshape([1, c, 1, 1]);
        let out = centered * scale + self.beta.val().reshape([1, c, 1, 1]);
        self.update_running(mean, variance, dims);
        out
    }

    /// running = (1 - momentum)·running + momentum·batch, with the batch variance made unbiased.
    /// `mean` and `variance` are `[c]`, or `[1, c, 1, 1]` columns on GPUs.
    pub(crate) fn update_running<const D: usize>(
        &self,
        mean: Tensor<D>,
        variance: Tensor<D>,
        [b, c, h, w]: [usize; 4],
    ) {
        // Reshaped before any arithmetic: a reshape ends a fused GPU kernel. Then Burn's
        // `value_sync` (a division by the number of threads that updated the state: one)
        // fuses with the update, one kernel per layer.
        let mean = mean.detach().reshape([c]);
        let variance = variance.detach().reshape([c]);
        let device = mean.device();
        let n = (b * h * w) as f64;
        let unbiased = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
        let m = self.momentum;
        let running_mean = self.running_mean.value_sync().to_device(&device);
        let running_var = self.running_var.value_sync().to_device(&device);
        let running_mean = running_mean.mul_scalar(1.0 - m) + mean.mul_scalar(m);
        let running_var = running_var.mul_scalar(1.0 - m) + variance.mul_scalar(m * unbiased);
        self.running_mean.update(running_mean.detach());
        self.running_var.update(running_var.detach());
    }
}

/// Per-channel batch mean and biased variance of `[b, c, h, w]`, each a `[1, c, 1, 1]` column (the
/// shape they are used in; each sum is reshaped straight out of its reduction, so that the
/// arithmetic after it fuses on GPUs). Sums over each image's pixels, then over the batch: no
/// reduction longer than max(h·w, b). On an H100 this measured faster than `batch_norm_train`
/// (README). The pixels are taken channels-last (`[b, h·w, c]`), the layout GPU convolutions
/// leave: viewed as `[b, c, h·w]` each sum began with a copy of the whole activation.
pub fn batch_stats(x: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
    let [b, c, h, w] = x.dims();
    let n = (b * h * w) as f64;
    let per_channel = |t: Tensor<4>| {
        t.permute([0, 2, 3, 1]).reshape([b, h * w, c]).sum_dim(1).sum_dim(0).reshape([1, c, 1, 1]).div_scalar(n)
    };
    let mean = per_channel(x.clone());
    let centered = x - mean.clone();
    let variance = per_channel(centered.clone() * centered);
    (mean, variance)
}

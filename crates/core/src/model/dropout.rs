//! Inverted dropout, drawn on the device. On flex with the CPU kernels the model does not call
//! this: the fused BatchNorm kernel applies its own mask (see `model/ops.rs`).

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};

#[derive(Module, Debug)]
pub struct Dropout {
    pub prob: f64,
}

impl Dropout {
    pub fn new(prob: f64) -> Self {
        Self { prob }
    }

    /// The drop probability in effect on `device`: 0 outside training (a device without
    /// autodiff).
    pub fn prob_on(&self, device: &Device) -> f64 {
        if device.is_autodiff() { self.prob } else { 0.0 }
    }

    /// Identity outside training (a device without autodiff) or when `prob` is 0.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let device = x.device();
        if self.prob == 0.0 || !device.is_autodiff() {
            return x;
        }
        let keep = 1.0 - self.prob;
        let mask = x.random_like(Distribution::Bernoulli(keep));
        x * mask.mul_scalar(1.0 / keep)
    }
}

//! An exponential moving average of the weights, as in David Page's "bag of tricks": every
//! `every` steps, `average = decay·average + (1 − decay)·weights`, over every tensor of the
//! model file, BatchNorm's running statistics included (the average model is evaluated with
//! averaged statistics, as Page's was). The average is what a run with EMA tests and saves.
//!
//! It is kept on the plain (non-autodiff) device as the model file's flattened tensors, in
//! [`model_tensors`] order, so a checkpoint stores it under the same names (`ema.<name>`).

use burn::config::Config;
use burn::tensor::Tensor;

use crate::error::ConfigError;
use crate::io::weights::{map_tensors, model_tensors};
use crate::model::Model;

#[derive(Config, Debug, PartialEq)]
pub struct EmaConfig {
    /// Weight of the old average at each update; 0 turns the average off. Page's 0.99 every
    /// 5 steps averages over the last ≈ 500 steps (5 epochs at batch 512).
    #[config(default = 0.0)]
    pub decay: f64,
    /// Optimizer steps between two updates.
    #[config(default = 5)]
    pub every: usize,
}

impl EmaConfig {
    pub fn enabled(&self) -> bool {
        self.decay > 0.0
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..1.0).contains(&self.decay) {
            return Err(ConfigError::new("ema.decay", format!("must be in [0, 1) (0: off), got {}", self.decay)));
        }
        if self.every == 0 {
            return Err(ConfigError::new("ema.every", "must be at least 1"));
        }
        Ok(())
    }
}

/// The average's tensors, named and shaped as in `model.safetensors`.
#[derive(Clone)]
pub struct Ema {
    pub decay: f64,
    pub tensors: Vec<(String, Tensor<1>)>,
}

impl Ema {
    /// Starts the average at the model's current weights.
    pub fn new(model: &Model, decay: f64) -> Self {
        let tensors = model_tensors(model).into_iter().map(|(name, _, t)| (name, t.detach().inner())).collect();
        Self { decay, tensors }
    }

    /// Folds the model's current weights into the average.
    pub fn update(&mut self, model: &Model) {
        let d = self.decay;
        for ((_, avg), (_, _, t)) in self.tensors.iter_mut().zip(model_tensors(model)) {
            *avg = avg.clone().mul_scalar(d) + t.detach().inner().mul_scalar(1.0 - d);
        }
    }

    /// `model` (plain device, `Module::valid()`) with the average's tensors.
    pub fn model(&self, model: Model) -> Model {
        let mut tensors = self.tensors.iter();
        map_tensors(model, |_, _, _| tensors.next().expect("one average per model tensor").1.clone())
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Module;
    use burn::tensor::Device;

    use super::*;
    use crate::model::ModelConfig;

    fn values(model: &Model) -> Vec<Vec<f32>> {
        let data = |t: Tensor<1>| t.detach().into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
        model_tensors(model).into_iter().map(|(_, _, t)| data(t)).collect()
    }

    #[test]
    fn the_average_moves_toward_the_weights_by_one_minus_decay() {
        let device = Device::flex();
        let config = ModelConfig::new().with_width(1.0 / 16.0);
        device.seed(1);
        let a = config.init(&device);
        device.seed(2);
        let b = config.init(&device);
        let mut ema = Ema::new(&a, 0.75);
        ema.update(&b);
        let (va, vb) = (values(&a), values(&b));
        let got = values(&ema.model(a.clone().valid()));
        assert_eq!(got.len(), 8 * 5 + 1, "every tensor of the model file, fc included");
        for (i, g) in got.iter().enumerate() {
            assert_eq!(g.len(), va[i].len(), "tensor {i}: the model file's shape");
            for (j, g) in g.iter().enumerate() {
                let want = 0.75 * va[i][j] + 0.25 * vb[i][j];
                assert!((g - want).abs() <= 1e-6 * want.abs().max(1.0), "tensor {i}[{j}]: {g} vs {want}");
            }
        }
        assert_ne!(va, vb, "two seeds give two models");
    }
}

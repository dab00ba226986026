//! The "custom ResNet" of the original PyTorch project (David Page's ResNet-9 layout):
//! 6,573,120 parameters at width 1.0.
//!
//! ```text
//! prep    conv 3→64                     BN ReLU Dropout
//! layer1  conv 64→128   maxpool 2       BN ReLU Dropout   + res1 (2 × conv128)
//! layer2  conv 128→256  maxpool 2       BN ReLU Dropout
//! layer3  conv 256→512  maxpool 2       BN ReLU Dropout   + res3 (2 × conv512)
//! pool    maxpool 4 → flatten → fc 512→10 (no bias) → × logit_scale (1 in the original)
//! ```
//!
//! Field names are chosen so that every parameter maps to one `state_dict` name of the
//! equivalent PyTorch `nn.Module` (see [`Model::blocks`] and the README).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::tensor::{Device, Tensor};

use crate::error::ConfigError;

pub mod batchnorm;
pub mod dropout;
pub mod gpu_bn;
pub mod gpu_conv;
mod gpu_im2col;
pub mod ops;
pub mod summary;

use batchnorm::BatchNorm;
use dropout::Dropout;

#[derive(Config, Debug, PartialEq)]
pub struct ModelConfig {
    /// Channel multiplier: 1.0 is the original network, 0.25 a 16× cheaper one for tests.
    #[config(default = 1.0)]
    pub width: f64,
    /// Dropout after every conv block. Small, because BatchNorm and CutOut already regularise.
    #[config(default = 0.05)]
    pub dropout: f64,
    #[config(default = 10)]
    pub num_classes: usize,
    /// The logits are multiplied by this (no parameter). David Page's ResNet-9 has 0.125:
    /// without it the classifier's curvature is 64× higher, and SGD at his peak LR is unstable
    /// there (README, "The recipe's evidence"). Weight files hold `fc.weight` with the scale
    /// folded in, so they compute the same function in a model without it (and in PyTorch).
    #[config(default = 1.0)]
    pub logit_scale: f64,
}

impl ModelConfig {
    /// Channels of prep, layer1, layer2, layer3 (64, 128, 256, 512 at width 1).
    pub fn channels(&self) -> [usize; 4] {
        [64, 128, 256, 512].map(|c| ((c as f64 * self.width).round() as usize).max(1))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        // From 1/64 every layer has at least one channel of its own.
        if !(self.width.is_finite() && self.width >= 1.0 / 64.0 && self.width <= 8.0) {
            return Err(ConfigError::new("width", format!("must be in [1/64, 8], got {}", self.width)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ConfigError::new("dropout", format!("must be in [0, 1), got {}", self.dropout)));
        }
        if self.num_classes == 0 {
            return Err(ConfigError::new("num_classes", "must be at least 1, got 0"));
        }
        if !(self.logit_scale.is_finite() && self.logit_scale > 0.0 && self.logit_scale <= 1e3) {
            return Err(ConfigError::new("logit_scale", format!("must be in (0, 1000], got {}", self.logit_scale)));
        }
        Ok(())
    }

    /// Reads a model configuration saved by any version of this program (those before
    /// `logit_scale` existed had none: 1).
    pub fn from_value(mut value: serde_json::Value) -> Result<Self, serde_json::Error> {
        if let Some(o) = value.as_object_mut() {
            o.entry("logit_scale").or_insert(1.0.into());
        }
        serde_json::from_value(value)
    }

    /// Fine-tuning loaded weights: the file's network (width, classes) with this run's
    /// dropout and logit scale.
    pub fn with_network_of(&self, file: &ModelConfig) -> Self {
        Self { width: file.width, num_classes: file.num_classes, ..self.clone() }
    }

    pub fn init(&self, device: &Device) -> Model {
        let [c0, c1, c2, c3] = self.channels();
        let block = |i, o| ConvBn::new(i, o, self.dropout, device);
        Model {
            prep: block(3, c0),
            layer1: block(c0, c1),
            res1: Residual { a: block(c1, c1), b: block(c1, c1) },
            layer2: block(c1, c2),
            layer3: block(c2, c3),
            res3: Residual { a: block(c3, c3), b: block(c3, c3) },
            fc: LinearConfig::new(c3, self.num_classes).with_bias(false).init(device),
            pool2: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            pool4: MaxPool2dConfig::new([4, 4]).with_strides([4, 4]).init(),
            logit_scale: self.logit_scale,
        }
    }
}

/// conv 3×3 pad 1 (no bias) → [maxpool 2] → BatchNorm → ReLU → Dropout.
#[derive(Module, Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm,
    pub dropout: Dropout,
    pub relu: Relu,
}

impl ConvBn {
    fn new(c_in: usize, c_out: usize, dropout: f64, device: &Device) -> Self {
        Self {
            conv: Conv2dConfig::new([c_in, c_out], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false)
                .init(device),
            bn: BatchNorm::new(c_out, device),
            dropout: Dropout::new(dropout),
            relu: Relu::new(),
        }
    }

    fn forward(&self, x: Tensor<4>, pool: Option<&MaxPool2d>) -> Tensor<4> {
        // Pooling before BN (as the original) makes BN and ReLU 4× cheaper.
        ops::conv_bn_relu_dropout(&self.conv, pool, &self.bn, &self.relu, &self.dropout, x)
    }
}

#[derive(Module, Debug)]
pub struct Residual {
    pub a: ConvBn,
    pub b: ConvBn,
}

impl Residual {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        x.clone() + self.b.forward(self.a.forward(x, None), None)
    }
}

#[derive(Module, Debug)]
pub struct Model {
    pub prep: ConvBn,
    pub layer1: ConvBn,
    pub res1: Residual,
    pub layer2: ConvBn,
    pub layer3: ConvBn,
    pub res3: Residual,
    pub fc: Linear,
    pub pool2: MaxPool2d,
    pub pool4: MaxPool2d,
    pub logit_scale: f64,
}

impl Model {
    /// `images`: `[batch, 3, 32, 32]` normalised; returns logits `[batch, classes]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let x = self.prep.forward(images, None);
        let x = self.layer1.forward(x, Some(&self.pool2));
        let x = self.res1.forward(x);
        let x = self.layer2.forward(x, Some(&self.pool2));
        let x = self.layer3.forward(x, Some(&self.pool2));
        let x = self.res3.forward(x);
        let x = self.pool4.forward(x);
        let [b, c, h, w] = x.dims();
        let logits = self.fc.forward(x.reshape([b, c * h * w]));
        if self.logit_scale == 1.0 { logits } else { logits.mul_scalar(self.logit_scale) }
    }

    /// The same function with another logit scale: `fc.weight` rescaled to make up for it
    /// (fine-tuning with another recipe's scale starts from the model's predictions).
    pub fn with_logit_scale(mut self, scale: f64) -> Self {
        if scale != self.logit_scale {
            let w = self.fc.weight.val().mul_scalar(self.logit_scale / scale);
            self.fc.weight = Param::from_tensor(w);
            self.logit_scale = scale;
        }
        self
    }

    /// Parameters a PyTorch user would count (`Module::num_params` also counts BatchNorm's
    /// running mean and variance, which PyTorch keeps as buffers).
    pub fn trainable_params(&self) -> usize {
        let buffers: usize = self.blocks().iter().map(|(_, _, b)| 2 * b.bn.gamma.val().dims()[0]).sum();
        burn::module::Module::num_params(self) - buffers
    }

    /// The conv blocks in forward order, with the PyTorch `nn.Sequential` prefixes of their
    /// conv and BN (`layer1.1` is the MaxPool, which has no parameters).
    pub fn blocks(&self) -> [(&'static str, &'static str, &ConvBn); 8] {
        let n = BLOCK_NAMES;
        [
            (n[0].0, n[0].1, &self.prep),
            (n[1].0, n[1].1, &self.layer1),
            (n[2].0, n[2].1, &self.res1.a),
            (n[3].0, n[3].1, &self.res1.b),
            (n[4].0, n[4].1, &self.layer2),
            (n[5].0, n[5].1, &self.layer3),
            (n[6].0, n[6].1, &self.res3.a),
            (n[7].0, n[7].1, &self.res3.b),
        ]
    }

    /// Rebuilds the model block by block (used to load weights), in the order of [`Self::blocks`].
    pub fn try_map_blocks<E>(
        self,
        mut f: impl FnMut(&'static str, &'static str, ConvBn) -> Result<ConvBn, E>,
    ) -> Result<Self, E> {
        let n = BLOCK_NAMES;
        Ok(Self {
            prep: f(n[0].0, n[0].1, self.prep)?,
            layer1: f(n[1].0, n[1].1, self.layer1)?,
            res1: Residual { a: f(n[2].0, n[2].1, self.res1.a)?, b: f(n[3].0, n[3].1, self.res1.b)? },
            layer2: f(n[4].0, n[4].1, self.layer2)?,
            layer3: f(n[5].0, n[5].1, self.layer3)?,
            res3: Residual { a: f(n[6].0, n[6].1, self.res3.a)?, b: f(n[7].0, n[7].1, self.res3.b)? },
            ..self
        })
    }
}

/// PyTorch prefixes (conv, BN) of the blocks, in forward order.
const BLOCK_NAMES: [(&str, &str); 8] = [
    ("prep.0", "prep.1"),
    ("layer1.0", "layer1.2"),
    ("res1.0", "res1.1"),
    ("res1.4", "res1.5"),
    ("layer2.0", "layer2.2"),
    ("layer3.0", "layer3.2"),
    ("res3.0", "res3.1"),
    ("res3.4", "res3.5"),
];

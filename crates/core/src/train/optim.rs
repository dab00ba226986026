//! Adam and SGD-Nesterov with PyTorch's exact update rules (L2 weight decay added to the
//! gradient, Adam eps 1e-8 outside the square root, SGD without dampening), and a momentum /
//! beta1 that the one-cycle schedule sets at every step, as PyTorch's `OneCycleLR` does.
//!
//! Burn's optimisers differ on those defaults and take no per-step momentum, hence this small
//! module. State is keyed by the parameter's module path (`layer1.conv.weight`), so a
//! checkpoint written by one process resumes in another.

use std::collections::BTreeMap;

use burn::backend::TensorMetadata;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{DispatchTensor, Shape, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::error::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adam,
    Sgd,
}

impl OptimizerKind {
    /// The recipe's peak LR for this optimizer: Adam's is the original notebook's; SGD's is
    /// David Page's (his LR 0.4/512 on a loss summed over a batch of 512 is 0.4 on its mean, and
    /// his decay 5e-4·512 at that LR is L2 5e-4). It assumes his logit scale 0.125 (`best`).
    pub fn default_max_lr(self) -> f64 {
        match self {
            Self::Adam => 0.01,
            Self::Sgd => 0.4,
        }
    }

    /// The logit scale the max LR assumes (`ModelConfig::logit_scale`): Page's 0.125 for SGD,
    /// without which SGD is unstable at the classifier (README); Adam, which normalises each
    /// parameter's step, trains the original network (1).
    pub fn default_logit_scale(self) -> f64 {
        match self {
            Self::Adam => 1.0,
            Self::Sgd => 0.125,
        }
    }

    /// The recipe's L2 weight decay for this optimizer (PyTorch `weight_decay`).
    pub fn default_weight_decay(self) -> f64 {
        match self {
            Self::Adam => 1e-4,
            Self::Sgd => 5e-4,
        }
    }
}

impl std::str::FromStr for OptimizerKind {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.to_ascii_lowercase().as_str() {
            "adam" => Ok(Self::Adam),
            "sgd" | "nesterov" => Ok(Self::Sgd),
            _ => Err(ConfigError::new("optimizer", format!("'{s}' is unknown (expected adam or sgd)"))),
        }
    }
}

impl std::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Adam => "adam",
            Self::Sgd => "sgd",
        })
    }
}

/// The optimizer's part of the recipe, with each kind's own defaults: build it with
/// [`OptimizerConfig::new`] so that SGD gets SGD's peak LR and weight decay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    /// Peak LR of the one-cycle schedule (`lr-find` measures it).
    pub max_lr: f64,
    /// PyTorch `weight_decay`: `grad += weight_decay * param` (L2, not AdamW).
    pub weight_decay: f64,
    /// Adam's beta2 (beta1 is the schedule's momentum).
    pub beta2: f64,
    /// Adam's eps: PyTorch's 1e-8 (Burn's default is 1e-5).
    pub eps: f64,
}

impl OptimizerConfig {
    /// `kind` with its recipe defaults.
    pub fn new(kind: OptimizerKind) -> Self {
        Self { kind, max_lr: kind.default_max_lr(), weight_decay: kind.default_weight_decay(), beta2: 0.999, eps: 1e-8 }
    }

    pub fn with_max_lr(self, max_lr: f64) -> Self {
        Self { max_lr, ..self }
    }

    pub fn with_weight_decay(self, weight_decay: f64) -> Self {
        Self { weight_decay, ..self }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.max_lr.is_finite() && self.max_lr > 0.0) {
            return Err(ConfigError::new("max_lr", format!("must be a positive number, got {}", self.max_lr)));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(ConfigError::new("weight_decay", format!("must be 0 or more, got {}", self.weight_decay)));
        }
        if !(0.0..1.0).contains(&self.beta2) {
            return Err(ConfigError::new("beta2", format!("must be in [0, 1), got {}", self.beta2)));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(ConfigError::new("eps", format!("must be a positive number, got {}", self.eps)));
        }
        Ok(())
    }
}

/// A checkpoint's optimizer state that does not match the model.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum StateError {
    #[error("optimizer state for '{0}' is missing")]
    Missing(String),
    #[error("Adam second moment for '{0}' is missing")]
    MissingSecondMoment(String),
    #[error("optimizer state '{path}' has {found} values, its parameter {expected}")]
    WrongSize { path: String, expected: usize, found: usize },
    #[error("optimizer state '{0}' belongs to no parameter of the model")]
    Unknown(String),
}

/// Per-parameter state, kept in the parameter's own shape: a reshape ends a fused GPU kernel,
/// and flattening each parameter for the update split it into three kernels (README, "wgpu:
/// keeping the GPU busy"). Its rank is the parameter's, so it is held rank-erased; checkpoints
/// store it flat.
#[derive(Clone)]
pub struct ParamState {
    pub step: u64,
    /// Adam `exp_avg` / SGD `momentum_buffer`.
    first: DispatchTensor,
    /// Adam `exp_avg_sq`.
    second: Option<DispatchTensor>,
}

/// `t` as a tensor of rank `D` with `shape`: as it is when it already has that shape (the state
/// of every step after the first), reshaped when it was loaded flat from a checkpoint.
fn shaped<const D: usize>(t: DispatchTensor, shape: &Shape) -> Tensor<D> {
    if t.shape() == *shape {
        return Tensor::from_dispatch(t);
    }
    Tensor::<1>::from_dispatch(t).reshape(shape.clone())
}

/// `t` flattened, whatever its rank (a parameter is 1-, 2- or 4-D).
fn flat(t: DispatchTensor) -> Tensor<1> {
    let n = t.shape().num_elements();
    match t.shape().num_dims() {
        1 => Tensor::<1>::from_dispatch(t),
        2 => Tensor::<2>::from_dispatch(t).reshape([n]),
        3 => Tensor::<3>::from_dispatch(t).reshape([n]),
        _ => Tensor::<4>::from_dispatch(t).reshape([n]),
    }
}

pub struct Optimizer {
    pub config: OptimizerConfig,
    pub state: BTreeMap<String, ParamState>,
}

impl Optimizer {
    /// The LR comes from the schedule at every step; `config.max_lr` is not used here.
    pub fn new(config: OptimizerConfig) -> Self {
        Self { config, state: BTreeMap::new() }
    }

    /// One update of every parameter that has a gradient. `momentum` is SGD's momentum or
    /// Adam's beta1 for this step.
    pub fn step<M: Module>(&mut self, model: M, grads: GradientsParams, lr: f64, momentum: f64) -> M {
        let mut mapper = Mapper { optim: self, grads, lr, momentum, path: Vec::new() };
        model.map(&mut mapper)
    }

    /// Tensors to checkpoint: `(path.first|second, data)` plus the step counts.
    pub fn export(&self) -> (Vec<(String, Tensor<1>)>, BTreeMap<String, u64>) {
        let mut tensors = Vec::new();
        let mut steps = BTreeMap::new();
        for (path, s) in &self.state {
            tensors.push((format!("{path}.first"), flat(s.first.clone())));
            if let Some(v) = &s.second {
                tensors.push((format!("{path}.second"), flat(v.clone())));
            }
            steps.insert(path.clone(), s.step);
        }
        (tensors, steps)
    }

    /// Inverse of [`Self::export`]; `take` returns the 1-D data of a saved tensor, `sizes` is
    /// [`parameter_sizes`] of the model the state is for (a state that does not fit it is an
    /// error here, not a failed update later).
    pub fn import(
        &mut self,
        steps: &BTreeMap<String, u64>,
        mut take: impl FnMut(&str) -> Option<TensorData>,
        sizes: &BTreeMap<String, usize>,
        device: &burn::tensor::Device,
    ) -> Result<(), StateError> {
        self.state.clear();
        for (path, &step) in steps {
            let expected = *sizes.get(path).ok_or_else(|| StateError::Unknown(path.clone()))?;
            // Saved flat; the first update gives it the parameter's shape.
            let load = |name: String, data: TensorData| {
                let found = data.num_elements();
                if found != expected {
                    return Err(StateError::WrongSize { path: name, expected, found });
                }
                Ok(Tensor::<1>::from_data(data, device).into_dispatch())
            };
            let first = take(&format!("{path}.first")).ok_or_else(|| StateError::Missing(path.clone()))?;
            let first = load(format!("{path}.first"), first)?;
            let second = match self.config.kind {
                OptimizerKind::Adam => Some(load(
                    format!("{path}.second"),
                    take(&format!("{path}.second")).ok_or_else(|| StateError::MissingSecondMoment(path.clone()))?,
                )?),
                OptimizerKind::Sgd => None,
            };
            self.state.insert(path.clone(), ParamState { step, first, second });
        }
        Ok(())
    }
}

/// Each parameter's number of values, keyed by module path as the optimizer's state is.
pub fn parameter_sizes<M: Module>(model: &M) -> BTreeMap<String, usize> {
    struct Sizes {
        path: Vec<String>,
        sizes: BTreeMap<String, usize>,
    }
    impl ModuleVisitor for Sizes {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.sizes.insert(self.path.join("."), param.shape().num_elements());
        }
    }
    let mut visitor = Sizes { path: Vec::new(), sizes: BTreeMap::new() };
    model.visit(&mut visitor);
    visitor.sizes
}

struct Mapper<'a> {
    optim: &'a mut Optimizer,
    grads: GradientsParams,
    lr: f64,
    momentum: f64,
    path: Vec<String>,
}

impl ModuleMapper for Mapper<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let path = self.path.join(".");
        let updated = self.update(&path, tensor.inner(), grad);
        let mut updated = Tensor::from_inner(updated);
        if require_grad {
            updated = updated.require_grad();
        }
        Param::from_mapped_value(id, updated, mapper)
    }
}

impl Mapper<'_> {
    fn update<const D: usize>(&mut self, path: &str, p: Tensor<D>, g: Tensor<D>) -> Tensor<D> {
        let s = &self.optim.config;
        let shape = p.shape();
        let prev = self.optim.state.remove(path);
        let step = prev.as_ref().map_or(0, |st| st.step) + 1;
        let h = Scalars {
            weight_decay: s.weight_decay,
            momentum: self.momentum,
            beta2: s.beta2,
            eps: s.eps,
            lr: self.lr,
            step,
        };
        // On the host, after the first step: one kernel for the whole update, the same f32
        // operations in the same order as the tensor ops (`flex_kernels::adam_step`).
        #[cfg(feature = "flex-kernels")]
        let host = crate::model::ops::is_host(&p.device());
        let (new_p, state) = match s.kind {
            OptimizerKind::Sgd => {
                let (p, buf) = match prev.map(|st| shaped::<D>(st.first, &shape)) {
                    #[cfg(feature = "flex-kernels")]
                    Some(buf) if host => h.sgd_fused(p, g, buf),
                    buf => h.sgd(p, g, buf),
                };
                (p, ParamState { step, first: buf.into_dispatch(), second: None })
            }
            OptimizerKind::Adam => {
                let moments = prev.map(|st| {
                    let second = st.second.expect("Adam state has a second moment");
                    (shaped::<D>(st.first, &shape), shaped::<D>(second, &shape))
                });
                let (p, m, v) = match moments {
                    #[cfg(feature = "flex-kernels")]
                    Some((m, v)) if host => h.adam_fused(p, g, m, v),
                    moments => h.adam(p, g, moments),
                };
                (p, ParamState { step, first: m.into_dispatch(), second: Some(v.into_dispatch()) })
            }
        };
        self.optim.state.insert(path.to_string(), state);
        new_p
    }
}

/// One parameter's update scalars at one step. `momentum` is SGD's momentum or Adam's beta1.
#[derive(Debug, Clone, Copy)]
struct Scalars {
    weight_decay: f64,
    momentum: f64,
    beta2: f64,
    eps: f64,
    lr: f64,
    /// 1 on the first update.
    step: u64,
}

impl Scalars {
    /// The gradient with the L2 decay added (PyTorch's `weight_decay`).
    fn decayed<const D: usize>(&self, p: &Tensor<D>, g: Tensor<D>) -> Tensor<D> {
        if self.weight_decay != 0.0 { g + p.clone().mul_scalar(self.weight_decay) } else { g }
    }

    /// SGD-Nesterov without dampening: `(p', buf')`; `buf` is `None` on the first step.
    fn sgd<const D: usize>(&self, p: Tensor<D>, g: Tensor<D>, buf: Option<Tensor<D>>) -> (Tensor<D>, Tensor<D>) {
        let g = self.decayed(&p, g);
        // buf = momentum * buf + g (first step: buf = g); nesterov: g + momentum * buf.
        let buf = match buf {
            Some(buf) => buf.mul_scalar(self.momentum) + g.clone(),
            None => g.clone(),
        };
        let d = g + buf.clone().mul_scalar(self.momentum);
        (p - d.mul_scalar(self.lr), buf)
    }

    /// Adam: `(p', m', v')`; the moments are `None` on the first step.
    fn adam<const D: usize>(
        &self,
        p: Tensor<D>,
        g: Tensor<D>,
        moments: Option<(Tensor<D>, Tensor<D>)>,
    ) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
        let g = self.decayed(&p, g);
        let (b1, b2) = (self.momentum, self.beta2);
        let (m, v) = match moments {
            Some((m, v)) => {
                (m.mul_scalar(b1) + g.clone().mul_scalar(1.0 - b1), v.mul_scalar(b2) + g.square().mul_scalar(1.0 - b2))
            }
            None => (g.clone().mul_scalar(1.0 - b1), g.square().mul_scalar(1.0 - b2)),
        };
        let denom = v.clone().sqrt().div_scalar(self.root_bc2()).add_scalar(self.eps);
        let update = m.clone().div(denom).mul_scalar(self.step_size());
        (p - update, m, v)
    }

    /// √(1 − beta2^t).
    fn root_bc2(&self) -> f64 {
        (1.0 - self.beta2.powi(self.step as i32)).sqrt()
    }

    /// lr / (1 − beta1^t).
    fn step_size(&self) -> f64 {
        self.lr / (1.0 - self.momentum.powi(self.step as i32))
    }

    /// [`Self::sgd`] after the first step, in one host kernel.
    #[cfg(feature = "flex-kernels")]
    fn sgd_fused<const D: usize>(&self, p: Tensor<D>, g: Tensor<D>, buf: Tensor<D>) -> (Tensor<D>, Tensor<D>) {
        flex_kernels::sgd_step(p, g, buf, self.weight_decay, self.momentum, self.lr)
    }

    /// [`Self::adam`] after the first step, in one host kernel.
    #[cfg(feature = "flex-kernels")]
    fn adam_fused<const D: usize>(
        &self,
        p: Tensor<D>,
        g: Tensor<D>,
        m: Tensor<D>,
        v: Tensor<D>,
    ) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
        let hyper = flex_kernels::AdamStep {
            weight_decay: self.weight_decay,
            beta1: self.momentum,
            beta2: self.beta2,
            root_bc2: self.root_bc2(),
            eps: self.eps,
            step_size: self.step_size(),
        };
        flex_kernels::adam_step(p, g, m, v, hyper)
    }
}

#[cfg(all(test, feature = "flex-kernels"))]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    fn bits<const D: usize>(t: Tensor<D>) -> Vec<u32> {
        t.into_data().try_to_vec::<f32>().expect("f32 data").iter().map(|v| v.to_bits()).collect()
    }

    /// The host kernels give the tensor ops' results bit for bit, with and without weight
    /// decay, on a parameter larger than one of their parallel chunks, at steps 2 and 40.
    #[test]
    fn fused_updates_are_the_tensor_ops_bit_for_bit() {
        let device = Device::flex();
        let t = |scale: f64| Tensor::<2>::random([300, 700], Distribution::Normal(0.0, scale), &device);
        for weight_decay in [0.0, 5e-4] {
            for step in [2, 40] {
                let h = Scalars { weight_decay, momentum: 0.87, beta2: 0.999, eps: 1e-8, lr: 0.01, step };
                let (p, g, m, v) = (t(1.0), t(0.1), t(0.01), t(1e-3).abs());
                let what = format!("decay {weight_decay}, step {step}");
                let (want, got) = (
                    h.adam(p.clone(), g.clone(), Some((m.clone(), v.clone()))),
                    h.adam_fused(p.clone(), g.clone(), m.clone(), v),
                );
                assert_eq!(bits(want.0), bits(got.0), "Adam parameter, {what}");
                assert_eq!(bits(want.1), bits(got.1), "Adam first moment, {what}");
                assert_eq!(bits(want.2), bits(got.2), "Adam second moment, {what}");
                let (want, got) = (h.sgd(p.clone(), g.clone(), Some(m.clone())), h.sgd_fused(p, g, m));
                assert_eq!(bits(want.0), bits(got.0), "SGD parameter, {what}");
                assert_eq!(bits(want.1), bits(got.1), "SGD buffer, {what}");
            }
        }
    }
}

//! One-cycle learning-rate and momentum schedule with the semantics of PyTorch's
//! `torch.optim.lr_scheduler.OneCycleLR(three_phase=False, anneal_strategy='linear')`:
//! stepped once per batch, LR rises linearly from `max_lr / div_factor` to `max_lr` during
//! the first `pct_start` of the steps, then falls linearly to
//! `max_lr / div_factor / final_div_factor` (no third "annihilation" phase). Momentum (SGD) or
//! beta1 (Adam) moves the opposite way, `max_momentum` → `base_momentum` → `max_momentum`.
//!
//! The LR range test uses [`LrRange`] instead: an exponential ramp at a fixed momentum.

use burn::config::Config;

use crate::error::ConfigError;

/// The schedule's shape, relative to the peak LR (which belongs to the optimizer's recipe:
/// `OptimizerConfig::max_lr`). Part of `TrainingConfig`; these are the recipe's only defaults.
#[derive(Config, Debug, PartialEq)]
pub struct OneCycleConfig {
    /// Fraction of the steps spent rising: 5/24 puts the peak at epoch 5 of 24.
    #[config(default = "5.0 / 24.0")]
    pub pct_start: f64,
    /// Start LR = max_lr / div_factor (PyTorch's default).
    #[config(default = 25.0)]
    pub div_factor: f64,
    /// End LR = start LR / final_div_factor: the last epochs fine-tune at a tiny LR.
    #[config(default = 1e4)]
    pub final_div_factor: f64,
    /// Momentum (SGD) / beta1 (Adam) cycles max → base → max, as PyTorch's OneCycleLR.
    #[config(default = 0.85)]
    pub base_momentum: f64,
    #[config(default = 0.95)]
    pub max_momentum: f64,
}

impl OneCycleConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.pct_start > 0.0 && self.pct_start < 1.0) {
            return Err(ConfigError::new("pct_start", format!("must be in (0, 1), got {}", self.pct_start)));
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !(positive(self.div_factor) && positive(self.final_div_factor)) {
            return Err(ConfigError::new("div_factor and final_div_factor", "must be positive numbers"));
        }
        for (name, m) in [("base_momentum", self.base_momentum), ("max_momentum", self.max_momentum)] {
            if !(0.0..1.0).contains(&m) {
                return Err(ConfigError::new(name, format!("must be in [0, 1), got {m}")));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Phase {
    end_step: f64,
    start_lr: f64,
    end_lr: f64,
    start_momentum: f64,
    end_momentum: f64,
}

/// The schedule is a pure function of the step number, so a checkpoint only needs the step.
#[derive(Debug, Clone, PartialEq)]
pub struct OneCycle {
    pub config: OneCycleConfig,
    pub max_lr: f64,
    pub total_steps: usize,
    phases: [Phase; 2],
}

impl OneCycle {
    /// PyTorch's `OneCycleLR(max_lr, total_steps, ...)` with `config`'s shape.
    pub fn new(config: OneCycleConfig, max_lr: f64, total_steps: usize) -> Result<Self, ConfigError> {
        config.validate()?;
        if total_steps == 0 {
            return Err(ConfigError::new("total_steps", "must be at least 1"));
        }
        if !(max_lr.is_finite() && max_lr > 0.0) {
            return Err(ConfigError::new("max_lr", format!("must be a positive number, got {max_lr}")));
        }
        let initial_lr = max_lr / config.div_factor;
        let min_lr = initial_lr / config.final_div_factor;
        let total = total_steps as f64;
        let phases = [
            Phase {
                end_step: config.pct_start * total - 1.0,
                start_lr: initial_lr,
                end_lr: max_lr,
                start_momentum: config.max_momentum,
                end_momentum: config.base_momentum,
            },
            Phase {
                end_step: total - 1.0,
                start_lr: max_lr,
                end_lr: min_lr,
                start_momentum: config.base_momentum,
                end_momentum: config.max_momentum,
            },
        ];
        Ok(Self { config, max_lr, total_steps, phases })
    }

    /// `(lr, momentum)` for 0-based step `step` (PyTorch's `last_epoch` after `step` calls to
    /// `scheduler.step()`). Steps past the end keep following the last phase's line, as
    /// PyTorch would compute (it raises instead).
    pub fn at(&self, step: usize) -> (f64, f64) {
        let step = step as f64;
        let mut start_step = 0.0;
        for (i, phase) in self.phases.iter().enumerate() {
            if step <= phase.end_step || i == self.phases.len() - 1 {
                let span = phase.end_step - start_step;
                let pct = if span > 0.0 { (step - start_step) / span } else { 1.0 };
                let lerp = |a: f64, b: f64| (b - a) * pct + a;
                return (lerp(phase.start_lr, phase.end_lr), lerp(phase.start_momentum, phase.end_momentum));
            }
            start_step = phase.end_step;
        }
        unreachable!("the last phase always matches")
    }

    pub fn lr(&self, step: usize) -> f64 {
        self.at(step).0
    }
}

/// The LR range test's ramp: LR grows exponentially from `start_lr` at step 0 to `end_lr` at
/// step `steps - 1`, at a fixed momentum (the one-cycle's `max_momentum`, where a run starts).
#[derive(Debug, Clone, PartialEq)]
pub struct LrRange {
    pub start_lr: f64,
    pub end_lr: f64,
    pub steps: usize,
    pub momentum: f64,
}

impl LrRange {
    pub fn lr(&self, step: usize) -> f64 {
        let t = step as f64 / (self.steps.max(2) - 1) as f64;
        self.start_lr * (self.end_lr / self.start_lr).powf(t)
    }
}

/// What sets the trainer's LR and momentum at each step.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// Every training run.
    OneCycle(OneCycle),
    /// The LR range test (`lr_finder`).
    Range(LrRange),
}

impl Schedule {
    /// `(lr, momentum)` for 0-based step `step`.
    pub fn at(&self, step: usize) -> (f64, f64) {
        match self {
            Self::OneCycle(s) => s.at(step),
            Self::Range(r) => (r.lr(step), r.momentum),
        }
    }

    pub fn lr(&self, step: usize) -> f64 {
        self.at(step).0
    }
}

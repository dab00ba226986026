//! One-cycle learning-rate and momentum schedule with the semantics of PyTorch's
//! `torch.optim.lr_scheduler.OneCycleLR(three_phase=False, anneal_strategy='linear')`:
//! stepped once per batch, LR rises linearly from `max_lr / div_factor` to `max_lr` during
//! the first `pct_start` of the steps, then falls linearly to
//! `max_lr / div_factor / final_div_factor` (no third "annihilation" phase). Momentum (SGD) or
//! beta1 (Adam) moves the opposite way, `max_momentum` → `base_momentum` → `max_momentum`.

use burn::config::Config;

#[derive(Config, Debug, PartialEq)]
pub struct OneCycleConfig {
    pub max_lr: f64,
    pub total_steps: usize,
    /// Fraction of the steps spent rising: 5/24 puts the peak at epoch 5 of 24.
    #[config(default = "5.0 / 24.0")]
    pub pct_start: f64,
    #[config(default = 25.0)]
    pub div_factor: f64,
    #[config(default = 1e4)]
    pub final_div_factor: f64,
    #[config(default = 0.85)]
    pub base_momentum: f64,
    #[config(default = 0.95)]
    pub max_momentum: f64,
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
    phases: [Phase; 2],
}

impl OneCycle {
    pub fn new(config: OneCycleConfig) -> Result<Self, String> {
        if config.total_steps == 0 {
            return Err("OneCycle needs at least one step".into());
        }
        if !(config.pct_start > 0.0 && config.pct_start < 1.0) {
            return Err(format!("pct_start must be in (0, 1), got {}", config.pct_start));
        }
        if !(config.max_lr.is_finite() && config.max_lr > 0.0) {
            return Err(format!("max_lr must be a positive number, got {}", config.max_lr));
        }
        if !(config.div_factor > 0.0 && config.final_div_factor > 0.0) {
            return Err("div_factor and final_div_factor must be positive".into());
        }
        let initial_lr = config.max_lr / config.div_factor;
        let min_lr = initial_lr / config.final_div_factor;
        let total = config.total_steps as f64;
        let phases = [
            Phase {
                end_step: config.pct_start * total - 1.0,
                start_lr: initial_lr,
                end_lr: config.max_lr,
                start_momentum: config.max_momentum,
                end_momentum: config.base_momentum,
            },
            Phase {
                end_step: total - 1.0,
                start_lr: config.max_lr,
                end_lr: min_lr,
                start_momentum: config.base_momentum,
                end_momentum: config.max_momentum,
            },
        ];
        Ok(Self { config, phases })
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

    pub fn lrs(&self) -> Vec<f64> {
        (0..self.config.total_steps).map(|s| self.lr(s)).collect()
    }
}

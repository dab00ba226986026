//! LR range test (Leslie Smith; the `torch-lr-finder` procedure the original notebook used):
//! train from the initial weights while the LR grows exponentially from `start_lr` to
//! `end_lr`, track an exponentially smoothed loss, stop once it exceeds `diverge` × its best,
//! and suggest the LR where the smoothed loss falls fastest (steepest negative slope
//! against log LR) on the way down to its minimum.

use burn::config::Config;

use crate::data::Split;
use crate::train::driver::{Driver, Event};
use crate::train::schedule::LrRange;
use crate::train::{TrainError, Trainer};

#[derive(Config, Debug, PartialEq)]
pub struct LrFinderConfig {
    #[config(default = 1e-7)]
    pub start_lr: f64,
    #[config(default = 10.0)]
    pub end_lr: f64,
    #[config(default = 100)]
    pub num_iter: usize,
    /// Weight of the newest loss in the moving average.
    #[config(default = 0.05)]
    pub smoothing: f64,
    #[config(default = 5.0)]
    pub diverge: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LrFinderResult {
    pub lrs: Vec<f64>,
    /// Smoothed (bias-corrected) losses, one per LR.
    pub losses: Vec<f64>,
    pub suggestion: Option<f64>,
    /// True when the run stopped early because the loss blew up.
    pub diverged: bool,
}

impl LrFinderConfig {
    /// The ramp, at the one-cycle's starting momentum `momentum`.
    pub fn range(&self, momentum: f64) -> LrRange {
        LrRange { start_lr: self.start_lr, end_lr: self.end_lr, steps: self.num_iter, momentum }
    }
}

/// The loss curve as the range test reads it: an exponential moving average of the step
/// losses, bias-corrected (as Adam's moments are) so that the first points are not pulled
/// towards zero, and the divergence rule.
#[derive(Debug, Clone)]
pub struct Smoother {
    smoothing: f64,
    diverge: f64,
    avg: f64,
    points: i32,
    best: f64,
}

impl Smoother {
    pub fn new(config: &LrFinderConfig) -> Self {
        Self { smoothing: config.smoothing, diverge: config.diverge, avg: 0.0, points: 0, best: f64::INFINITY }
    }

    /// Adds one step's loss; returns the smoothed loss and whether the run has diverged (the
    /// smoothed loss above `diverge` × the best so far; never on the first point).
    pub fn add(&mut self, loss: f64) -> (f64, bool) {
        self.avg = (1.0 - self.smoothing) * self.avg + self.smoothing * loss;
        self.points += 1;
        let smoothed = self.avg / (1.0 - (1.0 - self.smoothing).powi(self.points));
        self.best = self.best.min(smoothed);
        (smoothed, self.points > 1 && smoothed > self.diverge * self.best)
    }
}

/// Steepest descent of `losses` against log LR, looked for only before the lowest loss: past
/// the minimum the loss is diverging, and a spike there can fall faster than the real descent.
/// The first few points are skipped (the moving average is still warming up).
pub fn suggest(lrs: &[f64], losses: &[f64]) -> Option<f64> {
    let skip_start = if lrs.len() > 20 { 5 } else { 0 };
    let lowest =
        (0..losses.len()).filter(|&i| losses[i].is_finite()).min_by(|&a, &b| losses[a].total_cmp(&losses[b]))?;
    if lowest < skip_start + 2 {
        return None;
    }
    (skip_start + 1..=lowest)
        .map(|i| (i, (losses[i] - losses[i - 1]) / (lrs[i].ln() - lrs[i - 1].ln())))
        .filter(|(_, g)| g.is_finite())
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .filter(|(_, g)| *g < 0.0)
        .map(|(i, _)| lrs[i])
}

/// Runs the test with a fresh `trainer` (consumed: the trained weights are thrown away) on the
/// training driver: a read-back every step, epochs rolling over without a test pass.
/// `on_point` sees each (step, lr, smoothed loss) as it is measured.
pub async fn run(
    config: &LrFinderConfig,
    mut trainer: Trainer,
    data: &Split,
    mut on_point: impl FnMut(usize, f64, f64),
) -> Result<LrFinderResult, TrainError> {
    let momentum = trainer.config.schedule.max_momentum;
    trainer.use_range_schedule(config.range(momentum));
    let mut driver = Driver::new(trainer, 1).without_test_pass().with_stop_at(Some(config.num_iter));
    let (mut lrs, mut losses) = (Vec::new(), Vec::new());
    let mut smoother = Smoother::new(config);
    let mut diverged = false;
    'steps: while !driver.stopped() {
        let events = match driver.advance(data, data).await {
            Ok(events) => events,
            // A NaN or infinite loss is where the range test ends.
            Err(TrainError::NonFinite { .. }) => {
                diverged = true;
                break;
            }
            Err(e) => return Err(e),
        };
        for event in events {
            let Event::Steps { progress, steps: 1.., .. } = event else { continue };
            let (smoothed, blew_up) = smoother.add(progress.recent_loss);
            on_point(lrs.len(), progress.lr, smoothed);
            lrs.push(progress.lr);
            losses.push(smoothed);
            if blew_up {
                diverged = true;
                break 'steps;
            }
        }
    }
    let suggestion = suggest(&lrs, &losses);
    Ok(LrFinderResult { lrs, losses, suggestion, diverged })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lr_grows_exponentially_between_the_bounds() {
        let c = LrFinderConfig::new().with_start_lr(1e-4).with_end_lr(1.0).with_num_iter(5).range(0.9);
        let lrs: Vec<f64> = (0..5).map(|i| c.lr(i)).collect();
        for (got, want) in lrs.iter().zip([1e-4, 1e-3, 1e-2, 1e-1, 1.0]) {
            assert!((got / want - 1.0).abs() < 1e-9, "{lrs:?}");
        }
    }

    #[test]
    fn smoothing_is_bias_corrected_and_follows_the_moving_average() {
        let config = LrFinderConfig::new();
        // A constant loss reads as itself from the first point: without the correction the
        // first smoothed value would be 0.05 × 2.3.
        let mut s = Smoother::new(&config);
        for _ in 0..10 {
            let (v, diverged) = s.add(2.3);
            assert!((v - 2.3).abs() < 1e-12, "{v}");
            assert!(!diverged);
        }
        // Then a jump to 1.0: the average moves 5 % of the way per point, the correction
        // shrinking as (1 - 0.95^n).
        let mut s = Smoother::new(&config);
        s.add(2.0);
        let (v, _) = s.add(1.0);
        let avg = 0.95 * (0.05 * 2.0) + 0.05 * 1.0;
        assert!((v - avg / (1.0 - 0.95f64.powi(2))).abs() < 1e-12, "{v}");
        // A smoothing of 1 is the raw loss.
        let mut raw = Smoother::new(&LrFinderConfig::new().with_smoothing(1.0));
        assert_eq!(raw.add(3.0).0, 3.0);
        assert_eq!(raw.add(7.0).0, 7.0);
    }

    #[test]
    fn divergence_is_the_smoothed_loss_above_five_times_its_best() {
        let mut s = Smoother::new(&LrFinderConfig::new().with_smoothing(1.0));
        // The first point cannot diverge, however large.
        assert!(!s.add(1e9).1);
        let mut s = Smoother::new(&LrFinderConfig::new().with_smoothing(1.0));
        assert!(!s.add(2.0).1);
        assert!(!s.add(1.0).1, "a new best");
        assert!(!s.add(5.0).1, "exactly 5 × best is not above it");
        assert!(s.add(5.01).1);
        // With the default smoothing a single spike is damped and does not stop the run.
        let mut s = Smoother::new(&LrFinderConfig::new());
        for _ in 0..20 {
            s.add(1.0);
        }
        let (v, diverged) = s.add(10.0);
        assert!(!diverged && (v - 1.682).abs() < 1e-3, "one spike of 10× reads as {v}");
        // A loss that stays at 10× crosses the line on the 8th point.
        let stopped = (0..100).position(|_| s.add(10.0).1);
        assert_eq!(stopped, Some(7));
    }

    #[test]
    fn suggestion_is_the_steepest_descent_before_the_minimum() {
        let lrs: Vec<f64> = (0..40).map(|i| 10f64.powf(-6.0 + i as f64 * 0.2)).collect();
        // flat, a steep drop over 13..=17, a slow decline to the minimum at 25, then a spike
        // whose falling edge (30..=32) is steeper than the real descent, then a blow-up.
        let losses: Vec<f64> = (0..40)
            .map(|i| match i {
                0..=12 => 2.3,
                13..=17 => 2.3 - (i - 12) as f64 * 0.2,
                18..=25 => 1.3 - (i - 17) as f64 * 0.01,
                26..=29 => 1.22 + (i - 25) as f64 * 0.5,
                30..=32 => 3.22 - (i - 29) as f64 * 0.6,
                _ => 1.5 + (i - 32) as f64,
            })
            .collect();
        let s = suggest(&lrs, &losses).unwrap();
        assert!(s >= lrs[13] && s <= lrs[17], "{s}");
        assert_eq!(suggest(&lrs, &vec![1.0; 40]), None, "no descent, no suggestion");
        let rising: Vec<f64> = (0..40).map(|i| i as f64).collect();
        assert_eq!(suggest(&lrs, &rising), None);
    }
}

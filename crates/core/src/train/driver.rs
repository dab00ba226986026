//! The training driver every shell uses: it advances a [`Trainer`] from read-back to read-back,
//! closes each epoch with its test pass, keeps the clock, and stops when asked. It reports
//! [`Event`]s; the CLI renders them as a progress bar, the page as charts. Shells never write
//! the trainer's fields.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::module::Module;
use web_time::Instant;

use super::metrics::EpochMetrics;
use super::{Evaluation, LastPasses, Progress, TrainError, Trainer, evaluate};
use crate::data::Split;

/// Test images per forward pass at the end of an epoch (and for `eval`): large enough to keep
/// a GPU busy, small enough for a browser's memory.
pub const EVAL_BATCH: usize = 500;

/// A stop request a shell can set from anywhere (Ctrl-C handler, Stop button): the driver ends
/// its current read-back early and reports [`Driver::stopped`].
#[derive(Clone, Debug, Default)]
pub struct Interrupter(Arc<AtomicBool>);

impl Interrupter {
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was requested.
    pub fn stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Requests a stop; true if one had already been requested.
    pub fn stop_again(&self) -> bool {
        self.0.swap(true, Ordering::SeqCst)
    }
}

/// What happened since the last call of [`Driver::advance`].
#[derive(Debug, Clone)]
pub enum Event {
    /// Training steps and their read-back: `progress` as of the last step, `steps` taken in
    /// `seconds`.
    Steps { progress: Progress, steps: usize, seconds: f64 },
    /// An epoch closed with its test pass (of [`Trainer::eval_model`]); `tta` is the same
    /// model's flip-TTA pass, on the last epoch of a recipe with `tta`.
    Epoch { metrics: EpochMetrics, evaluation: Evaluation, tta: Option<Evaluation> },
}

pub struct Driver {
    trainer: Trainer,
    sync_every: usize,
    stop_at: Option<usize>,
    interrupter: Interrupter,
    test_pass: bool,
    eval_batch: usize,
}

impl Driver {
    /// Reads losses back every `sync_every` steps (1: every step; on a GPU every read-back
    /// stalls the queue).
    pub fn new(trainer: Trainer, sync_every: usize) -> Self {
        Self {
            trainer,
            sync_every: sync_every.max(1),
            stop_at: None,
            interrupter: Interrupter::default(),
            test_pass: true,
            eval_batch: EVAL_BATCH,
        }
    }

    /// Test images per forward pass ([`EVAL_BATCH`] unless the device's buffers need fewer:
    /// `limits::eval_batch`).
    pub fn with_eval_batch(mut self, images: usize) -> Self {
        self.eval_batch = images.max(1);
        self
    }

    /// Epochs roll over without a test pass or a history record, and no [`Event::Epoch`] is
    /// reported: the LR range test steps across epochs until its own stop.
    pub fn without_test_pass(mut self) -> Self {
        self.test_pass = false;
        self
    }

    /// Stops (as an interrupt would) once the trainer has taken `step` steps in all.
    pub fn with_stop_at(mut self, step: Option<usize>) -> Self {
        self.stop_at = step;
        self
    }

    /// Changes the read-back cadence (`bench` times different ones on one run).
    pub fn set_sync_every(&mut self, sync_every: usize) {
        self.sync_every = sync_every.max(1);
    }

    pub fn interrupter(&self) -> Interrupter {
        self.interrupter.clone()
    }

    pub fn trainer(&self) -> &Trainer {
        &self.trainer
    }

    pub fn into_trainer(self) -> Trainer {
        self.trainer
    }

    pub fn finished(&self) -> bool {
        self.trainer.finished()
    }

    /// Whether the run was asked to stop (interrupter or `stop_at`) before finishing.
    pub fn stopped(&self) -> bool {
        !self.finished() && (self.interrupter.stopped() || self.stop_at.is_some_and(|s| self.trainer.step >= s))
    }

    /// Trains up to the next read-back: `sync_every` steps, fewer at the end of an epoch or on
    /// a stop request. At the end of an epoch it also runs the test pass on `test`. Nothing
    /// happens (no events) once the run is finished or stopped.
    pub async fn advance(&mut self, train: &Split, test: &Split) -> Result<Vec<Event>, TrainError> {
        let mut events = Vec::new();
        if self.finished() || self.stopped() {
            return Ok(events);
        }
        let t = &mut self.trainer;
        t.begin_epoch(train.len());
        let start = Instant::now();
        let mut steps = 0;
        while steps < self.sync_every && !self.interrupter.stopped() && self.stop_at.is_none_or(|s| t.step < s) {
            if !t.train_step(train) {
                break;
            }
            steps += 1;
        }
        let progress = t.sync().await?;
        let seconds = start.elapsed().as_secs_f64();
        t.add_training_seconds(seconds);
        events.push(Event::Steps { progress, steps, seconds });
        if progress.batch_in_epoch >= progress.batches_per_epoch && !self.test_pass {
            t.roll_over_epoch();
        } else if progress.batch_in_epoch >= progress.batches_per_epoch {
            let start = Instant::now();
            let plain = t.device.clone().inner();
            let model = t.eval_model();
            let evaluation = evaluate(&model, test, self.eval_batch, &plain, false).await?;
            t.check_health(&evaluation).await?;
            let mut last = LastPasses::default();
            if t.history.len() + 1 == t.config.epochs {
                if t.config.tta {
                    last.tta = Some(evaluate(&model, test, self.eval_batch, &plain, true).await?);
                }
                if t.ema.is_some() {
                    last.weights = Some(evaluate(&t.model.valid(), test, self.eval_batch, &plain, false).await?);
                }
            }
            let metrics = t.finish_epoch(&evaluation, &last, start.elapsed().as_secs_f64());
            events.push(Event::Epoch { metrics, evaluation, tta: last.tta });
        }
        Ok(events)
    }
}

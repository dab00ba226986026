//! The training loop, shared by the native CLI and the browser. It is driven step by step
//! (`begin_epoch`, `train_step`, `sync`, `finish_epoch`) so that a shell can draw progress,
//! yield to the browser's event loop, or stop on Ctrl-C between any two steps.
//!
//! Read-backs are the expensive part on a GPU: losses and correct counts stay on the device
//! and are fetched in one transfer by `sync`, as often as the shell asks for it.

pub mod driver;
pub mod ema;
pub mod limits;
pub mod lr_finder;
pub mod metrics;
pub mod optim;
pub mod schedule;

use burn::config::Config;
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};

use thiserror::Error;

use crate::data::augment::{self, AugmentConfig};
use crate::data::{IMAGE_BYTES, Split};
use crate::error::{ConfigError, DeviceError};
use crate::io::readback;
use crate::io::traffic::uploaded;
use crate::model::{Model, ModelConfig};
use crate::rng::Rng;
use ema::{Ema, EmaConfig};
use metrics::{ConfusionMatrix, EpochMetrics, RunningMean};
use optim::{Optimizer, OptimizerConfig, OptimizerKind};
use schedule::{OneCycle, OneCycleConfig, Schedule};

/// The whole recipe, in parts: the model, the augmentation, the optimizer (with each kind's
/// own defaults) and the schedule's shape. Saved as `config.json` next to the results and in
/// every checkpoint.
#[derive(Config, Debug, PartialEq)]
pub struct TrainingConfig {
    pub model: ModelConfig,
    #[config(default = "AugmentConfig::new()")]
    pub augment: AugmentConfig,
    /// Adam as in the original notebook; `sgd` is Nesterov momentum. Its peak LR and weight
    /// decay default per kind (`OptimizerConfig::new`).
    #[config(default = "OptimizerConfig::new(OptimizerKind::Adam)")]
    pub optimizer: OptimizerConfig,
    /// One-cycle, peaking at epoch 5 of 24 as in the original.
    #[config(default = "OneCycleConfig::new()")]
    pub schedule: OneCycleConfig,
    #[config(default = 24)]
    pub epochs: usize,
    #[config(default = 512)]
    pub batch_size: usize,
    #[config(default = 0.0)]
    pub label_smoothing: f64,
    /// A moving average of the weights, tested and saved instead of them (off by default).
    #[config(default = "EmaConfig::new()")]
    pub ema: EmaConfig,
    /// The last epoch's test pass is also run with flip test-time augmentation (both recorded).
    #[config(default = false)]
    pub tta: bool,
    #[config(default = 42)]
    pub seed: u64,
}

/// The two recipes a run starts from; every part stays a flag of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipe {
    /// The original notebook: Adam, one-cycle peaking at epoch 5, CutOut, no label smoothing.
    Seed,
    /// The seed recipe's network, data and schedule shape with the fast CIFAR-10 trainers'
    /// training: SGD-Nesterov (with Page's max LR and logit scale), label smoothing 0.2, flip
    /// TTA at the end. Without a weight average: Page's (0.99 every 5 steps) cost 3.4 points at
    /// width 0.25 under this schedule, which anneals the LR to nearly 0 itself (README, "The
    /// recipe's evidence").
    Best,
}

impl Recipe {
    pub fn config(self, model: ModelConfig) -> TrainingConfig {
        match self {
            Self::Seed => TrainingConfig::recipe(model, OptimizerKind::Adam),
            Self::Best => TrainingConfig::recipe(model, OptimizerKind::Sgd).with_label_smoothing(0.2).with_tta(true),
        }
    }
}

impl std::str::FromStr for Recipe {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.to_ascii_lowercase().as_str() {
            "seed" => Ok(Self::Seed),
            "best" => Ok(Self::Best),
            _ => Err(ConfigError::new("recipe", format!("'{s}' is unknown (expected seed or best)"))),
        }
    }
}

impl TrainingConfig {
    /// The recipe with `kind` and that optimizer's defaults, the logit scale its max LR
    /// assumes included: what the CLI's flags and the page's form start from.
    pub fn recipe(model: ModelConfig, kind: OptimizerKind) -> Self {
        Self::new(model.with_logit_scale(kind.default_logit_scale())).with_optimizer(OptimizerConfig::new(kind))
    }

    /// The peak LR, kept with the optimizer's other settings.
    pub fn with_max_lr(self, max_lr: f64) -> Self {
        let optimizer = self.optimizer.clone().with_max_lr(max_lr);
        self.with_optimizer(optimizer)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.model.validate()?;
        self.augment.validate()?;
        self.optimizer.validate()?;
        self.schedule.validate()?;
        self.ema.validate()?;
        if self.epochs == 0 {
            return Err(ConfigError::new("epochs", "must be at least 1"));
        }
        if self.batch_size < 2 {
            return Err(ConfigError::new("batch_size", "must be at least 2 (BatchNorm needs batch statistics)"));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(ConfigError::new(
                "label_smoothing",
                format!("must be in [0, 1), got {}", self.label_smoothing),
            ));
        }
        Ok(())
    }

    pub fn one_cycle(&self, steps_per_epoch: usize) -> Result<OneCycle, ConfigError> {
        OneCycle::new(self.schedule.clone(), self.optimizer.max_lr, self.epochs * steps_per_epoch)
    }

    /// Reads a recipe saved by any version of this program: before the optimizer and schedule
    /// were nested, their fields sat at the top level (checkpoints of that layout still resume).
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        Self::from_value(serde_json::from_str(json)?)
    }

    pub fn from_value(mut value: serde_json::Value) -> Result<Self, serde_json::Error> {
        if let Some(flat) = value.as_object_mut().filter(|o| o.contains_key("max_lr")) {
            let mut take = |keys: &[&str]| {
                let part: serde_json::Map<_, _> =
                    keys.iter().filter_map(|&k| flat.remove(k).map(|v| (k.to_string(), v))).collect();
                part
            };
            let mut optimizer = take(&["max_lr", "weight_decay", "beta2", "eps"]);
            let schedule = take(&["pct_start", "div_factor", "final_div_factor", "base_momentum", "max_momentum"]);
            if let Some(kind) = flat.remove("optimizer") {
                optimizer.insert("kind".into(), kind);
            }
            flat.insert("optimizer".into(), optimizer.into());
            flat.insert("schedule".into(), schedule.into());
        }
        // Recipes saved before the moving average and TTA existed had neither.
        if let Some(o) = value.as_object_mut() {
            o.entry("ema").or_insert_with(|| serde_json::to_value(EmaConfig::new()).expect("serialises"));
            o.entry("tta").or_insert(false.into());
            if let Some(model) = o.remove("model") {
                let model = ModelConfig::from_value(model)?;
                o.insert("model".into(), serde_json::to_value(model).expect("serialises"));
            }
        }
        serde_json::from_value(value)
    }
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum TrainError {
    /// A loss that is NaN or infinite: training diverged (LR too high?).
    #[error("training diverged: loss is {loss} at step {step}; lower the max LR or check the data")]
    NonFinite { step: usize, loss: f64 },
    /// Found at the end of an epoch, before anything of it is recorded or saved.
    #[error("training diverged in epoch {epoch}: {problem}; lower the max LR or check the data")]
    Diverged { epoch: usize, problem: String },
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// A loss this many times chance (ln 10 ≈ 2.3 for CIFAR-10) means the run diverged even if
/// it is finite: a model that learned nothing stays near 1×, an overconfident one below 10×.
pub const EXPLODED_LOSS: f64 = 100.0;

/// Mean cross-entropy with PyTorch's label smoothing: `(1-ε)·NLL + ε·mean_k(-log p_k)`.
pub fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>, smoothing: f64) -> Tensor<1> {
    let [n, _] = logits.dims();
    let logp = log_softmax(logits, 1);
    let nll = logp.clone().gather(1, labels.reshape([n, 1])).neg();
    let loss = if smoothing > 0.0 {
        let uniform = logp.mean_dim(1).neg();
        nll.mul_scalar(1.0 - smoothing) + uniform.mul_scalar(smoothing)
    } else {
        nll
    };
    loss.mean()
}

/// Host copies of a batch: pixels (u8 CHW) and labels.
pub fn gather_batch(data: &Split, indices: &[u32]) -> (Vec<u8>, Vec<i64>) {
    let mut pixels = Vec::with_capacity(indices.len() * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(indices.len());
    for &i in indices {
        pixels.extend_from_slice(data.image(i as usize));
        labels.push(data.label(i as usize) as i64);
    }
    (pixels, labels)
}

/// Where the current epoch stands; part of a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochCursor {
    /// This epoch's shuffled order of training images.
    pub order: Vec<u32>,
    pub next_batch: usize,
    pub running: RunningMean,
    /// Training seconds spent in this epoch so far.
    pub seconds: f64,
}

/// What `sync` learned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub step: usize,
    pub batch_in_epoch: usize,
    pub batches_per_epoch: usize,
    pub lr: f64,
    /// Mean loss / accuracy of the epoch so far.
    pub loss: f64,
    pub accuracy: f64,
    /// Mean loss of the batches fetched by this sync.
    pub recent_loss: f64,
}

pub struct Trainer {
    pub config: TrainingConfig,
    pub model: Model,
    pub optim: Optimizer,
    pub schedule: Schedule,
    /// The autodiff device the model trains on.
    pub device: Device,
    pub rng: Rng,
    /// Optimizer steps taken so far.
    pub step: usize,
    pub steps_per_epoch: usize,
    /// Completed epochs.
    pub history: Vec<EpochMetrics>,
    pub cursor: Option<EpochCursor>,
    /// The moving average of the weights, when the recipe has one.
    pub ema: Option<Ema>,
    pending: Vec<(Tensor<1>, Tensor<1, Int>, usize)>,
}

impl Trainer {
    /// A fresh run: model initialised from the seed on `device` (plain or autodiff).
    pub fn new(config: TrainingConfig, device: &Device, train_len: usize) -> Result<Self, TrainError> {
        // Before the model is built: a width of inf would not even allocate.
        config.validate()?;
        let device = device.clone().autodiff();
        device.seed(config.seed);
        let model = config.model.init(&device);
        Self::with_model(config, model, &device, train_len)
    }

    /// Fine-tuning: start from `model` (e.g. loaded weights) with a fresh optimizer and schedule.
    pub fn with_model(
        config: TrainingConfig,
        model: Model,
        device: &Device,
        train_len: usize,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        let model = model.with_logit_scale(config.model.logit_scale);
        if train_len < config.batch_size {
            return Err(ConfigError::new(
                "batch_size",
                format!("{} is larger than the {train_len} training images", config.batch_size),
            )
            .into());
        }
        let device = device.clone().autodiff();
        let steps_per_epoch = train_len / config.batch_size;
        let schedule = Schedule::OneCycle(config.one_cycle(steps_per_epoch)?);
        let model = model.to_device(&device).train();
        Ok(Self {
            optim: Optimizer::new(config.optimizer.clone()),
            rng: Rng::new(config.seed),
            ema: config.ema.enabled().then(|| Ema::new(&model, config.ema.decay)),
            model,
            schedule,
            device,
            step: 0,
            steps_per_epoch,
            history: Vec::new(),
            cursor: None,
            pending: Vec::new(),
            config,
        })
    }

    pub fn total_steps(&self) -> usize {
        self.config.epochs * self.steps_per_epoch
    }

    /// The LR of every step of the run, as planned (the page and `curves.png` draw it).
    pub fn planned_lrs(&self) -> Vec<f64> {
        (0..self.total_steps()).map(|s| self.schedule.lr(s)).collect()
    }

    /// Turns this fresh trainer into the LR range test's: `range` sets LR and momentum.
    pub(crate) fn use_range_schedule(&mut self, range: schedule::LrRange) {
        self.schedule = Schedule::Range(range);
    }

    /// Ends the current epoch without a test pass or a history record (the LR range test runs
    /// across epochs); the next `begin_epoch` reshuffles.
    pub(crate) fn roll_over_epoch(&mut self) {
        self.cursor = None;
    }

    pub fn finished(&self) -> bool {
        self.history.len() >= self.config.epochs
    }

    /// Shuffles the training set for the next epoch (no-op when one is in progress).
    pub fn begin_epoch(&mut self, train_len: usize) {
        if self.cursor.is_none() {
            let mut order: Vec<u32> = (0..train_len as u32).collect();
            self.rng.shuffle(&mut order);
            self.cursor = Some(EpochCursor { order, next_batch: 0, running: RunningMean::default(), seconds: 0.0 });
        }
    }

    /// Trains on the epoch's next batch; false when the epoch has no batch left.
    pub fn train_step(&mut self, data: &Split) -> bool {
        let bs = self.config.batch_size;
        let cursor = self.cursor.as_mut().expect("begin_epoch first");
        if cursor.next_batch >= self.steps_per_epoch {
            return false;
        }
        let start = cursor.next_batch * bs;
        let indices = cursor.order[start..start + bs].to_vec();
        cursor.next_batch += 1;
        let (lr, momentum) = self.schedule.at(self.step);
        let (pixels, labels) = gather_batch(data, &indices);
        let (loss, correct) = self.step_on(&pixels, &labels, lr, momentum);
        self.pending.push((loss, correct, bs));
        self.step += 1;
        if let Some(ema) = self.ema.as_mut()
            && self.step.is_multiple_of(self.config.ema.every)
        {
            ema.update(&self.model);
        }
        true
    }

    /// The model the test pass evaluates and the run saves, on the plain device: the moving
    /// average of the weights when the recipe has one, else the weights.
    pub fn eval_model(&self) -> Model {
        let plain = self.model.valid();
        match &self.ema {
            Some(ema) => ema.model(plain),
            None => plain,
        }
    }

    /// One optimisation step on the given batch; returns the (detached) loss and the number of
    /// correct predictions, both still on the device.
    pub fn step_on(&mut self, pixels: &[u8], labels: &[i64], lr: f64, momentum: f64) -> (Tensor<1>, Tensor<1, Int>) {
        let n = labels.len();
        let params = augment::draw(&self.config.augment, &mut self.rng, n);
        // Dropout masks come from the backend RNG (GPU) or the host mask generator (CPU):
        // reseed both from ours every step so that a resumed run draws the same masks.
        let seed = self.rng.next_u64();
        self.device.seed(seed);
        crate::model::ops::seed_host_masks(seed);
        let x = augment::batch(pixels, &params, &self.config.augment, &self.device);
        uploaded(n * 8);
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels.to_vec(), [n]), &self.device);
        let logits = self.model.forward(x);
        let correct = logits.clone().detach().argmax(1).reshape([n]).equal(y.clone()).int().sum();
        let loss = cross_entropy(logits, y, self.config.label_smoothing);
        let grads = GradientsParams::from_grads(loss.backward(), &self.model);
        // Modules are handles to shared tensors: the clone is cheap.
        self.model = self.optim.step(self.model.clone(), grads, lr, momentum);
        (loss.detach().inner(), correct.inner())
    }

    /// Fetches the losses of the steps since the last sync (one transfer) and checks them.
    pub async fn sync(&mut self) -> Result<Progress, TrainError> {
        let pending = std::mem::take(&mut self.pending);
        let cursor = self.cursor.as_mut().expect("begin_epoch first");
        let mut recent = RunningMean::default();
        if !pending.is_empty() {
            let first_step = self.step - pending.len();
            // One read-back for all: the losses, then the correct counts (exact as f32: at
            // most a batch).
            let mut both: Vec<Tensor<1>> = pending.iter().map(|p| p.0.clone()).collect();
            both.extend(pending.iter().map(|p| p.1.clone().float()));
            let values = readback::f32s(Tensor::cat(both, 0)).await?;
            let (losses, correct) = values.split_at(pending.len());
            for (i, ((loss, correct), (_, _, n))) in losses.iter().zip(correct).zip(&pending).enumerate() {
                let (loss, correct) = (*loss as f64, *correct as u64);
                if !loss.is_finite() {
                    return Err(TrainError::NonFinite { step: first_step + i + 1, loss });
                }
                cursor.running.add(loss, correct, *n as u64);
                recent.add(loss, correct, *n as u64);
            }
        }
        Ok(Progress {
            step: self.step,
            batch_in_epoch: cursor.next_batch,
            batches_per_epoch: self.steps_per_epoch,
            lr: self.schedule.lr(self.step.saturating_sub(1)),
            loss: cursor.running.loss(),
            accuracy: cursor.running.accuracy(),
            recent_loss: recent.loss(),
        })
    }

    /// Adds wall-clock training seconds to the running epoch (the driver's clock).
    pub(crate) fn add_training_seconds(&mut self, seconds: f64) {
        if let Some(c) = self.cursor.as_mut() {
            c.seconds += seconds;
        }
    }

    /// Whether the epoch about to close left a model worth keeping: a finite test loss, losses
    /// below [`EXPLODED_LOSS`] × chance, and finite parameters and BatchNorm statistics (one
    /// read-back of a sum per tensor). A model failing this is never recorded or saved.
    pub async fn check_health(&self, test: &Evaluation) -> Result<(), TrainError> {
        let epoch = self.history.len() + 1;
        let diverged = |problem: String| Err(TrainError::Diverged { epoch, problem });
        let chance = (self.config.model.num_classes as f64).ln();
        let train_loss = self.cursor.as_ref().map_or(f64::NAN, |c| c.running.loss());
        if !test.predictions.is_empty() && !test.loss.is_finite() {
            return diverged(format!("the test loss is {}", test.loss));
        }
        for (what, loss) in [("training", train_loss), ("test", test.loss)] {
            if loss > EXPLODED_LOSS * chance {
                return diverged(format!("the {what} loss exploded to {loss:.3e} (chance is {chance:.2})"));
            }
        }
        let tensors = crate::io::weights::model_tensors(&self.model);
        let sums: Vec<Tensor<1>> = tensors.iter().map(|(_, _, t)| t.clone().detach().inner().sum()).collect();
        let sums = readback::f32s(Tensor::cat(sums, 0)).await?;
        if let Some(((name, _, _), sum)) = tensors.iter().zip(&sums).find(|(_, s)| !s.is_finite()) {
            return diverged(format!("'{name}' holds non-finite values (sum {sum})"));
        }
        Ok(())
    }

    /// Closes the epoch with its test result (of [`Self::eval_model`]); `last` holds the extra
    /// passes of the last epoch; `test_seconds` is all the test passes' duration.
    pub fn finish_epoch(&mut self, test: &Evaluation, last: &LastPasses, test_seconds: f64) -> EpochMetrics {
        let cursor = self.cursor.take().expect("an epoch in progress");
        let images = (cursor.next_batch * self.config.batch_size) as f64;
        let m = EpochMetrics {
            epoch: self.history.len() + 1,
            lr: self.schedule.lr(self.step.saturating_sub(1)),
            train_loss: cursor.running.loss(),
            train_acc: cursor.running.accuracy(),
            test_loss: test.loss,
            test_acc: test.accuracy,
            test_acc_tta: last.tta.as_ref().map(|e| e.accuracy),
            test_acc_weights: last.weights.as_ref().map(|e| e.accuracy),
            seconds: cursor.seconds + test_seconds,
            images_per_sec: if cursor.seconds > 0.0 { images / cursor.seconds } else { 0.0 },
        };
        self.history.push(m.clone());
        m
    }
}

/// The test passes only the last epoch runs: the tested model with flip TTA (recipes with
/// `tta`), and the weights themselves when the tested model is their moving average.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LastPasses {
    pub tta: Option<Evaluation>,
    pub weights: Option<Evaluation>,
}

/// A test pass: loss, accuracy, confusion matrix, and each image's prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
    pub confusion: ConfusionMatrix,
    /// Per image: predicted class and its softmax probability.
    pub predictions: Vec<(u8, f32)>,
}

impl Evaluation {
    /// Indices of wrongly classified images, most confident mistakes first.
    pub fn misclassified(&self, data: &Split, limit: usize) -> Vec<usize> {
        let mut wrong: Vec<usize> =
            (0..self.predictions.len()).filter(|&i| self.predictions[i].0 as usize != data.label(i)).collect();
        wrong.sort_by(|&a, &b| self.predictions[b].1.total_cmp(&self.predictions[a].1));
        wrong.truncate(limit);
        wrong
    }
}

/// Logits of a batch in inference mode (BatchNorm running statistics, no dropout), with
/// optional horizontal-flip test-time augmentation (mean of the two softmaxes).
pub fn predict(model: &Model, pixels: &[u8], device: &Device, tta: bool) -> Tensor<2> {
    let x = augment::to_tensor(pixels, device);
    let probs = softmax(model.forward(x.clone()), 1);
    if tta {
        let flipped = softmax(model.forward(x.flip([3])), 1);
        (probs + flipped).div_scalar(2.0)
    } else {
        probs
    }
}

/// Evaluates `model` on `data` in batches; `model` should come from `Module::valid()` and
/// `device` be a plain (non-autodiff) device.
///
/// Every batch's results stay on the device until the end and come back in one transfer: on a
/// GPU a read-back per batch would stall the queue once per batch.
pub async fn evaluate(
    model: &Model,
    data: &Split,
    batch_size: usize,
    device: &Device,
    tta: bool,
) -> Result<Evaluation, TrainError> {
    let mut labels_all = Vec::with_capacity(data.len());
    let mut packed = Vec::new();
    let all: Vec<u32> = (0..data.len() as u32).collect();
    for chunk in all.chunks(batch_size.max(1)) {
        let (pixels, labels) = gather_batch(data, chunk);
        let n = labels.len();
        let probs = predict(model, &pixels, device, tta);
        uploaded(n * 8);
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [n]), device);
        let nll = probs.clone().clamp_min(1e-12).log().gather(1, y.reshape([n, 1])).neg();
        let (conf, pred) = probs.max_dim_with_indices(1);
        // [n, 3]: confidence, predicted class (exact as f32), per-image NLL.
        packed.push(Tensor::cat(vec![conf, pred.float(), nll], 1));
        labels_all.extend(labels);
    }
    let mut confusion = ConfusionMatrix::new(10);
    let mut predictions = Vec::with_capacity(data.len());
    let mut total = RunningMean::default();
    if packed.is_empty() {
        return Ok(Evaluation { loss: total.loss(), accuracy: total.accuracy(), confusion, predictions });
    }
    let values = readback::f32s(Tensor::cat(packed, 0).reshape([data.len() * 3])).await?;
    let mut loss_sum = 0.0f64;
    let mut correct = 0u64;
    for (row, &label) in values.chunks_exact(3).zip(&labels_all) {
        let (conf, pred) = (row[0], row[1] as i64);
        loss_sum += row[2] as f64;
        correct += (pred == label) as u64;
        confusion.add(label as usize, pred as usize);
        predictions.push((pred as u8, conf));
    }
    let n = labels_all.len() as u64;
    total.add(loss_sum / n as f64, correct, n);
    Ok(Evaluation { loss: total.loss(), accuracy: total.accuracy(), confusion, predictions })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_json_round_trips_and_reads_the_old_flat_layout() {
        let sgd = TrainingConfig::recipe(ModelConfig::new().with_width(0.5), OptimizerKind::Sgd).with_epochs(3);
        let sgd = TrainingConfig { model: sgd.model.clone().with_logit_scale(1.0), ..sgd };
        let json = serde_json::to_string(&sgd).unwrap();
        assert_eq!(TrainingConfig::from_json(&json).unwrap(), sgd);
        // config.json as written before the recipe was nested (session 6).
        let old = r#"{"model":{"width":0.5,"dropout":0.05,"num_classes":10},
            "augment":{"pad":4,"flip":true,"cutout":8},"optimizer":"sgd","epochs":3,"batch_size":512,
            "max_lr":0.2,"pct_start":0.20833333333333334,"div_factor":25.0,"final_div_factor":10000.0,
            "weight_decay":0.0005,"label_smoothing":0.0,"base_momentum":0.85,"max_momentum":0.95,
            "beta2":0.999,"eps":1e-8,"seed":42}"#;
        // (with SGD's max LR of then, and no logit scale: 1)
        assert_eq!(TrainingConfig::from_json(old).unwrap(), sgd.with_max_lr(0.2));
        let e = TrainingConfig::from_json(r#"{"model":{"width":1}}"#).unwrap_err().to_string();
        assert!(e.contains("missing field"), "{e}");
    }

    #[test]
    fn each_optimizer_brings_its_own_defaults() {
        let adam = TrainingConfig::recipe(ModelConfig::new(), OptimizerKind::Adam);
        let sgd = TrainingConfig::recipe(ModelConfig::new(), OptimizerKind::Sgd);
        assert_eq!((adam.optimizer.max_lr, adam.optimizer.weight_decay), (0.01, 1e-4));
        assert_eq!((sgd.optimizer.max_lr, sgd.optimizer.weight_decay), (0.4, 5e-4));
        assert_eq!((adam.model.logit_scale, sgd.model.logit_scale), (1.0, 0.125));
        assert_eq!(Recipe::Best.config(ModelConfig::new()).model.logit_scale, 0.125);
        assert_eq!(TrainingConfig::new(ModelConfig::new()), adam, "Adam is the default recipe");
        assert_eq!(adam.schedule, sgd.schedule);
    }
}

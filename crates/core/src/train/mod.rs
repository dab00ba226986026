//! The training loop, shared by the native CLI and the browser. It is driven step by step
//! (`begin_epoch`, `train_step`, `sync`, `finish_epoch`) so that a shell can draw progress,
//! yield to the browser's event loop, or stop on Ctrl-C between any two steps.
//!
//! Read-backs are the expensive part on a GPU: losses and correct counts stay on the device
//! and are fetched in one transfer by `sync`, as often as the shell asks for it.

pub mod driver;
pub mod lr_finder;
pub mod metrics;
pub mod optim;
pub mod schedule;

use burn::config::Config;
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::data::augment::{self, AugmentConfig};
use crate::data::{IMAGE_BYTES, Split};
use crate::io::readback;
use crate::model::{Model, ModelConfig};
use crate::rng::Rng;
use metrics::{ConfusionMatrix, EpochMetrics, RunningMean};
use optim::{Optimizer, OptimizerKind, OptimizerSettings};
use schedule::{OneCycle, OneCycleConfig};

/// The whole recipe. Saved as `config.json` next to the results.
#[derive(Config, Debug, PartialEq)]
pub struct TrainingConfig {
    pub model: ModelConfig,
    #[config(default = "AugmentConfig::new()")]
    pub augment: AugmentConfig,
    /// Adam as in the original notebook; `sgd` is Nesterov momentum.
    #[config(default = "OptimizerKind::Adam")]
    pub optimizer: OptimizerKind,
    #[config(default = 24)]
    pub epochs: usize,
    #[config(default = 512)]
    pub batch_size: usize,
    /// Peak of the one-cycle schedule (found by `lr-find`); the optimizer's default.
    #[config(default = "OptimizerKind::Adam.default_max_lr()")]
    pub max_lr: f64,
    /// Peak at epoch 5 of 24, as in the original. This and the schedule fields below take
    /// their defaults from `OneCycleConfig`, the one place they are written.
    #[config(default = "OneCycleConfig::new(0.0, 0).pct_start")]
    pub pct_start: f64,
    /// Start LR = max_lr / div_factor (PyTorch's default).
    #[config(default = "OneCycleConfig::new(0.0, 0).div_factor")]
    pub div_factor: f64,
    /// End LR = start LR / final_div_factor: the last epochs fine-tune at a tiny LR.
    #[config(default = "OneCycleConfig::new(0.0, 0).final_div_factor")]
    pub final_div_factor: f64,
    /// L2 penalty added to the gradient (PyTorch `weight_decay`); the optimizer's default.
    #[config(default = "OptimizerKind::Adam.default_weight_decay()")]
    pub weight_decay: f64,
    #[config(default = 0.0)]
    pub label_smoothing: f64,
    /// Momentum (SGD) / beta1 (Adam) cycles max → base → max, as PyTorch's OneCycleLR.
    #[config(default = "OneCycleConfig::new(0.0, 0).base_momentum")]
    pub base_momentum: f64,
    #[config(default = "OneCycleConfig::new(0.0, 0).max_momentum")]
    pub max_momentum: f64,
    #[config(default = 0.999)]
    pub beta2: f64,
    /// PyTorch's Adam eps (Burn's default is 1e-5).
    #[config(default = 1e-8)]
    pub eps: f64,
    #[config(default = 42)]
    pub seed: u64,
}

impl TrainingConfig {
    /// The recipe with `kind` and that optimizer's peak LR and weight decay: what the CLI's
    /// flags and the page's form start from.
    pub fn recipe(model: ModelConfig, kind: OptimizerKind) -> Self {
        Self::new(model)
            .with_optimizer(kind)
            .with_max_lr(kind.default_max_lr())
            .with_weight_decay(kind.default_weight_decay())
    }

    pub fn validate(&self) -> Result<(), String> {
        self.model.validate()?;
        self.augment.validate()?;
        if self.epochs == 0 {
            return Err("epochs must be at least 1".into());
        }
        if self.batch_size < 2 {
            return Err("batch size must be at least 2 (BatchNorm needs batch statistics)".into());
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(format!("label smoothing must be in [0, 1), got {}", self.label_smoothing));
        }
        if !(self.max_lr.is_finite() && self.max_lr > 0.0) {
            return Err(format!("max LR must be a positive number, got {}", self.max_lr));
        }
        Ok(())
    }

    pub fn optimizer_settings(&self) -> OptimizerSettings {
        OptimizerSettings { kind: self.optimizer, weight_decay: self.weight_decay, beta2: self.beta2, eps: self.eps }
    }

    pub fn schedule(&self, steps_per_epoch: usize) -> Result<OneCycle, String> {
        OneCycle::new(
            OneCycleConfig::new(self.max_lr, self.epochs * steps_per_epoch)
                .with_pct_start(self.pct_start)
                .with_div_factor(self.div_factor)
                .with_final_div_factor(self.final_div_factor)
                .with_base_momentum(self.base_momentum)
                .with_max_momentum(self.max_momentum),
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum TrainError {
    /// A loss that is NaN or infinite: training diverged (LR too high?).
    NonFinite {
        step: usize,
        loss: f64,
    },
    Config(String),
    Device(String),
}

impl std::fmt::Display for TrainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NonFinite { step, loss } => write!(
                f,
                "training diverged: loss is {loss} at step {step}; lower --max-lr or check the data \
                 (the last good checkpoint is kept)"
            ),
            Self::Config(e) => write!(f, "invalid configuration: {e}"),
            Self::Device(e) => write!(f, "device error: {e}"),
        }
    }
}

impl std::error::Error for TrainError {}

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
    pub schedule: OneCycle,
    /// The autodiff device the model trains on.
    pub device: Device,
    pub rng: Rng,
    /// Optimizer steps taken so far.
    pub step: usize,
    pub steps_per_epoch: usize,
    /// Completed epochs.
    pub history: Vec<EpochMetrics>,
    pub cursor: Option<EpochCursor>,
    pending: Vec<(Tensor<1>, Tensor<1, Int>, usize)>,
}

impl Trainer {
    /// A fresh run: model initialised from the seed on `device` (plain or autodiff).
    pub fn new(config: TrainingConfig, device: &Device, train_len: usize) -> Result<Self, TrainError> {
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
        config.validate().map_err(TrainError::Config)?;
        if train_len < config.batch_size {
            return Err(TrainError::Config(format!(
                "batch size {} is larger than the {train_len} training images",
                config.batch_size
            )));
        }
        let device = device.clone().autodiff();
        let steps_per_epoch = train_len / config.batch_size;
        let schedule = config.schedule(steps_per_epoch).map_err(TrainError::Config)?;
        Ok(Self {
            optim: Optimizer::new(config.optimizer_settings()),
            rng: Rng::new(config.seed),
            model: model.to_device(&device).train(),
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
        self.schedule.config.total_steps
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
        true
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
            let losses: Vec<Tensor<1>> = pending.iter().map(|p| p.0.clone()).collect();
            let correct: Vec<Tensor<1, Int>> = pending.iter().map(|p| p.1.clone()).collect();
            let losses = readback::f32s(Tensor::cat(losses, 0)).await.map_err(TrainError::Device)?;
            let correct = readback::i64s(Tensor::cat(correct, 0)).await.map_err(TrainError::Device)?;
            for (i, ((loss, correct), (_, _, n))) in losses.iter().zip(&correct).zip(&pending).enumerate() {
                let loss = *loss as f64;
                if !loss.is_finite() {
                    return Err(TrainError::NonFinite { step: first_step + i + 1, loss });
                }
                cursor.running.add(loss, *correct as u64, *n as u64);
                recent.add(loss, *correct as u64, *n as u64);
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

    /// Closes the epoch with its test result; `seconds` is the test pass's duration.
    pub fn finish_epoch(&mut self, test: &Evaluation, test_seconds: f64) -> EpochMetrics {
        let cursor = self.cursor.take().expect("an epoch in progress");
        let images = (cursor.next_batch * self.config.batch_size) as f64;
        let m = EpochMetrics {
            epoch: self.history.len() + 1,
            lr: self.schedule.lr(self.step.saturating_sub(1)),
            train_loss: cursor.running.loss(),
            train_acc: cursor.running.accuracy(),
            test_loss: test.loss,
            test_acc: test.accuracy,
            seconds: cursor.seconds + test_seconds,
            images_per_sec: if cursor.seconds > 0.0 { images / cursor.seconds } else { 0.0 },
        };
        self.history.push(m.clone());
        m
    }
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
    let values = readback::f32s(Tensor::cat(packed, 0).reshape([data.len() * 3])).await.map_err(TrainError::Device)?;
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

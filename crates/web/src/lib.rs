//! The browser build (trunk builds this crate for wasm32, index.html names it):
//! a thin JavaScript-facing API over the same core the native CLI drives. Every method
//! returns JSON strings or bytes; the page (`web/app.js`) owns the UI and the event loop.
//!
//! Only async read-backs are used (a synchronous one panics on wasm), and the page awaits one
//! call before making the next, so the shared state is borrowed by one call at a time.
//! Async methods hold that borrow across their read-backs on purpose: it is taken with
//! `try_borrow_mut`, so a call made while another is in flight gets a "busy" error, not a panic.
#![allow(clippy::await_holding_refcell_ref)]

use std::cell::RefCell;
use std::rc::Rc;

use burn::module::Module;
use burn::tensor::Device;
use serde_json::json;
use wasm_bindgen::prelude::*;

use cifar_core::data::{self, CLASSES, Cifar10, IMAGE_BYTES};
use cifar_core::io::weights;
use cifar_core::model::ops::{GpuConvPath, set_gpu_conv_path};
use cifar_core::model::{Model, ModelConfig};
use cifar_core::train::driver::{Driver, Event};
use cifar_core::train::limits::{self, BufferLimits};
use cifar_core::train::lr_finder::{self, LrFinderConfig};
use cifar_core::train::optim::OptimizerKind;
use cifar_core::train::{self as training, Evaluation, Recipe, Trainer, TrainingConfig};

/// Panics reach the browser's console instead of an opaque "unreachable".
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| web_sys::console::error_1(&info.to_string().into())));
}

struct State {
    device: Device,
    /// The adapter's buffer limits: every run is checked against them before it starts.
    limits: BufferLimits,
    data: Option<Cifar10>,
    driver: Option<Driver>,
    /// Weights loaded from a file, used to start fine-tuning or to evaluate.
    loaded: Option<(Model, ModelConfig)>,
    evaluation: Option<Evaluation>,
}

fn err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// The recipe for `optimizer` (`adam` or `sgd`) as a `TrainingConfig` in JSON: the page's form
/// starts from it and switches max LR and weight decay with the optimizer.
#[wasm_bindgen]
pub fn recipe(optimizer: &str) -> Result<String, JsError> {
    let kind: OptimizerKind = optimizer.parse().map_err(err)?;
    serde_json::to_string(&TrainingConfig::recipe(ModelConfig::new(), kind)).map_err(err)
}

/// A named recipe (`seed` or `best`, as `train --recipe`) as a `TrainingConfig` in JSON.
#[wasm_bindgen]
pub fn named_recipe(name: &str) -> Result<String, JsError> {
    let recipe: Recipe = name.parse().map_err(err)?;
    serde_json::to_string(&recipe.config(ModelConfig::new())).map_err(err)
}

/// The class names, in label order, as JSON.
#[wasm_bindgen]
pub fn classes() -> String {
    json!(CLASSES).to_string()
}

/// The six CIFAR-10 file names the page fetches from the server, as JSON.
#[wasm_bindgen]
pub fn data_files() -> String {
    json!(data::ALL_FILES).to_string()
}

#[wasm_bindgen]
pub struct Session {
    state: Rc<RefCell<State>>,
}

#[wasm_bindgen]
impl Session {
    /// Initialises WebGPU (asynchronously: required in browsers before any tensor). The
    /// adapter's `maxStorageBufferBindingSize` and `maxBufferSize` (the device gets the
    /// adapter's limits) bound the batch size and the test pass's batch.
    pub async fn create(max_binding: f64, max_buffer: f64) -> Result<Session, JsError> {
        let device =
            Device::wgpu_options().init_async().await.map_err(|e| err(format!("WebGPU could not start: {e}")))?;
        let limits = BufferLimits { max_binding: max_binding as u64, max_buffer: max_buffer as u64 };
        let state = State { device, limits, data: None, driver: None, loaded: None, evaluation: None };
        Ok(Session { state: Rc::new(RefCell::new(state)) })
    }

    /// Picks how 3×3 convolutions run: `gemm` (im2col kernel + matmul), `gemm-f16` (GEMMs
    /// forward and backward with f16 operands and f32 sums, where the device has f16
    /// shaders), `burn` (Burn's direct kernel) or `auto`, the native CLI's rule: `burn` on a
    /// CPU implementation of WebGPU (SwiftShader, where the two are about even), `gemm` on a
    /// GPU (2.27× Burn's at width 1 through the same WGSL on an H200, natively). Returns the one in use; a choice
    /// the device cannot run is refused and the previous one stays.
    pub fn set_gpu_conv(&self, choice: &str, cpu_adapter: bool) -> Result<String, JsError> {
        let path = match choice {
            "auto" => GpuConvPath::auto(cpu_adapter),
            other => GpuConvPath::from_name(other)
                .ok_or_else(|| err(format!("unknown convolution {other:?} (auto, gemm, gemm-f16 or burn)")))?,
        };
        if !path.supported_on(&self.state()?.device) {
            return Err(err(format!(
                "the convolution {} needs f16 shaders (WebGPU's shader-f16), which this adapter does not offer",
                path.name()
            )));
        }
        set_gpu_conv_path(path);
        Ok(path.name().to_string())
    }

    fn state(&self) -> Result<std::cell::RefMut<'_, State>, JsError> {
        self.state.try_borrow_mut().map_err(|_| err("busy: the previous call has not finished"))
    }

    /// Parses CIFAR-10 from files (the six `.bin` files and/or `cifar-10-binary.tar.gz`),
    /// keeping the first `train_limit` / `test_limit` images (0 = all).
    pub fn load_files(
        &self,
        names: Vec<String>,
        files: Vec<js_sys::Uint8Array>,
        verify: bool,
        train_limit: usize,
        test_limit: usize,
    ) -> Result<String, JsError> {
        let files = names.into_iter().zip(files).map(|(n, f)| (n, f.to_vec())).collect();
        let mut data = data::from_files(files, verify).map_err(err)?;
        if train_limit > 0 {
            data.train = data.train.take(train_limit);
        }
        if test_limit > 0 {
            data.test = data.test.take(test_limit);
        }
        let summary = json!({ "train": data.train.len(), "test": data.test.len() }).to_string();
        self.state()?.data = Some(data);
        Ok(summary)
    }

    /// Loads `model.safetensors` bytes (from the native trainer or a previous page).
    pub fn load_weights(&self, name: &str, bytes: &[u8]) -> Result<String, JsError> {
        let mut s = self.state()?;
        let (model, config) = weights::model_from_bytes(name, bytes, &s.device).map_err(err)?;
        let info = json!({ "width": config.width, "params": model.trainable_params() }).to_string();
        // From now on evaluation, download and classification use these weights.
        s.driver = None;
        s.loaded = Some((model, config));
        Ok(info)
    }

    /// Starts a run from `config` (a `TrainingConfig` as JSON); from the loaded weights when
    /// `fine_tune`; losses read back every `sync_every` steps. Returns the schedule so the page
    /// can draw it before training, and the configuration the run uses.
    pub fn start(&self, config: &str, fine_tune: bool, sync_every: usize) -> Result<String, JsError> {
        let mut s = self.state()?;
        let mut config = TrainingConfig::from_json(config).map_err(|e| err(format!("settings: {e}")))?;
        let loaded = if fine_tune { Some(s.loaded.clone().ok_or_else(|| err("load weights first"))?) } else { None };
        if let Some((_, model_config)) = &loaded {
            config.model = config.model.with_network_of(model_config);
        }
        // Before anything is allocated: a tensor above the limits would lose the device.
        config.validate().map_err(|e| err(format!("settings: {e}")))?;
        limits::check(&config, &s.limits).map_err(|e| err(format!("settings: {e}")))?;
        let n = s.data.as_ref().ok_or_else(|| err("load CIFAR-10 first"))?.train.len();
        let eval_batch = limits::eval_batch(&config.model, &s.limits);
        let trainer = match loaded {
            Some((model, _)) => Trainer::with_model(config, model, &s.device, n),
            None => Trainer::new(config, &s.device, n),
        }
        .map_err(err)?;
        let info = json!({
            "steps_per_epoch": trainer.steps_per_epoch,
            "total_steps": trainer.total_steps(),
            "params": trainer.model.trainable_params(),
            "lrs": trainer.planned_lrs(),
            "config": trainer.config,
        })
        .to_string();
        s.driver = Some(Driver::new(trainer, sync_every).with_eval_batch(eval_batch));
        Ok(info)
    }

    /// Trains up to the next read-back (and the epoch's test pass when the epoch ends): the
    /// driver's events as `{steps, epoch, finished}`, `epoch` being the closed epoch's metrics
    /// or null.
    pub async fn advance(&self) -> Result<String, JsError> {
        let mut guard = self.state()?;
        let s = &mut *guard;
        let (driver, data) = match (s.driver.as_mut(), s.data.as_ref()) {
            (Some(d), Some(data)) => (d, data),
            _ => return Err(err("start a run first")),
        };
        if driver.finished() {
            return Err(err("the run is finished: start a new one"));
        }
        let mut out = json!({ "steps": null, "epoch": null });
        for event in driver.advance(&data.train, &data.test).await.map_err(err)? {
            match event {
                Event::Steps { progress: p, steps, seconds } => {
                    out["steps"] = json!({
                        "steps": steps, "seconds": seconds, "step": p.step, "batch": p.batch_in_epoch,
                        "batches": p.batches_per_epoch, "lr": p.lr, "loss": p.loss, "accuracy": p.accuracy,
                        "recent_loss": p.recent_loss,
                    });
                }
                Event::Epoch { metrics, evaluation, tta } => {
                    out["epoch"] = serde_json::to_value(&metrics).map_err(err)?;
                    s.evaluation = Some(tta.unwrap_or(evaluation));
                }
            }
        }
        out["finished"] = json!(driver.finished());
        Ok(out.to_string())
    }

    /// Evaluates the loaded weights (or the current run's model) on the test images.
    pub async fn evaluate(&self, tta: bool) -> Result<String, JsError> {
        let mut guard = self.state()?;
        let s = &mut *guard;
        let data = s.data.as_ref().ok_or_else(|| err("load CIFAR-10 first"))?;
        let (model, model_config) = match (s.driver.as_ref().map(Driver::trainer), &s.loaded) {
            (Some(t), _) => (t.eval_model(), &t.config.model),
            (None, Some((m, c))) => (m.valid(), c),
            _ => return Err(err("train or load weights first")),
        };
        let plain = s.device.clone().inner();
        let batch = limits::eval_batch(model_config, &s.limits);
        let eval = training::evaluate(&model, &data.test, batch, &plain, tta).await.map_err(err)?;
        let out = json!({ "loss": eval.loss, "accuracy": eval.accuracy }).to_string();
        s.evaluation = Some(eval);
        Ok(out)
    }

    /// Predicted class and confidence of every test image of the last evaluation.
    pub fn predictions(&self) -> Result<String, JsError> {
        let s = self.state()?;
        let eval = s.evaluation.as_ref().ok_or_else(|| err("no evaluation yet"))?;
        Ok(json!(eval.predictions).to_string())
    }

    /// The confusion matrix and per-class accuracy of the last evaluation.
    pub fn confusion(&self) -> Result<String, JsError> {
        let s = self.state()?;
        let eval = s.evaluation.as_ref().ok_or_else(|| err("no evaluation yet"))?;
        Ok(json!({
            "classes": CLASSES, "counts": eval.confusion.counts,
            "per_class": eval.confusion.per_class_accuracy(), "accuracy": eval.confusion.accuracy(),
        })
        .to_string())
    }

    /// The `limit` most confident mistakes: JSON labels, and their pixels via
    /// [`Self::misclassified_pixels`] (3072 CHW bytes each, in the same order).
    pub fn misclassified(&self, limit: usize) -> Result<String, JsError> {
        let s = self.state()?;
        let (eval, data) = match (&s.evaluation, &s.data) {
            (Some(e), Some(d)) => (e, d),
            _ => return Err(err("no evaluation yet")),
        };
        let items: Vec<_> = eval
            .misclassified(&data.test, limit)
            .into_iter()
            .map(|i| json!({ "index": i, "truth": data.test.label(i), "predicted": eval.predictions[i].0, "confidence": eval.predictions[i].1 }))
            .collect();
        Ok(json!(items).to_string())
    }

    pub fn misclassified_pixels(&self, limit: usize) -> Result<Vec<u8>, JsError> {
        let s = self.state()?;
        let (eval, data) = match (&s.evaluation, &s.data) {
            (Some(e), Some(d)) => (e, d),
            _ => return Err(err("no evaluation yet")),
        };
        Ok(eval.misclassified(&data.test, limit).into_iter().flat_map(|i| data.test.image(i).to_vec()).collect())
    }

    /// `model.safetensors` of the current run (or the loaded weights), as the native
    /// trainer writes it.
    pub async fn weights(&self) -> Result<Vec<u8>, JsError> {
        let s = self.state()?;
        let file = match (s.driver.as_ref().map(Driver::trainer), &s.loaded) {
            (Some(t), _) => weights::model_file(&t.eval_model(), &t.config.model, t.step as u64).await,
            (None, Some((m, c))) => weights::model_file(m, c, 0).await,
            _ => return Err(err("train or load weights first")),
        }
        .map_err(err)?;
        file.encode().map_err(err)
    }

    /// LR range test on a fresh copy of the model; returns the curve and the suggestion.
    pub async fn lr_find(&self, config: &str, num_iter: usize) -> Result<String, JsError> {
        let s = self.state()?;
        let config = TrainingConfig::from_json(config).map_err(|e| err(format!("settings: {e}")))?;
        config.validate().map_err(|e| err(format!("settings: {e}")))?;
        limits::check(&config, &s.limits).map_err(|e| err(format!("settings: {e}")))?;
        let data = s.data.as_ref().ok_or_else(|| err("load CIFAR-10 first"))?;
        let trainer = Trainer::new(config, &s.device, data.train.len()).map_err(err)?;
        let finder = LrFinderConfig::new().with_num_iter(num_iter);
        let r = lr_finder::run(&finder, trainer, &data.train, |_, _, _| {}).await.map_err(err)?;
        Ok(json!({ "lrs": r.lrs, "losses": r.losses, "suggestion": r.suggestion, "diverged": r.diverged }).to_string())
    }

    /// Top-3 classes of one image: RGB bytes of a 32×32 image, row-major interleaved (the
    /// page draws the picture scaled to 32×32 on a canvas and passes its RGB values).
    pub async fn classify(&self, rgb: Vec<u8>) -> Result<String, JsError> {
        let s = self.state()?;
        if rgb.len() != IMAGE_BYTES {
            return Err(err(format!("expected 32×32 RGB ({IMAGE_BYTES} bytes), got {}", rgb.len())));
        }
        let model = match (s.driver.as_ref().map(Driver::trainer), &s.loaded) {
            (Some(t), _) => t.eval_model(),
            (None, Some((m, _))) => m.valid(),
            _ => return Err(err("train or load weights first")),
        };
        // Interleaved RGB → the dataset's channel-planar layout.
        let mut planar = vec![0u8; IMAGE_BYTES];
        for p in 0..1024 {
            for c in 0..3 {
                planar[c * 1024 + p] = rgb[p * 3 + c];
            }
        }
        let plain = s.device.clone().inner();
        let probs = training::predict(&model, &planar, &plain, true);
        let probs = cifar_core::io::readback::f32s(probs).await.map_err(err)?;
        let mut ranked: Vec<(usize, f32)> = probs.into_iter().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top: Vec<_> =
            ranked.iter().take(3).map(|(c, p)| json!({ "class": CLASSES[*c], "probability": p })).collect();
        Ok(json!(top).to_string())
    }

    /// Metrics of all finished epochs (JSON lines as in `metrics.jsonl`).
    pub fn history(&self) -> Result<String, JsError> {
        let s = self.state()?;
        Ok(json!(s.driver.as_ref().map(|d| d.trainer().history.clone()).unwrap_or_default()).to_string())
    }
}

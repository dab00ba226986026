//! `train` (the default command): the training loop with its progress bar, checkpoints every
//! epoch, and the run's outputs in `runs/<name>/`.

use std::fs;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use cifar_core::data::{CLASSES, Cifar10};
use cifar_core::io::{checkpoint, weights};
use cifar_core::train::driver::{Driver, EVAL_BATCH, Event};
use cifar_core::train::limits;
use cifar_core::train::lr_finder::LrFinderConfig;
use cifar_core::train::{Evaluation, Progress, Trainer, TrainingConfig};
use cifar_webgpu::backend;
use cifar_webgpu::error::Error;
use cifar_webgpu::plots::{self, LabelledImage};

use super::save;
use crate::args::{LrFindArgs, TrainArgs, base_recipe, load_data, training_config};

/// Files a run writes into its directory (`--force` removes them first).
const RUN_FILES: [&str; 8] = [
    "config.json",
    "metrics.jsonl",
    "curves.png",
    "misclassified.png",
    "confusion.png",
    "model.safetensors",
    "checkpoint.safetensors",
    "lr_find.png",
];

pub(crate) fn train(args: TrainArgs) -> Result<(), Error> {
    // Everything that can be checked without data is checked before any is loaded.
    // `auto` (None): the LR finder sets it once the data is loaded; the optimizer's default
    // stands in until then, so that the rest of the recipe is validated now.
    let default_lr = base_recipe(&args).optimizer.max_lr;
    let max_lr = match args.max_lr.as_deref() {
        Some("auto") => None,
        Some(v) => Some(
            v.parse::<f64>().map_err(|_| Error::Usage(format!("--max-lr: '{v}' is neither a number nor 'auto'")))?,
        ),
        None => Some(default_lr),
    };
    let mut config = training_config(&args, max_lr.unwrap_or(default_lr));
    config.validate()?;
    let _guard;
    let run_dir = match &args.resume {
        Some(dir) => {
            if !args.given.is_empty() {
                return Err(Error::Usage(format!(
                    "--resume continues {} with the recipe saved in its checkpoint; {} cannot change it \
                     (to train on with another recipe, start a new run with --weights {}/model.safetensors)",
                    dir.display(),
                    args.given.iter().map(|id| format!("--{}", id.replace('_', "-"))).collect::<Vec<_>>().join(", "),
                    dir.display()
                )));
            }
            dir.clone()
        }
        None => {
            let dir = args.runs_dir.join(args.name.clone().unwrap_or_else(run_name));
            prepare_run_dir(&dir, args.force)?;
            // An empty directory is removed again if the run fails before writing anything.
            _guard = RemoveIfEmpty(dir.clone());
            dir
        }
    };

    // A run started in exact f32 goes on in f32 unless told otherwise: `auto` would pick bf16
    // on an AMX CPU and silently change the arithmetic halfway (the device is otherwise this
    // machine's, as each part of a run records).
    let mut precision = args.common.precision;
    if let Some(dir) = &args.resume
        && !args.precision_given
        && recorded_precision(dir).as_deref() == Some("f32")
    {
        precision = backend::Precision::F32;
        println!("precision: f32, as {} was started (--precision changes it)", dir.display());
    }
    let (device, device_info) = backend::select(args.common.backend, precision, args.common.gpu_conv)?;
    println!("device: {device_info}");
    // A tensor above the GPU's buffer limits would lose the device mid-run: refused first.
    let fits = |config: &TrainingConfig| device_info.limits.map_or(Ok(()), |l| limits::check(config, &l));
    // (The model of --weights is known once they are read; the LR finder trains --width's.)
    if args.resume.is_none() && (args.weights.is_none() || max_lr.is_none()) {
        fits(&config)?;
    }
    let data = load_data(&args.common)?;
    let n_train = data.train.len();

    let trainer = if args.resume.is_some() {
        let path = run_dir.join("checkpoint.safetensors");
        let bytes = fs::read(&path).map_err(Error::io(&path, "read"))?;
        let trainer = checkpoint::from_bytes(&path.display().to_string(), &bytes, &device, n_train)?;
        if trainer.finished() {
            // Nothing to train, so nothing is written: the run's files stay as they are.
            println!("{} is already finished ({} epochs); nothing to do", run_dir.display(), trainer.history.len());
            return Ok(());
        }
        println!("resuming {} at epoch {}, step {}", run_dir.display(), trainer.history.len() + 1, trainer.step);
        trainer
    } else {
        if max_lr.is_none() {
            let finder = LrFindArgs {
                common: args.common.clone(),
                model: args.model.clone(),
                batch_size: args.batch_size,
                optimizer: config.optimizer.kind,
                start_lr: LrFinderConfig::new().start_lr,
                end_lr: LrFinderConfig::new().end_lr,
                num_iter: LrFinderConfig::new().num_iter,
                seed: args.seed,
                out: run_dir.join("lr_find.png"),
            };
            let found = super::lr_find::lr_find_on(&finder, &data, &device)?;
            let found =
                found.ok_or_else(|| Error::Usage("the LR finder found no descent: pass --max-lr explicitly".into()))?;
            config = config.with_max_lr(found);
        }
        match &args.weights {
            Some(w) => {
                let bytes = fs::read(w).map_err(Error::io(w, "read"))?;
                let (model, model_config) = weights::model_from_bytes(&w.display().to_string(), &bytes, &device)?;
                config.model = config.model.with_network_of(&model_config);
                Trainer::with_model(config, model, &device, n_train)
            }
            None => Trainer::new(config, &device, n_train),
        }?
    };
    fits(&trainer.config)?;
    let eval_batch = device_info.limits.map_or(EVAL_BATCH, |l| limits::eval_batch(&trainer.config.model, &l));
    // The recipe, and the device this run (or this part of a resumed run) used.
    let mut recorded = serde_json::to_value(&trainer.config).expect("the config serialises");
    recorded["device"] = serde_json::to_value(&device_info).expect("the device info serialises");
    save(&run_dir.join("config.json"), serde_json::to_string_pretty(&recorded).expect("JSON serialises").as_bytes())?;
    println!(
        "training {} params (width {}) on {} with {}{}, {} epochs × {} steps, batch {}, max LR {:.3e} → {}",
        trainer.model.trainable_params(),
        trainer.config.model.width,
        device_info.backend,
        trainer.config.optimizer.kind,
        recipe_extras(&trainer.config),
        trainer.config.epochs,
        trainer.steps_per_epoch,
        trainer.config.batch_size,
        trainer.config.optimizer.max_lr,
        run_dir.display()
    );

    let mut driver = Driver::new(trainer, args.sync_every).with_stop_at(args.stop_after).with_eval_batch(eval_batch);
    let interrupter = driver.interrupter();
    // A second Ctrl-C while saving still kills the process the usual way.
    let _ = ctrlc::set_handler(move || {
        if interrupter.stop_again() {
            std::process::exit(130);
        }
    });

    let mut bar: Option<ProgressBar> = None;
    let mut lines = PlainProgress::new(args.progress_every);
    while !driver.finished() {
        // Read before the read-back: the last one of an epoch arrives with the epoch closed.
        let (epoch, epochs, batch, steps) = {
            let t = driver.trainer();
            (t.history.len() + 1, t.config.epochs, t.config.batch_size, t.steps_per_epoch)
        };
        let b = bar.get_or_insert_with(|| epoch_bar(epoch, epochs, steps));
        let mut epoch_done = false;
        let events = match pollster::block_on(driver.advance(&data.train, &data.test)) {
            Ok(events) => events,
            Err(e) => {
                if let Some(b) = bar.take() {
                    b.abandon();
                }
                // Say what is true: a checkpoint exists once an epoch has closed (or a resumed
                // run had one); nothing of this failed part is written over it.
                let kept = run_dir.join("checkpoint.safetensors");
                if kept.exists() {
                    eprintln!("the last checkpoint is kept: {}", kept.display());
                } else {
                    eprintln!("no checkpoint was written: the run failed in its first epoch");
                }
                return Err(e.into());
            }
        };
        for event in events {
            match event {
                Event::Steps { progress: p, steps, seconds } => {
                    if b.is_hidden() {
                        lines.add(&p, steps, seconds, epoch, epochs, batch);
                    }
                    b.set_position(p.batch_in_epoch as u64);
                    if steps > 0 {
                        b.set_message(progress_text(&p, steps, seconds, batch));
                    }
                }
                Event::Epoch { metrics: m, evaluation, tta } => {
                    b.finish_and_clear();
                    epoch_done = true;
                    let t = driver.trainer();
                    println!(
                        "epoch {:>2}/{} lr {:.2e} train loss {:.4} acc {:6.2}% | test loss {:.4} acc {:6.2}% | {:.1}s {:.0} img/s",
                        m.epoch,
                        t.config.epochs,
                        m.lr,
                        m.train_loss,
                        100.0 * m.train_acc,
                        m.test_loss,
                        100.0 * m.test_acc,
                        m.seconds,
                        m.images_per_sec
                    );
                    write_epoch_outputs(t, &run_dir, n_train)?;
                    if t.finished() {
                        write_final_outputs(t, &evaluation, tta.as_ref(), &data, &run_dir)?;
                    }
                }
            }
        }
        if epoch_done {
            bar = None;
        }
        if driver.stopped() {
            if let Some(b) = bar.take() {
                b.abandon();
            }
            let trainer = driver.trainer();
            let path = run_dir.join("checkpoint.safetensors");
            let bytes = pollster::block_on(checkpoint::to_bytes(trainer, n_train))
                .map_err(|source| Error::Save { path: path.clone(), source })?;
            save(&path, &bytes)?;
            println!(
                "stopped at step {}: checkpoint saved to {}; continue with --resume {}",
                trainer.step,
                path.display(),
                run_dir.display()
            );
            return if driver.interrupter().stopped() { Err(Error::Interrupted) } else { Ok(()) };
        }
    }
    Ok(())
}

/// The progress bar's line as plain text, for output nobody watches live (a file, a pipe),
/// where the bar is not drawn: otherwise an epoch of minutes on a CPU passes in silence.
struct PlainProgress {
    every: f64,
    since: std::time::Instant,
    steps: usize,
    seconds: f64,
}

impl PlainProgress {
    fn new(every: f64) -> Self {
        Self { every, since: std::time::Instant::now(), steps: 0, seconds: 0.0 }
    }

    /// Counts a read-back's steps, and prints one line when `every` seconds have passed since
    /// the last (speed over the steps since then).
    fn add(&mut self, p: &Progress, steps: usize, seconds: f64, epoch: usize, epochs: usize, batch: usize) {
        self.steps += steps;
        self.seconds += seconds;
        if self.steps == 0 || self.since.elapsed().as_secs_f64() < self.every {
            return;
        }
        println!(
            "epoch {epoch:>2}/{epochs} step {:>4}/{} {}",
            p.batch_in_epoch,
            p.batches_per_epoch,
            progress_text(p, self.steps, self.seconds, batch)
        );
        *self = Self::new(self.every);
    }
}

/// Loss and accuracy of the epoch so far, the LR, and the speed over `steps` steps.
fn progress_text(p: &Progress, steps: usize, seconds: f64, batch: usize) -> String {
    format!(
        "loss {:.4} acc {:5.2}% lr {:.2e} {:.0} img/s {:.0} ms/step",
        p.loss,
        100.0 * p.accuracy,
        p.lr,
        (steps * batch) as f64 / seconds.max(1e-9),
        1000.0 * seconds / steps as f64,
    )
}

fn epoch_bar(epoch: usize, epochs: usize, steps: usize) -> ProgressBar {
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("epoch {prefix} {bar:25} {pos}/{len} [{elapsed}<{eta}] {msg}")
            .expect("valid template"),
    );
    bar.set_prefix(format!("{epoch:>2}/{epochs}"));
    bar
}

/// The start time in UTC, `YYYYMMDD-HHMMSS`: run folders sort by date.
fn run_name() -> String {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    // 2026-11-26T18:45:23Z → 20261126-184523
    stamp.chars().filter(|c| c.is_ascii_digit() || *c == 'T').collect::<String>().replace('T', "-")
}

/// A new run's directory: created now, so that an unwritable place fails before any work;
/// refused when it already holds a run's files, unless `force` (they are removed).
fn prepare_run_dir(dir: &Path, force: bool) -> Result<(), Error> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::Usage(format!("{}: exists and is not a directory", dir.display())));
    }
    let present: Vec<&str> = RUN_FILES.iter().copied().filter(|f| dir.join(f).exists()).collect();
    if !present.is_empty() && !force {
        let what = if present.contains(&"checkpoint.safetensors") {
            format!("a checkpoint: continue it with --resume {}", dir.display())
        } else {
            format!("the results of a run ({})", present.join(", "))
        };
        return Err(Error::Usage(format!(
            "{} already has {what}; choose another --name, or --force to replace its files",
            dir.display()
        )));
    }
    for f in present {
        fs::remove_file(dir.join(f)).map_err(Error::io(&dir.join(f), "remove"))?;
    }
    fs::create_dir_all(dir).map_err(Error::io(dir, "create"))
}

/// Removes its directory when dropped if the directory is empty (`remove_dir` refuses
/// otherwise): a run that fails before writing anything leaves nothing behind.
struct RemoveIfEmpty(PathBuf);

impl Drop for RemoveIfEmpty {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

/// After every epoch: metrics, curves and the checkpoint, each written atomically.
fn write_epoch_outputs(trainer: &Trainer, dir: &Path, n_train: usize) -> Result<(), Error> {
    let mut jsonl = String::new();
    for m in &trainer.history {
        jsonl += &serde_json::to_string(m).expect("metrics serialise");
        jsonl.push('\n');
    }
    save(&dir.join("metrics.jsonl"), jsonl.as_bytes())?;
    let lrs: Vec<f64> = (0..trainer.step).map(|s| trainer.schedule.lr(s)).collect();
    let png = plots::curves_png(&trainer.history, &lrs, trainer.steps_per_epoch)?;
    save(&dir.join("curves.png"), &png)?;
    let path = dir.join("checkpoint.safetensors");
    let bytes = pollster::block_on(checkpoint::to_bytes(trainer, n_train))
        .map_err(|source| Error::Save { path: path.clone(), source })?;
    save(&path, &bytes)
}

/// The parts of the recipe the progress line would not show otherwise.
fn recipe_extras(c: &TrainingConfig) -> String {
    let mut s = String::new();
    if c.model.logit_scale != 1.0 {
        s += &format!(", logits × {}", c.model.logit_scale);
    }
    if c.label_smoothing > 0.0 {
        s += &format!(", label smoothing {}", c.label_smoothing);
    }
    if c.ema.enabled() {
        s += &format!(", weight average {} every {} steps (tested and saved)", c.ema.decay, c.ema.every);
    }
    if c.tta {
        s += ", flip TTA at the end";
    }
    s
}

/// The tested model (the weight average when the recipe has one), its mistakes and confusion
/// matrix (of the flip-TTA pass when there is one: the run's final accuracy).
fn write_final_outputs(
    trainer: &Trainer,
    plain: &Evaluation,
    tta: Option<&Evaluation>,
    data: &Cifar10,
    dir: &Path,
) -> Result<(), Error> {
    let path = dir.join("model.safetensors");
    let model = trainer.eval_model();
    let file = pollster::block_on(weights::model_file(&model, &trainer.config.model, trainer.step as u64))?;
    save(&path, &file.encode().map_err(|e| Error::Save { path: path.clone(), source: e.into() })?)?;
    let eval = tta.unwrap_or(plain);
    let samples: Vec<LabelledImage> = eval
        .misclassified(&data.test, 40)
        .into_iter()
        .map(|i| LabelledImage {
            pixels: data.test.image(i).to_vec(),
            truth: data.test.label(i),
            predicted: eval.predictions[i].0 as usize,
            confidence: eval.predictions[i].1,
        })
        .collect();
    if !samples.is_empty() {
        let png = plots::misclassified_png(&samples, &CLASSES, 8)?;
        save(&dir.join("misclassified.png"), &png)?;
    }
    let png = plots::confusion_png(&eval.confusion, &CLASSES)?;
    save(&dir.join("confusion.png"), &png)?;
    println!("\n{}", eval.confusion.to_table(&CLASSES));
    if let Some(weights) = trainer.history.last().and_then(|m| m.test_acc_weights) {
        println!("the weights themselves test at {:.2}%, their moving average (saved) below", 100.0 * weights);
    }
    match tta {
        Some(tta) => println!(
            "final test accuracy {:.2}%, with flip TTA {:.2}% — results in {}",
            100.0 * plain.accuracy,
            100.0 * tta.accuracy,
            dir.display()
        ),
        None => println!("final test accuracy {:.2}% — results in {}", 100.0 * plain.accuracy, dir.display()),
    }
    Ok(())
}

/// The precision a run recorded in its `config.json` (the last part's), if it can be read.
fn recorded_precision(run_dir: &Path) -> Option<String> {
    let text = fs::read_to_string(run_dir.join("config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    config["device"]["precision"].as_str().map(str::to_string)
}

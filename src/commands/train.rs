//! `train` (the default command): the training loop with its progress bar, checkpoints every
//! epoch, and the run's outputs in `runs/<name>/`.

use std::fs;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};

use cifar_core::data::{CLASSES, Cifar10};
use cifar_core::io::{checkpoint, weights};
use cifar_core::train::driver::{Driver, Event};
use cifar_core::train::lr_finder::LrFinderConfig;
use cifar_core::train::{Evaluation, Trainer};
use cifar_webgpu::backend;
use cifar_webgpu::plots::{self, LabelledImage};

use super::{INTERRUPTED, save};
use crate::args::{LrFindArgs, TrainArgs, load_data, training_config};

pub(crate) fn train(args: TrainArgs) -> Result<(), String> {
    let data = load_data(&args.common)?;
    let (device, device_info) = backend::select(args.common.backend)?;
    println!("device: {device_info}");
    let n_train = data.train.len();

    let (trainer, run_dir) = if let Some(dir) = &args.resume {
        let path = dir.join("checkpoint.safetensors");
        let bytes = fs::read(&path).map_err(|e| format!("{}: cannot read ({e})", path.display()))?;
        let trainer =
            checkpoint::from_bytes(&path.display().to_string(), &bytes, &device, n_train).map_err(|e| e.to_string())?;
        println!("resuming {} at epoch {}, step {}", dir.display(), trainer.history.len() + 1, trainer.step);
        (trainer, dir.clone())
    } else {
        let dir = args.runs_dir.join(args.name.clone().unwrap_or_else(run_name));
        if dir.join("checkpoint.safetensors").exists() {
            return Err(format!(
                "{} already has a checkpoint: continue it with --resume {0}, or choose another --name",
                dir.display()
            ));
        }
        fs::create_dir_all(&dir).map_err(|e| format!("{}: cannot create ({e})", dir.display()))?;
        let max_lr = match args.max_lr.as_deref() {
            Some("auto") => {
                let finder = LrFindArgs {
                    common: args.common.clone(),
                    model: args.model.clone(),
                    batch_size: args.batch_size,
                    optimizer: args.optimizer,
                    start_lr: LrFinderConfig::new().start_lr,
                    end_lr: LrFinderConfig::new().end_lr,
                    num_iter: LrFinderConfig::new().num_iter,
                    seed: args.seed,
                    out: dir.join("lr_find.png"),
                };
                let found = super::lr_find::lr_find_on(&finder, &data, &device)?;
                found.ok_or("the LR finder found no descent: pass --max-lr explicitly")?
            }
            Some(v) => v.parse::<f64>().map_err(|_| format!("--max-lr: '{v}' is neither a number nor 'auto'"))?,
            None => args.optimizer.default_max_lr(),
        };
        let mut config = training_config(&args, max_lr);
        let trainer = match &args.weights {
            Some(w) => {
                let bytes = fs::read(w).map_err(|e| format!("{}: cannot read ({e})", w.display()))?;
                let (model, model_config) =
                    weights::model_from_bytes(&w.display().to_string(), &bytes, &device).map_err(|e| e.to_string())?;
                config.model = model_config.with_dropout(args.model.dropout);
                Trainer::with_model(config, model, &device, n_train)
            }
            None => Trainer::new(config, &device, n_train),
        }
        .map_err(|e| e.to_string())?;
        (trainer, dir)
    };
    // The recipe, and the device this run (or this part of a resumed run) used.
    let mut recorded = serde_json::to_value(&trainer.config).map_err(|e| e.to_string())?;
    recorded["device"] = serde_json::to_value(&device_info).map_err(|e| e.to_string())?;
    save(&run_dir.join("config.json"), serde_json::to_string_pretty(&recorded).map_err(|e| e.to_string())?.as_bytes())?;
    println!(
        "training {} params (width {}) on {} with {}, {} epochs × {} steps, batch {}, max LR {:.3e} → {}",
        trainer.model.trainable_params(),
        trainer.config.model.width,
        device_info.backend,
        trainer.config.optimizer,
        trainer.config.epochs,
        trainer.steps_per_epoch,
        trainer.config.batch_size,
        trainer.config.max_lr,
        run_dir.display()
    );

    let mut driver = Driver::new(trainer, args.sync_every).with_stop_at(args.stop_after);
    let interrupter = driver.interrupter();
    // A second Ctrl-C while saving still kills the process the usual way.
    let _ = ctrlc::set_handler(move || {
        if interrupter.stop_again() {
            std::process::exit(130);
        }
    });

    let mut bar: Option<ProgressBar> = None;
    while !driver.finished() {
        if bar.is_none() {
            let t = driver.trainer();
            bar = Some(epoch_bar(t.history.len() + 1, t.config.epochs, t.steps_per_epoch));
        }
        let b = bar.as_ref().expect("set above");
        let mut epoch_done = false;
        for event in pollster::block_on(driver.advance(&data.train, &data.test)).map_err(|e| e.to_string())? {
            match event {
                Event::Steps { progress: p, steps, seconds } => {
                    b.set_position(p.batch_in_epoch as u64);
                    if steps > 0 {
                        let images = (steps * driver.trainer().config.batch_size) as f64;
                        b.set_message(format!(
                            "loss {:.4} acc {:5.2}% lr {:.2e} {:.0} img/s {:.0} ms/step",
                            p.loss,
                            100.0 * p.accuracy,
                            p.lr,
                            images / seconds.max(1e-9),
                            1000.0 * seconds / steps as f64,
                        ));
                    }
                }
                Event::Epoch { metrics: m, evaluation } => {
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
                        write_final_outputs(t, &evaluation, &data, &run_dir)?;
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
            let bytes = pollster::block_on(checkpoint::to_bytes(trainer, n_train))?;
            save(&path, &bytes)?;
            println!(
                "stopped at step {}: checkpoint saved to {}; continue with --resume {}",
                trainer.step,
                path.display(),
                run_dir.display()
            );
            return if driver.interrupter().stopped() { Err(INTERRUPTED.into()) } else { Ok(()) };
        }
    }
    Ok(())
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

/// After every epoch: metrics, curves and the checkpoint, each written atomically.
fn write_epoch_outputs(trainer: &Trainer, dir: &Path, n_train: usize) -> Result<(), String> {
    let mut jsonl = String::new();
    for m in &trainer.history {
        jsonl += &serde_json::to_string(m).map_err(|e| e.to_string())?;
        jsonl.push('\n');
    }
    save(&dir.join("metrics.jsonl"), jsonl.as_bytes())?;
    let lrs: Vec<f64> = (0..trainer.step).map(|s| trainer.schedule.lr(s)).collect();
    let png =
        plots::curves_png(&trainer.history, &lrs, trainer.steps_per_epoch).map_err(|e| format!("curves.png: {e}"))?;
    save(&dir.join("curves.png"), &png)?;
    let bytes = pollster::block_on(checkpoint::to_bytes(trainer, n_train))?;
    save(&dir.join("checkpoint.safetensors"), &bytes)
}

fn write_final_outputs(trainer: &Trainer, eval: &Evaluation, data: &Cifar10, dir: &Path) -> Result<(), String> {
    let file = pollster::block_on(weights::model_file(&trainer.model, &trainer.config.model, trainer.step as u64))?;
    save(&dir.join("model.safetensors"), &file.encode()?)?;
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
        let png = plots::misclassified_png(&samples, &CLASSES, 8).map_err(|e| format!("misclassified.png: {e}"))?;
        save(&dir.join("misclassified.png"), &png)?;
    }
    let png = plots::confusion_png(&eval.confusion, &CLASSES).map_err(|e| format!("confusion.png: {e}"))?;
    save(&dir.join("confusion.png"), &png)?;
    println!("\n{}", eval.confusion.to_table(&CLASSES));
    println!("final test accuracy {:.2}% — results in {}", 100.0 * eval.accuracy, dir.display());
    Ok(())
}

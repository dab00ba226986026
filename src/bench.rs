//! Throughput measurement (`cifar-webgpu bench`): training steps (batch gather, augmentation,
//! forward, backward, optimizer) and inference, on synthetic images so no dataset is needed;
//! optionally beside PyTorch running the same shapes (`tools/pytorch_reference.py bench`).

use crate::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use cifar_core::data::{IMAGE_BYTES, Split};
use cifar_core::io::{readback, traffic};
use cifar_core::model::ModelConfig;
use cifar_core::rng::Rng;
use cifar_core::train::driver::Driver;
use cifar_core::train::{Trainer, TrainingConfig, predict};
use cubecl_runtime::logging::{LaunchObservation, LaunchObserver};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchRow {
    pub backend: String,
    pub width: f64,
    pub batch_size: usize,
    /// Training steps between loss read-backs (PyTorch rows: every step, on the CPU).
    #[serde(default = "one")]
    pub sync_every: usize,
    /// Seconds from a fresh model to the end of its first step (kernel compilation,
    /// autotuning, allocation).
    pub first_step_s: f64,
    pub train_images_per_sec: f64,
    pub infer_images_per_sec: f64,
    /// Peak memory of the row: flex, the most heap bytes live at once (above the row's start);
    /// wgpu, the most device memory its pools held reserved; PyTorch, resident-set growth on
    /// the CPU, `max_memory_allocated` on CUDA.
    pub peak_bytes: u64,
    /// PyTorch rows: fp32, tf32, channels_last, amp or amp_channels_last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// PyTorch rows: the device it ran on (`cpu` or the CUDA device's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Our rows: the work of one training step, averaged over the timed steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_step: Option<StepWork>,
}

/// What one training step asks of the device, counted (not timed): on a GPU each kernel is a
/// dispatch and each transfer a round trip through the driver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StepWork {
    /// CubeCL kernels launched (after Burn's fusion); 0 on flex, whose ops are not kernels.
    pub kernels: f64,
    /// Host → device copies (the batch, labels, augmentation parameters) and their bytes.
    pub uploads: f64,
    pub upload_bytes: f64,
    /// Device → host copies (losses and accuracy at each read-back).
    pub readbacks: f64,
    pub readback_bytes: f64,
}

/// Counts kernel launches while installed (CubeCL calls it on the launching thread), and by
/// name when asked (`bench --kernels`).
#[derive(Default)]
struct LaunchCount {
    all: AtomicU64,
    by_name: Option<std::sync::Mutex<std::collections::HashMap<&'static str, u64>>>,
}

impl LaunchObserver for LaunchCount {
    fn launched(&self, kernel: &'static str) {
        self.all.fetch_add(1, Ordering::Relaxed);
        if let Some(names) = &self.by_name {
            *names.lock().unwrap_or_else(|e| e.into_inner()).entry(kernel).or_default() += 1;
        }
    }
}

/// Our row next to PyTorch's for the same shape.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub ours: BenchRow,
    pub pytorch: BenchRow,
    /// ours / PyTorch: above 1 means we are faster.
    pub train_ratio: f64,
    pub infer_ratio: f64,
}

impl Comparison {
    /// Pairs each of our rows with every PyTorch row (each mode) of the same width and batch
    /// size.
    pub fn pair(ours: &[BenchRow], pytorch: &[BenchRow]) -> Vec<Comparison> {
        ours.iter()
            .flat_map(|o| {
                pytorch.iter().filter(|p| p.width == o.width && p.batch_size == o.batch_size).map(|p| Comparison {
                    ours: o.clone(),
                    pytorch: p.clone(),
                    train_ratio: o.train_images_per_sec / p.train_images_per_sec,
                    infer_ratio: o.infer_images_per_sec / p.infer_images_per_sec,
                })
            })
            .collect()
    }
}

fn one() -> usize {
    1
}

fn synthetic(n: usize, seed: u64) -> Split {
    let mut rng = Rng::new(seed);
    Split {
        images: (0..n * IMAGE_BYTES).map(|_| rng.below(256) as u8).collect(),
        labels: (0..n).map(|i| (i % 10) as u8).collect(),
    }
}

/// How a row is measured.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub warmup: usize,
    pub steps: usize,
    /// Read losses back every N steps, as `train --sync-every` does.
    pub sync_every: usize,
    /// Print the kernels one training step launches, by name.
    pub kernels: bool,
}

/// Times `steps` training steps after `warmup` ones, then as many inference batches.
pub fn measure(
    backend: &str,
    device: &Device,
    width: f64,
    batch_size: usize,
    timing: Timing,
) -> Result<BenchRow, Error> {
    let Timing { warmup, steps, sync_every, kernels } = timing;
    // One spare batch: the epoch, and its test pass, never ends while the steps are timed.
    let data = synthetic(batch_size * (warmup.max(1) + steps + 1), 1);
    let config = TrainingConfig::new(ModelConfig::new().with_width(width)).with_batch_size(batch_size).with_epochs(1);
    // GPU pools: release what earlier rows left reserved, then report the most reserved.
    // Heap: the most bytes live at once above what was live before the row.
    device.memory_cleanup();
    let base = match device.memory_pool_usage() {
        Some(_) => 0,
        None => crate::memory::live_bytes() as u64,
    };
    crate::memory::reset_peak();
    let mut peak = 0u64;
    let mut sample = |device: &Device| {
        let now = match device.memory_pool_usage() {
            Some(usage) => usage.bytes_reserved,
            None => crate::memory::peak_bytes() as u64,
        };
        peak = peak.max(now.saturating_sub(base));
    };

    let start = Instant::now();
    let trainer = Trainer::new(config, device, data.len())?;
    // The core's driver, advanced by hand: `steps` steps, then one read-back.
    let mut driver = Driver::new(trainer, 1);
    let advance = |driver: &mut Driver, steps: usize| -> Result<(), Error> {
        driver.set_sync_every(steps);
        pollster::block_on(driver.advance(&data, &data))?;
        Ok(())
    };
    advance(&mut driver, 1)?;
    let first_step_s = start.elapsed().as_secs_f64();
    if warmup > 1 {
        advance(&mut driver, warmup - 1)?;
    }
    sample(device);
    let launches = Arc::new(LaunchCount { by_name: kernels.then(Default::default), ..Default::default() });
    let before = traffic::snapshot();
    let watching = LaunchObservation::new(launches.clone());
    let t = Instant::now();
    let mut done = 0;
    while done < steps {
        let n = sync_every.max(1).min(steps - done);
        advance(&mut driver, n)?;
        done += n;
    }
    let train_images_per_sec = (steps * batch_size) as f64 / t.elapsed().as_secs_f64();
    drop(watching);
    let moved = traffic::snapshot() - before;
    let per = |n: u64| n as f64 / steps.max(1) as f64;
    let per_step = StepWork {
        kernels: per(launches.all.load(Ordering::Relaxed)),
        uploads: per(moved.uploads),
        upload_bytes: per(moved.upload_bytes),
        readbacks: per(moved.readbacks),
        readback_bytes: per(moved.readback_bytes),
    };
    sample(device);
    if let Some(names) = &launches.by_name {
        use cubecl_runtime::config::{TypeNameFormatLevel, type_name_format};
        let mut short = std::collections::HashMap::<String, u64>::new();
        for (name, n) in names.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            *short.entry(type_name_format(name, TypeNameFormatLevel::Short)).or_default() += n;
        }
        let mut short: Vec<_> = short.into_iter().collect();
        short.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        eprintln!("kernels per training step ({backend}, width {width}, batch {batch_size}):");
        for (name, n) in short {
            eprintln!("{:>8.1}  {name}", n as f64 / steps.max(1) as f64);
        }
    }

    let trainer = driver.into_trainer();
    let plain = trainer.device.clone().inner();
    let model = trainer.model.valid();
    let batch = &data.images[..batch_size * IMAGE_BYTES];
    let infer = |n: usize| -> Result<(), Error> {
        for _ in 0..n {
            let probs = predict(&model, batch, &plain, false);
            pollster::block_on(readback::f32s(probs))?;
        }
        Ok(())
    };
    infer(warmup.max(1))?;
    let t = Instant::now();
    infer(steps)?;
    let infer_images_per_sec = (steps * batch_size) as f64 / t.elapsed().as_secs_f64();
    sample(device);
    Ok(BenchRow {
        backend: backend.to_string(),
        width,
        batch_size,
        sync_every: sync_every.max(1),
        first_step_s,
        train_images_per_sec,
        infer_images_per_sec,
        peak_bytes: peak,
        mode: None,
        device: None,
        per_step: Some(per_step),
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub fn table(rows: &[BenchRow]) -> String {
    let mut out = format!(
        "{:<10} {:>6} {:>6} {:>5} {:>13} {:>12} {:>12} {:>10} {:>13} {:>13} {:>10}\n",
        "backend",
        "width",
        "batch",
        "sync",
        "first step s",
        "train img/s",
        "infer img/s",
        "peak MiB",
        "kernels/step",
        "uploads/step",
        "reads/step"
    );
    for r in rows {
        let work = |f: fn(&StepWork) -> f64| r.per_step.as_ref().map_or("-".to_string(), |w| format!("{:.1}", f(w)));
        out += &format!(
            "{:<10} {:>6} {:>6} {:>5} {:>13.1} {:>12.1} {:>12.1} {:>10.0} {:>13} {:>13} {:>10}\n",
            r.backend,
            r.width,
            r.batch_size,
            r.sync_every,
            r.first_step_s,
            r.train_images_per_sec,
            r.infer_images_per_sec,
            mib(r.peak_bytes),
            work(|w| w.kernels),
            work(|w| w.uploads),
            work(|w| w.readbacks)
        );
    }
    out
}

pub fn comparison_table(rows: &[Comparison]) -> String {
    let mut out = format!(
        "{:<10} {:>6} {:>6} {:<18} {:>12} {:>12} {:>9} {:>12} {:>12} {:>9}\n",
        "backend",
        "width",
        "batch",
        "PyTorch mode",
        "train img/s",
        "PyTorch",
        "ours/PT",
        "infer img/s",
        "PyTorch",
        "ours/PT"
    );
    for c in rows {
        out += &format!(
            "{:<10} {:>6} {:>6} {:<18} {:>12.1} {:>12.1} {:>8.2}× {:>12.1} {:>12.1} {:>8.2}×\n",
            c.ours.backend,
            c.ours.width,
            c.ours.batch_size,
            c.pytorch.mode.as_deref().unwrap_or("fp32"),
            c.ours.train_images_per_sec,
            c.pytorch.train_images_per_sec,
            c.train_ratio,
            c.ours.infer_images_per_sec,
            c.pytorch.infer_images_per_sec,
            c.infer_ratio
        );
    }
    out
}

/// Each of our rows against the fastest PyTorch mode measured at its shape (by training
/// speed): the ratio that says whether we beat PyTorch at its best on this machine.
pub fn fastest_table(rows: &[Comparison]) -> String {
    let mut out = format!(
        "{:<10} {:>6} {:>6} {:>12} {:<18} {:>12} {:>9}\n",
        "backend", "width", "batch", "train img/s", "fastest PyTorch", "train img/s", "ours/PT"
    );
    let mut seen: Vec<(&str, f64, usize, usize)> = Vec::new();
    for c in rows {
        let key = (c.ours.backend.as_str(), c.ours.width, c.ours.batch_size, c.ours.sync_every);
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let best = rows
            .iter()
            .filter(|d| (d.ours.backend.as_str(), d.ours.width, d.ours.batch_size, d.ours.sync_every) == key)
            .max_by(|a, b| a.pytorch.train_images_per_sec.total_cmp(&b.pytorch.train_images_per_sec))
            .expect("c itself matches");
        out += &format!(
            "{:<10} {:>6} {:>6} {:>12.1} {:<18} {:>12.1} {:>8.2}×\n",
            c.ours.backend,
            c.ours.width,
            c.ours.batch_size,
            c.ours.train_images_per_sec,
            best.pytorch.mode.as_deref().unwrap_or("fp32"),
            best.pytorch.train_images_per_sec,
            best.train_ratio
        );
    }
    out
}

/// How `bench --pytorch` runs the reference: which Python, script, device and modes.
pub struct PytorchRun<'a> {
    pub python: &'a str,
    pub script: &'a std::path::Path,
    /// `cpu` or `cuda`.
    pub device: &'a str,
    /// fp32, tf32 (CUDA), channels_last, amp, amp_channels_last.
    pub modes: &'a [String],
}

/// Runs `tools/pytorch_reference.py bench` with the same shapes and thread count and parses
/// its rows. Errors say what to install when PyTorch is missing.
pub fn run_pytorch(
    run: &PytorchRun,
    widths: &[f64],
    batches: &[usize],
    warmup: usize,
    steps: usize,
    threads: usize,
) -> Result<Vec<BenchRow>, Error> {
    let PytorchRun { python, script, device, modes } = *run;
    if !script.is_file() {
        return Err(Error::PyTorch(format!(
            "{}: PyTorch reference script not found (run from the repository root or pass --pytorch-script)",
            script.display()
        )));
    }
    let list = |v: Vec<String>| v.join(",");
    let output = std::process::Command::new(python)
        .arg(script)
        .arg("bench")
        .args(["--width", &list(widths.iter().map(|w| w.to_string()).collect())])
        .args(["--batch-size", &list(batches.iter().map(|b| b.to_string()).collect())])
        .args(["--warmup", &warmup.to_string(), "--steps", &steps.to_string(), "--threads", &threads.to_string()])
        .args(["--device", device, "--mode", &modes.join(",")])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| {
            Error::PyTorch(format!("cannot run {python} ({e}); pass --python with a Python that has PyTorch"))
        })?;
    if !output.status.success() {
        return Err(Error::PyTorch(format!(
            "{python} {} bench failed ({}); is PyTorch installed for it? See README, \"Parity with PyTorch\"",
            script.display(),
            output.status
        )));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(json)
        .map_err(|e| Error::PyTorch(format!("{}: unexpected output ({e}): {json}", script.display())))
}

//! Throughput measurement (`cifar-webgpu bench`): training steps (augmentation, forward,
//! backward, optimizer) and inference, on synthetic images so no dataset is needed.

use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use serde::Serialize;

use crate::data::{IMAGE_BYTES, Split};
use crate::model::ModelConfig;
use crate::rng::Rng;
use crate::training::{Trainer, TrainingConfig, predict};

#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub backend: String,
    pub width: f64,
    pub batch_size: usize,
    /// Seconds from a fresh trainer to the end of its first step (kernel compilation,
    /// autotuning, allocation).
    pub first_step_s: f64,
    pub train_images_per_sec: f64,
    pub infer_images_per_sec: f64,
}

fn synthetic(n: usize, seed: u64) -> Split {
    let mut rng = Rng::new(seed);
    Split {
        images: (0..n * IMAGE_BYTES).map(|_| rng.below(256) as u8).collect(),
        labels: (0..n).map(|i| (i % 10) as u8).collect(),
    }
}

/// Times `steps` training steps after `warmup` ones, then as many inference batches.
pub fn measure(backend: &str, device: &Device, width: f64, batch_size: usize, warmup: usize, steps: usize) -> Result<BenchRow, String> {
    let data = synthetic(batch_size * (warmup + steps).max(1), 1);
    let config = TrainingConfig::new(ModelConfig::new().with_width(width))
        .with_batch_size(batch_size)
        .with_epochs(1);
    let start = Instant::now();
    let mut trainer = Trainer::new(config, device, data.len()).map_err(|e| e.to_string())?;
    trainer.begin_epoch(data.len());
    let sync = |t: &mut Trainer| pollster::block_on(t.sync()).map(|_| ()).map_err(|e| e.to_string());
    trainer.train_step(&data);
    sync(&mut trainer)?;
    let first_step_s = start.elapsed().as_secs_f64();
    for _ in 1..warmup {
        trainer.train_step(&data);
    }
    sync(&mut trainer)?;
    let t = Instant::now();
    for _ in 0..steps {
        trainer.train_step(&data);
    }
    sync(&mut trainer)?;
    let train_images_per_sec = (steps * batch_size) as f64 / t.elapsed().as_secs_f64();

    let plain = trainer.device.clone().inner();
    let model = trainer.model.valid();
    let batch = &data.images[..batch_size * IMAGE_BYTES];
    let infer = |n: usize| -> Result<(), String> {
        for _ in 0..n {
            let probs = predict(&model, batch, &plain, false);
            pollster::block_on(probs.into_data_async()).map_err(|e| format!("{e:?}"))?;
        }
        Ok(())
    };
    infer(warmup.max(1))?;
    let t = Instant::now();
    infer(steps)?;
    let infer_images_per_sec = (steps * batch_size) as f64 / t.elapsed().as_secs_f64();
    Ok(BenchRow {
        backend: backend.to_string(),
        width,
        batch_size,
        first_step_s,
        train_images_per_sec,
        infer_images_per_sec,
    })
}

pub fn table(rows: &[BenchRow]) -> String {
    let mut out = format!(
        "{:<8} {:>6} {:>6} {:>14} {:>14} {:>14}\n",
        "backend", "width", "batch", "first step s", "train img/s", "infer img/s"
    );
    for r in rows {
        out += &format!(
            "{:<8} {:>6} {:>6} {:>14.1} {:>14.1} {:>14.1}\n",
            r.backend, r.width, r.batch_size, r.first_step_s, r.train_images_per_sec, r.infer_images_per_sec
        );
    }
    out
}

//! Which part of a GPU training step launches which kernels: `bench --kernels` counts a whole
//! step; this splits it into augmentation + forward + loss, backward, and the optimiser step,
//! with a `device.sync()` after each so that Burn's fusion flushes each part's kernels before
//! the next part starts (so the parts' fusion boundaries are a little different from a real
//! step's: compare the total with `bench --kernels`).
//!
//! `WGPU_BACKEND=vulkan cargo run --release --example kernel_phases -- [width] [batch] [adam|sgd]
//! [burn|gemm|gemm-f16]` (the last is `--gpu-conv`; Burn's convolution by default).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use burn::optim::GradientsParams;
use burn::tensor::{Int, Tensor, TensorData};
use cifar_core::data::augment;
use cifar_core::model::ModelConfig;
use cifar_core::model::ops::{GpuConvPath, set_gpu_conv_path};
use cifar_core::train::optim::OptimizerKind;
use cifar_core::train::{Trainer, TrainingConfig, cross_entropy};
use cifar_webgpu::backend::{self, Backend};
use cubecl_runtime::config::{TypeNameFormatLevel, type_name_format};
use cubecl_runtime::logging::{LaunchObservation, LaunchObserver};

/// Counts by name; with `KERNEL_TRACE=1` also prints every launch in order (to see what a
/// kernel comes after).
#[derive(Default)]
struct ByName(Mutex<HashMap<&'static str, u64>>, bool);

impl LaunchObserver for ByName {
    fn launched(&self, kernel: &'static str) {
        if self.1 {
            eprintln!("launch {}", type_name_format(kernel, TypeNameFormatLevel::Short));
        }
        *self.0.lock().unwrap_or_else(|e| e.into_inner()).entry(kernel).or_default() += 1;
    }
}

impl ByName {
    /// Counts so far, by short name, and resets.
    fn take(&self) -> HashMap<String, u64> {
        let mut short = HashMap::new();
        for (name, n) in self.0.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            *short.entry(type_name_format(name, TypeNameFormatLevel::Short)).or_default() += n;
        }
        short
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let width: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(0.125);
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let kind: OptimizerKind = args.get(3).map_or(Ok(OptimizerKind::Adam), |s| s.parse()).expect("adam or sgd");
    let plain = backend::device(Backend::Wgpu).expect("a wgpu device");
    let path =
        args.get(4).map_or(Some(GpuConvPath::Burn), |s| GpuConvPath::from_name(s)).expect("burn, gemm or gemm-f16");
    assert!(path.supported_on(&plain), "{} is not supported on this device", path.name());
    set_gpu_conv_path(path);
    let pixels: Vec<u8> = (0..n * 3072).map(|i| (i * 7 % 251) as u8).collect();
    let labels: Vec<i64> = (0..n as i64).map(|i| i % 10).collect();
    let config = TrainingConfig::recipe(ModelConfig::new().with_width(width), kind).with_batch_size(n).with_epochs(1);
    let mut trainer = Trainer::new(config, &plain, n).expect("trainer");
    let device = trainer.device.clone();

    let phases = ["augment + forward + loss", "backward", "optimiser step"];
    let counter = Arc::new(ByName(Mutex::default(), std::env::var_os("KERNEL_TRACE").is_some_and(|v| v == "1")));
    let mut totals: Vec<HashMap<String, u64>> = vec![HashMap::new(); phases.len()];
    let (warmup, steps) = (2, 3);
    for step in 0..warmup + steps {
        let watching = (step >= warmup).then(|| LaunchObservation::new(counter.clone()));
        let mut phase = 0;
        let mut end_phase = |totals: &mut Vec<HashMap<String, u64>>| {
            let _ = device.sync();
            if counter.1 && watching.is_some() {
                eprintln!("end of phase: {}", phases[phase]);
            }
            if watching.is_some() {
                for (name, k) in counter.take() {
                    *totals[phase].entry(name).or_default() += k;
                }
            }
            phase += 1;
        };
        let params = augment::draw(&trainer.config.augment, &mut trainer.rng, n);
        let x = augment::batch(&pixels, &params, &trainer.config.augment, &device);
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [n]), &device);
        let loss = cross_entropy(trainer.model.forward(x), y, trainer.config.label_smoothing);
        end_phase(&mut totals);
        let grads = GradientsParams::from_grads(loss.backward(), &trainer.model);
        end_phase(&mut totals);
        trainer.model = trainer.optim.step(trainer.model.clone(), grads, 1e-3, 0.9);
        end_phase(&mut totals);
        drop(watching);
    }

    println!("kernels per training step on wgpu ({kind}, width {width}, batch {n}), by phase:");
    let mut all = 0.0;
    for (name, counts) in phases.iter().zip(&totals) {
        let mut rows: Vec<_> = counts.iter().map(|(k, v)| (k.clone(), *v as f64 / steps as f64)).collect();
        rows.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let sum: f64 = rows.iter().map(|r| r.1).sum();
        all += sum;
        println!("== {name}: {sum:.1}");
        for (k, v) in rows {
            println!("{v:>8.1}  {k}");
        }
    }
    println!("== all: {all:.1}");
}

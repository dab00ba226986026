//! `bench`: training and inference images/s per backend, width and batch size, beside
//! PyTorch in the same invocation (the measurement itself is `cifar_webgpu::bench`).

use cifar_core::model::ModelConfig;
use cifar_core::train::TrainingConfig;
use cifar_core::train::limits;
use cifar_webgpu::backend;
use cifar_webgpu::error::Error;

use super::save;
use crate::args::BenchArgs;

pub(crate) fn run(args: BenchArgs) -> Result<(), Error> {
    use cifar_webgpu::bench::{self, Comparison};
    let threads = match args.threads {
        Some(n) => {
            // Before the first flex operation builds rayon's pool; nothing else runs yet.
            unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
            n
        }
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let machine = format!("{} ({threads} threads)", backend::cpu_name());
    eprintln!("bench on {machine}");
    let mut rows = Vec::new();
    let mut devices = Vec::new();
    // Each backend once per distinct precision it resolves to (GPUs: f32 only). Every
    // combination is resolved before anything is measured, so a refused one stops the bench
    // before its first row; each run then selects again, which sets the process's precision
    // for its rows.
    let mut runs: Vec<(backend::Backend, backend::Precision, backend::GpuConv, String)> = Vec::new();
    for &b in &args.backend {
        for &p in &args.precision {
            for &c in &args.gpu_conv {
                let (_, info) = backend::select(b, p, c)?;
                if !runs.iter().any(|(_, _, _, label)| *label == label_of(&info, args.gpu_conv.len() > 1)) {
                    runs.push((b, p, c, label_of(&info, args.gpu_conv.len() > 1)));
                }
            }
        }
    }
    for (b, p, c, label) in runs {
        let (device, info) = backend::select(b, p, c)?;
        eprintln!("device: {info}");
        devices.push(info.clone());
        let b = label;
        for &width in &args.width {
            for &batch in &args.batch_size {
                if let Some(l) = &info.limits {
                    let config = TrainingConfig::new(ModelConfig::new().with_width(width)).with_batch_size(batch);
                    limits::check(&config, l)?;
                }
                for &sync_every in &args.sync_every {
                    let timing =
                        bench::Timing { warmup: args.warmup, steps: args.steps, sync_every, kernels: args.kernels };
                    let row = bench::measure(&b, &device, width, batch, timing)?;
                    eprintln!(
                        "{b} width {width} batch {batch} sync every {sync_every}: train {:.1} img/s, inference {:.1} img/s",
                        row.train_images_per_sec, row.infer_images_per_sec
                    );
                    rows.push(row);
                }
            }
        }
    }
    print!("{}", bench::table(&rows));
    let mut pytorch = Vec::new();
    let mut comparison = Vec::new();
    if args.pytorch {
        let run = bench::PytorchRun {
            python: &args.python,
            script: &args.pytorch_script,
            device: &args.pytorch_device,
            modes: &args.pytorch_mode,
        };
        match bench::run_pytorch(&run, &args.width, &args.batch_size, args.warmup, args.steps, threads) {
            Ok(p) => {
                pytorch = p;
                print!("{}", bench::table(&pytorch));
                comparison = Comparison::pair(&rows, &pytorch);
                println!();
                print!("{}", bench::comparison_table(&comparison));
                println!();
                print!("{}", bench::fastest_table(&comparison));
            }
            Err(e) => eprintln!("PyTorch comparison skipped: {e}"),
        }
    }
    if let Some(path) = &args.json {
        let report = serde_json::json!({
            "machine": machine,
            "devices": devices,
            "threads": threads,
            "warmup": args.warmup,
            "steps": args.steps,
            "rows": rows,
            "pytorch": pytorch,
            "comparison": comparison,
        });
        save(path, serde_json::to_string_pretty(&report).expect("JSON values serialise").as_bytes())?;
    }
    Ok(())
}

/// A row's backend column: the backend, with the precision where it is not f32
/// (`flex-bf16`), and the GPU convolution where several were asked for (`wgpu-gemm`).
fn label_of(info: &backend::DeviceInfo, several_convs: bool) -> String {
    let mut label = info.backend.clone();
    if info.precision != "f32" {
        label = format!("{label}-{}", info.precision);
    }
    if let (Some(c), true) = (&info.gpu_conv, several_convs) {
        label = format!("{label}-{c}");
    }
    label
}

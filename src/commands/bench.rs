//! `bench`: training and inference images/s per backend, width and batch size, beside
//! PyTorch in the same invocation (the measurement itself is `cifar_webgpu::bench`).

use cifar_core::model::ModelConfig;
use cifar_core::train::TrainingConfig;
use cifar_core::train::limits;
use cifar_webgpu::backend;
use cifar_webgpu::bench::{self, Comparison};
use cifar_webgpu::error::Error;

use super::save;
use crate::args::BenchArgs;

pub(crate) fn run(args: BenchArgs) -> Result<(), Error> {
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
    if let Some(b) = args.gpu_conv.iter().filter_map(|e| e.only).find(|b| !args.backend.contains(b)) {
        return Err(Error::Backend(format!("--gpu-conv names {b}, which is not among --backend")));
    }
    let several_convs = args.gpu_conv.len() > 1 || args.gpu_conv.iter().any(|e| e.only.is_some());
    // Each backend once per distinct precision it resolves to (GPUs: f32 only) and per
    // convolution entry that applies to it. Every combination is resolved before anything is
    // measured, so a refused one stops the bench before its first row; each run then selects
    // again, which sets the process's precision and convolution for its rows.
    let mut runs: Vec<(backend::Backend, backend::Precision, backend::GpuConv, String)> = Vec::new();
    for &b in &args.backend {
        let mut convs: Vec<backend::GpuConv> =
            args.gpu_conv.iter().filter(|e| e.applies_to(b)).map(|e| e.conv).collect();
        if convs.is_empty() {
            convs.push(backend::GpuConv::Auto);
        }
        for &p in &args.precision {
            for &c in &convs {
                let (_, info) = backend::select(b, p, c)?;
                let label = label_of(&info, several_convs);
                if !runs.iter().any(|(_, _, _, l)| *l == label) {
                    runs.push((b, p, c, label));
                }
            }
        }
    }
    let mut report = Report {
        machine,
        devices: Vec::new(),
        threads,
        warmup: args.warmup,
        steps: args.steps,
        rows: Vec::new(),
        pytorch: Vec::new(),
        comparison: Vec::new(),
    };
    // PyTorch first: it is the anchor every row is read against, so that a bench stopped at a
    // time limit (a GPU lease's 10 minutes) still has it, and the JSON has every row measured
    // before the stop.
    if args.pytorch {
        let run = bench::PytorchRun {
            python: &args.python,
            script: &args.pytorch_script,
            device: &args.pytorch_device,
            modes: &args.pytorch_mode,
        };
        match bench::run_pytorch(&run, &args.width, &args.batch_size, args.warmup, args.steps, threads) {
            Ok(p) => report.pytorch = p,
            Err(e) => eprintln!("PyTorch comparison skipped: {e}"),
        }
    }
    report.save(args.json.as_deref())?;
    for (b, p, c, label) in runs {
        let (device, info) = backend::select(b, p, c)?;
        eprintln!("device: {info}");
        report.devices.push(info.clone());
        for &width in &args.width {
            for &batch in &args.batch_size {
                if let Some(l) = &info.limits {
                    let config = TrainingConfig::new(ModelConfig::new().with_width(width)).with_batch_size(batch);
                    limits::check(&config, l)?;
                }
                for &sync_every in &args.sync_every {
                    let timing =
                        bench::Timing { warmup: args.warmup, steps: args.steps, sync_every, kernels: args.kernels };
                    let row = bench::measure(&label, &device, width, batch, timing)?;
                    let paired = Comparison::pair(std::slice::from_ref(&row), &report.pytorch);
                    let against: String = paired
                        .iter()
                        .map(|c| {
                            format!(", {:.2}× PyTorch {}", c.train_ratio, c.pytorch.mode.as_deref().unwrap_or("fp32"))
                        })
                        .collect();
                    eprintln!(
                        "{label} width {width} batch {batch} sync every {sync_every}: train {:.1} img/s, inference {:.1} \
                         img/s{against}",
                        row.train_images_per_sec, row.infer_images_per_sec
                    );
                    report.rows.push(row);
                    report.comparison.extend(paired);
                    report.save(args.json.as_deref())?;
                }
            }
        }
    }
    print!("{}", bench::table(&report.rows));
    if !report.pytorch.is_empty() {
        print!("{}", bench::table(&report.pytorch));
        println!();
        print!("{}", bench::comparison_table(&report.comparison));
        println!();
        print!("{}", bench::fastest_table(&report.comparison));
    }
    Ok(())
}

/// What `--json` holds; rewritten (atomically) after PyTorch's rows and after each of ours.
#[derive(serde::Serialize)]
struct Report {
    machine: String,
    devices: Vec<backend::DeviceInfo>,
    threads: usize,
    warmup: usize,
    steps: usize,
    rows: Vec<bench::BenchRow>,
    pytorch: Vec<bench::BenchRow>,
    comparison: Vec<bench::Comparison>,
}

impl Report {
    fn save(&self, path: Option<&std::path::Path>) -> Result<(), Error> {
        match path {
            Some(path) => save(path, serde_json::to_string_pretty(self).expect("JSON values serialise").as_bytes()),
            None => Ok(()),
        }
    }
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

//! Native command line: `cargo run --release` trains the full recipe; see `--help`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use cifar_webgpu::augment::AugmentConfig;
use cifar_webgpu::backend::{self, Backend};
use cifar_webgpu::data::{CLASSES, Cifar10};
use cifar_webgpu::download::{self, write_atomic};
use cifar_webgpu::lr_finder::{self, LrFinderConfig};
use cifar_webgpu::model::ModelConfig;
use cifar_webgpu::optim::OptimizerKind;
use cifar_webgpu::plots::{self, LabelledImage};
use cifar_webgpu::training::{self, Evaluation, Trainer, TrainingConfig};
use cifar_webgpu::{checkpoint, summary, weights};

#[derive(Parser, Debug)]
#[command(version, about = "Train the CIFAR-10 custom ResNet with Burn (wgpu or CPU)", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no subcommand: `train` with these options.
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train (the default): 24 epochs of one-cycle Adam, results in runs/<name>/.
    Train(TrainArgs),
    /// LR range test: prints the suggested max LR and writes lr_find.png.
    LrFind(LrFindArgs),
    /// Test accuracy of a weights file.
    Eval(EvalArgs),
    /// Training and inference images/s per backend, width and batch size (synthetic data).
    Bench(BenchArgs),
    /// Check the device's reductions and BatchNorm statistics against the host (exits 1 when
    /// ours are wrong; Burn's own are shown for the upstream defect they work around).
    CheckDevice {
        #[arg(long, value_enum, default_value_t = Backend::Auto)]
        backend: Backend,
    },
    /// Print the model table (layer, output shape, parameters).
    Summary {
        #[arg(long, default_value_t = 1.0)]
        width: f64,
    },
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Compute backend.
    /// Compute backend: `auto` is wgpu on a real GPU, else flex (printed, and recorded in
    /// config.json).
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    backend: Backend,
    /// Directory with the CIFAR-10 .bin files (default: $CIFAR10_DIR, else ./data/cifar-10-batches-bin).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Do not download CIFAR-10 when it is missing.
    #[arg(long)]
    no_download: bool,
    /// Skip the MD5 check of the data files.
    #[arg(long)]
    no_verify: bool,
    /// Use only the first N training images (0: all).
    #[arg(long, default_value_t = 0)]
    train_limit: usize,
    /// Use only the first N test images (0: all).
    #[arg(long, default_value_t = 0)]
    test_limit: usize,
}

#[derive(Args, Debug, Clone)]
struct ModelArgs {
    /// Channel multiplier (1.0: the 6.57M-parameter original; 0.25 for quick runs).
    #[arg(long, default_value_t = 1.0)]
    width: f64,
    /// Dropout probability after each conv block.
    #[arg(long, default_value_t = 0.05)]
    dropout: f64,
}

#[derive(Args, Debug, Clone)]
struct TrainArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value_t = 24)]
    epochs: usize,
    #[arg(long, default_value_t = 512)]
    batch_size: usize,
    /// Peak LR of the one-cycle schedule, or `auto` to run the LR finder first
    /// [default: 0.01 for adam, 0.2 for sgd].
    #[arg(long)]
    max_lr: Option<String>,
    #[arg(long, default_value = "adam", value_parser = parse_optimizer)]
    optimizer: OptimizerKind,
    /// L2 weight decay [default: 1e-4 for adam, 5e-4 for sgd].
    #[arg(long)]
    weight_decay: Option<f64>,
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// Epoch of the LR peak, as a fraction of all epochs.
    #[arg(long, default_value_t = 5.0 / 24.0)]
    pct_start: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Disable crop/flip/CutOut.
    #[arg(long)]
    no_augment: bool,
    /// Run name (directory under --runs-dir) [default: the start time].
    #[arg(long)]
    name: Option<String>,
    #[arg(long, default_value = "runs")]
    runs_dir: PathBuf,
    /// Continue the run in this directory from its checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Fine-tune from these weights (model.safetensors) instead of a random init.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Read losses back from the device every N steps (fewer read-backs keep a GPU busy).
    #[arg(long, default_value_t = 10)]
    sync_every: usize,
    /// Stop after N optimizer steps in total and save a checkpoint (as Ctrl-C would).
    #[arg(long, hide = true)]
    stop_after: Option<usize>,
}

#[derive(Args, Debug, Clone)]
struct LrFindArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value_t = 512)]
    batch_size: usize,
    #[arg(long, default_value = "adam", value_parser = parse_optimizer)]
    optimizer: OptimizerKind,
    #[arg(long, default_value_t = 1e-7)]
    start_lr: f64,
    #[arg(long, default_value_t = 10.0)]
    end_lr: f64,
    #[arg(long, default_value_t = 100)]
    num_iter: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where to write the plot.
    #[arg(long, default_value = "lr_find.png")]
    out: PathBuf,
}

#[derive(Args, Debug, Clone)]
struct EvalArgs {
    #[command(flatten)]
    common: Common,
    /// A model.safetensors written by `train` (or by the browser, or PyTorch with our names).
    #[arg(long)]
    weights: PathBuf,
    /// Average the predictions of each image and its mirror image.
    #[arg(long)]
    tta: bool,
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Also write each test image's predicted class, one per line, to this file.
    #[arg(long)]
    predictions: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct BenchArgs {
    #[arg(long, value_enum, value_delimiter = ',', default_value = "flex,wgpu")]
    backend: Vec<Backend>,
    #[arg(long, value_delimiter = ',', default_value = "0.25,1.0")]
    width: Vec<f64>,
    #[arg(long, value_delimiter = ',', default_value = "128,512")]
    batch_size: Vec<usize>,
    /// Untimed steps first (kernel compilation, autotuning).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Read losses back every N training steps (as `train --sync-every`); a list measures each.
    #[arg(long, value_delimiter = ',', default_value = "10")]
    sync_every: Vec<usize>,
    /// CPU threads for flex and for PyTorch (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Also run tools/pytorch_reference.py with the same shapes and threads, and print ours/PyTorch.
    #[arg(long)]
    pytorch: bool,
    /// The Python that has PyTorch installed (for --pytorch).
    #[arg(long, default_value = "python3")]
    python: String,
    #[arg(long, default_value = "tools/pytorch_reference.py")]
    pytorch_script: PathBuf,
    /// Where PyTorch runs: cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pytorch_device: String,
    /// PyTorch modes to measure, each printed as its own ratio: fp32, tf32 (CUDA's default
    /// convolutions), channels_last, amp (bf16 on the CPU, fp16 on CUDA), amp_channels_last.
    #[arg(long, value_delimiter = ',', default_value = "fp32,channels_last")]
    pytorch_mode: Vec<String>,
    /// Also write the rows as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn bench(args: BenchArgs) -> Result<(), String> {
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
    for &b in &args.backend {
        let (device, info) = backend::select(b)?;
        eprintln!("device: {info}");
        devices.push(info.clone());
        let b = info.backend.clone();
        for &width in &args.width {
            for &batch in &args.batch_size {
                for &sync_every in &args.sync_every {
                    let row = bench::measure(&b, &device, width, batch, args.warmup, args.steps, sync_every)?;
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
        save(path, serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?.as_bytes())?;
    }
    Ok(())
}

fn check_device(b: Backend) -> Result<(), String> {
    let (device, info) = backend::select(b)?;
    println!("device: {info}");
    let checks = backend::check_device(&device);
    let mut failed = Vec::new();
    for c in &checks {
        let ok = c.rel_err <= backend::CHECK_TOLERANCE;
        let verdict = match (ok, c.ours) {
            (true, _) => "ok",
            (false, true) => "WRONG",
            (false, false) => "wrong (Burn's op; not used for training)",
        };
        println!("{:<58} rel. error {:>9.2e}  {verdict}", c.what, c.rel_err);
        if !ok && c.ours {
            failed.push(c.what.clone());
        }
    }
    if failed.is_empty() { Ok(()) } else { Err(format!("{} computes wrongly: {}", info.backend, failed.join("; "))) }
}

fn parse_optimizer(s: &str) -> Result<OptimizerKind, String> {
    s.parse()
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        None => train(cli.train),
        Some(Command::Train(args)) => train(args),
        Some(Command::LrFind(args)) => lr_find(args).map(|_| ()),
        Some(Command::Eval(args)) => eval(args),
        Some(Command::Bench(args)) => bench(args),
        Some(Command::CheckDevice { backend }) => check_device(backend),
        Some(Command::Summary { width }) => {
            let config = ModelConfig::new().with_width(width);
            config.validate().map(|_| {
                let model = config.init(&burn::tensor::Device::flex());
                print!("{}", summary::summary_table(&model));
            })
        }
    };
    match result {
        Ok(()) => {}
        Err(e) if e == INTERRUPTED => std::process::exit(130),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

const INTERRUPTED: &str = "interrupted";

fn load_data(c: &Common) -> Result<Cifar10, String> {
    let dir = download::resolve_data_dir(c.data_dir.clone());
    let mut data = download::load(&dir, !c.no_download, !c.no_verify).map_err(|e| e.to_string())?;
    if c.train_limit > 0 {
        data.train = data.train.take(c.train_limit);
    }
    if c.test_limit > 0 {
        data.test = data.test.take(c.test_limit);
    }
    Ok(data)
}

fn model_config(m: &ModelArgs) -> ModelConfig {
    ModelConfig::new().with_width(m.width).with_dropout(m.dropout)
}

fn training_config(a: &TrainArgs, max_lr: f64) -> TrainingConfig {
    let default_wd = match a.optimizer {
        OptimizerKind::Adam => 1e-4,
        OptimizerKind::Sgd => 5e-4,
    };
    let augment = if a.no_augment { AugmentConfig::new().with_pad(0).with_flip(false).with_cutout(0) } else { AugmentConfig::new() };
    TrainingConfig::new(model_config(&a.model))
        .with_augment(augment)
        .with_optimizer(a.optimizer)
        .with_epochs(a.epochs)
        .with_batch_size(a.batch_size)
        .with_max_lr(max_lr)
        .with_pct_start(a.pct_start)
        .with_weight_decay(a.weight_decay.unwrap_or(default_wd))
        .with_label_smoothing(a.label_smoothing)
        .with_seed(a.seed)
}

fn run_name() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm), UTC.
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem / 60 % 60, rem % 60)
}

fn save(path: &Path, bytes: &[u8]) -> Result<(), String> {
    write_atomic(path, bytes).map_err(|e| format!("{}: cannot write ({e})", path.display()))
}

fn train(args: TrainArgs) -> Result<(), String> {
    let data = load_data(&args.common)?;
    let (device, device_info) = backend::select(args.common.backend)?;
    println!("device: {device_info}");
    let n_train = data.train.len();

    let (mut trainer, run_dir) = if let Some(dir) = &args.resume {
        let path = dir.join("checkpoint.safetensors");
        let bytes = fs::read(&path).map_err(|e| format!("{}: cannot read ({e})", path.display()))?;
        let trainer = checkpoint::from_bytes(&path.display().to_string(), &bytes, &device, n_train).map_err(|e| e.to_string())?;
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
                    start_lr: 1e-7,
                    end_lr: 10.0,
                    num_iter: 100,
                    seed: args.seed,
                    out: dir.join("lr_find.png"),
                };
                let found = lr_find_on(&finder, &data, &device)?;
                found.ok_or("the LR finder found no descent: pass --max-lr explicitly")?
            }
            Some(v) => v.parse::<f64>().map_err(|_| format!("--max-lr: '{v}' is neither a number nor 'auto'"))?,
            None => match args.optimizer {
                OptimizerKind::Adam => 0.01,
                OptimizerKind::Sgd => 0.2,
            },
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

    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        // A second Ctrl-C while saving still kills the process the usual way.
        let _ = ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    }

    let eval_device = trainer.device.clone().inner();
    let sync_every = args.sync_every.max(1);
    while !trainer.finished() {
        trainer.begin_epoch(n_train);
        let epoch = trainer.history.len() + 1;
        let bar = ProgressBar::new(trainer.steps_per_epoch as u64);
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} {bar:25} {pos}/{len} [{elapsed}<{eta}] {msg}")
                .expect("valid template"),
        );
        bar.set_prefix(format!("{epoch:>2}/{}", trainer.config.epochs));
        let mut clock = Instant::now();
        let mut images_since = 0usize;
        loop {
            let more = trainer.train_step(&data.train);
            if more {
                images_since += trainer.config.batch_size;
            }
            let stop_now = interrupted.load(Ordering::SeqCst) || args.stop_after.is_some_and(|s| trainer.step >= s);
            if !more || stop_now || trainer.step % sync_every == 0 {
                let p = pollster::block_on(trainer.sync()).map_err(|e| e.to_string())?;
                let dt = clock.elapsed().as_secs_f64();
                clock = Instant::now();
                let cursor = trainer.cursor.as_mut().expect("epoch in progress");
                cursor.seconds += dt;
                bar.set_position(p.batch_in_epoch as u64);
                if images_since > 0 {
                    bar.set_message(format!(
                    "loss {:.4} acc {:5.2}% lr {:.2e} {:.0} img/s {:.0} ms/step",
                    p.loss,
                    100.0 * p.accuracy,
                    p.lr,
                    images_since as f64 / dt.max(1e-9),
                    1000.0 * dt / (images_since / trainer.config.batch_size).max(1) as f64,
                    ));
                }
                images_since = 0;
            }
            if stop_now {
                bar.abandon();
                let path = run_dir.join("checkpoint.safetensors");
                let bytes = pollster::block_on(checkpoint::to_bytes(&trainer, n_train))?;
                save(&path, &bytes)?;
                println!("stopped at step {}: checkpoint saved to {}; continue with --resume {}", trainer.step, path.display(), run_dir.display());
                return if interrupted.load(Ordering::SeqCst) { Err(INTERRUPTED.into()) } else { Ok(()) };
            }
            if !more {
                break;
            }
        }
        bar.finish_and_clear();
        let t = Instant::now();
        let eval = pollster::block_on(training::evaluate(&trainer.model.valid(), &data.test, 500, &eval_device, false))
            .map_err(|e| e.to_string())?;
        let m = trainer.finish_epoch(&eval, t.elapsed().as_secs_f64());
        println!(
            "epoch {:>2}/{} lr {:.2e} train loss {:.4} acc {:6.2}% | test loss {:.4} acc {:6.2}% | {:.1}s {:.0} img/s",
            m.epoch, trainer.config.epochs, m.lr, m.train_loss, 100.0 * m.train_acc, m.test_loss, 100.0 * m.test_acc, m.seconds, m.images_per_sec
        );
        write_epoch_outputs(&trainer, &run_dir, n_train)?;
        if trainer.finished() {
            write_final_outputs(&trainer, &eval, &data, &run_dir)?;
        }
    }
    Ok(())
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
    let png = plots::curves_png(&trainer.history, &lrs, trainer.steps_per_epoch).map_err(|e| format!("curves.png: {e}"))?;
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

fn lr_find(args: LrFindArgs) -> Result<Option<f64>, String> {
    let data = load_data(&args.common)?;
    let (device, info) = backend::select(args.common.backend)?;
    eprintln!("device: {info}");
    lr_find_on(&args, &data, &device)
}

fn lr_find_on(args: &LrFindArgs, data: &Cifar10, device: &burn::tensor::Device) -> Result<Option<f64>, String> {
    let config = TrainingConfig::new(model_config(&args.model))
        .with_optimizer(args.optimizer)
        .with_batch_size(args.batch_size)
        .with_seed(args.seed);
    let mut trainer = Trainer::new(config, device, data.train.len()).map_err(|e| e.to_string())?;
    let finder = LrFinderConfig::new().with_start_lr(args.start_lr).with_end_lr(args.end_lr).with_num_iter(args.num_iter);
    let bar = ProgressBar::new(args.num_iter as u64);
    bar.set_style(ProgressStyle::with_template("lr-find {bar:30} {pos}/{len} [{elapsed}<{eta}] {msg}").expect("valid template"));
    let result = pollster::block_on(lr_finder::run(&finder, &mut trainer, &data.train, |i, lr, loss| {
        bar.set_position(i as u64 + 1);
        bar.set_message(format!("lr {lr:.2e} loss {loss:.4}"));
    }))
    .map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    let png = plots::lr_find_png(&result.lrs, &result.losses, result.suggestion).map_err(|e| format!("lr_find.png: {e}"))?;
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| format!("{}: cannot create ({e})", parent.display()))?;
    }
    save(&args.out, &png)?;
    match result.suggestion {
        Some(lr) => println!("suggested max LR: {lr:.3e} (steepest descent of the smoothed loss); plot: {}", args.out.display()),
        None => println!("no suggestion: the loss never fell; plot: {}", args.out.display()),
    }
    Ok(result.suggestion)
}

fn eval(args: EvalArgs) -> Result<(), String> {
    let data = load_data(&args.common)?;
    let (device, info) = backend::select(args.common.backend)?;
    eprintln!("device: {info}");
    let name = args.weights.display().to_string();
    let bytes = fs::read(&args.weights).map_err(|e| format!("{name}: cannot read ({e})"))?;
    let (model, config) = weights::model_from_bytes(&name, &bytes, &device).map_err(|e| e.to_string())?;
    let result = pollster::block_on(training::evaluate(&model.valid(), &data.test, args.batch_size, &device, args.tta))
        .map_err(|e| e.to_string())?;
    if let Some(path) = &args.predictions {
        let mut out = Vec::new();
        for (p, _) in &result.predictions {
            writeln!(out, "{p}").map_err(|e| e.to_string())?;
        }
        save(path, &out)?;
    }
    println!("{}", result.confusion.to_table(&CLASSES));
    println!(
        "{name}: width {} — test accuracy {:.2}% ({} images{}), loss {:.4}",
        config.width,
        100.0 * result.accuracy,
        result.predictions.len(),
        if args.tta { ", flip TTA" } else { "" },
        result.loss
    );
    Ok(())
}

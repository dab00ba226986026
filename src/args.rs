//! The command line: arguments, their defaults, and what they turn into (data, configs).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use cifar_core::data::Cifar10;
use cifar_core::data::augment::AugmentConfig;
use cifar_core::error::ConfigError;
use cifar_core::model::ModelConfig;
use cifar_core::train::ema::EmaConfig;
use cifar_core::train::lr_finder::LrFinderConfig;
use cifar_core::train::optim::OptimizerKind;
use cifar_core::train::{Recipe, TrainingConfig};
use cifar_webgpu::backend::{Backend, GpuConv, Precision};
use cifar_webgpu::download;
use cifar_webgpu::error::Error;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Train the CIFAR-10 custom ResNet with Burn (wgpu or CPU)",
    args_conflicts_with_subcommands = true
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    /// With no subcommand: `train` with these options.
    #[command(flatten)]
    pub(crate) train: TrainArgs,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
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
pub(crate) struct Common {
    /// Compute backend: `auto` is wgpu on a real GPU, else flex (printed, and recorded in
    /// config.json).
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub(crate) backend: Backend,
    /// Arithmetic of the convolutions on flex: `auto` is bf16 (f32 sums, f32 weights) where
    /// the CPU has AMX-BF16, else f32; `f32` is exact (printed, and recorded in config.json).
    #[arg(long, value_enum, default_value_t = Precision::Auto)]
    pub(crate) precision: Precision,
    /// The 3×3 convolution on a GPU: `gemm` (GEMMs over im2col), `gemm-f16` (the same with
    /// f16 operands), `burn` (Burn's conv2d: a direct kernel through WGSL, implicit GEMMs
    /// through CUDA); `auto` is gemm on a real GPU, burn on a CPU adapter (recorded in
    /// config.json).
    #[arg(long, value_enum, default_value_t = GpuConv::Auto)]
    pub(crate) gpu_conv: GpuConv,
    /// Directory with the CIFAR-10 .bin files (default: $CIFAR10_DIR, else ./data/cifar-10-batches-bin).
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Do not download CIFAR-10 when it is missing.
    #[arg(long)]
    pub(crate) no_download: bool,
    /// Skip the MD5 check of the data files.
    #[arg(long)]
    pub(crate) no_verify: bool,
    /// Use only the first N training images (0: all).
    #[arg(long, default_value_t = 0)]
    pub(crate) train_limit: usize,
    /// Use only the first N test images (0: all).
    #[arg(long, default_value_t = 0)]
    pub(crate) test_limit: usize,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct ModelArgs {
    /// Channel multiplier (1.0: the 6.57M-parameter original; 0.25 for quick runs).
    #[arg(long, default_value_t = ModelConfig::new().width)]
    pub(crate) width: f64,
    /// Dropout probability after each conv block.
    #[arg(long, default_value_t = ModelConfig::new().dropout)]
    pub(crate) dropout: f64,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct TrainArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    #[arg(long, default_value_t = recipe().epochs)]
    pub(crate) epochs: usize,
    #[arg(long, default_value_t = recipe().batch_size)]
    pub(crate) batch_size: usize,
    /// The recipe the other options start from: `seed` is the original notebook's (Adam, no
    /// label smoothing); `best` trains with SGD-Nesterov, Page's logit scale 0.125 and label
    /// smoothing 0.2, and tests the last epoch with flip TTA too.
    #[arg(long, default_value = "seed", value_parser = parse_recipe)]
    pub(crate) recipe: Recipe,
    /// Peak LR of the one-cycle schedule, or `auto` to run the LR finder first
    /// [default: 0.01 for adam, 0.4 for sgd].
    #[arg(long)]
    pub(crate) max_lr: Option<String>,
    /// adam or sgd (Nesterov) [default: the recipe's: adam (seed), sgd (best)].
    #[arg(long, value_parser = parse_optimizer)]
    pub(crate) optimizer: Option<OptimizerKind>,
    /// L2 weight decay [default: 1e-4 for adam, 5e-4 for sgd].
    #[arg(long)]
    pub(crate) weight_decay: Option<f64>,
    /// [default: the recipe's: 0 (seed), 0.2 (best)]
    #[arg(long)]
    pub(crate) label_smoothing: Option<f64>,
    /// Multiplies the logits (no parameter; folded into `fc.weight` in saved files): Page's
    /// 0.125 keeps SGD stable at the classifier [default: the optimizer's: 1 (adam), 0.125 (sgd)]
    #[arg(long)]
    pub(crate) logit_scale: Option<f64>,
    /// Moving average of the weights, tested and saved instead of them: the old average's
    /// weight at each update, 0 for none (Page's: 0.99 with --ema-every 5) [default: 0].
    #[arg(long)]
    pub(crate) ema_decay: Option<f64>,
    /// Steps between two updates of the moving average [default: 5].
    #[arg(long, value_parser = positive)]
    pub(crate) ema_every: Option<usize>,
    /// Also test the last epoch with flip TTA [default: the recipe's: off (seed), on (best)].
    #[arg(long, conflicts_with = "no_tta")]
    pub(crate) tta: bool,
    #[arg(long)]
    pub(crate) no_tta: bool,
    /// Epoch of the LR peak, as a fraction of all epochs.
    #[arg(long, default_value_t = recipe().schedule.pct_start)]
    pub(crate) pct_start: f64,
    #[arg(long, default_value_t = recipe().seed)]
    pub(crate) seed: u64,
    /// Disable crop/flip/CutOut.
    #[arg(long)]
    pub(crate) no_augment: bool,
    /// Run name (directory under --runs-dir) [default: the start time].
    #[arg(long)]
    pub(crate) name: Option<String>,
    #[arg(long, default_value = "runs")]
    pub(crate) runs_dir: PathBuf,
    /// Continue the run in this directory from its checkpoint.
    #[arg(long)]
    pub(crate) resume: Option<PathBuf>,
    /// Fine-tune from these weights (model.safetensors) instead of a random init.
    #[arg(long)]
    pub(crate) weights: Option<PathBuf>,
    /// Read losses back from the device every N steps (fewer read-backs keep a GPU busy).
    #[arg(long, default_value_t = 10, value_parser = positive)]
    pub(crate) sync_every: usize,
    /// Where the progress bar is not drawn (output to a file or a pipe: `nohup`, `tee`, CI), a
    /// plain progress line at the first read-back at least this many seconds after the last.
    #[arg(long, default_value_t = 30.0, value_parser = non_negative_seconds)]
    pub(crate) progress_every: f64,
    /// Stop after N optimizer steps in total and save a checkpoint (as Ctrl-C would).
    #[arg(long, hide = true)]
    pub(crate) stop_after: Option<usize>,
    /// Replace the files of a run already in --runs-dir/--name (otherwise refused).
    #[arg(long)]
    pub(crate) force: bool,
    /// The recipe options given on the command line (filled by `main`; `--resume` refuses them).
    #[arg(skip)]
    pub(crate) given: Vec<&'static str>,
    /// Whether `--precision` was given on the command line (filled by `main`): a resumed run
    /// otherwise keeps the exact f32 it was started with.
    #[arg(skip)]
    pub(crate) precision_given: bool,
}

/// The options that make up a run's recipe: a resumed run keeps its checkpoint's.
pub(crate) const RECIPE_OPTIONS: [&str; 18] = [
    "epochs",
    "batch_size",
    "recipe",
    "max_lr",
    "optimizer",
    "weight_decay",
    "label_smoothing",
    "logit_scale",
    "ema_decay",
    "ema_every",
    "tta",
    "no_tta",
    "pct_start",
    "seed",
    "no_augment",
    "width",
    "dropout",
    "weights",
];

/// For counts that must be at least 1.
pub(crate) fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn non_negative_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        Ok(_) => Err("must be a number of seconds, 0 or more".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// One `bench --gpu-conv` entry: a GPU convolution for every GPU backend benched, or, with
/// `only`, for that backend alone (Burn's convolution is a different kernel on each: a direct
/// one through WGSL, implicit GEMMs on tensor cores through CUDA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvEntry {
    pub(crate) only: Option<Backend>,
    pub(crate) conv: GpuConv,
}

impl ConvEntry {
    pub(crate) fn applies_to(&self, backend: Backend) -> bool {
        self.only.is_none_or(|b| b == backend)
    }
}

fn is_gpu(backend: Backend) -> bool {
    match backend {
        Backend::Wgpu => true,
        #[cfg(feature = "cuda")]
        Backend::Cuda => true,
        _ => false,
    }
}

pub(crate) fn parse_conv_entry(s: &str) -> Result<ConvEntry, String> {
    use clap::ValueEnum;
    let names = |v: &[GpuConv]| {
        v.iter().filter_map(|c| c.to_possible_value()).map(|p| p.get_name().to_string()).collect::<Vec<_>>().join(", ")
    };
    let (only, conv) = match s.split_once(':') {
        Some((b, c)) => {
            let backend = Backend::from_str(b, false).map_err(|_| {
                let gpus: Vec<String> =
                    Backend::value_variants().iter().filter(|b| is_gpu(**b)).map(|b| b.to_string()).collect();
                format!("{s}: unknown backend {b:?} (this binary's GPU backends: {})", gpus.join(", "))
            })?;
            if !is_gpu(backend) {
                return Err(format!("{s}: {b} has no GPU convolution (name a GPU backend)"));
            }
            (Some(backend), c)
        }
        None => (None, s),
    };
    let conv = GpuConv::from_str(conv, false)
        .map_err(|_| format!("{s}: unknown convolution {conv:?} ({})", names(GpuConv::value_variants())))?;
    Ok(ConvEntry { only, conv })
}

#[derive(Args, Debug, Clone)]
pub(crate) struct LrFindArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    #[arg(long, default_value_t = recipe().batch_size)]
    pub(crate) batch_size: usize,
    #[arg(long, default_value_t = recipe().optimizer.kind, value_parser = parse_optimizer)]
    pub(crate) optimizer: OptimizerKind,
    #[arg(long, default_value_t = LrFinderConfig::new().start_lr)]
    pub(crate) start_lr: f64,
    #[arg(long, default_value_t = LrFinderConfig::new().end_lr)]
    pub(crate) end_lr: f64,
    #[arg(long, default_value_t = LrFinderConfig::new().num_iter, value_parser = positive)]
    pub(crate) num_iter: usize,
    #[arg(long, default_value_t = recipe().seed)]
    pub(crate) seed: u64,
    /// Where to write the plot.
    #[arg(long, default_value = "lr_find.png")]
    pub(crate) out: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct EvalArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// A model.safetensors written by `train` (or by the browser, or PyTorch with our names).
    #[arg(long)]
    pub(crate) weights: PathBuf,
    /// Average the predictions of each image and its mirror image.
    #[arg(long)]
    pub(crate) tta: bool,
    #[arg(long, default_value_t = cifar_core::train::driver::EVAL_BATCH, value_parser = positive)]
    pub(crate) batch_size: usize,
    /// Also write each test image's predicted class, one per line, to this file.
    #[arg(long)]
    pub(crate) predictions: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct BenchArgs {
    #[arg(long, value_enum, value_delimiter = ',', default_value = "flex,wgpu")]
    pub(crate) backend: Vec<Backend>,
    /// Precisions to measure on flex (each resolved as `train --precision`; a repeat is
    /// measured once; GPUs run f32).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "f32,auto")]
    pub(crate) precision: Vec<Precision>,
    /// GPU convolutions to measure, each as `train --gpu-conv`, for every GPU backend, or for
    /// one as `BACKEND:CONV` (`cuda:burn`); a backend no entry applies to runs `auto`. With
    /// several entries the rows are labelled `wgpu-gemm`, `cuda-burn`.
    #[arg(long, value_delimiter = ',', default_value = "auto", value_parser = parse_conv_entry)]
    pub(crate) gpu_conv: Vec<ConvEntry>,
    #[arg(long, value_delimiter = ',', default_value = "0.25,1.0")]
    pub(crate) width: Vec<f64>,
    #[arg(long, value_delimiter = ',', default_value = "128,512", value_parser = positive)]
    pub(crate) batch_size: Vec<usize>,
    /// Untimed steps first (kernel compilation, autotuning).
    #[arg(long, default_value_t = 2)]
    pub(crate) warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 5, value_parser = positive)]
    pub(crate) steps: usize,
    /// Read losses back every N training steps (as `train --sync-every`); a list measures each.
    #[arg(long, value_delimiter = ',', default_value = "10", value_parser = positive)]
    pub(crate) sync_every: Vec<usize>,
    /// CPU threads for flex and for PyTorch (default: all cores).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// Also run tools/pytorch_reference.py with the same shapes and threads, and print ours/PyTorch.
    #[arg(long)]
    pub(crate) pytorch: bool,
    /// The Python that has PyTorch installed (for --pytorch).
    #[arg(long, default_value = "python3")]
    pub(crate) python: String,
    #[arg(long, default_value = "tools/pytorch_reference.py")]
    pub(crate) pytorch_script: PathBuf,
    /// Where PyTorch runs: cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub(crate) pytorch_device: String,
    /// PyTorch modes to measure, each printed as its own ratio: fp32, tf32 (CUDA's default
    /// convolutions), channels_last, amp (bf16 on the CPU, fp16 on CUDA), amp_channels_last.
    #[arg(long, value_delimiter = ',', default_value = "fp32,channels_last")]
    pub(crate) pytorch_mode: Vec<String>,
    /// Also write the rows as JSON here.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Print the kernels one training step launches, by name and count (GPU backends).
    #[arg(long)]
    pub(crate) kernels: bool,
}

/// The recipe's defaults (Adam's), which the flags show and start from.
fn recipe() -> TrainingConfig {
    TrainingConfig::new(ModelConfig::new())
}

pub(crate) fn parse_optimizer(s: &str) -> Result<OptimizerKind, String> {
    s.parse().map_err(|e: ConfigError| e.problem)
}

fn parse_recipe(s: &str) -> Result<Recipe, String> {
    s.parse().map_err(|e: ConfigError| e.problem)
}

pub(crate) fn load_data(c: &Common) -> Result<Cifar10, Error> {
    let dir = download::resolve_data_dir(c.data_dir.clone());
    // Only the training files that hold the first --train-limit images are read.
    let mut data = download::load(&dir, !c.no_download, !c.no_verify, c.train_limit)?;
    if c.train_limit > 0 {
        data.train = data.train.take(c.train_limit);
    }
    if c.test_limit > 0 {
        data.test = data.test.take(c.test_limit);
    }
    Ok(data)
}

pub(crate) fn model_config(m: &ModelArgs) -> ModelConfig {
    ModelConfig::new().with_width(m.width).with_dropout(m.dropout)
}

/// `--recipe` with `--optimizer` applied: another optimizer brings its own LR and weight decay.
pub(crate) fn base_recipe(a: &TrainArgs) -> TrainingConfig {
    let base = a.recipe.config(model_config(&a.model));
    match a.optimizer {
        Some(kind) if kind != base.optimizer.kind => {
            let own = TrainingConfig::recipe(base.model.clone(), kind);
            TrainingConfig { model: own.model, optimizer: own.optimizer, ..base }
        }
        _ => base,
    }
}

pub(crate) fn training_config(a: &TrainArgs, max_lr: f64) -> TrainingConfig {
    let augment = if a.no_augment {
        AugmentConfig::new().with_pad(0).with_flip(false).with_cutout(0)
    } else {
        AugmentConfig::new()
    };
    let recipe = base_recipe(a);
    let optimizer = recipe.optimizer.clone().with_max_lr(max_lr);
    let optimizer = match a.weight_decay {
        Some(w) => optimizer.with_weight_decay(w),
        None => optimizer,
    };
    let schedule = recipe.schedule.clone().with_pct_start(a.pct_start);
    let ema = EmaConfig::new()
        .with_decay(a.ema_decay.unwrap_or(recipe.ema.decay))
        .with_every(a.ema_every.unwrap_or(recipe.ema.every));
    let tta = (recipe.tta || a.tta) && !a.no_tta;
    let label_smoothing = a.label_smoothing.unwrap_or(recipe.label_smoothing);
    let scale = a.logit_scale.unwrap_or(recipe.model.logit_scale);
    let model = recipe.model.clone().with_logit_scale(scale);
    TrainingConfig { model, ..recipe }
        .with_augment(augment)
        .with_optimizer(optimizer)
        .with_schedule(schedule)
        .with_epochs(a.epochs)
        .with_batch_size(a.batch_size)
        .with_label_smoothing(label_smoothing)
        .with_ema(ema)
        .with_tta(tta)
        .with_seed(a.seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_entries_apply_to_every_gpu_backend_or_to_the_one_named() {
        let all = parse_conv_entry("gemm-f16").unwrap();
        assert_eq!(all, ConvEntry { only: None, conv: GpuConv::GemmF16 });
        assert!(all.applies_to(Backend::Wgpu) && all.applies_to(Backend::Flex));
        let one = parse_conv_entry("wgpu:burn").unwrap();
        assert_eq!(one, ConvEntry { only: Some(Backend::Wgpu), conv: GpuConv::Burn });
        assert!(one.applies_to(Backend::Wgpu));
        assert!(!one.applies_to(Backend::Flex) && !one.applies_to(Backend::Auto));
        #[cfg(feature = "cuda")]
        assert!(!one.applies_to(Backend::Cuda));
        for (bad, why) in [
            ("flex:gemm", "flex has no GPU convolution"),
            ("auto:gemm", "auto has no GPU convolution"),
            ("vulkan:gemm", "unknown backend \"vulkan\""),
            ("wgpu:f16", "unknown convolution \"f16\" (auto, gemm, gemm-f16, burn)"),
            ("gemm:wgpu", "unknown backend \"gemm\""),
        ] {
            let e = parse_conv_entry(bad).unwrap_err();
            assert!(e.starts_with(bad) && e.contains(why), "{bad}: {e}");
        }
    }
}

//! `lr-find`: the LR range test; prints the suggested max LR and writes lr_find.png.

use std::fs;

use indicatif::{ProgressBar, ProgressStyle};

use cifar_core::data::Cifar10;
use cifar_core::train::limits;
use cifar_core::train::lr_finder::{self, LrFinderConfig};
use cifar_core::train::{Trainer, TrainingConfig};
use cifar_webgpu::backend;
use cifar_webgpu::error::Error;
use cifar_webgpu::plots;

use super::{check_writable, save};
use crate::args::{LrFindArgs, load_data, model_config};

pub(crate) fn run(args: LrFindArgs) -> Result<Option<f64>, Error> {
    recipe(&args).validate()?;
    check_writable(&args.out)?;
    let (device, info) = backend::select(args.common.backend, args.common.precision, args.common.gpu_conv)?;
    eprintln!("device: {info}");
    if let Some(l) = &info.limits {
        limits::check(&recipe(&args), l)?;
    }
    let data = load_data(&args.common)?;
    lr_find_on(&args, &data, &device)
}

fn recipe(args: &LrFindArgs) -> TrainingConfig {
    TrainingConfig::recipe(model_config(&args.model), args.optimizer)
        .with_batch_size(args.batch_size)
        .with_seed(args.seed)
}

pub(crate) fn lr_find_on(
    args: &LrFindArgs,
    data: &Cifar10,
    device: &burn::tensor::Device,
) -> Result<Option<f64>, Error> {
    let trainer = Trainer::new(recipe(args), device, data.train.len())?;
    let finder =
        LrFinderConfig::new().with_start_lr(args.start_lr).with_end_lr(args.end_lr).with_num_iter(args.num_iter);
    let bar = ProgressBar::new(args.num_iter as u64);
    bar.set_style(
        ProgressStyle::with_template("lr-find {bar:30} {pos}/{len} [{elapsed}<{eta}] {msg}").expect("valid template"),
    );
    let result = pollster::block_on(lr_finder::run(&finder, trainer, &data.train, |i, lr, loss| {
        bar.set_position(i as u64 + 1);
        bar.set_message(format!("lr {lr:.2e} loss {loss:.4}"));
    }))?;
    bar.finish_and_clear();
    let png = plots::lr_find_png(&result.lrs, &result.losses, result.suggestion)?;
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(Error::io(parent, "create"))?;
    }
    save(&args.out, &png)?;
    match result.suggestion {
        Some(lr) => {
            println!("suggested max LR: {lr:.3e} (steepest descent of the smoothed loss); plot: {}", args.out.display())
        }
        None => println!("no suggestion: the loss never fell; plot: {}", args.out.display()),
    }
    Ok(result.suggestion)
}

//! `eval`: the test accuracy and confusion matrix of a weights file.

use std::fs;

use burn::module::Module;

use cifar_core::data::CLASSES;
use cifar_core::io::weights;
use cifar_core::train::{self, limits};
use cifar_webgpu::backend;
use cifar_webgpu::error::Error;

use super::{check_writable, save};
use crate::args::{EvalArgs, load_data};

pub(crate) fn run(args: EvalArgs) -> Result<(), Error> {
    // The weights and the output path first: the data's MD5 check takes a while.
    if let Some(path) = &args.predictions {
        check_writable(path)?;
    }
    let (device, info) = backend::select(args.common.backend, args.common.precision, args.common.gpu_conv)?;
    eprintln!("device: {info}");
    let name = args.weights.display().to_string();
    let bytes = fs::read(&args.weights).map_err(Error::io(&args.weights, "read"))?;
    let (model, config) = weights::model_from_bytes(&name, &bytes, &device)?;
    // Fewer images per pass where the GPU's buffers need it (an oversized tensor loses the device).
    let mut batch = args.batch_size;
    if let Some(l) = &info.limits {
        let fits = limits::max_batch(&config, l).max(1);
        if batch > fits {
            eprintln!(
                "evaluating {fits} images per pass: {batch} at width {} exceed this GPU's buffer limits",
                config.width
            );
            batch = fits;
        }
    }
    let data = load_data(&args.common)?;
    let result = pollster::block_on(train::evaluate(&model.valid(), &data.test, batch, &device, args.tta))?;
    if let Some(path) = &args.predictions {
        let out: String = result.predictions.iter().map(|(p, _)| format!("{p}\n")).collect();
        save(path, out.as_bytes())?;
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

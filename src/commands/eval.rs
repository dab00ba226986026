//! `eval`: the test accuracy and confusion matrix of a weights file.

use std::fs;
use std::io::Write;

use burn::module::Module;

use cifar_core::data::CLASSES;
use cifar_core::io::weights;
use cifar_core::train;
use cifar_webgpu::backend;

use super::save;
use crate::args::{EvalArgs, load_data};

pub(crate) fn run(args: EvalArgs) -> Result<(), String> {
    let data = load_data(&args.common)?;
    let (device, info) = backend::select(args.common.backend)?;
    eprintln!("device: {info}");
    let name = args.weights.display().to_string();
    let bytes = fs::read(&args.weights).map_err(|e| format!("{name}: cannot read ({e})"))?;
    let (model, config) = weights::model_from_bytes(&name, &bytes, &device).map_err(|e| e.to_string())?;
    let result = pollster::block_on(train::evaluate(&model.valid(), &data.test, args.batch_size, &device, args.tta))
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

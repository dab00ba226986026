//! Weights and checkpoints: names, round trips, bad files, resume == uninterrupted.

use burn::module::Module;
use burn::tensor::{Distribution, Tensor};
use cifar_core::io::checkpoint;
use cifar_core::io::weights::{ArrayData, NamedArray, TensorFile, model_file, model_from_bytes};
use cifar_core::model::{Model, ModelConfig};
use cifar_core::train::ema::EmaConfig;
use cifar_core::train::lr_finder::{self, LrFinderConfig};
use cifar_core::train::optim::{OptimizerConfig, OptimizerKind};
use cifar_core::train::schedule::OneCycleConfig;
use cifar_core::train::{TrainError, Trainer, TrainingConfig};

use crate::common::{flex, rng_lock, run, synthetic};

fn tiny_config() -> TrainingConfig {
    TrainingConfig::new(ModelConfig::new().with_width(0.125).with_dropout(0.1))
        .with_epochs(2)
        .with_batch_size(16)
        .with_seed(7)
}

fn logits(model: &cifar_core::model::Model, x: Tensor<4>) -> Vec<f32> {
    model.valid().forward(x).into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn weights_use_pytorch_names_and_round_trip() {
    let _rng = rng_lock();
    let train = synthetic(64, 1);
    let trainer = Trainer::new(tiny_config().with_epochs(1), &flex(), train.len()).unwrap();
    let trainer = run(trainer, &train, &synthetic(16, 2), None);
    let file = pollster::block_on(model_file(&trainer.model, &trainer.config.model, trainer.step as u64)).unwrap();
    let names: Vec<&str> = file.arrays.keys().map(|s| s.as_str()).collect();
    for expected in [
        "prep.0.weight",
        "prep.1.weight",
        "prep.1.bias",
        "prep.1.running_mean",
        "prep.1.running_var",
        "prep.1.num_batches_tracked",
        "layer1.0.weight",
        "layer1.2.weight",
        "res1.0.weight",
        "res1.1.bias",
        "res1.4.weight",
        "res1.5.running_var",
        "layer2.0.weight",
        "layer2.2.weight",
        "layer3.0.weight",
        "layer3.2.bias",
        "res3.0.weight",
        "res3.1.weight",
        "res3.4.weight",
        "res3.5.weight",
        "fc.weight",
    ] {
        assert!(names.contains(&expected), "missing {expected} in {names:?}");
    }
    assert_eq!(names.len(), 8 * 6 + 1);
    assert_eq!(file.arrays["fc.weight"].shape, vec![10, 64], "PyTorch Linear layout [out, in]");
    assert_eq!(file.arrays["layer1.0.weight"].shape, vec![16, 8, 3, 3]);
    assert_eq!(file.arrays["prep.1.num_batches_tracked"].data, ArrayData::I64(vec![4]));

    let bytes = file.encode().unwrap();
    let (loaded, config) = model_from_bytes("model.safetensors", &bytes, &flex()).unwrap();
    assert_eq!(config.width, 0.125);
    let x = Tensor::<4>::random([4, 3, 32, 32], Distribution::Normal(0.0, 1.0), &flex());
    let (a, b) = (logits(&trainer.model, x.clone()), logits(&loaded, x.clone()));
    // The trained tensors and the loaded ones hold the same values but not the same memory
    // layout, so kernels may sum in another order: equal to float rounding.
    let diff = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-6, "logits differ by {diff}");
    // Loading the same bytes twice is bit-exact.
    let (again, _) = model_from_bytes("model.safetensors", &bytes, &flex()).unwrap();
    assert_eq!(b, logits(&again, x));
}

/// A model with a logit scale saves `fc.weight` with the scale folded in: its file loads back
/// into the same function, and read as a file without our metadata (as PyTorch's are) into a
/// plain model it computes the same logits too.
#[test]
fn a_logit_scale_is_folded_into_the_saved_classifier() {
    let _rng = rng_lock();
    let train = synthetic(64, 1);
    let config = tiny_config().with_epochs(1);
    let config = TrainingConfig { model: config.model.clone().with_logit_scale(0.125), ..config };
    let trainer = Trainer::new(config, &flex(), train.len()).unwrap();
    let trainer = run(trainer, &train, &synthetic(16, 2), None);
    let file = pollster::block_on(model_file(&trainer.model, &trainer.config.model, trainer.step as u64)).unwrap();
    let fc: Vec<f32> = trainer.model.fc.weight.val().transpose().into_data().try_into_vec().unwrap();
    let ArrayData::F32(saved) = &file.arrays["fc.weight"].data else { panic!("fc.weight is not f32") };
    assert!(fc.iter().zip(saved).all(|(w, s)| *s == 0.125 * w), "fc.weight is not the weight × 0.125");

    let x = Tensor::<4>::random([4, 3, 32, 32], Distribution::Normal(0.0, 1.0), &flex());
    let want = logits(&trainer.model, x.clone());
    let (loaded, config) = model_from_bytes("model.safetensors", &file.encode().unwrap(), &flex()).unwrap();
    assert_eq!(config.logit_scale, 0.125);
    let mut plain_file = file.clone();
    plain_file.metadata.clear();
    let (plain, plain_config) =
        model_from_bytes("pytorch.safetensors", &plain_file.encode().unwrap(), &flex()).unwrap();
    assert_eq!(plain_config.logit_scale, 1.0);
    // Fine-tuning a plain file with the scale: the same function, rescaled.
    let rescaled = plain.clone().with_logit_scale(0.125);
    assert_eq!(rescaled.logit_scale, 0.125);
    for (what, model) in [("reloaded", &loaded), ("plain", &plain), ("rescaled", &rescaled)] {
        let got = logits(model, x.clone());
        let diff = want.iter().zip(&got).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-6, "{what}: logits differ by {diff}");
    }
}

#[test]
fn bad_weight_files_give_clear_errors() {
    let model = ModelConfig::new().with_width(0.125).init(&flex());
    let good = pollster::block_on(model_file(&model, &ModelConfig::new().with_width(0.125), 0)).unwrap();
    let bytes = good.encode().unwrap();

    let err = model_from_bytes("w.safetensors", &bytes[..bytes.len() / 2], &flex()).unwrap_err().to_string();
    assert!(err.starts_with("w.safetensors: not a valid safetensors file"), "{err}");

    let err = model_from_bytes("w.safetensors", b"hello", &flex()).unwrap_err().to_string();
    assert!(err.contains("w.safetensors") && err.contains("not a valid"), "{err}");

    let mut wrong_width = good.clone();
    wrong_width.metadata.insert("model_config".into(), ModelConfig::new().with_width(0.25).to_json());
    let err = model_from_bytes("w.safetensors", &wrong_width.encode().unwrap(), &flex()).unwrap_err().to_string();
    assert!(err.contains("'prep.0.weight' has shape [8, 3, 3, 3], the model expects [16, 3, 3, 3]"), "{err}");

    let mut missing = good.clone();
    missing.arrays.remove("res3.5.running_var");
    let err = model_from_bytes("w.safetensors", &missing.encode().unwrap(), &flex()).unwrap_err().to_string();
    assert!(err.contains("'res3.5.running_var' is missing"), "{err}");

    let mut nan = good.clone();
    if let Some(NamedArray { data: ArrayData::F32(v), .. }) = nan.arrays.get_mut("fc.weight") {
        v[3] = f32::NAN;
    }
    let err = model_from_bytes("w.safetensors", &nan.encode().unwrap(), &flex()).unwrap_err().to_string();
    assert!(err.contains("'fc.weight' holds a non-finite value"), "{err}");

    let mut extra = good.clone();
    extra.arrays.insert(
        "head.weight".into(),
        NamedArray { name: "head.weight".into(), shape: vec![1], data: ArrayData::F32(vec![0.0]) },
    );
    let err = model_from_bytes("w.safetensors", &extra.encode().unwrap(), &flex()).unwrap_err().to_string();
    assert!(err.contains("unexpected tensor 'head.weight'"), "{err}");

    // A PyTorch-written file has no metadata: the width is inferred from the shapes.
    let mut bare = good.clone();
    bare.metadata.clear();
    let (_, config) = model_from_bytes("w.safetensors", &bare.encode().unwrap(), &flex()).unwrap();
    assert_eq!(config.width, 0.125);

    let not_a_checkpoint = checkpoint::from_bytes("w.safetensors", &bytes, &flex(), 64).err().unwrap().to_string();
    assert!(not_a_checkpoint.contains("not a checkpoint"), "{not_a_checkpoint}");
    let _ = TensorFile::default();
}

#[test]
fn resume_after_interruption_equals_an_uninterrupted_run() {
    let _rng = rng_lock();
    // Plain, and with a weight average (updated every 3 steps: the interruption at step 6
    // falls between two updates), TTA at the end and a logit scale (folded into the saved
    // classifier, so the checkpoint and the average must unfold it).
    let averaged = tiny_config().with_ema(EmaConfig::new().with_decay(0.5).with_every(3)).with_tta(true);
    let averaged = TrainingConfig { model: averaged.model.clone().with_logit_scale(0.125), ..averaged };
    for config in [tiny_config(), averaged] {
        resume_equals_uninterrupted(config);
    }
}

fn resume_equals_uninterrupted(config: TrainingConfig) {
    let train = synthetic(64, 3);
    let test = synthetic(16, 4);
    let whole = Trainer::new(config.clone(), &flex(), train.len()).unwrap();
    let whole = run(whole, &train, &test, None);
    assert_eq!(whole.step, 8);

    // Interrupted mid-epoch 2 (as Ctrl-C does), saved, restored in a "new process".
    let first = Trainer::new(config.clone(), &flex(), train.len()).unwrap();
    let first = run(first, &train, &test, Some(6));
    let bytes = pollster::block_on(checkpoint::to_bytes(&first, train.len())).unwrap();
    drop(first);
    let resumed = checkpoint::from_bytes("checkpoint.safetensors", &bytes, &flex(), train.len()).unwrap();
    assert_eq!(resumed.step, 6);
    let resumed = run(resumed, &train, &test, None);

    assert_eq!(resumed.history.len(), 2);
    for (a, b) in whole.history.iter().zip(&resumed.history) {
        assert!((a.train_loss - b.train_loss).abs() < 1e-5, "{a:?} vs {b:?}");
        assert!((a.test_loss - b.test_loss).abs() < 1e-5, "{a:?} vs {b:?}");
        assert_eq!(a.test_acc, b.test_acc);
        assert_eq!(a.test_acc_tta, b.test_acc_tta);
        assert_eq!(a.test_acc_weights, b.test_acc_weights);
    }
    let last = &whole.history[1];
    assert_eq!(last.test_acc_tta.is_some(), config.tta, "{last:?}");
    assert_eq!(last.test_acc_weights.is_some(), config.ema.enabled(), "{last:?}");
    assert!(whole.history[0].test_acc_tta.is_none() && whole.history[0].test_acc_weights.is_none());
    // The weights and the tested model (the average, when there is one) both match.
    let w = |m: &Model| pollster::block_on(model_file(m, &config.model, 0)).unwrap();
    for (a, b) in [(w(&whole.model), w(&resumed.model)), (w(&whole.eval_model()), w(&resumed.eval_model()))] {
        for (name, x) in &a.arrays {
            if let (ArrayData::F32(x), ArrayData::F32(y)) = (&x.data, &b.arrays[name].data) {
                let diff = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
                assert!(diff < 1e-5, "{name}: max difference {diff}");
            }
        }
    }
    let (live, tested) = (w(&whole.model), w(&whole.eval_model()));
    let differs = live.arrays.iter().any(|(name, x)| x.data != tested.arrays[name].data);
    assert_eq!(differs, config.ema.enabled(), "the tested model is the average exactly when there is one");
    // A checkpoint from another dataset size is refused.
    let err = checkpoint::from_bytes("c.safetensors", &bytes, &flex(), 65).err().unwrap().to_string();
    assert!(err.contains("trained on 64 images"), "{err}");
    // An optimizer state that does not fit its parameter is refused by name, not a panic at
    // the first update (the state is kept in the parameter's shape).
    let mut file = TensorFile::decode("c", &bytes).unwrap();
    let name = file.arrays.keys().find(|k| k.starts_with("optim.") && k.ends_with(".first")).unwrap().clone();
    let array = file.arrays.get_mut(&name).unwrap();
    let ArrayData::F32(values) = &mut array.data else { panic!("{name} is not f32") };
    let n = values.len();
    values.pop();
    array.shape = vec![n - 1];
    let e = checkpoint::from_bytes("c.safetensors", &file.encode().unwrap(), &flex(), 64).err().unwrap();
    let path = name.trim_start_matches("optim.");
    assert_eq!(
        e.to_string(),
        format!("c.safetensors: optimizer state '{path}' has {} values, its parameter {n}", n - 1)
    );
    if config.ema.enabled() {
        // A checkpoint whose recipe has an average must hold it.
        let mut file = TensorFile::decode("c", &bytes).unwrap();
        file.arrays.remove("ema.fc.weight");
        let e = checkpoint::from_bytes("c.safetensors", &file.encode().unwrap(), &flex(), 64).err().unwrap();
        assert_eq!(e.to_string(), "c.safetensors: tensor 'ema.fc.weight' is missing");
    }
}

#[test]
fn a_diverging_loss_is_reported_with_its_step() {
    let _rng = rng_lock();
    let train = synthetic(64, 5);
    let mut trainer = Trainer::new(tiny_config().with_max_lr(1e30), &flex(), train.len()).unwrap();
    trainer.begin_epoch(train.len());
    let mut error = None;
    while trainer.train_step(&train) {
        if let Err(e) = pollster::block_on(trainer.sync()) {
            error = Some(e);
            break;
        }
    }
    match error {
        Some(TrainError::NonFinite { step, .. }) => assert!(step >= 2, "step {step}"),
        other => panic!("expected a NonFinite error, got {other:?}"),
    }
}

/// The recipe as checkpoints stored it before the optimizer and schedule were nested.
fn flatten_config(config: &serde_json::Value) -> serde_json::Value {
    let mut flat = config.as_object().unwrap().clone();
    // Nor had they a weight average, TTA or a logit scale.
    flat.remove("ema");
    flat.remove("tta");
    flat["model"].as_object_mut().unwrap().remove("logit_scale");
    let optimizer = flat.remove("optimizer").unwrap();
    let schedule = flat.remove("schedule").unwrap();
    for (k, v) in optimizer.as_object().unwrap().iter().chain(schedule.as_object().unwrap()) {
        let key = if k == "kind" { "optimizer" } else { k.as_str() };
        flat.insert(key.to_string(), v.clone());
    }
    flat.into()
}

#[test]
fn a_checkpoint_with_the_old_flat_config_resumes() {
    let _rng = rng_lock();
    let train = synthetic(64, 3);
    let config = tiny_config().with_optimizer(OptimizerConfig::new(OptimizerKind::Sgd).with_weight_decay(1e-3));
    let trainer = Trainer::new(config.clone(), &flex(), train.len()).unwrap();
    let trainer = run(trainer, &train, &synthetic(16, 4), Some(3));
    let bytes = pollster::block_on(checkpoint::to_bytes(&trainer, train.len())).unwrap();
    let mut file = TensorFile::decode("c", &bytes).unwrap();
    let mut meta: serde_json::Value = serde_json::from_str(&file.metadata["checkpoint"]).unwrap();
    meta["config"] = flatten_config(&meta["config"]);
    assert!(meta["config"]["max_lr"].is_number() && meta["config"]["optimizer"] == "sgd", "{}", meta["config"]);
    file.metadata.insert("checkpoint".into(), meta.to_string());
    let old = file.encode().unwrap();
    let resumed = checkpoint::from_bytes("old.safetensors", &old, &flex(), train.len()).unwrap();
    assert_eq!(resumed.config, config);
    assert_eq!(resumed.step, 3);
}

#[test]
fn identical_content_encodes_to_identical_bytes() {
    // Each encode builds the HashMap safetensors takes, with its own random order.
    let file = || {
        let mut f = TensorFile::default();
        for i in 0..12 {
            f.metadata.insert(format!("key{i}"), format!("value \"{i}\""));
        }
        let name = "t".to_string();
        f.arrays.insert(name.clone(), NamedArray { name, shape: vec![2], data: ArrayData::F32(vec![1.0, 2.0]) });
        f
    };
    let first = file().encode().unwrap();
    for _ in 0..5 {
        assert_eq!(file().encode().unwrap(), first);
    }
    assert_eq!(TensorFile::decode("f", &first).unwrap().metadata, file().metadata);
}

#[test]
fn the_lr_range_test_runs_on_the_driver_across_epochs() {
    let _rng = rng_lock();
    let train = synthetic(64, 6);
    // 4 steps per epoch: 10 steps roll over two epochs, with no test pass and no history.
    let trainer = Trainer::new(tiny_config(), &flex(), train.len()).unwrap();
    let finder = LrFinderConfig::new().with_start_lr(1e-5).with_end_lr(1e-1).with_num_iter(10).with_diverge(1e9);
    let mut seen = Vec::new();
    let result =
        pollster::block_on(lr_finder::run(&finder, trainer, &train, |i, lr, loss| seen.push((i, lr, loss)))).unwrap();
    assert_eq!(result.lrs.len(), 10, "{result:?}");
    let ramp = finder.range(0.95);
    for (i, lr) in result.lrs.iter().enumerate() {
        assert!((lr / ramp.lr(i) - 1.0).abs() < 1e-12, "step {i}: {lr} vs {}", ramp.lr(i));
    }
    assert!(result.losses.iter().all(|l| l.is_finite() && *l > 0.0), "{result:?}");
    assert_eq!(seen.len(), 10);
    assert!(!result.diverged);
}

#[test]
fn settings_out_of_range_are_refused_by_name() {
    let cases: [(TrainingConfig, &str); 5] = [
        (
            tiny_config().with_optimizer(OptimizerConfig::new(OptimizerKind::Adam).with_weight_decay(-1.0)),
            "weight_decay",
        ),
        (tiny_config().with_max_lr(f64::INFINITY), "max_lr"),
        (tiny_config().with_schedule(OneCycleConfig::new().with_pct_start(0.0)), "pct_start"),
        (tiny_config().with_label_smoothing(1.0), "label_smoothing"),
        (tiny_config().with_batch_size(1), "batch_size"),
    ];
    for (config, setting) in cases {
        let e = config.validate().unwrap_err();
        assert_eq!(e.setting, setting, "{e}");
        let e = Trainer::new(config, &flex(), 64).err().unwrap().to_string();
        assert!(e.starts_with(&format!("invalid configuration: {setting}")), "{e}");
    }
}

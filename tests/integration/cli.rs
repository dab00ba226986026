//! The command line end to end: outputs of a run, eval, refusing to clobber, bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::real_data;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cifar-webgpu"));
    c.env_remove("RUST_LOG");
    c
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cifar-webgpu-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

const TINY: [&str; 14] = [
    "--backend",
    "flex",
    "--width",
    "0.125",
    "--batch-size",
    "32",
    "--train-limit",
    "256",
    "--test-limit",
    "128",
    "--no-download",
    "--runs-dir",
    "",
    "--epochs",
];

fn tiny_train(runs: &Path, name: &str, extra: &[&str]) -> Output {
    let mut args: Vec<String> = TINY.iter().map(|s| s.to_string()).collect();
    args[12] = runs.display().to_string();
    args.push("1".into());
    args.extend(["--name".to_string(), name.to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    bin().arg("train").args(&args).output().unwrap()
}

/// The default backend trains on a real GPU adapter, else on flex, and says which and why:
/// on a machine whose only Vulkan adapter is lavapipe (CI) that is flex.
#[test]
fn auto_backend_names_its_device_and_reason() {
    let Some(_) = real_data("auto_backend_names_its_device_and_reason") else { return };
    let runs = scratch("auto");
    let mut args: Vec<String> = TINY.iter().map(|s| s.to_string()).collect();
    args[1] = "auto".into();
    args[12] = runs.display().to_string();
    args.extend(["1", "--name", "a"].map(String::from));
    let out = bin().arg("train").args(&args).output().unwrap();
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(runs.join("a").join("config.json")).unwrap()).unwrap();
    let device = &config["device"];
    let reason = device["reason"].as_str().unwrap_or_default();
    assert!(s.contains(&format!("device: {}", device["backend"].as_str().unwrap())), "{s}");
    match device["backend"].as_str() {
        Some("flex") => {
            assert!(reason.contains("CPU implementation") || reason.contains("no wgpu adapter"), "{device}")
        }
        Some("wgpu") => assert_ne!(device["device_type"], "Cpu", "{device}"),
        other => panic!("auto chose {other:?}: {device}"),
    }
    assert!(s.contains(reason), "the reason is printed: {s}");
}

/// `--gpu-conv gemm` (the convolution a real GPU gets by default) on lavapipe: `check-device`
/// checks it against Burn's `conv2d` (output and both gradients) and says that `auto` keeps
/// Burn's on this CPU adapter; a short run with it, dropout and augmentation must learn, and
/// records it in config.json.
#[test]
fn gpu_conv_gemm_is_checked_and_learns_on_wgpu() {
    let Some(_) = real_data("gpu_conv_gemm_is_checked_and_learns_on_wgpu") else { return };
    let out = bin().args(["check-device", "--backend", "wgpu"]).output().unwrap();
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    assert!(s.lines().next().unwrap_or_default().ends_with("burn convolutions"), "auto on a CPU adapter: {s}");
    let gemm_checks: Vec<&str> = s.lines().filter(|l| l.starts_with("our GPU 3x3 conv (GEMM)")).collect();
    assert_eq!(gemm_checks.len(), 3, "{s}");
    assert!(gemm_checks.iter().all(|l| l.ends_with(" ok")), "{s}");
    // lavapipe has f16 shaders, so gemm-f16 is checked too, forward and backward.
    let f16_checks: Vec<&str> =
        s.lines().filter(|l| l.starts_with("our GPU 3x3 conv (GEMM, f16 operands, f32 sums)")).collect();
    assert_eq!(f16_checks.len(), 3, "{s}");
    assert!(f16_checks.iter().all(|l| l.ends_with(" ok")), "{s}");

    // gemm-f16 launches gemm's forward kernels plus one weight cast per convolution (8), and
    // its own backward in place of Burn's: 42 more kernels per step in all (342.2 against
    // 300.2 at batch 64). Burn's fusion is fragile here: written with Burn's cast op, the
    // forward's BatchNorm stopped fusing and a step launched 68 kernels more (README, "gemm-f16").
    // `wgpu:gemm-f16` applies to wgpu alone: flex, which has no GPU convolution, runs once.
    let dir = scratch("gemm-kernels");
    let json = dir.join("bench.json");
    let out = bin()
        .args(["bench", "--backend", "flex,wgpu", "--precision", "f32", "--gpu-conv", "gemm,wgpu:gemm-f16"])
        .args(["--width", "0.125", "--batch-size", "32"])
        // One warm-up step is not enough: the first row's second step still launched Burn's
        // autotune candidates (504 kernels against 309).
        .args(["--warmup", "2", "--steps", "2", "--sync-every", "1", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let labels: Vec<&str> = report["rows"].as_array().unwrap().iter().map(|r| r["backend"].as_str().unwrap()).collect();
    assert_eq!(labels, ["flex", "wgpu-gemm", "wgpu-gemm-f16"], "{report}");
    let kernels = |label: &str| {
        let rows = report["rows"].as_array().unwrap();
        let row = rows.iter().find(|r| r["backend"] == label).unwrap_or_else(|| panic!("no {label} row: {report}"));
        row["per_step"]["kernels"].as_f64().unwrap()
    };
    let (gemm, half) = (kernels("wgpu-gemm"), kernels("wgpu-gemm-f16"));
    // Burn's backward kernels are autotuned by timing: a few either way.
    assert!((half - gemm - 42.0).abs() <= 8.0, "kernels per step: gemm {gemm}, gemm-f16 {half}");

    // As `backends::wgpu_learns_with_dropout_and_augmentation`: 24 steps of 128 at max LR 0.01
    // (measured with `gemm`: 22.05 % on 2,000 test images, 12.85 % after the first epoch; with
    // the GPU BatchNorm op, 19.40 % on these 2,000). It trains with `gemm-f16`: `gemm` in f32
    // gives Burn's conv2d's output and gradients within 1e-4 (check-device above), and Burn's
    // convolution learns (`backends::wgpu_learns_with_dropout_and_augmentation`), so this run
    // covers what only the f16 path does, in training, through the same dispatch.
    let runs = scratch("gemm");
    let out = bin()
        .args([
            "train",
            "--backend",
            "wgpu",
            "--gpu-conv",
            "gemm-f16",
            "--width",
            "0.125",
            "--no-download",
            "--seed",
            "11",
        ])
        .args(["--epochs", "2", "--train-limit", "1536", "--test-limit", "2000"])
        .args(["--batch-size", "128", "--max-lr", "0.01"])
        .args(["--runs-dir", &runs.display().to_string(), "--name", "gemm"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let dir = runs.join("gemm");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["device"]["gpu_conv"], "gemm-f16", "{config}");
    let metrics: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let loss = |m: &serde_json::Value| m["train_loss"].as_f64().unwrap();
    let acc = metrics[1]["test_acc"].as_f64().unwrap();
    assert!(loss(&metrics[1]) < loss(&metrics[0]) - 0.05, "the training loss did not fall: {metrics:?}");
    // 2,000 test images: chance is 10 ± 0.7 %.
    assert!(acc > 0.15, "test accuracy {:.2}% with the f16 GEMM convolution", 100.0 * acc);
}

/// `--precision`: resolved, printed and recorded; bf16 runs where the CPU has AMX-BF16 and is
/// refused with the reason elsewhere, and on a GPU backend before the GPU is started.
#[test]
fn precision_is_resolved_recorded_and_checked() {
    let Some(_) = real_data("precision_is_resolved_recorded_and_checked") else { return };
    let runs = scratch("precision");
    let recorded = |name: &str| -> String {
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(runs.join(name).join("config.json")).unwrap()).unwrap();
        config["device"]["precision"].as_str().unwrap().to_string()
    };
    let out = tiny_train(&runs, "f32", &["--precision", "f32"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(recorded("f32"), "f32");
    assert!(!text(&out).contains("bf16"), "{}", text(&out));

    let amx = flex_kernels::amx::available();
    let out = tiny_train(&runs, "auto", &["--precision", "auto"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(recorded("auto"), if amx { "bf16" } else { "f32" });

    let out = tiny_train(&runs, "bf16", &["--precision", "bf16"]);
    if amx {
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(recorded("bf16"), "bf16");
        assert!(text(&out).contains("bf16 convolutions"), "{}", text(&out));
        // Same seed, same batches and masks: the losses differ by the rounding only.
        let loss = |name: &str| -> f64 {
            let metrics = std::fs::read_to_string(runs.join(name).join("metrics.jsonl")).unwrap();
            let line: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
            line["train_loss"].as_f64().unwrap_or(f64::NAN)
        };
        let (exact, rounded) = (loss("f32"), loss("bf16"));
        assert!((exact - rounded).abs() < 0.05, "train loss: f32 {exact}, bf16 {rounded}");
        assert_ne!(exact, rounded, "bf16 gave f32's loss to the last bit: not computed in bf16");
    } else {
        assert!(!out.status.success());
        assert!(text(&out).contains("AMX-BF16"), "{}", text(&out));
        assert!(!runs.join("bf16").exists(), "a refused run leaves no directory");
    }

    let started = std::time::Instant::now();
    let out = bin().args(["train", "--backend", "wgpu", "--precision", "bf16", "--no-download"]).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("CPU kernels (flex) only"), "{}", text(&out));
    assert!(started.elapsed().as_secs() < 5, "refused before wgpu starts");
}

/// `train --resume dir` with the data limits the run was started with.
fn resume(dir: &Path, train_limit: usize) -> Output {
    bin()
        .args([
            "train",
            "--backend",
            "flex",
            "--no-download",
            "--train-limit",
            &train_limit.to_string(),
            "--test-limit",
            "128",
            "--resume",
        ])
        .arg(dir)
        .output()
        .unwrap()
}

#[test]
fn summary_prints_the_original_table() {
    let out = bin().arg("summary").output().unwrap();
    assert!(out.status.success());
    let s = text(&out);
    assert!(s.contains("Total params: 6,573,120"), "{s}");
    assert!(s.contains("BatchNorm2d-2"), "{s}");
}

#[test]
fn train_writes_the_run_directory_and_eval_agrees() {
    let Some(_) = real_data("train_writes_the_run_directory_and_eval_agrees") else { return };
    let runs = scratch("run");
    let out = tiny_train(&runs, "t", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let dir = runs.join("t");
    for f in [
        "config.json",
        "metrics.jsonl",
        "curves.png",
        "misclassified.png",
        "confusion.png",
        "model.safetensors",
        "checkpoint.safetensors",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing; output:\n{}", text(&out));
    }
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    for key in ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds", "images_per_sec"] {
        assert!(line.get(key).is_some_and(|v| v.is_number()), "{key} missing in {line}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model"]["width"], 0.125);
    assert_eq!(config["device"]["backend"], "flex", "the device is recorded: {config}");
    assert_eq!(config["device"]["device_type"], "Cpu");
    assert!(text(&out).contains("overall accuracy"), "confusion table printed");
    // Output to a pipe has no progress bar; its plain lines come every --progress-every
    // seconds (30 by default: none in a run of seconds), at read-backs.
    assert!(!text(&out).contains(" step "), "{}", text(&out));
    let out = tiny_train(&runs, "lines", &["--sync-every", "3", "--progress-every", "0"]);
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().filter(|l| l.contains(" step ")).collect();
    assert_eq!(lines.len(), 3, "read-backs after steps 3, 6 and 8 of 8:\n{}", text(&out));
    for (line, step) in lines.iter().zip(["3/8", "6/8", "8/8"]) {
        assert!(line.starts_with(&format!("epoch  1/1 step    {step} loss ")), "{line}");
        assert!(line.contains(" img/s ") && line.ends_with(" ms/step"), "{line}");
    }

    // eval on the same 128 test images reports the accuracy the run logged.
    let weights = dir.join("model.safetensors");
    let out = bin()
        .args(["eval", "--backend", "flex", "--no-download", "--test-limit", "128", "--weights"])
        .arg(&weights)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let acc = 100.0 * line["test_acc"].as_f64().unwrap();
    assert!(text(&out).contains(&format!("test accuracy {acc:.2}%")), "expected {acc:.2}% in {}", text(&out));

    // Flip test-time augmentation runs on the same images.
    let out = bin()
        .args(["eval", "--backend", "flex", "--no-download", "--test-limit", "128", "--tta", "--weights"])
        .arg(&weights)
        .output()
        .unwrap();
    assert!(out.status.success() && text(&out).contains("flip TTA"), "{}", text(&out));

    // A second run with the same name must not clobber the first one's checkpoint.
    let before = std::fs::read(dir.join("checkpoint.safetensors")).unwrap();
    let out = tiny_train(&runs, "t", &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("already has a checkpoint"), "{}", text(&out));
    assert_eq!(before, std::fs::read(dir.join("checkpoint.safetensors")).unwrap());

    // Resuming a finished run is a no-op that keeps its files, config.json included.
    let config_before = std::fs::read(dir.join("config.json")).unwrap();
    let out = resume(&dir, 256);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("already finished"), "{}", text(&out));
    assert_eq!(before, std::fs::read(dir.join("checkpoint.safetensors")).unwrap());
    assert_eq!(config_before, std::fs::read(dir.join("config.json")).unwrap());

    // Diverging: clear error naming the step, exit code non-zero, nothing saved.
    let out = tiny_train(&runs, "nan", &["--max-lr", "1e30"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("training diverged: loss is"), "{}", text(&out));
    assert!(text(&out).contains("no checkpoint was written"), "{}", text(&out));
    assert!(!runs.join("nan").join("checkpoint.safetensors").exists());
    assert!(!runs.join("nan").join("model.safetensors").exists());

    // A finite loss that explodes (Adam at max LR 1e6 ends far above chance) is divergence too,
    // found at the end of the epoch: nothing of the epoch is saved.
    let out = tiny_train(&runs, "huge", &["--max-lr", "1e6"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("training diverged"), "{}", text(&out));
    assert!(!runs.join("huge").join("model.safetensors").exists());
    assert!(!runs.join("huge").join("checkpoint.safetensors").exists());

    // --force replaces a run's files.
    let out = tiny_train(&runs, "t", &["--force", "--seed", "3"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_ne!(before, std::fs::read(dir.join("checkpoint.safetensors")).unwrap());
    let _ = std::fs::remove_dir_all(&runs);
}

/// `--recipe best` is one flag; each of its parts stays a flag of its own, and the run tests
/// and saves the weight average, with and without flip TTA.
#[test]
fn the_best_recipe_is_one_flag_and_each_part_its_own() {
    let Some(_) = real_data("the_best_recipe_is_one_flag_and_each_part_its_own") else { return };
    let runs = scratch("best");
    let read_json = |path: PathBuf| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    };
    let last_metrics = |dir: &Path| -> serde_json::Value {
        let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        serde_json::from_str(metrics.lines().last().unwrap()).unwrap()
    };
    let out = tiny_train(&runs, "best", &["--recipe", "best", "--ema-decay", "0.99", "--ema-every", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    let dir = runs.join("best");
    let c = read_json(dir.join("config.json"));
    assert_eq!(
        (&c["optimizer"]["kind"], &c["optimizer"]["max_lr"], &c["label_smoothing"], &c["ema"]["decay"], &c["tta"]),
        (&"sgd".into(), &0.4.into(), &0.2.into(), &0.99.into(), &true.into()),
        "{c}"
    );
    assert_eq!((&c["ema"]["every"], &c["model"]["logit_scale"]), (&2.into(), &0.125.into()), "{c}");
    let parts = "logits × 0.125, label smoothing 0.2, weight average 0.99 every 2 steps";
    assert!(text(&out).contains(parts), "{}", text(&out));
    let m = last_metrics(&dir);
    let (plain, tta) = (100.0 * m["test_acc"].as_f64().unwrap(), 100.0 * m["test_acc_tta"].as_f64().unwrap());
    assert!(
        text(&out).contains(&format!("final test accuracy {plain:.2}%, with flip TTA {tta:.2}%")),
        "{}",
        text(&out)
    );
    // The saved model is the one tested: eval gives both accuracies back.
    for (flag, acc) in [(None, plain), (Some("--tta"), tta)] {
        let out = bin()
            .args(["eval", "--backend", "flex", "--no-download", "--test-limit", "128", "--weights"])
            .arg(dir.join("model.safetensors"))
            .args(flag)
            .output()
            .unwrap();
        assert!(text(&out).contains(&format!("test accuracy {acc:.2}%")), "expected {acc:.2}% in {}", text(&out));
    }

    // Every part can be changed on its own; another optimizer brings its own LR and decay.
    let parts = ["--recipe", "best", "--optimizer", "adam", "--ema-decay", "0", "--no-tta", "--label-smoothing", "0.1"];
    let out = tiny_train(&runs, "parts", &parts);
    assert!(out.status.success(), "{}", text(&out));
    let c = read_json(runs.join("parts").join("config.json"));
    assert_eq!(
        (&c["optimizer"]["kind"], &c["optimizer"]["max_lr"], &c["label_smoothing"], &c["ema"]["decay"], &c["tta"]),
        (&"adam".into(), &0.01.into(), &0.1.into(), &0.0.into(), &false.into()),
        "{c}"
    );
    assert_eq!(c["model"]["logit_scale"], 1.0, "Adam brings its own logit scale: {c}");
    let out = tiny_train(&runs, "scaled", &["--optimizer", "sgd", "--logit-scale", "0.5"]);
    assert!(out.status.success(), "{}", text(&out));
    let c = read_json(runs.join("scaled").join("config.json"));
    assert_eq!((&c["optimizer"]["kind"], &c["model"]["logit_scale"]), (&"sgd".into(), &0.5.into()), "{c}");
    let m = last_metrics(&runs.join("parts"));
    assert!(m.get("test_acc_tta").is_none() && m.get("test_acc_weights").is_none(), "{m}");

    // A resumed run keeps its checkpoint's recipe.
    let out = bin().args(["train", "--no-download", "--recipe", "seed", "--resume"]).arg(&dir).output().unwrap();
    assert!(!out.status.success() && text(&out).contains("--recipe cannot change it"), "{}", text(&out));
    let out = tiny_train(&runs, "bad", &["--ema-decay", "1"]);
    assert!(
        !out.status.success() && text(&out).contains("ema.decay must be in [0, 1) (0: off), got 1"),
        "{}",
        text(&out)
    );
    let _ = std::fs::remove_dir_all(&runs);
}

#[test]
fn stop_and_resume_through_the_cli() {
    let Some(_) = real_data("stop_and_resume_through_the_cli") else { return };
    let runs = scratch("resume");
    // Started in exact f32, which a resume keeps (on a CPU with AMX `auto` would be bf16).
    let out = tiny_train(&runs, "r", &["--stop-after", "3", "--precision", "f32"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("stopped at step 3"), "{}", text(&out));
    let dir = runs.join("r");
    assert!(dir.join("checkpoint.safetensors").is_file());
    assert!(!dir.join("model.safetensors").exists());
    let out = resume(&dir, 256);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("resuming") && dir.join("model.safetensors").is_file(), "{}", text(&out));
    assert!(text(&out).contains("precision: f32, as"), "{}", text(&out));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["device"]["precision"], "f32", "{config}");
    let _ = std::fs::remove_dir_all(&runs);
}

#[test]
fn bad_inputs_exit_non_zero_with_a_clear_message() {
    // A truncated data file.
    let data = scratch("baddata");
    for f in [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ] {
        std::fs::write(data.join(f), vec![0u8; 3073 * 10]).unwrap();
    }
    std::fs::write(data.join("data_batch_1.bin"), vec![0u8; 3073 * 10 - 5]).unwrap();
    // (lr-find: `eval` would read its weights first.)
    let plot = data.join("lr.png");
    let out = bin()
        .args(["lr-find", "--backend", "flex", "--no-download", "--no-verify", "--out"])
        .arg(&plot)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("data_batch_1.bin") && text(&out).contains("3073-byte records"), "{}", text(&out));

    // A missing file, no download allowed.
    std::fs::remove_file(data.join("test_batch.bin")).unwrap();
    let out = bin()
        .args(["lr-find", "--backend", "flex", "--no-download", "--out"])
        .arg(&plot)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("test_batch.bin"), "{}", text(&out));

    // A corrupt weights file.
    if real_data("bad_inputs_exit_non_zero_with_a_clear_message").is_some() {
        let w = data.join("model.safetensors");
        std::fs::write(&w, b"definitely not safetensors").unwrap();
        let out = bin()
            .args(["eval", "--backend", "flex", "--no-download", "--test-limit", "10", "--weights"])
            .arg(&w)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(text(&out).contains("model.safetensors: not a valid safetensors file"), "{}", text(&out));
    }
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn lr_find_and_train_with_max_lr_auto() {
    let Some(_) = real_data("lr_find_and_train_with_max_lr_auto") else { return };
    let runs = scratch("lrfind");
    let png = runs.join("lr.png");
    let out = bin()
        .args(["lr-find", "--backend", "flex", "--no-download", "--width", "0.125", "--batch-size", "32"])
        .args(["--train-limit", "640", "--num-iter", "40", "--start-lr", "1e-5", "--end-lr", "10", "--out"])
        .arg(&png)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("suggested max LR: "), "{}", text(&out));
    assert!(image::open(&png).is_ok(), "lr-find wrote no readable PNG");

    let out = tiny_train(&runs, "auto", &["--max-lr", "auto"]);
    assert!(out.status.success(), "{}", text(&out));
    let s = text(&out);
    let suggested: f64 =
        s.split("suggested max LR: ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(runs.join("auto").join("config.json")).unwrap()).unwrap();
    let used = config["optimizer"]["max_lr"].as_f64().unwrap();
    assert!((used / suggested - 1.0).abs() < 1e-3, "trained with {used}, suggested {suggested}");
    assert!(runs.join("auto").join("lr_find.png").is_file());
    let _ = std::fs::remove_dir_all(&runs);
}

#[test]
fn ctrl_c_and_sigterm_save_a_checkpoint_that_resumes() {
    let Some(_) = real_data("ctrl_c_and_sigterm_save_a_checkpoint_that_resumes") else { return };
    for signal in ["INT", "TERM", "HUP"] {
        signal_saves_a_checkpoint(signal);
    }
}

fn signal_saves_a_checkpoint(signal: &str) {
    use std::io::{BufRead, BufReader};
    let runs = scratch(&format!("sig{signal}"));
    let mut args: Vec<String> = TINY.iter().map(|s| s.to_string()).collect();
    args[7] = "2048".into(); // --train-limit: 64 steps per epoch, so the signal lands mid-run
    args[12] = runs.display().to_string();
    args.extend(["3", "--name", "c"].map(String::from));
    let mut child = bin().arg("train").args(&args).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen += &line;
        seen.push('\n');
        if line.starts_with("epoch  1/3") {
            break;
        }
    }
    let killed = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    for line in lines {
        seen += &line.unwrap();
        seen.push('\n');
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "SIG{signal}: {seen}");
    assert!(seen.contains("stopped at step"), "{seen}");
    let dir = runs.join("c");
    let out = resume(&dir, 2048);
    assert!(out.status.success(), "{}", text(&out));
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 3, "{metrics}");
    let _ = std::fs::remove_dir_all(&runs);
}

/// `bench --pytorch` end to end without PyTorch: a stand-in interpreter prints rows in the
/// reference script's format, and the comparison pairs them with ours by shape.
/// A stand-in for `python3 tools/pytorch_reference.py bench` in `dir`: (interpreter, script).
/// It receives `<script> bench --width .. --batch-size .. --threads N`, checks the threads it
/// was given, then prints an fp32 row (100 / 400 img/s) and a channels_last row (150 / 300)
/// at `width`, batch 8, as the reference script does.
fn fake_pytorch(dir: &Path, width: &str) -> (PathBuf, PathBuf) {
    let fake = dir.join("fake-python");
    let row = |train: f64, infer: f64, mode: &str| {
        format!(
            "{{\"backend\": \"pytorch\", \"width\": {width}, \"batch_size\": 8, \"first_step_s\": 0.5, \
             \"train_images_per_sec\": {train:.1}, \"infer_images_per_sec\": {infer:.1}, \"peak_bytes\": 1048576, \
             \"mode\": \"{mode}\"}}"
        )
    };
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\ncase \"$*\" in *'--threads 1'*) ;; *) echo \"wrong args: $*\" >&2; exit 3;; esac\n\
             echo '[{}, {}]'\n",
            row(100.0, 400.0, "fp32"),
            row(150.0, 300.0, "channels_last")
        ),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&fake).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&fake, perms).unwrap();
    let script = dir.join("pytorch_reference.py");
    std::fs::write(&script, "# stand-in\n").unwrap();
    (fake, script)
}

#[test]
fn bench_compares_with_pytorch_rows_and_writes_json() {
    let dir = scratch("bench");
    let (fake, script) = fake_pytorch(&dir, "0.0625");
    let json = dir.join("bench.json");
    let out = bin()
        .args(["bench", "--backend", "flex", "--width", "0.0625", "--batch-size", "8", "--warmup", "1", "--steps", "1"])
        .args(["--threads", "1", "--pytorch", "--python"])
        .arg(&fake)
        .arg("--pytorch-script")
        .arg(&script)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    assert!(s.contains("ours/PT"), "{s}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let row = &report["comparison"][0];
    let ours = row["ours"]["train_images_per_sec"].as_f64().unwrap();
    assert!(ours > 0.0);
    assert!((row["train_ratio"].as_f64().unwrap() - ours / 100.0).abs() < 1e-9, "{row}");
    assert!(row["ours"]["peak_bytes"].as_u64().unwrap() > 0, "peak memory measured: {row}");
    assert_eq!(report["threads"], 1);
    // Each of our rows once more, against PyTorch's fastest mode at its shape.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let fastest: Vec<&str> =
        stdout.lines().skip_while(|l| !l.contains("fastest PyTorch")).skip(1).take_while(|l| !l.is_empty()).collect();
    assert!(!fastest.is_empty(), "{s}");
    for line in &fastest {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[4], "channels_last", "{line}");
        let ratio: f64 = cols[6].trim_end_matches('×').parse().unwrap();
        let ours: f64 = cols[3].parse().unwrap();
        assert!((ratio - ours / 150.0).abs() < 0.01, "{line}");
    }

    // No PyTorch: our table still prints, with a note saying why there is no comparison.
    let out = bin()
        .args(["bench", "--backend", "flex", "--width", "0.0625", "--batch-size", "8", "--warmup", "1", "--steps", "1"])
        .args(["--pytorch", "--python", "/nonexistent/python3", "--pytorch-script"])
        .arg(&script)
        .output()
        .unwrap();
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    assert!(s.contains("PyTorch comparison skipped") && s.contains("/nonexistent/python3"), "{s}");
    assert!(s.contains("train img/s"), "{s}");
}

/// A bench stopped before its end (a GPU lease's time limit) leaves a JSON with PyTorch's rows
/// and every row of ours measured so far, compared: PyTorch runs first, and the file is
/// rewritten, whole, after each row.
#[test]
fn bench_json_holds_what_was_measured_when_stopped() {
    let dir = scratch("bench-stopped");
    let (fake, script) = fake_pytorch(&dir, "1");
    let json = dir.join("bench.json");
    // Six rows of about a second each on two cores (width 1, 128 images trained, 8 inferred).
    let mut child = bin()
        .args(["bench", "--backend", "flex", "--precision", "f32", "--width", "1", "--batch-size", "8"])
        .args(["--warmup", "4", "--steps", "12", "--sync-every", "1,2,3,4,5,6", "--threads", "1", "--pytorch"])
        .arg("--python")
        .arg(&fake)
        .arg("--pytorch-script")
        .arg(&script)
        .arg("--json")
        .arg(&json)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let read = || std::fs::read(&json).ok().map(|b| serde_json::from_slice::<serde_json::Value>(&b).unwrap());
    let rows = |r: &serde_json::Value| r["rows"].as_array().unwrap().len();
    let (mut saw_anchor_alone, start) = (false, std::time::Instant::now());
    let report = loop {
        assert!(child.try_wait().unwrap().is_none(), "the bench ended before its first row was seen");
        assert!(start.elapsed().as_secs() < 300, "no row after 300 s");
        match read() {
            Some(r) if rows(&r) > 0 => break r,
            Some(r) => saw_anchor_alone |= r["pytorch"].as_array().unwrap().len() == 2,
            None => {}
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(saw_anchor_alone, "PyTorch's rows came with ours, not before them");
    let report = read().unwrap_or(report);
    let n = rows(&report);
    assert!((1..6).contains(&n), "{n} rows of 6 after the kill");
    assert_eq!(report["pytorch"].as_array().unwrap().len(), 2);
    let comparison = report["comparison"].as_array().unwrap();
    assert_eq!(comparison.len(), 2 * n, "{report}");
    let ours = report["rows"][0]["train_images_per_sec"].as_f64().unwrap();
    assert!((comparison[0]["train_ratio"].as_f64().unwrap() - ours / 100.0).abs() < 1e-9, "{report}");
}

/// Settings and output paths are checked before any data is read or model built: here the data
/// directory does not even exist, so each error proves the order.
#[test]
fn bad_settings_and_paths_are_refused_before_any_work() {
    let runs = scratch("early");
    let no_data = runs.join("no-such-data");
    let train = |extra: &[&str]| {
        bin()
            .args(["train", "--backend", "flex", "--no-download", "--runs-dir"])
            .arg(&runs)
            .arg("--data-dir")
            .arg(&no_data)
            .args(extra)
            .output()
            .unwrap()
    };
    for (args, expected) in [
        (&["--width", "inf", "--name", "a"][..], "width must be in [1/64, 8], got inf"),
        (&["--width", "1e-9", "--name", "a"], "width must be in"),
        (&["--weight-decay=-1", "--name", "a"], "weight_decay must be 0 or more"),
        (&["--max-lr", "0", "--name", "a"], "max_lr must be a positive number"),
        (&["--pct-start", "1.5", "--name", "a"], "pct_start must be in (0, 1)"),
        (&["--sync-every", "0", "--name", "a"], "must be at least 1"),
        (&["--progress-every=-1", "--name", "a"], "must be a number of seconds, 0 or more"),
        (&["--progress-every", "NaN", "--name", "a"], "must be a number of seconds, 0 or more"),
        (&["--resume", "somewhere", "--epochs", "30", "--width", "0.5"], "--epochs, --width cannot change it"),
    ] {
        let out = train(args);
        assert!(!out.status.success(), "{args:?}");
        assert!(text(&out).contains(expected), "{args:?}: expected '{expected}' in {}", text(&out));
        assert!(!text(&out).contains("no-such-data"), "{args:?} looked for data first: {}", text(&out));
        assert!(!runs.join("a").exists(), "{args:?} left a run directory");
    }

    // A directory with results and no checkpoint is not overwritten without --force.
    let old = runs.join("old");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("metrics.jsonl"), "kept\n").unwrap();
    let out = train(&["--name", "old", "--epochs", "1"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("already has the results of a run (metrics.jsonl)"), "{}", text(&out));
    assert!(text(&out).contains("--force"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(old.join("metrics.jsonl")).unwrap(), "kept\n");

    // A missing data directory: nothing is left behind in --runs-dir.
    let out = train(&["--name", "b", "--epochs", "1"]);
    assert!(!out.status.success() && text(&out).contains("no-such-data"), "{}", text(&out));
    assert!(!runs.join("b").exists(), "an empty run directory was left: {}", text(&out));

    let file = runs.join("a-file");
    std::fs::write(&file, "x").unwrap();

    // eval: the weights and --predictions are checked before the data; lr-find: --out.
    let without_data = |args: &[&str]| bin().args(args).arg("--data-dir").arg(&no_data).output().unwrap();
    let missing = runs.join("missing.safetensors").display().to_string();
    let out = without_data(&["eval", "--backend", "flex", "--no-download", "--weights", &missing]);
    assert!(!out.status.success() && text(&out).contains("missing.safetensors: cannot read"), "{}", text(&out));
    let under_a_file = |name: &str| file.join(name).display().to_string();
    for args in [
        ["eval", "--backend", "flex", "--no-download", "--weights", "w", "--predictions", &under_a_file("p.txt")],
        ["lr-find", "--backend", "flex", "--no-download", "--width", "0.25", "--out", &under_a_file("lr.png")],
    ] {
        let out = without_data(&args);
        assert!(!out.status.success() && text(&out).contains("a-file"), "{args:?}: {}", text(&out));
        assert!(!text(&out).contains("no-such-data"), "{args:?}: {}", text(&out));
    }
    let out = bin().args(["eval", "--backend", "flex", "--batch-size", "0", "--weights", "w"]).output().unwrap();
    assert!(!out.status.success() && text(&out).contains("must be at least 1"), "{}", text(&out));
    let _ = std::fs::remove_dir_all(&runs);
}

#[test]
fn data_errors_are_readable() {
    let dir = scratch("dataerr");
    // --data-dir naming a regular file.
    let file = dir.join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let out = bin().args(["lr-find", "--backend", "flex", "--no-download", "--data-dir"]).arg(&file).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("plain-file: not a directory"), "{}", text(&out));

    // A gzip holding garbage: the message names the archive and prints no raw bytes.
    let data = dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&data).unwrap();
    let mut rng = cifar_core::rng::Rng::new(3);
    let garbage: Vec<u8> = (0..20_000).map(|_| rng.below(256) as u8).collect();
    let raw = dir.join("garbage");
    std::fs::write(&raw, &garbage).unwrap();
    let gz = Command::new("gzip").arg("-c").arg(&raw).output().unwrap();
    assert!(gz.status.success());
    std::fs::write(data.join("cifar-10-binary.tar.gz"), &gz.stdout).unwrap();
    let out = bin()
        .args(["lr-find", "--backend", "flex", "--no-download", "--no-verify", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let s = text(&out);
    assert!(!out.status.success());
    assert!(s.contains("cifar-10-binary.tar.gz"), "{s}");
    let line = s.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
    assert!(line.chars().all(|c| !c.is_control()) && line.is_ascii(), "raw bytes in: {line:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The shipped model (`pretrained/`, written by tools/ship_model.py) has the SHA-256 and the
/// test accuracies recorded beside it, as `eval` measures them on all 10,000 test images.
#[test]
fn the_shipped_model_gives_its_recorded_accuracy() {
    let Some(_) = real_data("the_shipped_model_gives_its_recorded_accuracy") else { return };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pretrained");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("model.json")).unwrap()).unwrap();
    let weights = dir.join(meta["file"].as_str().unwrap());
    let sum = Command::new("sha256sum").arg(&weights).output().unwrap();
    let sum = String::from_utf8_lossy(&sum.stdout);
    assert_eq!(sum.split_whitespace().next(), meta["sha256"].as_str(), "{}", weights.display());
    assert_eq!(std::fs::metadata(&weights).unwrap().len(), meta["bytes"].as_u64().unwrap());
    for (flag, key) in [(None, "test_acc"), (Some("--tta"), "test_acc_tta")] {
        let out = bin()
            .args(["eval", "--backend", "flex", "--precision", "f32", "--no-download", "--weights"])
            .arg(&weights)
            .args(flag)
            .output()
            .unwrap();
        let acc = 100.0 * meta[key].as_f64().unwrap();
        let want = format!("test accuracy {acc:.2}% (10000 images");
        assert!(out.status.success() && text(&out).contains(&want), "expected {want} in {}", text(&out));
    }
}

/// The six CIFAR-10 files of `cifar_core::data::synthetic` in `dir/data`, which is returned.
fn synthetic_data(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (name, bytes) in cifar_core::data::synthetic::all_files() {
        std::fs::write(data.join(name), bytes).unwrap();
    }
    data
}

/// tools/gpu_check.sh at tiny shapes on synthetic data, with flex standing in for a GPU backend
/// and `cuda` (not in this binary) for one that cannot start: cuda is reported FAIL and left
/// out of the bench, whose flex rows and JSON still come, with `cuda:burn` dropped.
#[test]
fn gpu_check_reports_a_backend_that_fails_and_benches_the_rest() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = scratch("gpucheck");
    let data = synthetic_data(&dir);
    let out_dir = dir.join("out");
    let out = Command::new(root.join("tools/gpu_check.sh"))
        .arg(env!("CARGO_BIN_EXE_cifar-webgpu"))
        .arg(&data)
        .arg(&out_dir)
        .env("GPU_CHECK_TINY", "1")
        .env("BACKENDS", "cuda,flex")
        .env("GPU_CONVS", "gemm,cuda:burn")
        .env("PYTORCH_DEVICE", "none")
        .output()
        .unwrap();
    let s = text(&out);
    assert_eq!(out.status.code(), Some(1), "a failed backend fails the check: {s}");
    let verdict = std::fs::read_to_string(out_dir.join("verdict.txt")).unwrap();
    assert!(verdict.starts_with("cuda: check-device failed or found a wrong result: FAIL\n"), "{verdict}");
    assert!(verdict.contains("flex test accuracy") && verdict.trim_end().ends_with("PASS"), "{verdict}");
    assert!(s.contains("benching flex only (of cuda,flex)") && s.contains("cuda:burn dropped"), "{s}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("bench.json")).unwrap()).unwrap();
    let labels: Vec<&str> = report["rows"].as_array().unwrap().iter().map(|r| r["backend"].as_str().unwrap()).collect();
    assert!(!labels.is_empty() && labels.iter().all(|l| l.starts_with("flex")), "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Burn's autotune results persist: CubeCL keeps them in `target/environment` beside the
/// outermost Cargo.toml above the working folder (the clone, for `cargo run`), so a second run
/// of the same shapes tunes nothing, where every run used to tune again (most of lavapipe's
/// first step: README, "Autotune results kept between runs"). Counted in CubeCL's autotune
/// log, not timed.
#[test]
fn autotune_results_are_kept_between_runs() {
    let dir = scratch("autotune");
    let data = synthetic_data(&dir);
    std::fs::write(dir.join("Cargo.toml"), "").unwrap();
    let log = dir.join("autotune.log");
    let config = format!("[autotune]\nlogger = {{ level = \"full\", file = {:?}, append = false }}\n", log);
    std::fs::write(dir.join("cubecl.toml"), config).unwrap();
    let tunings = |name: &str| {
        // CubeCL writes its log over the old one without truncating it.
        let _ = std::fs::remove_file(&log);
        let out = bin()
            .current_dir(&dir)
            .args(["train", "--backend", "wgpu", "--width", "0.0625", "--batch-size", "16", "--epochs", "1"])
            .args([
                "--train-limit",
                "32",
                "--test-limit",
                "16",
                "--no-download",
                "--no-verify",
                "--name",
                name,
                "--data-dir",
            ])
            .arg(&data)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        let count = |start: &str| log.lines().filter(|l| l.trim_start().starts_with(start)).count();
        // Candidates benchmarked, and results taken from the disk (their checksums checked).
        (count("- Tuning: "), count("validate checksum key="))
    };
    let (tuned, reused) = tunings("first");
    assert!(tuned >= 20 && reused == 0, "the first run tunes Burn's kernels: {tuned} tunings, {reused} reused");
    // One database per device: the adapter's name is in it.
    let kept: Vec<String> = std::fs::read_dir(dir.join("target/environment"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(kept.iter().any(|f| f.starts_with("wgpu-llvmpipe") && f.ends_with(".db")), "{kept:?}");
    let (again, reused) = tunings("second");
    assert!(again == 0 && reused >= 5, "the second run tuned {again} candidates ({tuned} before), reused {reused}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// tools/gpu_pack.sh and tools/gpu_device.sh, as a GPU session uses them, on synthetic data:
/// the parts come one call at a time, each file is unpacked once the parts holding it have
/// come and checked against its MD5, what is missing is named, the full recipe's step trains
/// on what was staged, and a damaged part is refused by the file's name.
#[test]
fn gpu_pack_parts_stage_one_call_at_a_time_and_train() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = scratch("gpupack");
    let data = synthetic_data(&dir);
    let pack = dir.join("pack");
    // Parts of 4 MiB: the binary (xz -0) spans several; the synthetic data packs small.
    let out = Command::new(root.join("tools/gpu_pack.sh"))
        .arg(env!("CARGO_BIN_EXE_cifar-webgpu"))
        .arg(&data)
        .arg(&pack)
        .env("PART_BYTES", (4 << 20).to_string())
        .env("XZ_LEVEL", "0")
        .env("NO_GL", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mut parts: Vec<String> =
        std::fs::read_dir(&pack).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    parts.sort();
    assert!(parts.len() >= 3, "{parts:?}\n{}", text(&out));

    let staged = dir.join("staged");
    let device = |carried: Option<&str>, args: &[&str]| {
        // Each call carries one part, as the device tool's `carry` does.
        let call = dir.join("call");
        let _ = std::fs::remove_dir_all(&call);
        std::fs::create_dir_all(&call).unwrap();
        if let Some(p) = carried {
            let copy = Command::new("cp").arg("-r").arg(pack.join(p)).arg(&call).status().unwrap();
            assert!(copy.success());
        }
        Command::new(root.join("tools/gpu_device.sh"))
            .args(args)
            .env("GPU_PARTS", &call)
            .env("GPU_DIR", &staged)
            .env("OUT", dir.join("out"))
            .output()
            .unwrap()
    };
    for (i, part) in parts.iter().enumerate() {
        let out = device(Some(part), &["stage"]);
        assert!(out.status.success(), "part {part}: {}", text(&out));
        if i == 0 {
            // `full` reads all six files: refused, naming what has not come yet.
            let out = device(None, &["full", "flex"]);
            let s = text(&out);
            assert!(
                !out.status.success() && s.contains("gpu_device: full needs") && s.contains("data_batch_5.bin"),
                "{s}"
            );
        }
        let last = i + 1 == parts.len();
        assert_eq!(text(&out).contains("still missing: "), !last, "part {part}: {}", text(&out));
        if !last {
            // The file whose last bytes lie in the next part is named with it.
            let next = &parts[i + 1];
            let named = text(&out)
                .split("(parts ")
                .skip(1)
                .any(|group| group.split(')').next().unwrap().split(' ').any(|p| p == next));
            assert!(named, "part {part}: {}", text(&out));
        }
    }
    for name in ["data_batch_3.bin", "test_batch.bin"] {
        assert_eq!(std::fs::read(staged.join("data").join(name)).unwrap(), std::fs::read(data.join(name)).unwrap());
    }

    // A later call carries no part and trains on what is staged.
    let tiny = ["--no-verify", "--width", "0.0625", "--epochs", "1", "--batch-size", "64", "--train-limit", "256"];
    let out = device(None, &[&["full", "flex"][..], &tiny].concat());
    assert!(out.status.success(), "{}", text(&out));
    let metrics = std::fs::read_to_string(dir.join("out/full-flex-metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 1, "{metrics}");

    // `full best`: the fastest row of `check`'s bench at the recipe's shape (width 1, batch
    // 512) among the backends that passed their checks, as `check` left them in the staging.
    let out = device(None, &[&["full", "best"][..], &tiny].concat());
    assert!(!out.status.success() && text(&out).contains("run `check` on this machine first"), "{}", text(&out));
    let rows = serde_json::json!({"rows": [
        {"backend": "flex-bf16", "width": 1.0, "batch_size": 512, "train_images_per_sec": 100.0},
        {"backend": "wgpu-gemm-f16", "width": 1.0, "batch_size": 512, "train_images_per_sec": 400.0},
        {"backend": "cuda-burn", "width": 1.0, "batch_size": 512, "train_images_per_sec": 500.0},
        {"backend": "wgpu-gemm", "width": 0.25, "batch_size": 512, "train_images_per_sec": 9000.0},
        {"backend": "cuda-gemm", "width": 1.0, "batch_size": 128, "train_images_per_sec": 8000.0},
    ]});
    std::fs::write(staged.join("check-bench.json"), rows.to_string()).unwrap();
    let verdict = |lines: &str| std::fs::write(staged.join("check-verdict.txt"), lines).unwrap();
    verdict("wgpu test accuracy 38.80%, flex 33.90%: 4.90 points apart (tolerance 5): PASS\n");
    // cuda:burn is chosen, named, and passed on as --gpu-conv (this binary has no cuda).
    let out = device(None, &[&["full", "best"][..], &tiny].concat());
    let s = text(&out);
    assert!(!out.status.success() && s.contains("gpu_device: best: cuda:burn (500.0 train img/s"), "{s}");
    assert!(s.contains("img/s; flex-bf16 100.0, wgpu-gemm-f16 400.0)"), "the other rows at its shape: {s}");
    assert!(s.contains("invalid value 'cuda'") && s.contains("full-cuda-burn: exit 2"), "{s}");
    // With cuda and wgpu failed, flex's row is the best left, and it trains as `full flex`.
    verdict("cuda: check-device found a wrong result: FAIL\nwgpu test accuracy 10.00%, flex 33.90%: FAIL\n");
    std::fs::remove_dir_all(staged.join("runs/full-flex")).unwrap();
    std::fs::remove_file(dir.join("out/full-flex-metrics.jsonl")).unwrap();
    let out = device(None, &[&["full", "best"][..], &tiny].concat());
    let s = text(&out);
    assert!(out.status.success() && s.contains("gpu_device: best: flex (100.0 train img/s"), "{s}");
    assert!(s.contains("failed its checks: cuda, wgpu"), "{s}");
    let metrics = std::fs::read_to_string(dir.join("out/full-flex-metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 1, "{metrics}");
    std::fs::write(staged.join("check-bench.json"), r#"{"rows": [{"width": 1.0}]}"#).unwrap();
    let out = device(None, &[&["full", "best"][..], &tiny].concat());
    let s = text(&out);
    assert!(!out.status.success() && s.contains("check-bench.json: not a bench report (KeyError"), "{s}");

    // A damaged part: the file it holds is refused by name, and nothing is left half-written.
    let _ = std::fs::remove_dir_all(&staged);
    let last = pack.join(parts.last().unwrap()).join("part");
    let mut bytes = std::fs::read(&last).unwrap();
    let end = bytes.len() - 100;
    bytes[end] ^= 0x55;
    std::fs::write(&last, bytes).unwrap();
    let mut failed = None;
    for part in &parts {
        let out = device(Some(part), &["stage"]);
        if !out.status.success() {
            failed = Some(text(&out));
        }
    }
    let failed = failed.expect("a damaged part was accepted");
    assert!(failed.contains("data_batch_5.bin"), "{failed}");
    assert!(!staged.join("data/data_batch_5.bin").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

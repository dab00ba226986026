//! Parity with PyTorch: `tests/fixtures/parity.safetensors`, written by
//! `tools/pytorch_reference.py fixture` (PyTorch 2.15, CPU), holds weights, an input batch and
//! what PyTorch computed from them. The same computations here, on flex and on wgpu, must
//! agree: forward (training and inference mode), loss, every gradient, BatchNorm running
//! statistics, two Adam and two SGD-Nesterov steps with L2 decay, and the OneCycle table.

use std::sync::OnceLock;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use cifar_core::io::weights::{ArrayData, TensorFile, load_model, model_tensors};
use cifar_core::model::{Model, ModelConfig};
use cifar_core::train::cross_entropy;
use cifar_core::train::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use cifar_core::train::schedule::{OneCycle, OneCycleConfig};
use cifar_webgpu::backend::{self, Backend};
use serde::Deserialize;

use crate::common::{rel_diff, values};

const FILE: &str = "tests/fixtures/parity.safetensors";

#[derive(Deserialize)]
struct Meta {
    width: f64,
    batch_size: usize,
    weight_decay: f64,
    strong_weight_decay: f64,
    steps: Vec<(f64, f64)>,
    schedule: Schedule,
    trainable_params_width_1: usize,
}

#[derive(Deserialize)]
struct Schedule {
    max_lr: f64,
    total_steps: usize,
    pct_start: f64,
    div_factor: f64,
    final_div_factor: f64,
    base_momentum: f64,
    max_momentum: f64,
    lr: Vec<f64>,
    momentum: Vec<f64>,
}

struct Fixture {
    file: TensorFile,
    meta: Meta,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(FILE);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{FILE}: {e}"));
        let file = TensorFile::decode(FILE, &bytes).unwrap();
        let meta = serde_json::from_str(&file.metadata["fixture"]).expect("fixture metadata");
        Fixture { file, meta }
    })
}

impl Fixture {
    fn f32(&self, name: &str) -> Vec<f32> {
        match &self.file.arrays.get(name).unwrap_or_else(|| panic!("{FILE}: no tensor '{name}'")).data {
            ArrayData::F32(v) => v.clone(),
            ArrayData::I64(_) => panic!("{name} is int64"),
        }
    }

    fn config(&self) -> ModelConfig {
        ModelConfig::new().with_width(self.meta.width).with_dropout(0.0)
    }

    /// The tensors under `prefix/`, with the prefix removed: a `model.safetensors` in all but name.
    fn weights(&self, prefix: &str) -> TensorFile {
        let mut out = TensorFile::default();
        for (name, a) in &self.file.arrays {
            if let Some(rest) = name.strip_prefix(&format!("{prefix}/")) {
                let mut a = a.clone();
                a.name = rest.to_string();
                out.arrays.insert(rest.to_string(), a);
            }
        }
        out
    }

    /// The initial PyTorch weights in our model, on `device` (loaded by PyTorch names: this is
    /// also the test that `state_dict` names and layouts map correctly).
    fn model(&self, device: &Device) -> Model {
        let mut file = self.weights("init");
        let model = load_model(self.config().init(device), &mut file, FILE, device).unwrap();
        assert!(file.arrays.is_empty(), "fixture tensors the model did not take: {:?}", file.arrays.keys());
        model.train()
    }

    fn batch(&self, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
        let n = self.meta.batch_size;
        let x = Tensor::<4>::from_data(TensorData::new(self.f32("input"), [n, 3, 32, 32]), device);
        let ArrayData::I64(labels) = &self.file.arrays["labels"].data else { panic!("labels are int64") };
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [n]), device);
        (x, y)
    }
}

#[track_caller]
fn check(what: &str, got: &[f32], want: &[f32], tol: f32) {
    if let Err(e) = compare(what, got, want, tol) {
        panic!("{e}");
    }
}

fn compare(what: &str, got: &[f32], want: &[f32], tol: f32) -> Result<(), String> {
    let d = rel_diff(got, want);
    if std::env::var_os("PARITY_VERBOSE").is_some() {
        eprintln!("{what}: {d:.2e}");
    }
    assert!(want.iter().any(|v| *v != 0.0), "{what}: the expected values are all zero, the check proves nothing");
    if d <= tol {
        Ok(())
    } else {
        Err(format!("{what}: differs from PyTorch by {d:.2e} (relative to its largest value; tolerance {tol:.0e})"))
    }
}

/// Every parameter gradient, by PyTorch name and layout.
fn gradients(model: &Model, grads: &burn::tensor::Gradients) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    for (conv, bn, block) in model.blocks() {
        out.push((format!("{conv}.weight"), values(block.conv.weight.val().grad(grads).expect("conv grad"))));
        out.push((format!("{bn}.weight"), values(block.bn.gamma.val().grad(grads).expect("gamma grad"))));
        out.push((format!("{bn}.bias"), values(block.bn.beta.val().grad(grads).expect("beta grad"))));
    }
    out.push(("fc.weight".into(), values(model.fc.weight.val().grad(grads).expect("fc grad").transpose())));
    out
}

fn forward_backward(device: &Device) {
    let f = fixture();
    let ad = device.clone().autodiff();
    let model = f.model(&ad);
    let (x, y) = f.batch(&ad);

    let logits = model.forward(x.clone());
    check("training-mode logits", &values(logits.clone().inner()), &f.f32("forward/logits"), 2e-5);
    let smoothed = cross_entropy(logits.clone(), y.clone(), 0.1);
    check("loss, label smoothing 0.1", &values(smoothed.inner()), &f.f32("forward/loss_smoothed"), 1e-5);
    let loss = cross_entropy(logits, y, 0.0);
    check("loss", &values(loss.clone().inner()), &f.f32("forward/loss"), 1e-5);

    let grads = loss.backward();
    let all = gradients(&model, &grads);
    assert_eq!(all.len(), 8 * 3 + 1);
    for (name, got) in all {
        check(&format!("gradient of {name}"), &got, &f.f32(&format!("grad/{name}")), 1e-4);
    }

    for (_, bn, block) in model.blocks() {
        let mean = values(block.bn.running_mean.value_sync());
        let var = values(block.bn.running_var.value_sync());
        check(
            &format!("{bn}.running_mean after one step"),
            &mean,
            &f.f32(&format!("after_forward/{bn}.running_mean")),
            2e-5,
        );
        check(
            &format!("{bn}.running_var after one step"),
            &var,
            &f.f32(&format!("after_forward/{bn}.running_var")),
            2e-5,
        );
    }

    // Inference mode: the running statistics the training forward just updated.
    let plain = device.clone();
    let eval = model.valid().forward(x.inner().to_device(&plain));
    check("inference-mode logits", &values(eval), &f.f32("eval/logits"), 2e-5);
}

/// The fixture's two steps with the recipe's decay, and with the strong one.
#[track_caller]
fn optimizer_steps(device: &Device, kind: OptimizerKind, prefix: &str) {
    let f = fixture();
    for (prefix, decay) in
        [(prefix.to_string(), f.meta.weight_decay), (format!("{prefix}_strong_decay"), f.meta.strong_weight_decay)]
    {
        if let Err(e) = optimizer_diff(device, kind, &prefix, decay) {
            panic!("{e}");
        }
    }
}

/// Two optimiser steps with `weight_decay` from the fixture's initial weights, against
/// PyTorch's parameters under `prefix`: the first difference beyond tolerance, if any.
fn optimizer_diff(device: &Device, kind: OptimizerKind, prefix: &str, weight_decay: f64) -> Result<(), String> {
    let f = fixture();
    let ad = device.clone().autodiff();
    let mut model = f.model(&ad);
    let (x, y) = f.batch(&ad);
    let initial: Vec<(String, Vec<f32>)> =
        model_tensors(&model).into_iter().map(|(name, _, t)| (name, values(t.inner()))).collect();
    let mut optim = Optimizer::new(OptimizerConfig::new(kind).with_weight_decay(weight_decay));
    for &(lr, momentum) in &f.meta.steps {
        let loss = cross_entropy(model.forward(x.clone()), y.clone(), 0.0);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(model, grads, lr, momentum);
    }
    let after = model_tensors(&model);
    assert_eq!(after.len(), initial.len());
    for ((name, _, t), (_, before)) in after.into_iter().zip(initial) {
        let want = f.f32(&format!("{prefix}/{name}"));
        let got = values(t.inner());
        if name.contains("running") {
            // After two steps the second batch's statistics carry the first update's round-off,
            // which Adam amplifies: its first step moves a weight by lr·g/(|g| + 1e-8), i.e. by
            // about ±lr for any gradient above 1e-8, so a gradient that is round-off in both
            // frameworks can move its weight either way. Measured on flex: 1.05e-3 on res3.1
            // with the conv layout of `conv_kernels` (whose conv is closer to float64 than the
            // other layout's, which happens to give 4e-4). SGD has no such division: 5e-4.
            let tol = if kind == OptimizerKind::Adam { 2e-3 } else { 5e-4 };
            compare(&format!("{prefix}: {name}"), &got, &want, tol)?;
            continue;
        }
        // Compare the change the two steps made, not the weights: it is what the optimiser
        // computed, and it is ~lr in size against weights ~1.
        let moved = |v: &[f32]| v.iter().zip(&before).map(|(a, b)| a - b).collect::<Vec<f32>>();
        let (got_d, want_d) = (moved(&got), moved(&want));
        // Adam divides by sqrt(v): where a gradient is ~0 the direction of its step is
        // round-off in either framework, and the second step's gradients inherit it. Allow
        // that on at most 0.5% of the elements (measured: 0.17%, 64 of res3.4's 36,864).
        let tol = 2e-3;
        let scale = want_d.iter().map(|v| v.abs()).fold(1e-12f32, f32::max);
        let off: Vec<usize> = (0..got_d.len()).filter(|&i| (got_d[i] - want_d[i]).abs() > tol * scale).collect();
        let allowed = if kind == OptimizerKind::Adam { got_d.len() / 200 } else { 0 };
        assert!(want_d.iter().any(|v| *v != 0.0), "{prefix}: {name} did not move in PyTorch");
        if off.len() > allowed {
            return Err(format!(
                "{prefix}: update of {name} differs from PyTorch on {} of {} elements (first at {}: {} vs {}; tolerance {tol:.0e} × {scale:.2e})",
                off.len(),
                got_d.len(),
                off[0],
                got_d[off[0]],
                want_d[off[0]]
            ));
        }
    }
    Ok(())
}

#[test]
fn fixture_is_the_recipe_network() {
    let f = fixture();
    assert_eq!(f.meta.trainable_params_width_1, 6_573_120);
    let model = ModelConfig::new().init(&Device::flex());
    assert_eq!(model.trainable_params(), f.meta.trainable_params_width_1);
}

#[test]
fn flex_matches_pytorch_forward_and_backward() {
    forward_backward(&Device::flex());
}

#[test]
fn flex_matches_pytorch_adam_steps() {
    optimizer_steps(&Device::flex(), OptimizerKind::Adam, "adam");
}

#[test]
fn flex_matches_pytorch_sgd_nesterov_steps() {
    optimizer_steps(&Device::flex(), OptimizerKind::Sgd, "sgd");
}

/// The comparison sees weight decay: without it, or with the recipe's small one, the steps
/// PyTorch took with the strong decay do not match (before the strong-decay entries, a missing
/// decay passed: 5e-4 moves an update by less than the tolerance).
#[test]
fn parity_fails_without_the_weight_decay() {
    let f = fixture();
    for (kind, prefix) in [(OptimizerKind::Adam, "adam_strong_decay"), (OptimizerKind::Sgd, "sgd_strong_decay")] {
        for decay in [0.0, f.meta.weight_decay] {
            let e = optimizer_diff(&Device::flex(), kind, prefix, decay).expect_err("a wrong decay must not pass");
            assert!(e.contains("differs from PyTorch"), "{e}");
        }
    }
}

fn wgpu() -> Device {
    backend::device(Backend::Wgpu).expect("a wgpu adapter (lavapipe in CI: mesa-vulkan-drivers)")
}

#[test]
fn wgpu_matches_pytorch_forward_and_backward() {
    forward_backward(&wgpu());
}

#[test]
fn wgpu_matches_pytorch_adam_and_sgd_steps() {
    optimizer_steps(&wgpu(), OptimizerKind::Adam, "adam");
    optimizer_steps(&wgpu(), OptimizerKind::Sgd, "sgd");
}

#[test]
fn onecycle_matches_pytorch_table() {
    let s = &fixture().meta.schedule;
    let ours = OneCycle::new(
        OneCycleConfig::new()
            .with_pct_start(s.pct_start)
            .with_div_factor(s.div_factor)
            .with_final_div_factor(s.final_div_factor)
            .with_base_momentum(s.base_momentum)
            .with_max_momentum(s.max_momentum),
        s.max_lr,
        s.total_steps,
    )
    .unwrap();
    assert_eq!(s.lr.len(), s.total_steps);
    for (step, (&lr, &m)) in s.lr.iter().zip(&s.momentum).enumerate() {
        let (got_lr, got_m) = ours.at(step);
        assert!((got_lr - lr).abs() <= 1e-15 + 1e-12 * lr, "step {step}: lr {got_lr} != PyTorch {lr}");
        assert!((got_m - m).abs() <= 1e-12, "step {step}: momentum {got_m} != PyTorch {m}");
    }
}

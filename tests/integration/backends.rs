//! The wgpu backend (Mesa lavapipe on a CPU-only machine) agrees with the CPU backend.

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use cifar_webgpu::augment::to_tensor;
use cifar_webgpu::backend::{self, Backend};
use cifar_webgpu::model::ModelConfig;
use cifar_webgpu::training::cross_entropy;
use cifar_webgpu::weights::{model_file, model_from_bytes};

use crate::common::{rel_diff, rng_lock, synthetic, values};

/// Logits in training mode and gradients of a few layers, on `device`.
fn forward_backward(bytes: &[u8], device: &Device, pixels: &[u8], labels: &[i64]) -> Vec<(String, Vec<f32>)> {
    let device = device.clone().autodiff();
    let (model, _) = model_from_bytes("model.safetensors", bytes, &device).unwrap();
    let model = model.train();
    let x = to_tensor(pixels, &device);
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels.to_vec(), [labels.len()]), &device);
    let logits = model.forward(x);
    let loss = cross_entropy(logits.clone(), y, 0.1);
    let grads = loss.backward();
    vec![
        ("logits".into(), values(logits.inner())),
        ("loss".into(), values(loss.inner())),
        ("grad prep.0.weight".into(), values(model.prep.conv.weight.val().grad(&grads).unwrap())),
        ("grad res1.4.weight".into(), values(model.res1.b.conv.weight.val().grad(&grads).unwrap())),
        ("grad res3.5.weight".into(), values(model.res3.b.bn.gamma.val().grad(&grads).unwrap())),
        ("grad fc.weight".into(), values(model.fc.weight.val().grad(&grads).unwrap())),
    ]
}

#[test]
fn wgpu_and_cpu_agree_on_forward_and_gradients() {
    let wgpu = backend::device(Backend::Wgpu).expect("a wgpu adapter (lavapipe in CI: mesa-vulkan-drivers)");
    let config = ModelConfig::new().with_width(0.125).with_dropout(0.0);
    // Seeded: the gradient of the first layer passes through eight BatchNorms of batch 8, and
    // an unlucky initialisation (a near-constant channel) amplifies round-off past the
    // tolerance; unseeded, the weights depended on which tests ran first (a 2% failure seen).
    let model = {
        let _rng = rng_lock();
        let device = Device::flex();
        device.seed(7);
        config.init(&device)
    };
    let bytes = pollster::block_on(model_file(&model, &config, 0)).unwrap().encode().unwrap();
    let data = synthetic(8, 9);
    let labels: Vec<i64> = data.labels.iter().map(|&l| l as i64).collect();

    let cpu = forward_backward(&bytes, &Device::flex(), &data.images, &labels);
    let gpu = forward_backward(&bytes, &wgpu, &data.images, &labels);
    for ((name, a), (_, b)) in cpu.iter().zip(&gpu) {
        assert_eq!(a.len(), b.len(), "{name}");
        let d = rel_diff(b, a);
        if std::env::var_os("PARITY_VERBOSE").is_some() {
            eprintln!("{name}: {d:.2e}");
        }
        assert!(d < 2e-3, "{name}: relative difference {d}");
        assert!(a.iter().any(|v| *v != 0.0), "{name} is all zeros");
    }
}

use burn::tensor::{Device, Tensor};
use cifar_core::data::{Cifar10, Split};
use cifar_core::rng::Rng;
use cifar_core::train::Trainer;
use cifar_core::train::driver::Driver;

/// The real CIFAR-10 from `CIFAR10_DIR`, or `None` (the test is skipped) when it is unset.
/// With `REQUIRE_REAL_DATA` set, as `.ci/run` does, a missing `CIFAR10_DIR` fails the test.
pub fn real_data(test: &str) -> Option<Cifar10> {
    match std::env::var_os("CIFAR10_DIR") {
        Some(dir) => Some(
            cifar_webgpu::download::load(std::path::Path::new(&dir), false, true, 0)
                .unwrap_or_else(|e| panic!("CIFAR10_DIR is set but does not load: {e}")),
        ),
        None => {
            assert!(
                std::env::var_os("REQUIRE_REAL_DATA").is_none(),
                "{test}: REQUIRE_REAL_DATA is set but CIFAR10_DIR is not"
            );
            eprintln!("real-data test skipped: {test} (set CIFAR10_DIR)");
            None
        }
    }
}

/// Dropout draws from the backend's RNG, which flex keeps per process: tests that train
/// in this process take this lock so that their masks (and so their numbers) are their own.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Random images with labels 0..10: enough to exercise the machinery quickly.
pub fn synthetic(n: usize, seed: u64) -> Split {
    let mut rng = Rng::new(seed);
    Split {
        images: (0..n * 3072).map(|_| rng.below(256) as u8).collect(),
        labels: (0..n).map(|i| (i % 10) as u8).collect(),
    }
}

pub fn flex() -> Device {
    Device::flex()
}

/// The core's driver as the CLI runs it (read back every step), until `stop_at` steps or the
/// end; returns the trainer.
pub fn run(trainer: Trainer, train: &Split, test: &Split, stop_at: Option<usize>) -> Trainer {
    let mut driver = Driver::new(trainer, 1).with_stop_at(stop_at);
    while !driver.finished() && !driver.stopped() {
        pollster::block_on(driver.advance(train, test)).unwrap();
    }
    driver.into_trainer()
}

/// A tensor's values, flattened, as f32.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    let n = t.shape().num_elements();
    t.reshape([n]).into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

/// Largest absolute difference, relative to the largest magnitude of the expected values.
pub fn rel_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().map(|v| v.abs()).fold(1e-12f32, f32::max);
    got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0.0, f32::max) / scale
}

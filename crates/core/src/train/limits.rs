//! A GPU's buffer limits against a run's settings. WebGPU caps one storage-buffer binding
//! (128 MiB by default) and one buffer (256 MiB); a tensor above either is not an error a run
//! can catch but a lost device. So the settings are checked before a run starts, and the
//! error names the setting to lower and the largest value that fits.

use super::TrainingConfig;
use super::driver::EVAL_BATCH;
use crate::error::ConfigError;
use crate::model::ModelConfig;

const MIB: u64 = 1 << 20;

/// The limits of one device that bound a tensor's size, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferLimits {
    /// `maxStorageBufferBindingSize`: the largest buffer one kernel may bind.
    pub max_binding: u64,
    /// `maxBufferSize`: the largest buffer the device allocates.
    pub max_buffer: u64,
}

impl BufferLimits {
    /// WebGPU's defaults, which a browser gives where the adapter states no higher ones.
    pub const WEBGPU_DEFAULT: Self = Self { max_binding: 128 * MIB, max_buffer: 256 * MIB };

    /// The largest tensor the device can hold and bind.
    pub fn largest_tensor(&self) -> u64 {
        self.max_binding.min(self.max_buffer)
    }

    fn limit_name(&self) -> &'static str {
        if self.max_binding <= self.max_buffer { "per buffer binding" } else { "per buffer" }
    }
}

/// Bytes of the largest tensor one step at `batch` images holds: layer1's convolution output
/// before its pooling (f32, `batch × 128·width × 32 × 32`), and its gradient, of the same size.
/// Every other activation is at most half of it; Burn's GPU convolutions are direct or
/// implicit GEMM and add no larger buffer.
pub fn largest_tensor_bytes(model: &ModelConfig, batch: usize) -> u64 {
    let [_, layer1, _, _] = model.channels();
    // Saturating: an unvalidated width or batch must not wrap around to a size that fits.
    (batch as u64).saturating_mul(layer1 as u64).saturating_mul(32 * 32 * 4)
}

/// The largest batch whose tensors fit in `limits` (0 if not even one image does).
pub fn max_batch(model: &ModelConfig, limits: &BufferLimits) -> usize {
    (limits.largest_tensor() / largest_tensor_bytes(model, 1)).min(usize::MAX as u64) as usize
}

/// The test pass's batch on this device: [`EVAL_BATCH`], or less where it would not fit.
pub fn eval_batch(model: &ModelConfig, limits: &BufferLimits) -> usize {
    EVAL_BATCH.min(max_batch(model, limits)).max(1)
}

/// Whether a run of `config` fits the device; if not, which setting to lower and to what.
pub fn check(config: &TrainingConfig, limits: &BufferLimits) -> Result<(), ConfigError> {
    let need = largest_tensor_bytes(&config.model, config.batch_size);
    if need <= limits.largest_tensor() {
        return Ok(());
    }
    let has = format!("{} {}", mib(limits.largest_tensor()), limits.limit_name());
    let fits = max_batch(&config.model, limits);
    if fits == 0 {
        return Err(ConfigError::new(
            "model.width",
            format!(
                "{} needs {} for one image's largest activation, above this adapter's limit of {has}: \
                 use a smaller width",
                config.model.width,
                mib(largest_tensor_bytes(&config.model, 1))
            ),
        ));
    }
    Err(ConfigError::new(
        "batch_size",
        format!(
            "{} at width {} needs a {} buffer (layer1's convolution output), above this adapter's \
             limit of {has}: use a batch size of at most {fits}, or a smaller width",
            config.batch_size,
            config.model.width,
            mib(need)
        ),
    ))
}

fn mib(bytes: u64) -> String {
    let m = bytes as f64 / MIB as f64;
    if m >= 10.0 { format!("{m:.0} MiB") } else { format!("{m:.2} MiB") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::optim::OptimizerKind;

    fn config(width: f64, batch: usize) -> TrainingConfig {
        TrainingConfig::recipe(ModelConfig::new().with_width(width), OptimizerKind::Adam).with_batch_size(batch)
    }

    #[test]
    fn the_default_recipe_needs_more_than_webgpu_defaults() {
        let limits = BufferLimits::WEBGPU_DEFAULT;
        // Width 1, batch 512: layer1's output is 512·128·32·32·4 bytes = 256 MiB, twice the
        // default binding limit (the prep conv's output alone is exactly 128 MiB).
        assert_eq!(largest_tensor_bytes(&ModelConfig::new(), 512), 256 * MIB);
        let e = check(&config(1.0, 512), &limits).unwrap_err();
        assert_eq!(e.setting, "batch_size");
        assert!(e.problem.contains("256 MiB"), "{e}");
        assert!(e.problem.contains("128 MiB per buffer binding"), "{e}");
        assert!(e.problem.contains("at most 256"), "{e}");
        assert!(check(&config(1.0, 256), &limits).is_ok());
        assert!(check(&config(1.0, 257), &limits).is_err());
        assert!(check(&config(0.25, 512), &limits).is_ok());
        // The test pass follows: 500 images at width 1 would not fit either.
        assert_eq!(eval_batch(&ModelConfig::new(), &limits), 256);
        assert_eq!(eval_batch(&ModelConfig::new().with_width(0.25), &limits), EVAL_BATCH);
    }

    #[test]
    fn the_smaller_limit_decides_and_is_named() {
        let limits = BufferLimits { max_binding: 1 << 40, max_buffer: 64 * MIB };
        let e = check(&config(1.0, 512), &limits).unwrap_err();
        assert!(e.problem.contains("64 MiB per buffer"), "{e}");
        assert!(e.problem.contains("at most 128"), "{e}");
    }

    #[test]
    fn a_width_too_large_for_any_batch_names_the_width() {
        let limits = BufferLimits { max_binding: MIB, max_buffer: MIB };
        let e = check(&config(8.0, 1), &limits).unwrap_err();
        assert_eq!(e.setting, "model.width");
        // Absurd settings saturate instead of wrapping into a size that fits.
        assert!(check(&config(1e30, usize::MAX), &BufferLimits::WEBGPU_DEFAULT).is_err());
        assert_eq!(eval_batch(&ModelConfig::new().with_width(8.0), &limits), 1);
    }
}

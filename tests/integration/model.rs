use burn::module::Module;
use burn::tensor::{Distribution, Tensor};
use cifar_core::model::ModelConfig;
use cifar_core::model::summary::{summary_rows, summary_table};

use crate::common::{flex, rng_lock};

#[test]
fn width_one_has_the_original_parameter_count_and_table() {
    let _rng = rng_lock();
    let model = ModelConfig::new().init(&flex());
    assert_eq!(model.trainable_params(), 6_573_120);
    // Burn also counts BatchNorm's running mean/var (buffers in PyTorch).
    assert_eq!(model.num_params(), 6_573_120 + 2 * (64 + 3 * 128 + 256 + 3 * 512));

    // The original notebook's torchsummary numbers, layer by layer.
    let rows = summary_rows(&model);
    let params = |kind: &str| -> Vec<usize> {
        rows.iter().filter(|r| r.layer.starts_with(&format!("{kind}-"))).map(|r| r.params).collect()
    };
    assert_eq!(params("Conv2d"), vec![1728, 73728, 147456, 147456, 294912, 1179648, 2359296, 2359296]);
    assert_eq!(params("BatchNorm2d"), vec![128, 256, 256, 256, 512, 1024, 1024, 1024]);
    assert_eq!(params("Linear"), vec![5120]);
    assert_eq!(rows.iter().map(|r| r.params).sum::<usize>(), 6_573_120);
    assert_eq!(rows.len(), 8 * 4 + 3 + 2, "conv/bn/relu/dropout per block, 3 pools, final pool + linear");
    assert_eq!(rows[5].layer, "MaxPool2d-6");
    assert_eq!(rows[5].output_shape, vec![-1, 128, 16, 16]);
    assert_eq!(rows.last().unwrap().output_shape, vec![-1, 10]);

    let table = summary_table(&model);
    assert!(table.contains("Total params: 6,573,120"), "{table}");
    assert!(table.contains("Conv2d-1") && table.contains("[-1, 64, 32, 32]") && table.contains("1,728"), "{table}");
}

#[test]
fn forward_shapes_at_widths_one_and_a_quarter() {
    let _rng = rng_lock();
    for (width, channels) in [(1.0, [64, 128, 256, 512]), (0.25, [16, 32, 64, 128])] {
        let config = ModelConfig::new().with_width(width);
        assert_eq!(config.channels(), channels);
        let model = config.init(&flex());
        let x = Tensor::<4>::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &flex());
        let logits = model.forward(x);
        assert_eq!(logits.dims(), [2, 10], "width {width}");
        let rows = summary_rows(&model);
        assert_eq!(rows.iter().map(|r| r.params).sum::<usize>(), model.trainable_params());
    }
    assert_eq!(ModelConfig::new().with_width(0.25).init(&flex()).trainable_params(), 412_944);
}

#[test]
fn invalid_model_settings_are_rejected() {
    assert!(ModelConfig::new().with_width(0.0).validate().is_err());
    assert!(ModelConfig::new().with_dropout(1.0).validate().is_err());
    assert!(ModelConfig::new().with_width(0.5).validate().is_ok());
}

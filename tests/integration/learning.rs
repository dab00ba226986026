//! A real learning test: a small network on a real CIFAR-10 subset must get far above chance.

use std::time::Instant;

use cifar_core::model::ModelConfig;
use cifar_core::train::{Trainer, TrainingConfig};

use crate::common::{flex, real_data, rng_lock, run};

#[test]
fn small_model_learns_real_cifar10() {
    let Some(data) = real_data("small_model_learns_real_cifar10") else { return };
    let _rng = rng_lock();
    let train = data.train.take(6000);
    let test = data.test.take(1000);
    let config = TrainingConfig::new(ModelConfig::new().with_width(0.25))
        .with_epochs(3)
        .with_batch_size(64)
        .with_max_lr(0.01)
        .with_seed(1);
    let start = Instant::now();
    let trainer = Trainer::new(config, &flex(), train.len()).unwrap();
    let trainer = run(trainer, &train, &test, None);
    for m in &trainer.history {
        println!(
            "epoch {} train loss {:.3} acc {:.3} | test loss {:.3} acc {:.3}",
            m.epoch, m.train_loss, m.train_acc, m.test_loss, m.test_acc
        );
    }
    println!("learning test took {:.0}s", start.elapsed().as_secs_f64());
    let first = &trainer.history[0];
    let last = trainer.history.last().unwrap();
    assert!(last.train_loss < first.train_loss, "train loss did not fall: {:?}", trainer.history);
    // Chance is 10%; this run reaches well above the threshold.
    assert!(last.test_acc > 0.45, "test accuracy {:.3} after 3 epochs on 6000 images", last.test_acc);
}

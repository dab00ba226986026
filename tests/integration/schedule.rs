//! OneCycle against values computed with the code of PyTorch's `OneCycleLR.get_lr`
//! (three_phase=False, anneal_strategy='linear'), transcribed to Python.

use cifar_core::train::schedule::{OneCycle, OneCycleConfig};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 + 1e-9 * b.abs()
}

#[test]
fn onecycle_matches_pytorch_24_epochs_peak_at_5() {
    // max_lr 0.01, 97 steps/epoch × 24 epochs, pct_start 5/24, PyTorch defaults otherwise.
    let s = OneCycle::new(OneCycleConfig::new(), 0.01, 24 * 97).unwrap();
    let expected = [
        (0, 0.0004, 0.95),
        (1, 0.00041983471074380166, 0.949793388429752),
        (100, 0.0023834710743801655, 0.9293388429752065),
        (484, 0.01, 0.85),
        (485, 0.009994574085729789, 0.8500542593597396),
        (486, 0.009989148171459577, 0.8501085187194791),
        (1000, 0.007200228236570809, 0.8779978296256103),
        (2000, 0.0017743139663591971, 0.9322571893651654),
        (2327, 3.999999999976245e-08, 0.95),
    ];
    for (step, lr, m) in expected {
        let (got_lr, got_m) = s.at(step);
        assert!(close(got_lr, lr), "step {step}: lr {got_lr} != {lr}");
        assert!(close(got_m, m), "step {step}: momentum {got_m} != {m}");
    }
}

#[test]
fn onecycle_matches_pytorch_custom_factors() {
    let s = OneCycle::new(
        OneCycleConfig::new()
            .with_pct_start(0.3)
            .with_div_factor(10.0)
            .with_final_div_factor(100.0)
            .with_base_momentum(0.8)
            .with_max_momentum(0.9),
        0.4,
        10,
    )
    .unwrap();
    let expected = [
        (0.04, 0.9),
        (0.22000000000000003, 0.8500000000000001),
        (0.4, 0.8),
        (0.3429142857142857, 0.8142857142857143),
        (0.28582857142857143, 0.8285714285714286),
        (0.22874285714285716, 0.8428571428571429),
        (0.1716571428571429, 0.8571428571428572),
        (0.1145714285714286, 0.8714285714285714),
        (0.05748571428571431, 0.8857142857142857),
        (0.00040000000000001146, 0.9),
    ];
    for (step, (lr, m)) in expected.into_iter().enumerate() {
        let (got_lr, got_m) = s.at(step);
        assert!(close(got_lr, lr), "step {step}: lr {got_lr} != {lr}");
        assert!(close(got_m, m), "step {step}: momentum {got_m} != {m}");
    }
    assert_eq!(s.lr(10), s.at(10).0);
}

#[test]
fn onecycle_rejects_bad_settings() {
    let shape = OneCycleConfig::new();
    assert!(OneCycle::new(shape.clone(), 0.01, 0).is_err());
    assert!(OneCycle::new(shape.clone(), -1.0, 10).is_err());
    assert!(OneCycle::new(shape.clone(), f64::NAN, 10).is_err());
    assert!(OneCycle::new(shape.clone().with_pct_start(1.0), 0.01, 10).is_err());
    assert!(OneCycle::new(shape.clone().with_div_factor(0.0), 0.01, 10).is_err());
    let e = OneCycle::new(shape.with_max_momentum(1.5), 0.01, 10).unwrap_err();
    assert_eq!(e.to_string(), "max_momentum must be in [0, 1), got 1.5");
}

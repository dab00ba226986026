//! What a run measures: per-epoch records (one JSON line each in `metrics.jsonl`), running
//! averages for the progress line, and the confusion matrix. Platform-free.

use serde::{Deserialize, Serialize};

/// One line of `metrics.jsonl`. JSON has no NaN: it is written as `null` and read back as NaN,
/// so every checkpoint holding such a record still resumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Learning rate at the last step of the epoch.
    #[serde(deserialize_with = "nan_if_null")]
    pub lr: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub train_loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub train_acc: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub test_loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub test_acc: f64,
    /// Test accuracy with flip TTA: the last epoch of a recipe with `tta`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_acc_tta: Option<f64>,
    /// Test accuracy of the trained weights themselves, when the run tests their moving
    /// average (`test_acc`): the last epoch of a recipe with `ema`, so each run shows its effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_acc_weights: Option<f64>,
    /// Wall-clock seconds of the epoch (training + test pass).
    #[serde(deserialize_with = "nan_if_null")]
    pub seconds: f64,
    /// Training images per second (augmentation, forward, backward, optimizer).
    #[serde(deserialize_with = "nan_if_null")]
    pub images_per_sec: f64,
}

fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Sums of loss and correct predictions over a pass, reported as means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RunningMean {
    pub loss_sum: f64,
    pub correct: u64,
    pub count: u64,
}

impl RunningMean {
    /// `loss` is the mean loss of a batch of `count` samples.
    pub fn add(&mut self, loss: f64, correct: u64, count: u64) {
        self.loss_sum += loss * count as f64;
        self.correct += correct;
        self.count += count;
    }
    pub fn loss(&self) -> f64 {
        if self.count == 0 { f64::NAN } else { self.loss_sum / self.count as f64 }
    }
    pub fn accuracy(&self) -> f64 {
        if self.count == 0 { f64::NAN } else { self.correct as f64 / self.count as f64 }
    }
}

/// `counts[true][predicted]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    pub counts: Vec<Vec<u64>>,
}

impl ConfusionMatrix {
    pub fn new(classes: usize) -> Self {
        Self { counts: vec![vec![0; classes]; classes] }
    }
    pub fn add(&mut self, truth: usize, predicted: usize) {
        self.counts[truth][predicted] += 1;
    }
    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }
    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..self.counts.len()).map(|i| self.counts[i][i]).sum();
        correct as f64 / self.total().max(1) as f64
    }
    /// Recall of each class: correct / images of that class.
    pub fn per_class_accuracy(&self) -> Vec<f64> {
        self.counts.iter().enumerate().map(|(i, row)| row[i] as f64 / row.iter().sum::<u64>().max(1) as f64).collect()
    }

    /// A fixed-width table: rows are true classes, columns predictions, last column recall.
    pub fn to_table(&self, names: &[&str]) -> String {
        let mut out = String::from("true\\pred  ");
        for n in names {
            out += &format!("{:>6}", &n[..n.len().min(5)]);
        }
        out += "   acc\n";
        for (i, row) in self.counts.iter().enumerate() {
            out += &format!("{:<11}", names[i]);
            for c in row {
                out += &format!("{c:>6}");
            }
            out += &format!("  {:>5.1}%\n", 100.0 * self.per_class_accuracy()[i]);
        }
        out += &format!("overall accuracy {:.2}%\n", 100.0 * self.accuracy());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nan_metric_survives_json() {
        let m = EpochMetrics {
            epoch: 1,
            lr: 0.1,
            train_loss: f64::NAN,
            train_acc: 0.1,
            test_loss: f64::INFINITY,
            test_acc: 0.1,
            test_acc_tta: None,
            test_acc_weights: None,
            seconds: 1.0,
            images_per_sec: 2.0,
        };
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"train_loss\":null"), "{json}");
        let back: EpochMetrics = serde_json::from_str(&json).unwrap();
        assert!(back.train_loss.is_nan() && back.test_loss.is_nan() && back.test_acc == 0.1, "{back:?}");
    }

    #[test]
    fn running_mean_weights_batches_by_size() {
        let mut m = RunningMean::default();
        m.add(1.0, 1, 1);
        m.add(4.0, 3, 3);
        assert!((m.loss() - 13.0 / 4.0).abs() < 1e-12);
        assert_eq!(m.accuracy(), 1.0);
    }

    #[test]
    fn confusion_matrix_per_class() {
        let mut c = ConfusionMatrix::new(2);
        c.add(0, 0);
        c.add(0, 1);
        c.add(1, 1);
        assert_eq!(c.per_class_accuracy(), vec![0.5, 1.0]);
        assert!((c.accuracy() - 2.0 / 3.0).abs() < 1e-12);
        let t = c.to_table(&["cat", "dog"]);
        assert!(t.contains("50.0%") && t.contains("100.0%"), "{t}");
    }
}

//! A torchsummary-style table of the model, read off the parameters of a built model (not
//! recomputed from the config), so it can be compared line by line with the original notebook.

use crate::model::Model;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryRow {
    /// e.g. `Conv2d-1`
    pub layer: String,
    /// `[-1, C, H, W]` or `[-1, N]`
    pub output_shape: Vec<i64>,
    pub params: usize,
}

pub fn summary_rows(model: &Model) -> Vec<SummaryRow> {
    let mut rows = Vec::new();
    let mut push = |kind: &str, shape: Vec<i64>, params: usize| {
        let n = rows.len() + 1;
        rows.push(SummaryRow { layer: format!("{kind}-{n}"), output_shape: shape, params });
    };
    let mut side = 32i64;
    // Per block: pool after conv? (the forward order of model.rs)
    let pools = [false, true, false, false, true, true, false, false];
    for ((_, _, block), pool) in model.blocks().into_iter().zip(pools) {
        let [c_out, c_in, kh, kw] = block.conv.weight.shape().dims();
        let c = c_out as i64;
        push("Conv2d", vec![-1, c, side, side], c_out * c_in * kh * kw);
        if pool {
            side /= 2;
            push("MaxPool2d", vec![-1, c, side, side], 0);
        }
        let [features] = block.bn.gamma.shape().dims();
        push("BatchNorm2d", vec![-1, c, side, side], 2 * features);
        push("ReLU", vec![-1, c, side, side], 0);
        push("Dropout", vec![-1, c, side, side], 0);
    }
    let [d_in, d_out] = model.fc.weight.shape().dims();
    push("MaxPool2d", vec![-1, d_in as i64, 1, 1], 0);
    push("Linear", vec![-1, d_out as i64], d_in * d_out);
    rows
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The whole table as printed by `summary`.
pub fn summary_table(model: &Model) -> String {
    let rows = summary_rows(model);
    let line = "-".repeat(64);
    let mut out =
        format!("{line}\n{:>20} {:>25} {:>15}\n{}\n", "Layer (type)", "Output Shape", "Param #", "=".repeat(64));
    for r in &rows {
        let shape = format!("[{}]", r.output_shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "));
        out += &format!("{:>20} {:>25} {:>15}\n", r.layer, shape, thousands(r.params));
    }
    let total: usize = rows.iter().map(|r| r.params).sum();
    out += &format!(
        "{}\nTotal params: {}\nTrainable params: {}\nNon-trainable params: 0\n{line}\n",
        "=".repeat(64),
        thousands(total),
        thousands(total)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(128), "128");
        assert_eq!(thousands(1728), "1,728");
        assert_eq!(thousands(6573120), "6,573,120");
    }
}

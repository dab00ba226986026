//! Charts of a run as PNG bytes: training curves, the LR finder, misclassified images, the
//! confusion matrix and a plain image grid. No I/O: everything is drawn into an in-memory RGB
//! buffer and encoded with the `image` crate; callers write the bytes wherever they like. Text
//! uses DejaVu Sans embedded in the binary (registered with plotters' `ab_glyph` font table),
//! so no system font lookup happens. Native only: plotters 0.3.7 has no bitmap text renderer
//! on wasm32, and the page draws its own charts (`web/charts.js`).
//!
//! Images are CIFAR-10 records: 3072 bytes, planar CHW (1024 red, 1024 green, 1024 blue), 32×32.

use std::error::Error;

use crate::error::Error as PlotError;

use image::{ExtendedColorType, ImageEncoder, codecs::png::PngEncoder};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontTransform;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use cifar_core::train::metrics::{ConfusionMatrix, EpochMetrics};

/// The font family every chart uses; registered from the embedded TTF on first use.
const FONT: &str = "sans-serif";

/// Side of a CIFAR-10 image in pixels.
const SIDE: usize = 32;
/// Bytes of one CHW planar CIFAR-10 image.
const IMAGE_BYTES: usize = 3 * SIDE * SIDE;

const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
const TEST_COLOR: RGBColor = RGBColor(214, 39, 40);
const LR_COLOR: RGBColor = RGBColor(44, 160, 44);
const TRUE_TEXT: RGBColor = RGBColor(0, 110, 0);
const PRED_TEXT: RGBColor = RGBColor(190, 0, 0);
const GREY: RGBColor = RGBColor(110, 110, 110);

type DynResult<T = ()> = Result<T, Box<dyn Error>>;

/// Registers the embedded font once (the first chart does it); every chart calls this first.
fn ensure_font() -> Result<(), String> {
    use plotters::style::{FontStyle, register_font};
    use std::sync::OnceLock;
    static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            register_font(FONT, FontStyle::Normal, FONT_BYTES)
                .map_err(|_| "the embedded DejaVuSans.ttf is not a valid font".to_string())
        })
        .clone()
}

/// RGB8 buffer → PNG bytes.
fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(rgb, width, height, ExtendedColorType::Rgb8)
        .map_err(|e| format!("PNG encoding failed: {e}"))?;
    Ok(out)
}

/// Allocates a white `width`×`height` canvas, lets `draw` paint on it through plotters, and
/// encodes the result. `chart` names the chart in error messages.
fn render(
    chart: &str,
    width: u32,
    height: u32,
    prepare: impl FnOnce(&mut [u8]),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> DynResult,
) -> Result<Vec<u8>, PlotError> {
    ensure_font().map_err(|e| PlotError::plot(chart, e))?;
    let mut buf = vec![255u8; width as usize * height as usize * 3];
    prepare(&mut buf);
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        draw(&root).map_err(|e| PlotError::plot(chart, format!("drawing failed: {e}")))?;
        root.present().map_err(|e| PlotError::plot(chart, format!("drawing failed: {e}")))?;
    }
    encode_png(&buf, width, height).map_err(|e| PlotError::plot(chart, e))
}

fn font(size: u32) -> FontDesc<'static> {
    (FONT, size).into_font()
}

fn text_style(size: u32, color: &RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    font(size).color(color).pos(Pos::new(h, v))
}

/// Compact number for tick labels and annotations: 0.4, 0.05, 3.2e-3, 1.5e4.
fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if (0.01..10_000.0).contains(&a) {
        let s = format!("{v:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    } else {
        format!("{v:.1e}")
    }
}

/// (min, max) of the finite values, `None` if there are none.
fn finite_range(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values.into_iter().filter(|v| v.is_finite()).fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Widens `[lo, hi]` by `frac` of its span on both sides (or by ±0.5 / ±5% when it is a point).
fn pad(lo: f64, hi: f64, frac: f64) -> (f64, f64) {
    let span = hi - lo;
    if span > 0.0 {
        (lo - span * frac, hi + span * frac)
    } else {
        let d = if lo == 0.0 { 0.5 } else { lo.abs() * 0.05 };
        (lo - d, hi + d)
    }
}

/// "no data" in the middle of an area that would otherwise hold a chart.
fn draw_no_data(area: &DrawingArea<BitMapBackend<'_>, Shift>, msg: &str) -> DynResult {
    let (w, h) = area.dim_in_pixel();
    area.draw(&Text::new(
        msg.to_string(),
        (w as i32 / 2, h as i32 / 2),
        text_style(16, &GREY, HPos::Center, VPos::Center),
    ))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Training curves
// ---------------------------------------------------------------------------------------------

/// Three panels, 1500×450: train/test loss per epoch, train/test accuracy (%) per epoch, and the
/// learning rate of every optimizer step (x axis in epochs: step / `steps_per_epoch`).
/// Accuracies in `EpochMetrics` are fractions (0..1) and are drawn as percentages. Non-finite
/// values are skipped; empty inputs give panels that say "no data".
pub fn curves_png(epochs: &[EpochMetrics], lr_per_step: &[f64], steps_per_epoch: usize) -> Result<Vec<u8>, PlotError> {
    render(
        "training curves",
        1500,
        450,
        |_| {},
        |root| {
            root.fill(&WHITE)?;
            let panels = root.split_evenly((1, 3));
            let x_range = finite_range(epochs.iter().map(|m| m.epoch as f64)).map(|(lo, hi)| pad(lo, hi, 0.03));

            // (a) loss
            let loss_range = finite_range(epochs.iter().flat_map(|m| [m.train_loss, m.test_loss]));
            match (x_range, loss_range) {
                (Some((x0, x1)), Some((_, hi))) => {
                    let (lo, hi) = (0.0, if hi > 0.0 { hi * 1.08 } else { 1.0 });
                    let series = [
                        (
                            "train loss",
                            TRAIN_COLOR,
                            epochs.iter().map(|m| (m.epoch as f64, m.train_loss)).collect::<Vec<_>>(),
                        ),
                        ("test loss", TEST_COLOR, epochs.iter().map(|m| (m.epoch as f64, m.test_loss)).collect()),
                    ];
                    epoch_panel(
                        &panels[0],
                        "Loss",
                        "loss",
                        (x0, x1),
                        (lo, hi),
                        &series,
                        SeriesLabelPosition::UpperRight,
                        &|v| fmt_num(*v),
                    )?;
                }
                _ => titled_empty(&panels[0], "Loss")?,
            }

            // (b) accuracy in percent
            let acc_range = finite_range(epochs.iter().flat_map(|m| [m.train_acc * 100.0, m.test_acc * 100.0]));
            match (x_range, acc_range) {
                (Some((x0, x1)), Some((lo, hi))) => {
                    let lo = (((lo - 5.0) / 10.0).floor() * 10.0).clamp(0.0, 90.0);
                    let hi = if hi > 100.0 { hi * 1.02 } else { 100.0 };
                    let series = [
                        (
                            "train accuracy",
                            TRAIN_COLOR,
                            epochs.iter().map(|m| (m.epoch as f64, m.train_acc * 100.0)).collect::<Vec<_>>(),
                        ),
                        (
                            "test accuracy",
                            TEST_COLOR,
                            epochs.iter().map(|m| (m.epoch as f64, m.test_acc * 100.0)).collect(),
                        ),
                    ];
                    epoch_panel(
                        &panels[1],
                        "Accuracy",
                        "accuracy (%)",
                        (x0, x1),
                        (lo, hi),
                        &series,
                        SeriesLabelPosition::LowerRight,
                        &|v| format!("{v:.0}"),
                    )?;
                }
                _ => titled_empty(&panels[1], "Accuracy")?,
            }

            // (c) learning-rate schedule
            let spe = steps_per_epoch.max(1) as f64;
            let points: Vec<(f64, f64)> = lr_per_step
                .iter()
                .enumerate()
                .filter(|(_, lr)| lr.is_finite())
                .map(|(i, &lr)| (i as f64 / spe, lr))
                .collect();
            match finite_range(points.iter().map(|p| p.1)) {
                Some((lo, hi)) => {
                    let x1 = (lr_per_step.len() as f64 / spe).max(f64::MIN_POSITIVE);
                    let y0 = lo.min(0.0);
                    let y1 = if hi > y0 { hi * 1.08 } else { y0 + 1.0 };
                    let mut chart = ChartBuilder::on(&panels[2])
                        .caption("Learning-rate schedule", font(20))
                        .margin(12)
                        .x_label_area_size(45)
                        .y_label_area_size(70)
                        .build_cartesian_2d(0.0..x1, y0..y1)?;
                    chart
                        .configure_mesh()
                        .x_desc("epoch")
                        .y_desc("learning rate")
                        .label_style(font(14))
                        .axis_desc_style(font(16))
                        .y_label_formatter(&|v| fmt_num(*v))
                        .x_label_formatter(&|v| fmt_num(*v))
                        .light_line_style(WHITE.mix(0.0))
                        .draw()?;
                    chart.draw_series(LineSeries::new(points, LR_COLOR.stroke_width(2)))?;
                }
                None => titled_empty(&panels[2], "Learning-rate schedule")?,
            }
            Ok(())
        },
    )
}

/// A named, coloured line of (x, y) points.
type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

fn titled_empty(area: &DrawingArea<BitMapBackend<'_>, Shift>, title: &str) -> DynResult {
    // Same margin as the ChartBuilder panels so the titles line up.
    let inner = area.margin(12, 12, 12, 12).titled(title, font(20))?;
    draw_no_data(&inner, "no data")
}

/// One per-epoch panel: lines with point markers (so a single epoch still shows), legend.
#[allow(clippy::too_many_arguments)]
fn epoch_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    y_desc: &str,
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
    series: &[Series<'_>],
    legend_at: SeriesLabelPosition,
    y_fmt: &dyn Fn(&f64) -> String,
) -> DynResult {
    let mut chart = ChartBuilder::on(area)
        .caption(title, font(20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    let integer_epochs = |v: &f64| {
        if (v - v.round()).abs() < 1e-9 { format!("{}", v.round() as i64) } else { String::new() }
    };
    let span = x1 - x0;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_desc)
        .label_style(font(14))
        .axis_desc_style(font(16))
        .x_labels(span.round().clamp(2.0, 12.0) as usize + 1)
        .x_label_formatter(&integer_epochs)
        .y_label_formatter(y_fmt)
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    let marker = if series.iter().map(|s| s.2.len()).max().unwrap_or(0) <= 40 { 3 } else { 0 };
    for (name, color, pts) in series {
        let pts: Vec<(f64, f64)> = pts.iter().copied().filter(|p| p.1.is_finite()).collect();
        let color = *color;
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)).point_size(marker))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(legend_at)
        .margin(10)
        .label_font(font(15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// LR finder
// ---------------------------------------------------------------------------------------------

/// Loss against learning rate (log-scale x axis), 900×560. With `suggestion`, a dashed vertical
/// line marks it, labelled "suggested max LR 3.2e-3". Points with a non-positive LR or a
/// non-finite loss are skipped; a loss that explodes at the end is clipped at 2.5× the first loss
/// so the interesting part stays readable.
pub fn lr_find_png(lrs: &[f64], losses: &[f64], suggestion: Option<f64>) -> Result<Vec<u8>, PlotError> {
    if lrs.len() != losses.len() {
        return Err(PlotError::plot(
            "LR finder plot",
            format!("{} learning rates but {} losses", lrs.len(), losses.len()),
        ));
    }
    let points: Vec<(f64, f64)> = lrs
        .iter()
        .zip(losses)
        .filter(|(lr, loss)| lr.is_finite() && **lr > 0.0 && loss.is_finite())
        .map(|(&lr, &loss)| (lr, loss))
        .collect();
    let suggestion = suggestion.filter(|s| s.is_finite() && *s > 0.0);
    render(
        "LR finder plot",
        900,
        560,
        |_| {},
        |root| {
            root.fill(&WHITE)?;
            let title = "Learning-rate finder";
            let Some((x_lo, x_hi)) = finite_range(points.iter().map(|p| p.0).chain(suggestion)) else {
                return titled_empty(root, title);
            };
            let (x_lo, x_hi) = if x_hi > x_lo { (x_lo / 1.15, x_hi * 1.15) } else { (x_lo / 2.0, x_hi * 2.0) };
            let (y_lo, y_hi) = match finite_range(points.iter().map(|p| p.1)) {
                Some((lo, hi)) => {
                    let cap = points.first().map(|p| p.1.abs() * 2.5).filter(|c| *c > lo).unwrap_or(hi);
                    pad(lo, hi.min(cap), 0.05)
                }
                None => (0.0, 1.0),
            };
            let mut chart = ChartBuilder::on(root)
                .caption(title, font(22))
                .margin(15)
                .x_label_area_size(50)
                .y_label_area_size(65)
                .build_cartesian_2d((x_lo..x_hi).log_scale(), y_lo..y_hi)?;
            chart
                .configure_mesh()
                .x_desc("learning rate (log scale)")
                .y_desc("loss")
                .label_style(font(14))
                .axis_desc_style(font(16))
                .x_label_formatter(&|v| format!("{v:.0e}"))
                .y_label_formatter(&|v| fmt_num(*v))
                .bold_line_style(RGBColor(200, 200, 200))
                .light_line_style(RGBColor(242, 242, 242))
                .draw()?;
            if points.is_empty() {
                draw_no_data(&chart.plotting_area().strip_coord_spec(), "no finite losses")?;
            } else {
                // Plotters clamps out-of-range points onto the border (a flat line along the top),
                // so the curve is cut where it leaves the chart instead.
                for (k, segment) in clip_above(&points, y_hi).into_iter().enumerate() {
                    let series = chart.draw_series(LineSeries::new(segment, TRAIN_COLOR.stroke_width(2)))?;
                    if k == 0 {
                        series
                            .label("loss")
                            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], TRAIN_COLOR.stroke_width(3)));
                    }
                }
            }
            if let Some(s) = suggestion {
                let label = format!("suggested max LR {s:.1e}");
                chart
                    .draw_series(DashedLineSeries::new([(s, y_lo), (s, y_hi)], 8, 6, TEST_COLOR.stroke_width(2)))?
                    .label(label.clone())
                    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], TEST_COLOR.stroke_width(3)));
                // The label sits beside the line near the top, on whichever side has more room.
                let area = chart.plotting_area();
                let (px, _) = area.map_coordinate(&(s, y_hi));
                let ((left, top), (right, _)) = {
                    let r = area.get_pixel_range();
                    ((r.0.start, r.1.start), (r.0.end, r.1.end))
                };
                let right_side = px - left < (right - left) * 6 / 10;
                let (x, anchor) = if right_side { (px + 8, HPos::Left) } else { (px - 8, HPos::Right) };
                root.draw(&Text::new(label, (x, top + 12), text_style(16, &TEST_COLOR, anchor, VPos::Top)))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerLeft)
                .margin(12)
                .label_font(font(15))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.4))
                .draw()?;
            Ok(())
        },
    )
}

/// Splits a polyline (log-scale x) into the pieces at or below `y_max`, adding the crossing
/// points (interpolated in log x) so the curve runs up to the top edge and stops there.
fn clip_above(points: &[(f64, f64)], y_max: f64) -> Vec<Vec<(f64, f64)>> {
    let cross = |a: (f64, f64), b: (f64, f64)| {
        let t = (y_max - a.1) / (b.1 - a.1);
        let lx = a.0.ln() + t * (b.0.ln() - a.0.ln());
        (lx.exp(), y_max)
    };
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut current: Vec<(f64, f64)> = Vec::new();
    for (i, &p) in points.iter().enumerate() {
        let prev = i.checked_sub(1).map(|j| points[j]);
        let inside = p.1 <= y_max;
        match prev {
            Some(q) if (q.1 <= y_max) != inside => {
                let c = cross(q, p);
                if inside {
                    current.push(c);
                    current.push(p);
                } else {
                    current.push(c);
                    out.push(std::mem::take(&mut current));
                }
            }
            _ if inside => current.push(p),
            _ => {}
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------------------

/// One test image with its label and the model's (wrong) answer.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledImage {
    /// 3072 bytes, CHW planar R, G, B planes of 32×32, as in the CIFAR-10 files.
    pub pixels: Vec<u8>,
    pub truth: usize,
    pub predicted: usize,
    /// Softmax probability of `predicted`, 0..1.
    pub confidence: f32,
}

/// Copies a CHW planar 32×32 image into an RGB8 canvas of width `canvas_w` at (`x0`, `y0`),
/// each source pixel becoming a `scale`×`scale` block (nearest-neighbour upscaling).
fn blit_chw(canvas: &mut [u8], canvas_w: usize, chw: &[u8], x0: usize, y0: usize, scale: usize) {
    let plane = SIDE * SIDE;
    for y in 0..SIDE * scale {
        let row = (y0 + y) * canvas_w;
        for x in 0..SIDE * scale {
            let src = (y / scale) * SIDE + x / scale;
            let dst = (row + x0 + x) * 3;
            canvas[dst] = chw[src];
            canvas[dst + 1] = chw[plane + src];
            canvas[dst + 2] = chw[2 * plane + src];
        }
    }
}

fn fill_rect(canvas: &mut [u8], canvas_w: usize, (x0, y0): (usize, usize), (w, h): (usize, usize), rgb: [u8; 3]) {
    for y in y0..y0 + h {
        for x in x0..x0 + w {
            canvas[(y * canvas_w + x) * 3..][..3].copy_from_slice(&rgb);
        }
    }
}

/// Layout of the misclassified grid (shared with the tests).
const MIS_SCALE: usize = 4;
const MIS_IMG: usize = SIDE * MIS_SCALE; // 128
const MIS_CELL_W: usize = 172;
const MIS_CELL_H: usize = MIS_IMG + 52;
const MIS_MARGIN: usize = 14;
const MIS_TITLE_H: usize = 46;

/// Top-left pixel of the image in grid cell `i`.
fn mis_image_origin(i: usize, columns: usize) -> (usize, usize) {
    let (row, col) = (i / columns, i % columns);
    (MIS_MARGIN + col * MIS_CELL_W + (MIS_CELL_W - MIS_IMG) / 2, MIS_TITLE_H + row * MIS_CELL_H + 6)
}

fn mis_columns(n: usize, columns: usize) -> usize {
    columns.clamp(1, n.max(1))
}

/// A grid of wrongly classified images, each upscaled 4× (nearest) to 128×128 with
/// "true: cat" and "pred: dog 87%" under it, and a title line. `columns` is clamped to
/// 1..=samples.len(). A label index outside `class_names` is shown as "#<index>".
pub fn misclassified_png(
    samples: &[LabelledImage],
    class_names: &[&str],
    columns: usize,
) -> Result<Vec<u8>, PlotError> {
    let chart = "misclassified images";
    if let Some((i, s)) = samples.iter().enumerate().find(|(_, s)| s.pixels.len() != IMAGE_BYTES) {
        return Err(PlotError::plot(
            chart,
            format!("sample {i} has {} pixel bytes, expected {IMAGE_BYTES} (32×32 CHW RGB)", s.pixels.len()),
        ));
    }
    let columns = mis_columns(samples.len(), columns);
    let rows = samples.len().div_ceil(columns);
    let title = if samples.is_empty() {
        "Misclassified test images: none".to_string()
    } else {
        format!("Misclassified test images ({} shown)", samples.len())
    };
    // Wide enough for the title even with one or two columns.
    ensure_font().map_err(|e| PlotError::plot(chart, e))?;
    let title_w = font(20).box_size(&title).map(|(w, _)| w as usize).unwrap_or(400);
    let width = (2 * MIS_MARGIN + columns * MIS_CELL_W).max(title_w + 6 * MIS_MARGIN);
    let height = MIS_TITLE_H + rows * MIS_CELL_H + MIS_MARGIN;
    let name = |i: usize| class_names.get(i).map(|s| s.to_string()).unwrap_or_else(|| format!("#{i}"));
    render(
        chart,
        width as u32,
        height as u32,
        |canvas| {
            for (i, s) in samples.iter().enumerate() {
                let (x, y) = mis_image_origin(i, columns);
                fill_rect(canvas, width, (x - 1, y - 1), (MIS_IMG + 2, MIS_IMG + 2), [160, 160, 160]);
                blit_chw(canvas, width, &s.pixels, x, y, MIS_SCALE);
            }
        },
        |root| {
            root.draw(&Text::new(
                title,
                (width as i32 / 2, MIS_TITLE_H as i32 / 2),
                text_style(20, &BLACK, HPos::Center, VPos::Center),
            ))?;
            for (i, s) in samples.iter().enumerate() {
                let (x, y) = mis_image_origin(i, columns);
                let cx = (x + MIS_IMG / 2) as i32;
                let ty = (y + MIS_IMG + 6) as i32;
                root.draw(&Text::new(
                    format!("true: {}", name(s.truth)),
                    (cx, ty),
                    text_style(14, &TRUE_TEXT, HPos::Center, VPos::Top),
                ))?;
                let pct = (s.confidence.clamp(0.0, 1.0) * 100.0).round();
                root.draw(&Text::new(
                    format!("pred: {} {pct:.0}%", name(s.predicted)),
                    (cx, ty + 19),
                    text_style(14, &PRED_TEXT, HPos::Center, VPos::Top),
                ))?;
            }
            Ok(())
        },
    )
}

/// CHW planar 32×32 images in a grid of `columns` (clamped to 1..=images.len()), each upscaled
/// `scale`× (nearest; 0 counts as 1) with a 2-pixel grey gap, no text. Images of the wrong size
/// are drawn as magenta squares. Empty input gives one blank cell.
pub fn image_grid_png(images: &[Vec<u8>], columns: usize, scale: u32) -> Vec<u8> {
    const GAP: usize = 2;
    let scale = scale.max(1) as usize;
    let cell = SIDE * scale;
    let columns = columns.clamp(1, images.len().max(1));
    let rows = images.len().div_ceil(columns).max(1);
    let width = GAP + columns * (cell + GAP);
    let height = GAP + rows * (cell + GAP);
    let mut canvas = vec![128u8; width * height * 3];
    for (i, img) in images.iter().enumerate() {
        let (x, y) = (GAP + (i % columns) * (cell + GAP), GAP + (i / columns) * (cell + GAP));
        if img.len() == IMAGE_BYTES {
            blit_chw(&mut canvas, width, img, x, y, scale);
        } else {
            fill_rect(&mut canvas, width, (x, y), (cell, cell), [255, 0, 255]);
        }
    }
    // Encoding a correctly sized RGB8 buffer into a Vec cannot fail.
    encode_png(&canvas, width as u32, height as u32).expect("PNG encoding of an in-memory grid")
}

// ---------------------------------------------------------------------------------------------
// Confusion matrix
// ---------------------------------------------------------------------------------------------

/// Layout of the confusion matrix chart.
const CM_CELL: usize = 80;
const CM_LEFT: usize = 140;
const CM_TOP: usize = 110;
const CM_RIGHT: usize = 100;
const CM_BOTTOM: usize = 24;

/// Heat map of `matrix.counts[true][predicted]`: rows are true classes, columns predictions,
/// counts in the cells, colour by the row fraction, per-class accuracy (recall) right of each
/// row, overall accuracy in the title. Class names beyond `class_names` show as "#<index>".
pub fn confusion_png(matrix: &ConfusionMatrix, class_names: &[&str]) -> Result<Vec<u8>, PlotError> {
    let chart = "confusion matrix";
    let n = matrix.counts.len();
    if let Some((i, row)) = matrix.counts.iter().enumerate().find(|(_, r)| r.len() != n) {
        return Err(PlotError::plot(
            chart,
            format!("row {i} has {} columns, expected {n} (matrix must be square)", row.len()),
        ));
    }
    let width = (CM_LEFT + n * CM_CELL + CM_RIGHT).max(560);
    let height = CM_TOP + n * CM_CELL + CM_BOTTOM;
    let name = |i: usize| class_names.get(i).map(|s| s.to_string()).unwrap_or_else(|| format!("#{i}"));
    let total = matrix.total();
    let per_class = matrix.per_class_accuracy();
    render(
        chart,
        width as u32,
        height as u32,
        |_| {},
        |root| {
            root.fill(&WHITE)?;
            let title = if total == 0 {
                "Confusion matrix (no test images)".to_string()
            } else {
                format!("Confusion matrix \u{2014} test accuracy {:.2}% of {total} images", 100.0 * matrix.accuracy())
            };
            root.draw(&Text::new(title, (width as i32 / 2, 24), text_style(21, &BLACK, HPos::Center, VPos::Center)))?;
            if n == 0 {
                return Ok(());
            }
            let grid_left = CM_LEFT as i32;
            let grid_top = CM_TOP as i32;
            let cell = CM_CELL as i32;
            let grid_w = cell * n as i32;
            // Axis titles.
            root.draw(&Text::new(
                "predicted class",
                (grid_left + grid_w / 2, 56),
                text_style(17, &BLACK, HPos::Center, VPos::Center),
            ))?;
            root.draw(&Text::new(
                "true class",
                (16, grid_top + grid_w / 2),
                font(17).transform(FontTransform::Rotate270).color(&BLACK).pos(Pos::new(HPos::Center, VPos::Center)),
            ))?;
            root.draw(&Text::new(
                "accuracy",
                (grid_left + grid_w + CM_RIGHT as i32 / 2, grid_top - 16),
                text_style(14, &BLACK, HPos::Center, VPos::Center),
            ))?;
            for (i, row) in matrix.counts.iter().enumerate() {
                let row_total = row.iter().sum::<u64>().max(1) as f64;
                let y = grid_top + i as i32 * cell;
                // Column label above, row label left.
                root.draw(&Text::new(
                    name(i),
                    (grid_left + i as i32 * cell + cell / 2, grid_top - 16),
                    text_style(14, &BLACK, HPos::Center, VPos::Center),
                ))?;
                root.draw(&Text::new(
                    name(i),
                    (grid_left - 10, y + cell / 2),
                    text_style(14, &BLACK, HPos::Right, VPos::Center),
                ))?;
                for (j, &count) in row.iter().enumerate() {
                    let frac = count as f64 / row_total;
                    let x = grid_left + j as i32 * cell;
                    let fill = heat(frac, i == j);
                    root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], fill.filled()))?;
                    root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], RGBColor(200, 200, 200)))?;
                    let lum = 0.299 * fill.0 as f64 + 0.587 * fill.1 as f64 + 0.114 * fill.2 as f64;
                    let text_color = if lum < 140.0 { WHITE } else { BLACK };
                    root.draw(&Text::new(
                        count.to_string(),
                        (x + cell / 2, y + cell / 2),
                        text_style(15, &text_color, HPos::Center, VPos::Center),
                    ))?;
                }
                root.draw(&Text::new(
                    format!("{:.1}%", 100.0 * per_class[i]),
                    (grid_left + grid_w + CM_RIGHT as i32 / 2, y + cell / 2),
                    text_style(15, &BLACK, HPos::Center, VPos::Center),
                ))?;
            }
            root.draw(&Rectangle::new(
                [(grid_left, grid_top), (grid_left + grid_w, grid_top + grid_w)],
                BLACK.mix(0.6),
            ))?;
            Ok(())
        },
    )
}

/// White → blue on the diagonal (correct), white → red off it (errors, scaled up 4× so a few
/// percent of confusion is visible).
fn heat(frac: f64, diagonal: bool) -> RGBColor {
    let lerp = |a: u8, b: u8, t: f64| (a as f64 + (b as f64 - a as f64) * t).round() as u8;
    if diagonal {
        let t = frac.clamp(0.0, 1.0);
        RGBColor(lerp(255, 8, t), lerp(255, 69, t), lerp(255, 148, t))
    } else {
        let t = (frac * 4.0).clamp(0.0, 1.0);
        RGBColor(lerp(255, 203, t), lerp(255, 24, t), lerp(255, 29, t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: [&str; 10] =
        ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

    fn decode(png: &[u8]) -> image::RgbImage {
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG signature");
        image::load_from_memory(png).expect("decodes as an image").to_rgb8()
    }

    fn fake_epochs(n: usize) -> Vec<EpochMetrics> {
        (1..=n)
            .map(|e| {
                let t = e as f64 / n as f64;
                EpochMetrics {
                    epoch: e,
                    lr: 0.4 * (1.0 - t),
                    train_loss: 1.8 * (-3.0 * t).exp() + 0.15,
                    train_acc: 0.97 - 0.6 * (-3.0 * t).exp(),
                    test_loss: 1.6 * (-3.0 * t).exp() + 0.25,
                    test_acc: 0.94 - 0.55 * (-3.0 * t).exp(),
                    test_acc_tta: None,
                    test_acc_weights: None,
                    seconds: 10.0,
                    images_per_sec: 5000.0,
                }
            })
            .collect()
    }

    /// A recognisable image: every pixel of channel c at (y, x) has a distinct value.
    fn pattern(seed: u8) -> Vec<u8> {
        // The channel term keeps the R, G and B planes different from each other.
        (0..IMAGE_BYTES).map(|k| (k as u32 * 7 + (k / 1024) as u32 * 85 + seed as u32 * 31) as u8).collect()
    }

    /// Counts pixels that are neither white nor near-white: something was drawn.
    fn ink(img: &image::RgbImage) -> usize {
        img.pixels().filter(|p| p.0.iter().any(|&c| c < 200)).count()
    }

    #[test]
    fn curves_png_is_a_1500x450_png_with_content() {
        let epochs = fake_epochs(24);
        let lr: Vec<f64> = (0..24 * 98).map(|s| 0.4 * (1.0 - s as f64 / (24.0 * 98.0))).collect();
        let img = decode(&curves_png(&epochs, &lr, 98).unwrap());
        assert_eq!(img.dimensions(), (1500, 450));
        // The test-loss line is red; some red pixels must exist in the left panel.
        let red = (0..500u32)
            .flat_map(|x| (0..450u32).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0 == [TEST_COLOR.0, TEST_COLOR.1, TEST_COLOR.2])
            .count();
        assert!(red > 50, "expected a red test-loss line, found {red} red pixels");
        // The LR line (green) appears in the right panel.
        let green = (1000..1500u32)
            .flat_map(|x| (0..450u32).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0 == [LR_COLOR.0, LR_COLOR.1, LR_COLOR.2])
            .count();
        assert!(green > 50, "expected a green LR line, found {green} green pixels");
    }

    #[test]
    fn curves_png_single_epoch_and_empty_inputs() {
        let one = decode(&curves_png(&fake_epochs(1), &[], 0).unwrap());
        assert_eq!(one.dimensions(), (1500, 450));
        let none = decode(&curves_png(&[], &[], 10).unwrap());
        assert_eq!(none.dimensions(), (1500, 450));
        assert!(ink(&one) > ink(&none), "one epoch should draw more than no data");
        let mut nan = fake_epochs(3);
        nan[1].test_loss = f64::NAN;
        nan[2].train_acc = f64::INFINITY;
        decode(&curves_png(&nan, &[f64::NAN, 0.1], 1).unwrap());
    }

    #[test]
    fn lr_find_png_suggestion_changes_the_picture() {
        let lrs: Vec<f64> = (0..100).map(|i| 1e-6 * 10f64.powf(i as f64 * 6.0 / 99.0)).collect();
        let losses: Vec<f64> =
            lrs.iter().map(|lr| 2.3 - 0.8 * (lr.log10() + 6.0) / 4.0 + (lr * 50.0).powi(2)).collect();
        let without = lr_find_png(&lrs, &losses, None).unwrap();
        let with = lr_find_png(&lrs, &losses, Some(3.2e-3)).unwrap();
        let (a, b) = (decode(&without), decode(&with));
        assert_eq!(a.dimensions(), (900, 560));
        assert_eq!(b.dimensions(), (900, 560));
        let differing = a.pixels().zip(b.pixels()).filter(|(p, q)| p != q).count();
        assert!(differing > 200, "the suggestion line and label should change the image ({differing} px)");
    }

    #[test]
    fn lr_find_png_rejects_mismatched_lengths_and_survives_empty() {
        let err = lr_find_png(&[1e-3, 1e-2], &[1.0], None).unwrap_err().to_string();
        assert!(err.contains("LR finder") && err.contains("2 learning rates"), "{err}");
        decode(&lr_find_png(&[], &[], None).unwrap());
        decode(&lr_find_png(&[], &[], Some(1e-3)).unwrap());
        decode(&lr_find_png(&[0.0, -1.0], &[f64::NAN, 1.0], None).unwrap());
        decode(&lr_find_png(&[1e-3], &[2.0], Some(1e-3)).unwrap());
    }

    #[test]
    fn misclassified_png_puts_upscaled_pixels_in_their_cells() {
        let samples: Vec<LabelledImage> = (0..7)
            .map(|i| LabelledImage {
                pixels: pattern(i as u8),
                truth: i % 10,
                predicted: (i + 3) % 10,
                confidence: 0.5 + 0.05 * i as f32,
            })
            .collect();
        let columns = 3;
        let img = decode(&misclassified_png(&samples, &NAMES, columns).unwrap());
        let rows = 3;
        assert_eq!(
            img.dimensions(),
            ((2 * MIS_MARGIN + columns * MIS_CELL_W) as u32, (MIS_TITLE_H + rows * MIS_CELL_H + MIS_MARGIN) as u32)
        );
        // Layout pinned independently of `mis_image_origin`: the first image starts at
        // (margin 14 + (172 − 128) / 2, title 46 + 6) and has a 1-pixel grey frame.
        assert_eq!(mis_image_origin(0, columns), (36, 52));
        assert_eq!(mis_image_origin(4, columns), (36 + 172, 52 + 180));
        assert_eq!(img.get_pixel(35, 51).0, [160, 160, 160], "frame just outside the image");
        for cell in [0usize, 4, 6] {
            let (x0, y0) = mis_image_origin(cell, columns);
            // Source pixel (sy, sx) covers output pixels [4 sx, 4 sx + 4) × [4 sy, 4 sy + 4);
            // sample the centre of the cell and a corner block.
            for (sy, sx) in [(16usize, 16usize), (0, 0), (31, 31), (5, 27)] {
                let src = &samples[cell].pixels;
                let k = sy * SIDE + sx;
                let expected = [src[k], src[1024 + k], src[2048 + k]];
                for (dy, dx) in [(1, 1), (2, 2), (3, 0)] {
                    let px = img.get_pixel((x0 + sx * 4 + dx) as u32, (y0 + sy * 4 + dy) as u32).0;
                    assert_eq!(px, expected, "cell {cell} source pixel ({sy},{sx})");
                }
            }
        }
        // The eighth and ninth cells are empty: white there.
        let (x0, y0) = mis_image_origin(8, columns);
        assert_eq!(img.get_pixel((x0 + 64) as u32, (y0 + 64) as u32).0, [255, 255, 255]);
    }

    #[test]
    fn misclassified_png_handles_edge_cases() {
        let empty = decode(&misclassified_png(&[], &NAMES, 10).unwrap());
        assert!(empty.width() > 0 && empty.height() > 0);
        let many: Vec<LabelledImage> = (0..100)
            .map(|i| LabelledImage { pixels: pattern(i as u8), truth: 12, predicted: i % 10, confidence: 1.5 })
            .collect();
        let img = decode(&misclassified_png(&many, &NAMES, 10).unwrap());
        assert_eq!(img.width() as usize, 2 * MIS_MARGIN + 10 * MIS_CELL_W);
        // columns = 0 is clamped to 1, a huge count to the number of samples.
        let one = decode(&misclassified_png(&many[..2], &NAMES, 0).unwrap());
        assert_eq!(one.height() as usize, MIS_TITLE_H + 2 * MIS_CELL_H + MIS_MARGIN);
        let wide = decode(&misclassified_png(&many[..2], &NAMES, 50).unwrap());
        assert_eq!(wide.height() as usize, MIS_TITLE_H + MIS_CELL_H + MIS_MARGIN);
        let bad = LabelledImage { pixels: vec![0; 100], truth: 0, predicted: 1, confidence: 0.9 };
        let err = misclassified_png(&[bad], &NAMES, 4).unwrap_err().to_string();
        assert!(err.contains("misclassified") && err.contains("sample 0"), "{err}");
    }

    #[test]
    fn confusion_png_draws_cells_and_rejects_ragged_matrices() {
        let mut m = ConfusionMatrix::new(10);
        for t in 0..10 {
            for p in 0..10 {
                for _ in 0..if t == p { 900 } else { 11 } {
                    m.add(t, p);
                }
            }
        }
        let img = decode(&confusion_png(&m, &NAMES).unwrap());
        assert_eq!(
            img.dimensions(),
            ((CM_LEFT + 10 * CM_CELL + CM_RIGHT) as u32, (CM_TOP + 10 * CM_CELL + CM_BOTTOM) as u32)
        );
        // A diagonal cell is dark blue near its corner (away from the count text).
        let (x, y) = (CM_LEFT + 3 * CM_CELL + 6, CM_TOP + 3 * CM_CELL + 6);
        let expected = heat(900.0 / 999.0, true);
        assert_eq!(img.get_pixel(x as u32, y as u32).0, [expected.0, expected.1, expected.2]);
        // An empty off-diagonal cell would be white; this one has 11/999 and is tinted.
        let (x, y) = (CM_LEFT + 4 * CM_CELL + 6, CM_TOP + 3 * CM_CELL + 6);
        assert_ne!(img.get_pixel(x as u32, y as u32).0, [255, 255, 255]);

        let ragged = ConfusionMatrix { counts: vec![vec![1, 2], vec![3]] };
        let err = confusion_png(&ragged, &NAMES).unwrap_err().to_string();
        assert!(err.contains("confusion matrix") && err.contains("row 1"), "{err}");
        decode(&confusion_png(&ConfusionMatrix::new(0), &[]).unwrap());
        decode(&confusion_png(&ConfusionMatrix::new(10), &NAMES[..3]).unwrap());
    }

    #[test]
    fn image_grid_png_layout_and_pixels() {
        let images: Vec<Vec<u8>> = (0..5).map(|i| pattern(i as u8)).collect();
        let img = decode(&image_grid_png(&images, 2, 3));
        // 2 columns × 3 rows of 96-pixel cells with 2-pixel gaps.
        assert_eq!(img.dimensions(), (2 + 2 * 98, 2 + 3 * 98));
        // Image 3 sits at column 1, row 1; its source pixel (10, 20) at 3× scale.
        let (x0, y0) = (2 + 98, 2 + 98);
        let k = 10 * SIDE + 20;
        let src = &images[3];
        assert_eq!(img.get_pixel(x0 + 20 * 3 + 1, y0 + 10 * 3 + 1).0, [src[k], src[1024 + k], src[2048 + k]]);
        let two = decode(&image_grid_png(&images[..2], 8, 1));
        assert_eq!(two.dimensions(), (2 + 2 * 34, 2 + 34), "columns clamp to the image count");
        let empty = decode(&image_grid_png(&[], 0, 0));
        assert_eq!(empty.dimensions(), (2 + 34, 2 + 34));
        let bad = decode(&image_grid_png(&[vec![1, 2, 3]], 4, 1));
        assert_eq!(bad.get_pixel(10, 10).0, [255, 0, 255]);
    }

    #[test]
    fn clip_above_cuts_the_curve_at_the_top_edge() {
        let pts = [(1e-3, 1.0), (1e-2, 3.0), (1e-1, 5.0), (1.0, 1.0)];
        let segs = clip_above(&pts, 2.0);
        assert_eq!(segs.len(), 2, "{segs:?}");
        assert_eq!(segs[0][0], (1e-3, 1.0));
        let (x, y) = segs[0][1];
        assert_eq!(y, 2.0);
        assert!((x - 10f64.powf(-2.5)).abs() < 1e-12, "crossing interpolated in log x: {x}");
        assert!(segs.iter().flatten().all(|p| p.1 <= 2.0));
        assert_eq!(*segs[1].last().unwrap(), (1.0, 1.0));
        assert!(clip_above(&[], 1.0).is_empty());
    }

    #[test]
    fn fmt_num_is_compact() {
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(0.4), "0.4");
        assert_eq!(fmt_num(0.05), "0.05");
        assert_eq!(fmt_num(3.2e-3), "3.2e-3");
        assert_eq!(fmt_num(12.0), "12");
    }
}

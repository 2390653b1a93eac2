//! Validation plots as PNG: the precision-recall curve at IoU 0.5 (Ultralytics'
//! `PR_curve.png`) and the confusion matrix (`confusion_matrix.png`).
//!
//! Drawn directly into an `image::RgbImage` with text from the `font8x8` bitmap font (public
//! domain glyphs compiled into the binary), so no system font, fontconfig or freetype is
//! needed. The look is plain: axes, a 0.1 grid, tick labels, one line per class, a legend.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::error::Result;
use crate::metrics::{compute_ap, interp, linspace01, precision_envelope, DetStats};

/// Points on a PR curve (as Ultralytics: `np.linspace(0, 1, 1000)`).
pub const CURVE_POINTS: usize = 1000;

/// The precision of one class at IoU 0.5 on [`CURVE_POINTS`] recall values in `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PrCurve {
    pub class: usize,
    /// AP50 of the class (area under this curve's envelope, 101-point).
    pub ap50: f64,
    /// Precision envelope interpolated at `linspace(0, 1, 1000)` recall.
    pub precision: Vec<f64>,
}

/// Per-class PR curves at IoU 0.5, Ultralytics' `prec_values` from `ap_per_class`: for every
/// class with ground truth (increasing class order), the precision envelope of its
/// cumulative recall/precision (predictions by decreasing confidence, stable order) sampled at
/// 1000 recall points; all zeros for a class without predictions.
pub fn pr_curves(stats: &DetStats) -> Vec<PrCurve> {
    let mut order: Vec<usize> = (0..stats.conf.len()).collect();
    order.sort_by(|&a, &b| stats.conf[b].total_cmp(&stats.conf[a]));
    let mut classes = stats.target_cls.clone();
    classes.sort_unstable();
    classes.dedup();
    let x = linspace01(CURVE_POINTS);
    classes
        .into_iter()
        .map(|c| {
            let n_l = stats.target_cls.iter().filter(|&&t| t == c).count() as f64;
            let (mut tpc, mut fpc) = (0.0f64, 0.0f64);
            let (mut recall, mut precision) = (Vec::new(), Vec::new());
            for &i in order.iter().filter(|&&i| stats.pred_cls[i] == c) {
                if stats.tp[i][0] {
                    tpc += 1.0;
                } else {
                    fpc += 1.0;
                }
                recall.push(tpc / (n_l + 1e-16));
                precision.push(tpc / (tpc + fpc));
            }
            if recall.is_empty() {
                return PrCurve {
                    class: c,
                    ap50: 0.0,
                    precision: vec![0.0; CURVE_POINTS],
                };
            }
            let (mrec, mpre) = precision_envelope(&recall, &precision);
            let (first, last) = (mpre[0], mpre[mpre.len() - 1]);
            PrCurve {
                class: c,
                ap50: compute_ap(&recall, &precision),
                precision: x
                    .iter()
                    .map(|&r| interp(r, &mrec, &mpre, first, last))
                    .collect(),
            }
        })
        .collect()
}

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const MEAN_BLUE: Rgb<u8> = Rgb([31, 119, 180]);
/// matplotlib's tab10 without its blue (kept for the mean curve).
const PALETTE: [Rgb<u8>; 9] = [
    Rgb([255, 127, 14]),
    Rgb([44, 160, 44]),
    Rgb([214, 39, 40]),
    Rgb([148, 103, 189]),
    Rgb([140, 86, 75]),
    Rgb([227, 119, 194]),
    Rgb([127, 127, 127]),
    Rgb([188, 189, 34]),
    Rgb([23, 190, 207]),
];

/// A canvas with the few primitives the plots need.
struct Canvas(RgbImage);

impl Canvas {
    fn new(width: u32, height: u32) -> Self {
        Self(RgbImage::from_pixel(width, height, WHITE))
    }

    fn put(&mut self, x: i64, y: i64, c: Rgb<u8>) {
        if x >= 0 && y >= 0 && (x as u32) < self.0.width() && (y as u32) < self.0.height() {
            self.0.put_pixel(x as u32, y as u32, c);
        }
    }

    fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb<u8>) {
        for y in y0..y1 {
            for x in x0..x1 {
                self.put(x, y, c);
            }
        }
    }

    /// A line `width` pixels thick (square stamps every half pixel).
    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), width: u32, c: Rgb<u8>) {
        let steps = ((x1 - x0).abs().max((y1 - y0).abs()) * 2.0).ceil().max(1.0) as usize;
        let (lo, hi) = (-(width as i64 - 1) / 2, width as i64 / 2);
        for s in 0..=steps {
            let t = s as f64 / steps as f64;
            let (x, y) = (
                (x0 + t * (x1 - x0)).round() as i64,
                (y0 + t * (y1 - y0)).round() as i64,
            );
            for dy in lo..=hi {
                for dx in lo..=hi {
                    self.put(x + dx, y + dy, c);
                }
            }
        }
    }

    /// Text with its top-left corner at `(x, y)`, 8x8 glyphs times `scale`; `vertical` runs it
    /// bottom-to-top (rotated 90° counter-clockwise) starting at `(x, y)` as its bottom-left.
    fn text(&mut self, x: i64, y: i64, s: &str, scale: u32, vertical: bool, c: Rgb<u8>) {
        use font8x8::UnicodeFonts;
        let sc = scale as i64;
        for (k, ch) in s.chars().enumerate() {
            let glyph = font8x8::BASIC_FONTS
                .get(ch)
                .or_else(|| font8x8::BASIC_FONTS.get('?'))
                .expect("font8x8 has '?'");
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits >> col & 1 == 0 {
                        continue;
                    }
                    let (gx, gy) = (k as i64 * 8 + col as i64, row as i64);
                    let (px, py) = if vertical {
                        (x + gy * sc, y - gx * sc - sc)
                    } else {
                        (x + gx * sc, y + gy * sc)
                    };
                    self.rect(px, py, px + sc, py + sc, c);
                }
            }
        }
    }

    fn save(self, path: &Path) -> Result<()> {
        let mut png = Vec::new();
        self.0
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .expect("PNG encoding of an in-memory RGB image");
        crate::files::write_atomic(path, &png)
    }
}

/// Width in pixels of `s` at `scale`.
fn text_width(s: &str, scale: u32) -> i64 {
    s.chars().count() as i64 * 8 * scale as i64
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).chain(std::iter::once('~')).collect()
    }
}

fn class_name(names: &[String], c: usize) -> String {
    names.get(c).cloned().unwrap_or_else(|| c.to_string())
}

/// Ultralytics' 20-colour palette (`utils/plotting.py`, `Colors`), indexed by class id.
pub const BOX_PALETTE: [[u8; 3]; 20] = [
    [0x04, 0x2A, 0xFF], [0x0B, 0xDB, 0xEB], [0xF3, 0xF3, 0xF3], [0x00, 0xDF, 0xB7],
    [0x11, 0x1F, 0x68], [0xFF, 0x6F, 0xDD], [0xFF, 0x44, 0x4F], [0xCC, 0xED, 0x00],
    [0x00, 0xF3, 0x44], [0xBD, 0x00, 0xFF], [0x00, 0xB4, 0xFF], [0xDD, 0x00, 0xBA],
    [0x00, 0xFF, 0xFF], [0x26, 0xC0, 0x00], [0x01, 0xFF, 0xB3], [0x7D, 0x24, 0xFF],
    [0x7B, 0x00, 0x68], [0xFF, 0x1B, 0x6C], [0xFC, 0x6D, 0x2F], [0xA2, 0xFF, 0x0B],
];

/// A box to draw: `[x1, y1, x2, y2]` in the image's pixels, its class (the colour) and the
/// label written above it (e.g. `circle 0.87`).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledBox {
    pub xyxy: [f32; 4],
    pub class: usize,
    pub label: String,
}

/// Draws boxes with their labels on `img` as Ultralytics' `Annotator` lays them out: line
/// width `max(round((w + h) / 2 * 0.003), 2)`, the label on a filled bar of the box's colour
/// above its top-left corner (inside the box when there is no room above), text white or
/// black, whichever reads better on the colour.
pub fn draw_boxes(img: &mut RgbImage, boxes: &[LabelledBox]) {
    let (w, h) = img.dimensions();
    let lw = (((w + h) as f64 / 2.0 * 0.003).round() as u32).max(2);
    let scale = (lw / 2).max(1);
    let mut cv = Canvas(std::mem::take(img));
    for b in boxes {
        let [r, g, bl] = BOX_PALETTE[b.class % BOX_PALETTE.len()];
        let c = Rgb([r, g, bl]);
        let [x1, y1, x2, y2] = b.xyxy.map(|v| v as f64);
        for (p, q) in [
            ((x1, y1), (x2, y1)),
            ((x2, y1), (x2, y2)),
            ((x2, y2), (x1, y2)),
            ((x1, y2), (x1, y1)),
        ] {
            cv.line(p, q, lw, c);
        }
        if b.label.is_empty() {
            continue;
        }
        let tw = text_width(&b.label, scale) + 2 * scale as i64;
        let th = 8 * scale as i64 + 2 * scale as i64;
        let (x, y) = (x1.round() as i64, y1.round() as i64);
        let top = if y - th >= 0 { y - th } else { y };
        cv.rect(x, top, x + tw, top + th, c);
        let luma = 0.299 * r as f64 + 0.587 * g as f64 + 0.114 * bl as f64;
        let text = if luma > 160.0 { Rgb([0, 0, 0]) } else { WHITE };
        cv.text(x + scale as i64, top + scale as i64, &b.label, scale, false, text);
    }
    *img = cv.0;
}

/// Size of the PR-curve image.
pub const PR_SIZE: (u32, u32) = (960, 640);

/// Writes the precision-recall curve PNG ([`PR_SIZE`]): one line per class (labelled with
/// its AP50 when there are at most 20 classes, grey otherwise, as Ultralytics) and the mean
/// over classes in thick blue, labelled with mAP50.
pub fn plot_pr_curve(path: &Path, curves: &[PrCurve], names: &[String]) -> Result<()> {
    let (w, h) = PR_SIZE;
    let mut cv = Canvas::new(w, h);
    let (left, top, right, bottom) = (72.0, 40.0, w as f64 - 250.0, h as f64 - 56.0);
    let px = |r: f64| left + r * (right - left);
    let py = |p: f64| bottom - p * (bottom - top);
    for k in 0..=10 {
        let v = k as f64 / 10.0;
        cv.line((px(v), top), (px(v), bottom), 1, GRID);
        cv.line((left, py(v)), (right, py(v)), 1, GRID);
        if k % 2 == 0 {
            let label = format!("{v:.1}");
            cv.text(
                px(v) as i64 - text_width(&label, 1) / 2,
                bottom as i64 + 8,
                &label,
                1,
                false,
                BLACK,
            );
            cv.text(
                left as i64 - 8 - text_width(&label, 1),
                py(v) as i64 - 4,
                &label,
                1,
                false,
                BLACK,
            );
        }
    }
    let title = "Precision-Recall curve (IoU 0.5)";
    cv.text(
        ((left + right) / 2.0) as i64 - text_width(title, 2) / 2,
        12,
        title,
        2,
        false,
        BLACK,
    );
    cv.text(
        ((left + right) / 2.0) as i64 - text_width("Recall", 2) / 2,
        bottom as i64 + 28,
        "Recall",
        2,
        false,
        BLACK,
    );
    cv.text(
        14,
        ((top + bottom) / 2.0) as i64 + text_width("Precision", 2) / 2,
        "Precision",
        2,
        true,
        BLACK,
    );
    let x = linspace01(CURVE_POINTS);
    let labelled = curves.len() <= 20;
    let mut legend = Vec::new();
    for (i, c) in curves.iter().enumerate() {
        let color = if labelled {
            PALETTE[i % PALETTE.len()]
        } else {
            Rgb([128, 128, 128])
        };
        for k in 1..x.len() {
            cv.line(
                (px(x[k - 1]), py(c.precision[k - 1])),
                (px(x[k]), py(c.precision[k])),
                1,
                color,
            );
        }
        if labelled {
            legend.push((
                format!(
                    "{} {:.3}",
                    truncate(&class_name(names, c.class), 16),
                    c.ap50
                ),
                color,
            ));
        }
    }
    if !curves.is_empty() {
        let n = curves.len() as f64;
        let mean: Vec<f64> = (0..x.len())
            .map(|k| curves.iter().map(|c| c.precision[k]).sum::<f64>() / n)
            .collect();
        for k in 1..x.len() {
            cv.line(
                (px(x[k - 1]), py(mean[k - 1])),
                (px(x[k]), py(mean[k])),
                3,
                MEAN_BLUE,
            );
        }
        let map50 = curves.iter().map(|c| c.ap50).sum::<f64>() / n;
        legend.push((format!("all classes {map50:.3} mAP@0.5"), MEAN_BLUE));
    }
    // Axes drawn last so curves at 0 and 1 do not hide them.
    cv.line((left, top), (left, bottom), 1, BLACK);
    cv.line((left, bottom), (right, bottom), 1, BLACK);
    cv.line((right, top), (right, bottom), 1, BLACK);
    cv.line((left, top), (right, top), 1, BLACK);
    for (k, (label, color)) in legend.iter().enumerate() {
        let y = top as i64 + 6 + 16 * k as i64;
        cv.rect(right as i64 + 14, y + 2, right as i64 + 34, y + 6, *color);
        cv.text(right as i64 + 40, y, label, 1, false, BLACK);
    }
    cv.save(path)
}

/// Cell colour of a matplotlib-like "Blues" map for `t` in `[0, 1]`.
fn blues(t: f64) -> Rgb<u8> {
    let (a, b) = ([247.0, 251.0, 255.0], [8.0, 48.0, 107.0]);
    let t = t.clamp(0.0, 1.0);
    Rgb(std::array::from_fn(|i| {
        (a[i] + t * (b[i] - a[i])).round() as u8
    }))
}

/// The size [`plot_confusion_matrix`] gives an `n x n` matrix (`n = nc + 1`).
pub fn confusion_size(n: usize) -> (u32, u32) {
    let cell = confusion_cell(n);
    let side = 150 + cell * n as u32;
    (side + 20, side + 40)
}

fn confusion_cell(n: usize) -> u32 {
    (720 / n.max(1) as u32).clamp(6, 64)
}

/// Writes a confusion matrix PNG (size [`confusion_size`]): rows predicted, columns true, the
/// last row/column labelled "background". Pass [`crate::confusion::ConfusionMatrix::matrix`]
/// for counts or `normalized()` for column shares; values print in the cells when they fit
/// (integers as counts, otherwise two decimals), cells below 0.005 stay blank.
///
/// Panics if `matrix` is not square (a programmer error).
pub fn plot_confusion_matrix(path: &Path, matrix: &[Vec<f64>], names: &[String]) -> Result<()> {
    let n = matrix.len();
    assert!(
        matrix.iter().all(|r| r.len() == n),
        "confusion matrix must be square"
    );
    let (w, h) = confusion_size(n);
    let cell = confusion_cell(n) as i64;
    let mut cv = Canvas::new(w, h);
    let (x0, y0) = (140i64, 40i64);
    let max = matrix.iter().flatten().fold(0.0f64, |a, &b| a.max(b));
    let counts = matrix.iter().flatten().all(|v| v.fract() == 0.0);
    let label = |i: usize| {
        if i + 1 == n {
            "background".to_string()
        } else {
            truncate(&class_name(names, i), 14)
        }
    };
    for (r, row) in matrix.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            let t = if max > 0.0 { v / max } else { 0.0 };
            let (cx, cy) = (x0 + c as i64 * cell, y0 + r as i64 * cell);
            cv.rect(cx, cy, cx + cell, cy + cell, blues(t));
            if v < 0.005 {
                continue;
            }
            let s = if counts {
                format!("{v}")
            } else {
                format!("{v:.2}")
            };
            if text_width(&s, 1) + 2 <= cell && cell >= 10 {
                let color = if t > 0.5 { WHITE } else { BLACK };
                cv.text(
                    cx + (cell - text_width(&s, 1)) / 2,
                    cy + (cell - 8) / 2,
                    &s,
                    1,
                    false,
                    color,
                );
            }
        }
    }
    let side = cell * n as i64;
    // Grid lines between cells when they are large enough to see.
    if cell >= 12 {
        for k in 0..=n as i64 {
            let v = k * cell;
            cv.line(
                ((x0 + v) as f64, y0 as f64),
                ((x0 + v) as f64, (y0 + side) as f64),
                1,
                WHITE,
            );
            cv.line(
                (x0 as f64, (y0 + v) as f64),
                ((x0 + side) as f64, (y0 + v) as f64),
                1,
                WHITE,
            );
        }
    }
    if cell >= 8 {
        for i in 0..n {
            let l = label(i);
            let mid = i as i64 * cell + cell / 2;
            cv.text(
                x0 - 6 - text_width(&l, 1),
                y0 + mid - 4,
                &l,
                1,
                false,
                BLACK,
            );
            cv.text(
                x0 + mid - 4,
                y0 + side + 6 + text_width(&l, 1),
                &l,
                1,
                true,
                BLACK,
            );
        }
    }
    let title = if counts {
        "Confusion Matrix"
    } else {
        "Confusion Matrix Normalized"
    };
    cv.text(
        x0 + side / 2 - text_width(title, 2) / 2,
        10,
        title,
        2,
        false,
        BLACK,
    );
    cv.text(
        x0 + side / 2 - text_width("True", 2) / 2,
        h as i64 - 22,
        "True",
        2,
        false,
        BLACK,
    );
    cv.text(
        6,
        y0 + side / 2 + text_width("Predicted", 2) / 2,
        "Predicted",
        2,
        true,
        BLACK,
    );
    cv.save(path)
}

/// One bar of a [`BarChart`]: its value and a range drawn as a whisker (e.g. the minimum and
/// maximum of the runs whose median is `value`; `low == high == value` draws none).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bar {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// One series of a [`BarChart`]: a bar per group, `None` where it has no value there.
#[derive(Debug, Clone, PartialEq)]
pub struct BarSeries {
    pub name: String,
    pub bars: Vec<Option<Bar>>,
}

/// A grouped bar chart: for each group (x axis) one bar per series, side by side, with the
/// series' colours in a legend (the first series in the mean-curve blue).
#[derive(Debug, Clone, PartialEq)]
pub struct BarChart {
    pub title: String,
    pub y_label: String,
    pub groups: Vec<String>,
    pub series: Vec<BarSeries>,
    /// A logarithmic y axis (for values spanning decades, such as latencies of batch 1 and 8);
    /// every value and range must then be positive.
    pub log_y: bool,
}

const BAR_W: u32 = 16;
const GROUP_GAP: u32 = 28;

/// Legend entries longer than this are cut.
const LEGEND_CHARS: usize = 32;

/// The size [`plot_grouped_bars`] gives `chart`: at least 720 x 440, wider with more bars,
/// taller with more legend rows.
pub fn bar_chart_size(chart: &BarChart) -> (u32, u32) {
    let per_group = chart.series.len().max(1) as u32 * BAR_W + GROUP_GAP;
    let w = (110 + chart.groups.len() as u32 * per_group).max(720);
    (w, 424 + 16 * legend_layout(chart, w).2)
}

/// Legend columns, column width and rows for an image `w` wide.
fn legend_layout(chart: &BarChart, w: u32) -> (u32, u32, u32) {
    let longest = chart
        .series
        .iter()
        .map(|s| s.name.chars().count().min(LEGEND_CHARS))
        .max()
        .unwrap_or(0) as u32;
    let col_w = 20 + 8 * longest + 16;
    let cols = ((w - 40) / col_w).max(1);
    (cols, col_w, (chart.series.len() as u32).div_ceil(cols))
}

/// Draws `chart` (see [`plot_grouped_bars`]).
///
/// # Errors
/// A series whose bar count is not the group count, a non-finite value, a range that does not
/// hold its value, or (with `log_y`) a value or range that is not positive: `Config` naming the
/// series and group.
pub fn grouped_bars_image(chart: &BarChart) -> Result<RgbImage> {
    let bad = |field: String, message: String| crate::CoreError::Config { field, message };
    let mut lo_all = f64::INFINITY;
    let mut hi_all: f64 = 0.0;
    for (si, s) in chart.series.iter().enumerate() {
        if s.bars.len() != chart.groups.len() {
            return Err(bad(
                format!("chart.series[{si}].bars"),
                format!("{} bars for {} groups", s.bars.len(), chart.groups.len()),
            ));
        }
        for (gi, b) in s.bars.iter().enumerate() {
            let Some(b) = b else { continue };
            let field = format!("chart.series[{si}] ({}).bars[{gi}]", s.name);
            if ![b.value, b.low, b.high].iter().all(|v| v.is_finite())
                || b.low > b.value
                || b.value > b.high
            {
                return Err(bad(
                    field,
                    format!("{b:?} is not finite with low <= value <= high"),
                ));
            }
            if chart.log_y && b.low <= 0.0 {
                return Err(bad(
                    field,
                    format!("{b:?}: a log axis needs positive values"),
                ));
            }
            lo_all = lo_all.min(b.low);
            hi_all = hi_all.max(b.high);
        }
    }
    let (w, h) = bar_chart_size(chart);
    let (cols, col_w, legend_rows) = legend_layout(chart, w);
    let mut cv = Canvas::new(w, h);
    let (left, top, right, bottom) = (
        80.0,
        52.0 + 16.0 * legend_rows as f64,
        w as f64 - 20.0,
        h as f64 - 50.0,
    );
    // The y range and its ticks: decades with 1-2-5 steps on a log axis, else 0 to a round
    // value above the highest whisker.
    let (y0, y1, ticks): (f64, f64, Vec<f64>) = if !lo_all.is_finite() {
        (0.0, 1.0, vec![0.0, 0.5, 1.0])
    } else if chart.log_y {
        // From the decade below the lowest whisker to a quarter decade above the highest
        // (room for the value labels).
        let (a, b) = (
            lo_all.log10().floor(),
            (hi_all.log10() + 0.25).max(lo_all.log10().floor() + 1.0),
        );
        let mut t = Vec::new();
        for d in a as i32..=b.ceil() as i32 {
            for m in [1.0, 2.0, 5.0] {
                let v = m * 10f64.powi(d);
                if v >= 10f64.powf(a) && v <= 10f64.powf(b) {
                    t.push(v);
                }
            }
        }
        (a, b, t)
    } else {
        let step = nice_step(hi_all / 5.0);
        let top_v = (hi_all / step).ceil().max(1.0) * step;
        (
            0.0,
            top_v,
            (0..=(top_v / step).round() as usize)
                .map(|k| k as f64 * step)
                .collect(),
        )
    };
    let map = |v: f64| if chart.log_y { v.log10() } else { v };
    let py = |v: f64| bottom - (map(v) - y0) / (y1 - y0) * (bottom - top);
    for &t in &ticks {
        let y = py(t);
        cv.line((left, y), (right, y), 1, GRID);
        let label = format_tick(t);
        cv.text(
            left as i64 - 6 - text_width(&label, 1),
            y as i64 - 4,
            &label,
            1,
            false,
            BLACK,
        );
    }
    let title = truncate(&chart.title, (w as usize - 20) / 16);
    cv.text(
        w as i64 / 2 - text_width(&title, 2) / 2,
        10,
        &title,
        2,
        false,
        BLACK,
    );
    cv.text(
        14,
        ((top + bottom) / 2.0) as i64 + text_width(&chart.y_label, 1) / 2,
        &chart.y_label,
        1,
        true,
        BLACK,
    );
    let color = |si: usize| {
        if si == 0 {
            MEAN_BLUE
        } else {
            PALETTE[(si - 1) % PALETTE.len()]
        }
    };
    for (si, s) in chart.series.iter().enumerate() {
        let (col, row) = ((si as u32 % cols) as i64, (si as u32 / cols) as i64);
        let (x, y) = (20 + col * col_w as i64, 36 + row * 16);
        cv.rect(x, y, x + 14, y + 10, color(si));
        cv.text(
            x + 20,
            y + 1,
            &truncate(&s.name, LEGEND_CHARS),
            1,
            false,
            BLACK,
        );
    }
    let ns = chart.series.len().max(1) as f64;
    let slot = (right - left) / chart.groups.len().max(1) as f64;
    for (gi, g) in chart.groups.iter().enumerate() {
        let centre = left + slot * (gi as f64 + 0.5);
        let x_first = centre - ns * BAR_W as f64 / 2.0;
        for (si, s) in chart.series.iter().enumerate() {
            let Some(b) = s.bars[gi] else { continue };
            let x0 = x_first + si as f64 * BAR_W as f64;
            let base = if chart.log_y { bottom } else { py(0.0) };
            cv.rect(
                x0 as i64 + 1,
                py(b.value) as i64,
                (x0 + BAR_W as f64) as i64 - 1,
                base as i64,
                color(si),
            );
            let xm = x0 + BAR_W as f64 / 2.0;
            if b.high > b.low {
                cv.line((xm, py(b.high)), (xm, py(b.low)), 1, BLACK);
                cv.line((xm - 3.0, py(b.high)), (xm + 3.0, py(b.high)), 1, BLACK);
                cv.line((xm - 3.0, py(b.low)), (xm + 3.0, py(b.low)), 1, BLACK);
            }
            let label = format_tick(b.value);
            cv.text(xm as i64 - 4, py(b.high) as i64 - 4, &label, 1, true, BLACK);
        }
        let label = truncate(g, (slot / 8.0).max(3.0) as usize);
        cv.text(
            centre as i64 - text_width(&label, 1) / 2,
            bottom as i64 + 8,
            &label,
            1,
            false,
            BLACK,
        );
    }
    cv.line((left, top), (left, bottom), 1, BLACK);
    cv.line((left, bottom), (right, bottom), 1, BLACK);
    Ok(cv.0)
}

/// Writes `chart` as a PNG ([`bar_chart_size`]) atomically: bars with min-max whiskers and
/// their values written above them, group names under the axis, a legend under the title.
///
/// # Errors
/// As [`grouped_bars_image`]; and the file cannot be written.
pub fn plot_grouped_bars(path: &Path, chart: &BarChart) -> Result<()> {
    Canvas(grouped_bars_image(chart)?).save(path)
}

/// A 1, 2 or 5 times a power of ten at or above `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * p)
}

/// A tick or bar label with about three significant digits (whole numbers without decimals).
fn format_tick(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod bar_chart_tests {
    use super::*;

    fn chart(log_y: bool) -> BarChart {
        let bar = |v: f64| {
            Some(Bar {
                value: v,
                low: v * 0.9,
                high: v * 1.2,
            })
        };
        BarChart {
            title: "latency".into(),
            y_label: "ms".into(),
            groups: vec!["n 320 b1".into(), "n 640 b8".into()],
            series: vec![
                BarSeries {
                    name: "ours".into(),
                    bars: vec![bar(8.0), bar(400.0)],
                },
                BarSeries {
                    name: "ref".into(),
                    bars: vec![bar(10.0), None],
                },
            ],
            log_y,
        }
    }

    #[test]
    fn draws_the_bars_in_their_series_colours() {
        for log_y in [true, false] {
            let c = chart(log_y);
            let img = grouped_bars_image(&c).unwrap();
            assert_eq!(img.dimensions(), bar_chart_size(&c));
            let count = |col: Rgb<u8>| img.pixels().filter(|p| **p == col).count();
            // Both series drew bars (the legend swatch alone is 14 x 10 = 140 pixels).
            assert!(
                count(MEAN_BLUE) > 300,
                "log_y {log_y}: {}",
                count(MEAN_BLUE)
            );
            assert!(
                count(PALETTE[0]) > 200,
                "log_y {log_y}: {}",
                count(PALETTE[0])
            );
        }
    }

    #[test]
    fn bad_charts_are_errors_naming_the_bar() {
        let mut c = chart(true);
        c.series[1].bars.pop();
        assert!(grouped_bars_image(&c)
            .unwrap_err()
            .to_string()
            .contains("series[1].bars"));
        let mut c = chart(true);
        c.series[0].bars[1] = Some(Bar {
            value: 0.0,
            low: 0.0,
            high: 0.0,
        });
        let e = grouped_bars_image(&c).unwrap_err().to_string();
        assert!(
            e.contains("series[0] (ours).bars[1]") && e.contains("positive"),
            "{e}"
        );
        let mut c = chart(false);
        c.series[0].bars[0] = Some(Bar {
            value: f64::NAN,
            low: 0.0,
            high: 1.0,
        });
        assert!(grouped_bars_image(&c).is_err());
    }
}

//! The validation loop: model + letterbox + NMS + metrics over a dataset split, written once
//! and used by `yolo-infer val` and by training's per-epoch validation.
//!
//! It reproduces Ultralytics 8.4.190's `DetectionValidator` pipeline:
//! - rectangular batches (`rect=True` for val): samples sorted by aspect ratio `h / w`, each
//!   batch letterboxed to `ceil(shape * imgsz / 32 + 0.5) * 32` (`BaseDataset.set_rectangle`);
//! - `load_image`: long side resized to `imgsz` (sides `min(ceil(s * r), imgsz)`, cv2-exact
//!   bilinear), then `LetterBox(scaleup=False, auto=False)` to the batch shape, pad 114;
//! - NMS with conf 0.001, IoU 0.7, max_det 300, multi-label;
//! - matching and metrics in letterboxed pixel space (8.4 no longer scales back for metrics).

use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::confusion::ConfusionMatrix;
use crate::data::image::{read_rgb8, to_chw, ImageSize};
use crate::data::labels::Sample;
use crate::data::letterbox::{resize_long_side, LetterBox};
use crate::error::Result;
use crate::metrics::{ap_per_class, DetMetrics, DetStats, PredBox, TruthBox};
use crate::nms::{non_max_suppression, NmsConfig};
use crate::model::{YoloV8, MAX_STRIDE};
use crate::nn::{decode, HeadOutput};

/// Settings of a validation run (Ultralytics' `yolo val` defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValConfig {
    pub imgsz: u32,
    pub batch: usize,
    /// Confidence threshold of NMS.
    pub conf: f32,
    /// IoU threshold of NMS.
    pub iou: f32,
    pub max_det: usize,
    /// Rectangular batches (letterbox each batch to its own minimal shape).
    pub rect: bool,
}

impl Default for ValConfig {
    fn default() -> Self {
        Self {
            imgsz: 640,
            batch: 16,
            conf: 0.001,
            iou: 0.7,
            max_det: 300,
            rect: true,
        }
    }
}

impl ValConfig {
    /// The settings checked, `imgsz` rounded up to a multiple of the largest stride (32) as
    /// Ultralytics' `check_imgsz` does (a side that is not one fails in the neck's
    /// concatenations). An error names the field: `imgsz` or `batch` 0, `conf` or `iou` outside
    /// `[0, 1]` (or NaN), `max_det` 0.
    pub fn checked(&self) -> Result<Self> {
        let bad = |field: &str, message: String| crate::CoreError::Config { field: field.into(), message };
        if !(1..=crate::model::MAX_IMGSZ).contains(&self.imgsz) {
            return Err(bad("imgsz", format!("{} is not between 1 and {}", self.imgsz, crate::model::MAX_IMGSZ)));
        }
        if self.batch == 0 {
            return Err(bad("batch", "must be positive".into()));
        }
        for (field, v) in [("conf", self.conf), ("iou", self.iou)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(bad(field, format!("{v} is not between 0 and 1")));
            }
        }
        if self.max_det == 0 {
            return Err(bad("max_det", "must be positive".into()));
        }
        Ok(Self {
            imgsz: self.imgsz.div_ceil(MAX_STRIDE as u32) * MAX_STRIDE as u32,
            ..self.clone()
        })
    }
}

/// Which samples form each batch and the `(height, width)` every batch is letterboxed to.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchPlan {
    pub batches: Vec<Vec<usize>>,
    pub shapes: Vec<ImageSize>,
}

/// Groups samples into batches as Ultralytics' validation dataloader does.
///
/// With `rect`, samples are ordered by aspect ratio `h / w` (a stable sort; numpy's argsort
/// may order exact ties differently, which only matters when a tie straddles two batches)
/// and each batch gets `ceil(shape * imgsz / stride + pad) * stride` with `shape` `[max_ar, 1]`
/// when all ratios are below 1, `[1, 1 / min_ar]` when all are above 1, else `[1, 1]`.
pub fn plan_batches(sizes: &[ImageSize], imgsz: u32, batch: usize, rect: bool) -> BatchPlan {
    let batch = batch.max(1);
    let stride = MAX_STRIDE as f64;
    let pad = 0.5;
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    let ar = |i: usize| sizes[i].height as f64 / sizes[i].width as f64;
    if rect {
        order.sort_by(|&a, &b| ar(a).total_cmp(&ar(b)));
    }
    let batches: Vec<Vec<usize>> = order.chunks(batch).map(|c| c.to_vec()).collect();
    let shapes = batches
        .iter()
        .map(|b| {
            if !rect {
                return ImageSize {
                    width: imgsz,
                    height: imgsz,
                };
            }
            let (mini, maxi) = b
                .iter()
                .map(|&i| ar(i))
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), a| {
                    (lo.min(a), hi.max(a))
                });
            let (sh, sw) = if maxi < 1.0 {
                (maxi, 1.0)
            } else if mini > 1.0 {
                (1.0, 1.0 / mini)
            } else {
                (1.0, 1.0)
            };
            let side = |s: f64| ((s * imgsz as f64 / stride + pad).ceil() * stride) as u32;
            ImageSize {
                width: side(sw),
                height: side(sh),
            }
        })
        .collect();
    BatchPlan { batches, shapes }
}

/// A ground-truth box in letterboxed pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GtBox {
    pub class: usize,
    pub xyxy: [f32; 4],
}

/// One preprocessed image.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// `[3, H, W]` RGB in `[0, 1]`, row-major.
    pub chw: Vec<f32>,
    pub size: ImageSize,
    pub gt: Vec<GtBox>,
}

/// Loads `sample` as Ultralytics' validation dataset does and letterboxes it to `shape`.
pub fn prepare(sample: &Sample, imgsz: u32, shape: ImageSize) -> Result<Prepared> {
    let img = resize_long_side(read_rgb8(&sample.image)?, imgsz);
    let (lb, t) = LetterBox::new(shape.width, shape.height)
        .with_scaleup(false)
        .apply(&img);
    let (w, h) = lb.dimensions();
    let chw = to_chw(&lb);
    let gt = sample
        .labels
        .iter()
        .map(|l| {
            let b = t.label_to_letterbox([l.cx as f64, l.cy as f64, l.w as f64, l.h as f64]);
            GtBox {
                class: l.class,
                xyxy: b.map(|v| v as f32),
            }
        })
        .collect();
    Ok(Prepared {
        chw,
        size: ImageSize {
            width: w,
            height: h,
        },
        gt,
    })
}

/// Stacks prepared images of one shape into a `[B, 3, H, W]` tensor.
pub fn stack(batch: &[Prepared], device: &Device) -> Tensor<4> {
    let size = batch[0].size;
    let mut data = Vec::with_capacity(batch.len() * batch[0].chw.len());
    for p in batch {
        debug_assert_eq!(p.size, size, "a batch has one shape");
        data.extend_from_slice(&p.chw);
    }
    Tensor::from_data(
        TensorData::new(
            data,
            [batch.len(), 3, size.height as usize, size.width as usize],
        ),
        device,
    )
}

/// Runs the model over `samples` batch by batch, calling `on_batch` with the raw head output,
/// the prepared batch and the decoded predictions `[B, 4 + nc, A]` read back to the host.
/// Errors (an unreadable image) stop the run and name the file.
pub fn run_batches(
    model: &YoloV8,
    samples: &[Sample],
    cfg: &ValConfig,
    device: &Device,
    mut on_batch: impl FnMut(&HeadOutput, &[Prepared], &[f32], [usize; 3]),
) -> Result<()> {
    let cfg = &cfg.checked()?;
    let sizes: Vec<ImageSize> = samples.iter().map(|s| s.size).collect();
    let plan = plan_batches(&sizes, cfg.imgsz, cfg.batch, cfg.rect);
    let meta = model.meta();
    for (items, &shape) in plan.batches.iter().zip(&plan.shapes) {
        let prepared: Vec<Prepared> = items
            .par_iter()
            .map(|&i| prepare(&samples[i], cfg.imgsz, shape))
            .collect::<Result<_>>()?;
        let x = stack(&prepared, device);
        let out = model.forward(x);
        let pred = decode(&out, &meta);
        let dims = pred.dims();
        let data = pred
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 after convert");
        on_batch(&out, &prepared, &data, dims);
    }
    Ok(())
}

/// Metrics of one class in a validation report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub class: usize,
    pub name: String,
    /// Images that contain the class.
    pub images: usize,
    /// Truth boxes of the class.
    pub instances: usize,
    pub precision: f64,
    pub recall: f64,
    pub ap50: f64,
    pub ap50_95: f64,
}

/// The result of [`evaluate`], written as `metrics.json` by `yolo-infer val`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValMetrics {
    pub images: usize,
    pub instances: usize,
    pub precision: f64,
    pub recall: f64,
    pub map50: f64,
    pub map50_95: f64,
    /// Ultralytics 8.4.190's fitness (mAP50-95).
    pub fitness: f64,
    /// Classes that have ground truth, in increasing order.
    pub per_class: Vec<ClassMetrics>,
    /// Wall time per image (preprocess + inference + NMS), milliseconds.
    pub ms_per_image: f64,
    pub config: ValConfig,
    /// Detection confusion matrix `(nc + 1) x (nc + 1)`, `[predicted][true]`, background last,
    /// as `DetectionValidator` accumulates it (detections above the val `conf`, IoU > 0.45);
    /// see [`crate::confusion`]. Empty in reports written before it existed.
    #[serde(default)]
    pub confusion: Vec<Vec<f64>>,
    /// Per-class precision-recall curves at IoU 0.5 (for plots; not serialised).
    #[serde(skip)]
    pub pr_curves: Vec<crate::plots::PrCurve>,
}

/// NMS over one image of a batch read back by [`run_batches`].
///
/// # Shapes
/// - `data`: `[B, 4 + nc, A]` row-major, `dims = [B, 4 + nc, A]`
pub fn detections(data: &[f32], dims: [usize; 3], image: usize, nms: &NmsConfig) -> Vec<PredBox> {
    let [_, ch, a] = dims;
    let one = &data[image * ch * a..(image + 1) * ch * a];
    non_max_suppression(one, ch - 4, nms)
        .into_iter()
        .map(|d| PredBox {
            xyxy: d.xyxy,
            conf: d.conf,
            class: d.class,
        })
        .collect()
}

/// Evaluates `model` on `samples` as Ultralytics' `DetectionValidator` does.
pub fn evaluate(
    model: &YoloV8,
    samples: &[Sample],
    names: &[String],
    cfg: &ValConfig,
    device: &Device,
) -> Result<ValMetrics> {
    let start = std::time::Instant::now();
    let cfg = &cfg.checked()?;
    let nms = NmsConfig {
        conf: cfg.conf,
        iou: cfg.iou,
        max_det: cfg.max_det,
        ..NmsConfig::val()
    };
    let mut stats = DetStats::default();
    // Ultralytics sizes it by the model's classes; labels beyond them (a dataset that does not
    // fit the model) widen it instead of failing the run.
    let label_nc = samples
        .iter()
        .flat_map(|s| s.labels.iter().map(|l| l.class + 1))
        .max()
        .unwrap_or(0);
    let nc = model.meta().nc.max(label_nc);
    let mut confusion = ConfusionMatrix::new(nc).with_conf(cfg.conf);
    run_batches(model, samples, cfg, device, |_, prepared, data, dims| {
        for (i, p) in prepared.iter().enumerate() {
            let preds = detections(data, dims, i, &nms);
            let truth: Vec<TruthBox> = p
                .gt
                .iter()
                .map(|g| TruthBox {
                    xyxy: g.xyxy,
                    class: g.class,
                })
                .collect();
            confusion.process_batch(&preds, &truth);
            stats.add_image(&preds, &truth);
        }
    })?;
    let classes = ap_per_class(&stats);
    let summary = DetMetrics::from_classes(&classes);
    let count = |v: &[usize], c: usize| v.iter().filter(|&&x| x == c).count();
    let per_class = classes
        .iter()
        .map(|c| ClassMetrics {
            class: c.class,
            name: names
                .get(c.class)
                .cloned()
                .unwrap_or_else(|| c.class.to_string()),
            images: count(&stats.target_img, c.class),
            instances: count(&stats.target_cls, c.class),
            precision: c.precision,
            recall: c.recall,
            ap50: c.ap50(),
            ap50_95: c.ap50_95(),
        })
        .collect();
    Ok(ValMetrics {
        images: stats.images,
        instances: stats.target_cls.len(),
        precision: summary.precision,
        recall: summary.recall,
        map50: summary.map50,
        map50_95: summary.map50_95,
        fitness: summary.fitness(),
        per_class,
        ms_per_image: start.elapsed().as_secs_f64() * 1e3 / stats.images.max(1) as f64,
        config: cfg.clone(),
        confusion: confusion.matrix().to_vec(),
        pr_curves: crate::plots::pr_curves(&stats),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sz(width: u32, height: u32) -> ImageSize {
        ImageSize { width, height }
    }

    #[test]
    fn checked_rounds_imgsz_and_names_bad_fields() {
        let c = ValConfig { imgsz: 1000, ..ValConfig::default() };
        assert_eq!(c.checked().unwrap().imgsz, 1024);
        assert_eq!(ValConfig::default().checked().unwrap(), ValConfig::default());
        let field = |c: ValConfig| match c.checked() {
            Err(crate::CoreError::Config { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(ValConfig { imgsz: 0, ..ValConfig::default() }), "imgsz");
        assert_eq!(field(ValConfig { imgsz: 40000, ..ValConfig::default() }), "imgsz");
        assert_eq!(field(ValConfig { batch: 0, ..ValConfig::default() }), "batch");
        assert_eq!(field(ValConfig { conf: f32::NAN, ..ValConfig::default() }), "conf");
        assert_eq!(field(ValConfig { iou: 5.0, ..ValConfig::default() }), "iou");
        assert_eq!(field(ValConfig { max_det: 0, ..ValConfig::default() }), "max_det");
    }

    #[test]
    fn rect_batches_as_ultralytics() {
        // Two wide, one square, one tall image; batch 2.
        let sizes = [sz(100, 50), sz(64, 64), sz(100, 80), sz(40, 100)];
        let plan = plan_batches(&sizes, 64, 2, true);
        assert_eq!(plan.batches, vec![vec![0, 2], vec![1, 3]]);
        // ratios 0.5 and 0.8 -> shape [0.8, 1]: height ceil(0.8 * 64 / 32 + 0.5) = 3 -> 96,
        // width ceil(64 / 32 + 0.5) = 3 -> 96.
        assert_eq!(plan.shapes[0], sz(96, 96));
        let plan = plan_batches(&sizes, 640, 2, true);
        // ceil(0.8 * 20 + 0.5) = 17 -> 544 high, ceil(20.5) = 21 -> 672 wide.
        assert_eq!(plan.shapes[0], sz(672, 544));
        // mixed batch (1.0 and 2.5) -> [1, 1] -> 672 x 672.
        assert_eq!(plan.shapes[1], sz(672, 672));
        let plan = plan_batches(&sizes, 640, 2, false);
        assert_eq!(plan.batches, vec![vec![0, 1], vec![2, 3]]);
        assert!(plan.shapes.iter().all(|s| *s == sz(640, 640)));
    }
}

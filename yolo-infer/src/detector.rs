//! [`Detector`]: a checkpoint loaded once (BatchNorm folded), then images in, detections out,
//! as Ultralytics' `predict` does it:
//!
//! - the image size is rounded up to a multiple of the model's largest stride (32), as
//!   `check_imgsz` does;
//! - letterbox with OpenCV-exact bilinear resizing, grey (114) padding and upscaling allowed;
//!   when every image of a batch has the same size the padding is the least multiple of 32
//!   (`auto=True`, "rect" inference), otherwise every image is padded to `imgsz` x `imgsz`;
//! - one batched forward, then NMS per image (best class per box, `conf` 0.25, IoU 0.7,
//!   max 300 detections by default; class-aware unless `agnostic`; `classes` filters before
//!   the suppression);
//! - boxes mapped back to the original image's pixels and clipped to it (`scale_boxes`).

use std::path::Path;
use std::time::Instant;

use yolo_core::burn::tensor::{Device, FloatDType, Tensor, TensorData};
use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use yolo_core::data::image::to_chw;
use yolo_core::data::letterbox::{LetterBox, LetterboxTransform};
use yolo_core::nms::{non_max_suppression, non_max_suppression_classes, NmsConfig};
use yolo_core::weights::{self, CheckpointMeta};
use yolo_core::YoloV8;

use crate::error::{InferError, Result};

/// The model's largest stride: input sides are multiples of it.
pub const STRIDE: u32 = 32;

/// Per-request settings of the NMS (Ultralytics' `predict` defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectOptions {
    /// Keep detections whose score is above this.
    pub conf: f32,
    /// Suppress boxes whose IoU with a kept box of the same class (any class when `agnostic`)
    /// is above this.
    pub iou: f32,
    /// At most this many detections per image.
    pub max_det: usize,
    /// Suppress across classes.
    pub agnostic: bool,
    /// Keep only these class ids (`None`: all).
    pub classes: Option<Vec<usize>>,
}

impl Default for DetectOptions {
    fn default() -> Self {
        let p = NmsConfig::predict();
        Self {
            conf: p.conf,
            iou: p.iou,
            max_det: p.max_det,
            agnostic: false,
            classes: None,
        }
    }
}

impl DetectOptions {
    /// Checks the ranges: `conf` and `iou` in `[0, 1]`, `max_det` at least 1, class ids `< nc`.
    ///
    /// # Errors
    /// [`InferError::Options`] naming the field.
    pub fn validate(&self, nc: usize) -> Result<()> {
        let bad = |field: &str, message: String| {
            Err(InferError::Options {
                field: field.into(),
                message,
            })
        };
        if !(0.0..=1.0).contains(&self.conf) {
            return bad("conf", format!("{} is not in [0, 1]", self.conf));
        }
        if !(0.0..=1.0).contains(&self.iou) {
            return bad("iou", format!("{} is not in [0, 1]", self.iou));
        }
        if self.max_det == 0 {
            return bad("max_det", "must be at least 1".into());
        }
        if let Some(c) = self.classes.as_ref().and_then(|cs| cs.iter().find(|c| **c >= nc)) {
            return bad(
                "classes",
                format!("class id {c} is not below the model's {nc} classes"),
            );
        }
        Ok(())
    }

    fn nms(&self) -> NmsConfig {
        NmsConfig {
            conf: self.conf,
            iou: self.iou,
            max_det: self.max_det,
            agnostic: self.agnostic,
            ..NmsConfig::predict()
        }
    }
}

/// One detection in the original image's pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// `[x1, y1, x2, y2]`, clipped to the image.
    pub xyxy: [f32; 4],
    pub score: f32,
    pub class_id: usize,
    pub class_name: String,
}

/// Milliseconds spent on a batch, in Ultralytics' three parts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Letterbox and conversion to the input tensor.
    pub preprocess_ms: f64,
    /// The forward pass and decoding, with the read-back.
    pub inference_ms: f64,
    /// NMS and the mapping back to the original images.
    pub postprocess_ms: f64,
}

/// A detection model ready for inference.
#[derive(Debug)]
pub struct Detector {
    model: YoloV8,
    meta: CheckpointMeta,
    imgsz: u32,
    device: Device,
}

impl Detector {
    /// Loads a checkpoint (ours or converted from Ultralytics) and folds its BatchNorms.
    /// `imgsz` is rounded up to a multiple of [`STRIDE`].
    ///
    /// # Errors
    /// The checkpoint's errors (file, metadata, every mis-fitting key); `imgsz` of 0.
    pub fn load(weights: &Path, imgsz: u32, device: &Device) -> Result<Self> {
        if !(1..=yolo_core::model::MAX_IMGSZ).contains(&imgsz) {
            return Err(InferError::Options {
                field: "imgsz".into(),
                message: format!("{imgsz} is not between 1 and {}", yolo_core::model::MAX_IMGSZ),
            });
        }
        let (model, meta) = weights::load_model(weights, device)?;
        Ok(Self {
            model: model.fuse(),
            meta,
            imgsz: imgsz.div_ceil(STRIDE) * STRIDE,
            device: device.clone(),
        })
    }

    /// The model in half precision (Ultralytics' `half=True`; see [`YoloV8::half`]), for a GPU
    /// backend: about as accurate (the val test's mAP50-95 moves by 1.5e-3 at most). The
    /// caller decides where it applies ([`yolo_core::amp::use_half`]).
    pub fn half(mut self) -> Self {
        self.model = self.model.half();
        self
    }

    /// `"f16"` after [`half`](Self::half), else `"f32"`.
    pub fn precision(&self) -> &'static str {
        match self.model.dtype() {
            FloatDType::F16 => "f16",
            FloatDType::BF16 => "bf16",
            _ => "f32",
        }
    }

    /// Class names, index = class id.
    pub fn names(&self) -> &[String] {
        &self.meta.names
    }

    /// The checkpoint's metadata.
    pub fn meta(&self) -> &CheckpointMeta {
        &self.meta
    }

    /// The inference size after rounding up to the stride.
    pub fn imgsz(&self) -> u32 {
        self.imgsz
    }

    /// Detections in one image.
    ///
    /// # Errors
    /// Invalid options; the model's input errors.
    pub fn detect(&self, image: &RgbImage, opts: &DetectOptions) -> Result<Vec<Detection>> {
        let (mut out, _) = self.detect_batch(&[image], &[opts])?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Detections in each image of a batch, with the NMS settings of each image, in one
    /// forward pass. Returns one list per image (highest score first) and the time spent.
    ///
    /// # Errors
    /// An empty image, invalid options, `images` and `opts` of different lengths.
    pub fn detect_batch(
        &self,
        images: &[&RgbImage],
        opts: &[&DetectOptions],
    ) -> Result<(Vec<Vec<Detection>>, Timings)> {
        if images.len() != opts.len() {
            return Err(InferError::Options {
                field: "opts".into(),
                message: format!("{} options for {} images", opts.len(), images.len()),
            });
        }
        if images.is_empty() {
            return Ok((Vec::new(), Timings::default()));
        }
        let nc = self.meta.model.nc;
        for o in opts {
            o.validate(nc)?;
        }
        if let Some(i) = images.iter().position(|i| i.width() == 0 || i.height() == 0) {
            return Err(InferError::Options {
                field: "image".into(),
                message: format!("image {i} of the batch is empty"),
            });
        }
        let t0 = Instant::now();
        let same = images.iter().all(|i| i.dimensions() == images[0].dimensions());
        let lb = LetterBox::square(self.imgsz).with_auto(same).with_stride(STRIDE);
        let prepared: Vec<(Vec<f32>, LetterboxTransform)> = images
            .par_iter()
            .map(|img| {
                let (boxed, t) = lb.apply(img);
                (to_chw(&boxed), t)
            })
            .collect();
        let (w, h) = (prepared[0].1.width(), prepared[0].1.height());
        let mut data = Vec::with_capacity(prepared.len() * prepared[0].0.len());
        for (chw, _) in &prepared {
            data.extend_from_slice(chw);
        }
        let x = Tensor::<4>::from_data(
            TensorData::new(data, [images.len(), 3, h as usize, w as usize]),
            &self.device,
        );
        let t1 = Instant::now();
        let pred = self.model.predict(x)?;
        let [_, rows, anchors] = pred.dims();
        let pred: Vec<f32> = pred
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 after convert");
        let t2 = Instant::now();
        let per_image = rows * anchors;
        let out = prepared
            .iter()
            .zip(opts)
            .enumerate()
            .map(|(i, ((_, t), o))| {
                let slice = &pred[i * per_image..(i + 1) * per_image];
                let nms = o.nms();
                let kept = match &o.classes {
                    Some(cs) => non_max_suppression_classes(slice, nc, &nms, cs),
                    None => non_max_suppression(slice, nc, &nms),
                };
                kept.into_iter()
                    .map(|d| {
                        let b = t.box_to_original(d.xyxy.map(f64::from));
                        Detection {
                            xyxy: b.map(|v| v as f32),
                            score: d.conf,
                            class_id: d.class,
                            class_name: self.meta.names[d.class].clone(),
                        }
                    })
                    .collect()
            })
            .collect();
        let t3 = Instant::now();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        Ok((
            out,
            Timings {
                preprocess_ms: ms(t0, t1),
                inference_ms: ms(t1, t2),
                postprocess_ms: ms(t2, t3),
            },
        ))
    }
}

//! The typed sample the transforms work on, and where Mosaic / MixUp get their extra samples.

use image::RgbImage;
use yolo_core::data::labels::Label;
use yolo_core::data::letterbox::resize_long_side;

/// One object: a class id and a box in pixels.
///
/// The box format of every transform: `[x1, y1, x2, y2]` in pixels of the sample's image,
/// measured on pixel edges (the image spans `0..width` x `0..height`; pixel `(i, j)` covers
/// `[i, i + 1) x [j, j + 1)`), as Ultralytics' denormalised `xyxy` instances.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxLabel {
    /// Class id.
    pub class: usize,
    /// `[x1, y1, x2, y2]` in pixels, `x1 <= x2`, `y1 <= y2`.
    pub xyxy: [f32; 4],
}

impl BoxLabel {
    /// Width in pixels.
    pub fn width(&self) -> f32 {
        self.xyxy[2] - self.xyxy[0]
    }

    /// Height in pixels.
    pub fn height(&self) -> f32 {
        self.xyxy[3] - self.xyxy[1]
    }

    /// Clips the box to `0..width` x `0..height` (Ultralytics `Instances.clip`).
    pub fn clip(&mut self, width: f32, height: f32) {
        let [x1, y1, x2, y2] = &mut self.xyxy;
        *x1 = x1.clamp(0.0, width);
        *x2 = x2.clamp(0.0, width);
        *y1 = y1.clamp(0.0, height);
        *y2 = y2.clamp(0.0, height);
    }
}

/// An image with its boxes: what every [`Transform`](super::Transform) takes and returns.
#[derive(Debug, Clone, PartialEq)]
pub struct AugSample {
    /// RGB pixels.
    pub image: RgbImage,
    /// Objects, boxes in pixels of `image` (see [`BoxLabel`]).
    pub boxes: Vec<BoxLabel>,
}

impl AugSample {
    /// A sample as Ultralytics' `load_image` + `get_image_and_label` make it for training:
    /// the image resized so that its long side is `imgsz` (`ceil` of each side times
    /// `imgsz / long side`, capped at `imgsz`; cv2 `INTER_LINEAR`, also when shrinking; an image
    /// whose long side already is `imgsz` is kept), and the normalised labels turned into pixel
    /// boxes of the resized image.
    ///
    /// # Panics
    /// If the image is empty or `imgsz` is 0.
    pub fn load(image: RgbImage, labels: &[Label], imgsz: u32) -> Self {
        assert!(imgsz > 0, "AugSample::load: imgsz must be positive");
        let image = resize_long_side(image, imgsz);
        let (w, h) = (image.width() as f32, image.height() as f32);
        let boxes = labels
            .iter()
            .map(|l| BoxLabel {
                class: l.class,
                xyxy: [
                    (l.cx - l.w / 2.0) * w,
                    (l.cy - l.h / 2.0) * h,
                    (l.cx + l.w / 2.0) * w,
                    (l.cy + l.h / 2.0) * h,
                ],
            })
            .collect();
        Self { image, boxes }
    }

    /// The boxes as normalised centre-format labels of this image (Ultralytics' `Format` with
    /// `bbox_format="xywh", normalize=True`), ready for a batch.
    pub fn labels(&self) -> Vec<Label> {
        let (w, h) = (self.image.width() as f32, self.image.height() as f32);
        self.boxes
            .iter()
            .map(|b| {
                let [x1, y1, x2, y2] = b.xyxy;
                Label {
                    class: b.class,
                    cx: (x1 + x2) / 2.0 / w,
                    cy: (y1 + y2) / 2.0 / h,
                    w: (x2 - x1) / w,
                    h: (y2 - y1) / h,
                }
            })
            .collect()
    }
}

/// Where Mosaic and MixUp take their extra samples from (Ultralytics' dataset with
/// `get_image_and_label`). Shared by the worker threads of a loader, hence `Sync`.
pub trait SampleSource: Sync {
    /// Number of samples.
    fn len(&self) -> usize;

    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sample `i < len()`, loaded as [`AugSample::load`] does (long side resized to imgsz).
    /// Images were decoded once by the label scan, so a source may panic (with a message
    /// naming the file) when one can no longer be read.
    fn get(&self, i: usize) -> AugSample;
}

/// Samples held in memory are a source (Ultralytics' `cache="ram"`, and tests).
impl SampleSource for [AugSample] {
    fn len(&self) -> usize {
        <[AugSample]>::len(self)
    }

    fn get(&self, i: usize) -> AugSample {
        self[i].clone()
    }
}

impl SampleSource for Vec<AugSample> {
    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn get(&self, i: usize) -> AugSample {
        self[i].clone()
    }
}

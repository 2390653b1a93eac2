//! Training augmentations of Ultralytics 8.4.190 (`ultralytics/data/augment.py`), as pure
//! transforms over a typed sample with an explicit seeded RNG.
//!
//! - [`AugSample`]: an RGB image and its boxes as [`BoxLabel`] (`xyxy` in pixels);
//!   [`AugSample::load`] makes one as Ultralytics' `load_image` (long side resized to imgsz).
//! - [`Transform`]: `apply(sample, rng, source) -> sample`; [`SampleSource`] gives Mosaic and
//!   MixUp their extra samples.
//! - [`Mosaic`], [`RandomPerspective`], [`MixUp`], [`RandomHsv`], [`RandomFlip`], composed by
//!   [`train_transforms`] in Ultralytics' `v8_transforms` order from an [`AugConfig`].
//! - [`sample_rng`] seeds one RNG per `(seed, epoch, index)`, and [`augment`] /
//!   [`augment_batch`] run the pipeline with it, so a seed gives the same batch however many
//!   threads do the work.
//!
//! Every random value comes from the RNG passed in; none from a global. The random *streams*
//! are ours (ChaCha8), not Python's, so only the deterministic parts can be compared with
//! Ultralytics value for value (see `tests/augment.rs`).
//!
//! Differs from Ultralytics:
//! - Mosaic and MixUp draw their extra samples uniformly from the whole source. Ultralytics
//!   draws them from a buffer of recently loaded images (uniformly from the dataset with
//!   `cache="ram"`).
//! - The random streams (ChaCha8 per sample, see above) and the Beta(32, 32) sampler are ours.
//! - HSV to RGB reproduces cv2 5.0's SIMD path, which covers whole rows of widths that are a
//!   multiple of 32; cv2's scalar tail of other widths rounds instead of truncating.
//! - Not implemented: CopyPaste, CutMix (both default off), 9-image mosaic, Albumentations
//!   (needs the Python package; Ultralytics skips it when it is not installed), `bgr`
//!   channel swap (default 0), rect training.

mod color;
mod flip;
mod mixup;
mod mosaic;
mod perspective;
mod sample;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use yolo_core::data::image::ImageSize;

pub use color::{apply_hsv_gains, hsv_luts, hsv_to_rgb, rgb_to_hsv, RandomHsv};
pub use flip::{FlipDirection, RandomFlip};
pub use mixup::{beta, MixUp};
pub use mosaic::Mosaic;
pub use perspective::{
    affine_matrix, box_candidates, transform_box, warp, AffineDraws, Mat3, RandomPerspective,
};
pub use sample::{AugSample, BoxLabel, SampleSource};
pub use yolo_core::data::letterbox::resize_long_side;

/// The value of pixels no image covers (mosaic canvas, warp border): Ultralytics' 114.
pub const FILL: u8 = 114;

/// One augmentation step: a pure function of the sample, the RNG state and the source.
pub trait Transform: Send + Sync {
    /// Transforms `s`, drawing every random value from `rng`; `src` gives extra samples to
    /// transforms that mix several (Mosaic, MixUp).
    fn apply(&self, s: AugSample, rng: &mut ChaCha8Rng, src: &dyn SampleSource) -> AugSample;
}

/// Python's `random.uniform(a, b)`: `a + (b - a) * u`, `u` in `[0, 1)`. One draw even when
/// `a == b`, so the stream does not depend on the settings.
pub(crate) fn uniform(rng: &mut ChaCha8Rng, a: f64, b: f64) -> f64 {
    a + (b - a) * rng.random::<f64>()
}

/// Augmentation hyperparameters, with Ultralytics' names and defaults (`cfg/default.yaml`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AugConfig {
    /// Hue gain, a fraction of the hue circle.
    pub hsv_h: f64,
    /// Saturation gain.
    pub hsv_s: f64,
    /// Value gain.
    pub hsv_v: f64,
    /// Rotation range in degrees.
    pub degrees: f64,
    /// Translation, a fraction of the image size.
    pub translate: f64,
    /// Scale gain.
    pub scale: f64,
    /// Shear range in degrees.
    pub shear: f64,
    /// Perspective range (0 to 0.001).
    pub perspective: f64,
    /// Up-down flip probability.
    pub flipud: f64,
    /// Left-right flip probability.
    pub fliplr: f64,
    /// Mosaic probability.
    pub mosaic: f64,
    /// MixUp probability.
    pub mixup: f64,
}

impl Default for AugConfig {
    fn default() -> Self {
        Self {
            hsv_h: 0.015,
            hsv_s: 0.7,
            hsv_v: 0.4,
            degrees: 0.0,
            translate: 0.1,
            scale: 0.5,
            shear: 0.0,
            perspective: 0.0,
            flipud: 0.0,
            fliplr: 0.5,
            mosaic: 1.0,
            mixup: 0.0,
        }
    }
}

impl AugConfig {
    /// Ultralytics' `check_cfg` on these keys: the probabilities and gains it lists as
    /// fractions within `[0, 1]`, `degrees` and `shear` finite. `Err((field, message))`, the
    /// field as `aug.<key>`.
    pub fn check(&self) -> Result<(), (String, String)> {
        let fractions = [
            ("hsv_h", self.hsv_h),
            ("hsv_s", self.hsv_s),
            ("hsv_v", self.hsv_v),
            ("translate", self.translate),
            ("scale", self.scale),
            ("perspective", self.perspective),
            ("flipud", self.flipud),
            ("fliplr", self.fliplr),
            ("mosaic", self.mosaic),
            ("mixup", self.mixup),
        ];
        for (key, v) in fractions {
            if !(0.0..=1.0).contains(&v) {
                return Err((format!("aug.{key}"), format!("{v} is not between 0 and 1")));
            }
        }
        for (key, v) in [("degrees", self.degrees), ("shear", self.shear)] {
            if !v.is_finite() {
                return Err((format!("aug.{key}"), format!("{v} is not a finite number")));
            }
        }
        Ok(())
    }
}

/// The training pipeline of Ultralytics' `v8_transforms` for `imgsz`:
/// Mosaic → RandomPerspective (output `imgsz` square) → MixUp (whose other sample goes
/// through the same Mosaic + RandomPerspective) → RandomHSV → vertical flip → horizontal flip.
///
/// `mosaic_closed` is the last `close_mosaic` epochs: as Ultralytics' `close_mosaic` it sets
/// mosaic and mixup to 0, so the loaded image (long side `imgsz`) goes straight to
/// RandomPerspective, which centres it in the `imgsz` square output (what a LetterBox followed
/// by a border-0 perspective did in older releases).
pub fn train_transforms(
    cfg: &AugConfig,
    imgsz: u32,
    mosaic_closed: bool,
) -> Vec<Box<dyn Transform>> {
    let (mosaic_p, mixup_p) = if mosaic_closed {
        (0.0, 0.0)
    } else {
        (cfg.mosaic, cfg.mixup)
    };
    let mosaic = Mosaic { imgsz, p: mosaic_p };
    let affine = RandomPerspective {
        degrees: cfg.degrees,
        translate: cfg.translate,
        scale: cfg.scale,
        shear: cfg.shear,
        perspective: cfg.perspective,
        size: Some(ImageSize {
            width: imgsz,
            height: imgsz,
        }),
    };
    vec![
        Box::new(mosaic),
        Box::new(affine),
        Box::new(MixUp {
            p: mixup_p,
            pre: vec![Box::new(mosaic), Box::new(affine)],
        }),
        Box::new(RandomHsv {
            hgain: cfg.hsv_h,
            sgain: cfg.hsv_s,
            vgain: cfg.hsv_v,
        }),
        Box::new(RandomFlip {
            p: cfg.flipud,
            direction: FlipDirection::Vertical,
        }),
        Box::new(RandomFlip {
            p: cfg.fliplr,
            direction: FlipDirection::Horizontal,
        }),
    ]
}

/// The RNG of sample `index` in `epoch` for a run `seed`: ChaCha8 keyed by the three numbers
/// (no hashing, so no two samples share a stream).
pub fn sample_rng(seed: u64, epoch: u64, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&epoch.to_le_bytes());
    key[16..24].copy_from_slice(&index.to_le_bytes());
    key[24..].copy_from_slice(b"yolo-aug");
    ChaCha8Rng::from_seed(key)
}

/// Sample `index` of `src` through `transforms`, with [`sample_rng`]`(seed, epoch, index)`.
pub fn augment(
    transforms: &[Box<dyn Transform>],
    src: &dyn SampleSource,
    index: usize,
    seed: u64,
    epoch: u64,
) -> AugSample {
    let mut rng = sample_rng(seed, epoch, index as u64);
    transforms
        .iter()
        .fold(src.get(index), |s, t| t.apply(s, &mut rng, src))
}

/// [`augment`] for each of `indices`, in parallel (rayon), in order. The result depends only on
/// the arguments, not on the thread count.
pub fn augment_batch(
    transforms: &[Box<dyn Transform>],
    src: &dyn SampleSource,
    indices: &[usize],
    seed: u64,
    epoch: u64,
) -> Vec<AugSample> {
    indices
        .par_iter()
        .map(|&i| augment(transforms, src, i, seed, epoch))
        .collect()
}

//! `Mosaic`: four samples around a random centre on a 2s x 2s canvas (Ultralytics `_mosaic4`,
//! `Mosaic(n=4)` in 8.4.190).

use image::RgbImage;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{uniform, AugSample, BoxLabel, SampleSource, Transform, FILL};

/// Four-image mosaic. The output is `2 * imgsz` square; [`RandomPerspective`](super::RandomPerspective)
/// with an output size of `imgsz` crops it back (Ultralytics' `mosaic_border` of `-imgsz / 2`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mosaic {
    /// Target image size `s`; the canvas is `2s x 2s`.
    pub imgsz: u32,
    /// Probability of applying (`hyp.mosaic`, default 1.0).
    pub p: f64,
}

impl Mosaic {
    /// Draws the centre `(xc, yc)`, each `int(uniform(-b, 2s + b))` with Ultralytics' border
    /// `b = -s // 2` (floor division: `[s/2, 3s/2]` for even `s`); y is drawn first.
    pub fn draw_center(&self, rng: &mut ChaCha8Rng) -> (i64, i64) {
        let s = self.imgsz as f64;
        let half = self.imgsz.div_ceil(2) as f64;
        let yc = uniform(rng, half, 2.0 * s - half) as i64;
        let xc = uniform(rng, half, 2.0 * s - half) as i64;
        (xc, yc)
    }

    /// The mosaic of `tiles` (top-left, top-right, bottom-left, bottom-right; the first is the
    /// sample itself) around the centre `(xc, yc)`: each image placed with a corner on the
    /// centre, boxes shifted by its placement, clipped to the canvas, zero-area boxes dropped.
    /// Deterministic; [`Transform::apply`] draws the centre and the three other samples.
    pub fn compose(&self, tiles: [&AugSample; 4], (xc, yc): (i64, i64)) -> AugSample {
        let s2 = 2 * self.imgsz as i64;
        let mut canvas = RgbImage::from_pixel(s2 as u32, s2 as u32, image::Rgb([FILL; 3]));
        let mut boxes = Vec::new();
        for (i, tile) in tiles.iter().enumerate() {
            let (w, h) = (tile.image.width() as i64, tile.image.height() as i64);
            // Canvas region a = (x1a, y1a, x2a, y2a) and tile region b of the same size.
            let (x1a, y1a, x2a, y2a, x1b, y1b) = match i {
                0 => {
                    let (x1a, y1a) = ((xc - w).max(0), (yc - h).max(0));
                    (x1a, y1a, xc, yc, w - (xc - x1a), h - (yc - y1a))
                }
                1 => {
                    let (y1a, x2a) = ((yc - h).max(0), (xc + w).min(s2));
                    (xc, y1a, x2a, yc, 0, h - (yc - y1a))
                }
                2 => {
                    let (x1a, y2a) = ((xc - w).max(0), (yc + h).min(s2));
                    (x1a, yc, xc, y2a, w - (xc - x1a), 0)
                }
                _ => (xc, yc, (xc + w).min(s2), (yc + h).min(s2), 0, 0),
            };
            copy_region(&tile.image, &mut canvas, (x1b, y1b), (x1a, y1a, x2a, y2a));
            let (padw, padh) = ((x1a - x1b) as f32, (y1a - y1b) as f32);
            boxes.extend(tile.boxes.iter().map(|b| BoxLabel {
                class: b.class,
                xyxy: [
                    b.xyxy[0] + padw,
                    b.xyxy[1] + padh,
                    b.xyxy[2] + padw,
                    b.xyxy[3] + padh,
                ],
            }));
        }
        let side = s2 as f32;
        for b in &mut boxes {
            b.clip(side, side);
        }
        boxes.retain(|b| b.width() * b.height() > 0.0);
        AugSample {
            image: canvas,
            boxes,
        }
    }
}

/// Copies the tile from `(x1b, y1b)` into the canvas rectangle `a` (row by row).
fn copy_region(
    src: &RgbImage,
    dst: &mut RgbImage,
    (x1b, y1b): (i64, i64),
    a: (i64, i64, i64, i64),
) {
    let (x1a, y1a, x2a, y2a) = a;
    if x2a <= x1a || y2a <= y1a {
        return;
    }
    let (sw, dw) = (src.width() as usize * 3, dst.width() as usize * 3);
    let n = (x2a - x1a) as usize * 3;
    let (src, dst) = (src.as_raw(), &mut **dst);
    for dy in 0..(y2a - y1a) as usize {
        let so = (y1b as usize + dy) * sw + x1b as usize * 3;
        let d = (y1a as usize + dy) * dw + x1a as usize * 3;
        dst[d..d + n].copy_from_slice(&src[so..so + n]);
    }
}

impl Transform for Mosaic {
    /// With probability `p`: three more samples drawn uniformly from `src` (Ultralytics picks
    /// from its recent-image buffer, or uniformly with `cache="ram"`), then [`Mosaic::compose`].
    fn apply(&self, s: AugSample, rng: &mut ChaCha8Rng, src: &dyn SampleSource) -> AugSample {
        if rng.random::<f64>() >= self.p || src.is_empty() {
            return s;
        }
        let others: Vec<AugSample> = (0..3)
            .map(|_| src.get(rng.random_range(0..src.len())))
            .collect();
        let center = self.draw_center(rng);
        self.compose([&s, &others[0], &others[1], &others[2]], center)
    }
}

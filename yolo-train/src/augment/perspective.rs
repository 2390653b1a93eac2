//! `RandomPerspective`: Ultralytics' random affine / perspective warp with its box transform
//! and `box_candidates` filter.

use image::RgbImage;
use rand_chacha::ChaCha8Rng;
use yolo_core::data::image::ImageSize;

use super::{uniform, AugSample, SampleSource, Transform, FILL};

/// A 3x3 matrix, rows first, in `f32` as Ultralytics builds it (`np.float32`).
pub type Mat3 = [[f32; 3]; 3];

/// Random rotation, scale, shear, translation and perspective (Ultralytics `RandomPerspective`,
/// 8.4.190). The transform is `M = T @ S @ R @ P @ C`: C moves the input centre to the origin,
/// P is the perspective, R rotation and scale, S shear, T moves the origin to a random point
/// near the centre of the output.
///
/// The output has `size` (Ultralytics' `size=(imgsz, imgsz)`); after [`Mosaic`](super::Mosaic)
/// that crops the `2s` canvas back to `s`, which older releases expressed as a border of `-s/2`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomPerspective {
    /// Rotation range in degrees, `uniform(-degrees, degrees)` (default 0).
    pub degrees: f64,
    /// Translation as a fraction of the output size, centre at `uniform(0.5 ± translate)` (0.1).
    pub translate: f64,
    /// Scale gain, `uniform(1 - scale, 1 + scale)` (0.5).
    pub scale: f64,
    /// Shear range in degrees, for x and for y (0).
    pub shear: f64,
    /// Perspective range, `uniform(-perspective, perspective)` for x and y (0); when non-zero
    /// the warp and the box transform divide by the projective coordinate.
    pub perspective: f64,
    /// Output size; `None` keeps the input size.
    pub size: Option<ImageSize>,
}

impl Default for RandomPerspective {
    fn default() -> Self {
        Self {
            degrees: 0.0,
            translate: 0.1,
            scale: 0.5,
            shear: 0.0,
            perspective: 0.0,
            size: None,
        }
    }
}

/// The random values of one [`RandomPerspective`], in Ultralytics' draw order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AffineDraws {
    /// `P[2, 0]`, `P[2, 1]`.
    pub perspective: [f64; 2],
    /// Rotation in degrees.
    pub angle: f64,
    /// Scale factor.
    pub scale: f64,
    /// Shear angles in degrees, x then y.
    pub shear: [f64; 2],
    /// Position of the input centre in the output, as fractions of the output width / height.
    pub translate: [f64; 2],
}

impl RandomPerspective {
    /// Draws the eight values in Ultralytics' order: perspective x, y; angle; scale; shear x,
    /// y; translation x, y.
    pub fn draw(&self, rng: &mut ChaCha8Rng) -> AffineDraws {
        let mut u = |a: f64, b: f64| uniform(rng, a, b);
        let perspective = [
            u(-self.perspective, self.perspective),
            u(-self.perspective, self.perspective),
        ];
        let angle = u(-self.degrees, self.degrees);
        let scale = u(1.0 - self.scale, 1.0 + self.scale);
        let shear = [u(-self.shear, self.shear), u(-self.shear, self.shear)];
        let t = self.translate;
        let translate = [u(0.5 - t, 0.5 + t), u(0.5 - t, 0.5 + t)];
        AffineDraws {
            perspective,
            angle,
            scale,
            shear,
            translate,
        }
    }

    /// Applies the transform for given draws: warps the image (bilinear, border 114), maps
    /// every box through its four corners, clips to the output and keeps the boxes that pass
    /// [`box_candidates`] against the input boxes times the scale.
    pub fn apply_with(&self, s: AugSample, d: &AffineDraws) -> AugSample {
        let input = ImageSize::of(&s.image);
        let out = self.size.unwrap_or(input);
        let m = affine_matrix(d, input, out);
        let projective = self.perspective != 0.0;
        let image = warp(&s.image, &m, out, projective);
        let (ow, oh) = (out.width as f32, out.height as f32);
        let k = d.scale as f32;
        let boxes = s
            .boxes
            .iter()
            .filter_map(|b| {
                let mut n = *b;
                n.xyxy = transform_box(b.xyxy, &m, projective);
                n.clip(ow, oh);
                let scaled = b.xyxy.map(|v| v * k);
                box_candidates(scaled, n.xyxy, 2.0, 100.0, 0.1).then_some(n)
            })
            .collect();
        AugSample { image, boxes }
    }
}

impl Transform for RandomPerspective {
    fn apply(&self, s: AugSample, rng: &mut ChaCha8Rng, _src: &dyn SampleSource) -> AugSample {
        let d = self.draw(rng);
        self.apply_with(s, &d)
    }
}

fn matmul(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut c = [[0.0f32; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            c[i][j] = a[i][0] * b[0][j] + a[i][1] * b[1][j] + a[i][2] * b[2][j];
        }
    }
    c
}

/// Ultralytics' `M = T @ S @ R @ P @ C` for the draws `d`, an input of `input` and an output of
/// `out` pixels, in `f32` as `_compute_affine_matrix` builds it (R from cv2's
/// `getRotationMatrix2D` in double, rounded to `f32`).
pub fn affine_matrix(d: &AffineDraws, input: ImageSize, out: ImageSize) -> Mat3 {
    let eye = || [[1.0f32, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    let mut c = eye();
    c[0][2] = -(input.width as f64 / 2.0) as f32;
    c[1][2] = -(input.height as f64 / 2.0) as f32;
    let mut p = eye();
    p[2][0] = d.perspective[0] as f32;
    p[2][1] = d.perspective[1] as f32;
    let a = d.angle.to_radians();
    let (alpha, beta) = (a.cos() * d.scale, a.sin() * d.scale);
    let r = [
        [alpha as f32, beta as f32, 0.0],
        [-beta as f32, alpha as f32, 0.0],
        [0.0, 0.0, 1.0],
    ];
    let mut s = eye();
    s[0][1] = (d.shear[0] * std::f64::consts::PI / 180.0).tan() as f32;
    s[1][0] = (d.shear[1] * std::f64::consts::PI / 180.0).tan() as f32;
    let mut t = eye();
    t[0][2] = (d.translate[0] * out.width as f64) as f32;
    t[1][2] = (d.translate[1] * out.height as f64) as f32;
    matmul(&matmul(&matmul(&matmul(&t, &s), &r), &p), &c)
}

/// Maps a box through `m` by its four corners and returns their bounds (Ultralytics
/// `apply_bboxes`); `projective` divides by the third coordinate.
pub fn transform_box(xyxy: [f32; 4], m: &Mat3, projective: bool) -> [f32; 4] {
    let [x1, y1, x2, y2] = xyxy;
    let mut out = [
        f32::INFINITY,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NEG_INFINITY,
    ];
    for (x, y) in [(x1, y1), (x2, y2), (x1, y2), (x2, y1)] {
        let mut u = m[0][0] * x + m[0][1] * y + m[0][2];
        let mut v = m[1][0] * x + m[1][1] * y + m[1][2];
        if projective {
            let w = m[2][0] * x + m[2][1] * y + m[2][2];
            u /= w;
            v /= w;
        }
        out = [out[0].min(u), out[1].min(v), out[2].max(u), out[3].max(v)];
    }
    out
}

/// Ultralytics' `box_candidates`: whether a box that was `box1` before augmentation (already
/// multiplied by the scale) and is `box2` after it is kept: both sides of `box2` above `wh_thr`
/// pixels, its area above `area_thr` of `box1`'s, its aspect ratio below `ar_thr`
/// (eps 1e-16; `f32` as Ultralytics' arrays). Defaults: 2, 100, 0.1.
pub fn box_candidates(
    box1: [f32; 4],
    box2: [f32; 4],
    wh_thr: f32,
    ar_thr: f32,
    area_thr: f32,
) -> bool {
    const EPS: f32 = 1e-16;
    let (w1, h1) = (box1[2] - box1[0], box1[3] - box1[1]);
    let (w2, h2) = (box2[2] - box2[0], box2[3] - box2[1]);
    let ar = (w2 / (h2 + EPS)).max(h2 / (w2 + EPS));
    w2 > wh_thr && h2 > wh_thr && w2 * h2 / (w1 * h1 + EPS) > area_thr && ar < ar_thr
}

/// Inverse of a 3x3 matrix in `f64` (the warp maps output pixels back to the input).
fn invert(m: &Mat3) -> [[f64; 3]; 3] {
    let a = m.map(|r| r.map(f64::from));
    let det = a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
        - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
        + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]);
    let d = if det != 0.0 { 1.0 / det } else { 0.0 };
    // The two indices other than k, in order.
    let others = |k: usize| match k {
        0 => [1, 2],
        1 => [0, 2],
        _ => [0, 1],
    };
    let mut inv = [[0.0; 3]; 3];
    for (i, row) in inv.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            // Cofactor of (j, i): drop row j and column i.
            let ([r0, r1], [c0, c1]) = (others(j), others(i));
            let minor = a[r0][c0] * a[r1][c1] - a[r0][c1] * a[r1][c0];
            let sign = if (i + j) % 2 == 0 { 1.0 } else { -1.0 };
            *v = sign * minor * d;
        }
    }
    inv
}

/// Warps `img` by `m` (input to output pixel coordinates, pixel centres at integers as cv2)
/// into an image of `out`, bilinear, with the constant border 114: cv2 `warpAffine` (or
/// `warpPerspective` when `projective`) with `borderValue=114`. Source coordinates are
/// computed in `f32` from the inverse matrix (inverted in `f64`) and the four taps blended in
/// `f32`, rounded half to even, as cv2 5.0's float warp kernels; bit-exact with cv2 5.0 on the
/// fixtures of `tests/augment.rs`.
pub fn warp(img: &RgbImage, m: &Mat3, out: ImageSize, projective: bool) -> RgbImage {
    let inv = invert(m).map(|r| r.map(|v| v as f32));
    let (sw, sh) = (img.width() as i64, img.height() as i64);
    let (ow, oh) = (out.width as usize, out.height as usize);
    let src = img.as_raw();
    let mut dst = vec![FILL; ow * oh * 3];
    let fill = [FILL as f32; 3];
    let tap = |x: i64, y: i64| -> [f32; 3] {
        if x >= 0 && y >= 0 && x < sw && y < sh {
            let i = (y * sw + x) as usize * 3;
            [src[i] as f32, src[i + 1] as f32, src[i + 2] as f32]
        } else {
            fill
        }
    };
    for (y, row) in dst.chunks_exact_mut(ow * 3).enumerate() {
        let yf = y as f32;
        let (bx, by, bw) = (
            inv[0][1] * yf + inv[0][2],
            inv[1][1] * yf + inv[1][2],
            inv[2][1] * yf + inv[2][2],
        );
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let xf = x as f32;
            let (mut sx, mut sy) = (inv[0][0] * xf + bx, inv[1][0] * xf + by);
            if projective {
                let w = inv[2][0] * xf + bw;
                let w = if w != 0.0 { 1.0 / w } else { 0.0 };
                sx *= w;
                sy *= w;
            }
            let (fx, fy) = (sx.floor(), sy.floor());
            if !(fx >= -1.0 && fy >= -1.0 && fx < sw as f32 && fy < sh as f32) {
                continue; // every tap outside: the border value, already there
            }
            let (ix, iy) = (fx as i64, fy as i64);
            let (ax, ay) = (sx - fx, sy - fy);
            let (p00, p01, p10, p11) = (
                tap(ix, iy),
                tap(ix + 1, iy),
                tap(ix, iy + 1),
                tap(ix + 1, iy + 1),
            );
            for c in 0..3 {
                let top = p00[c] + ax * (p01[c] - p00[c]);
                let bottom = p10[c] + ax * (p11[c] - p10[c]);
                let v = top + ay * (bottom - top);
                px[c] = v.round_ties_even().clamp(0.0, 255.0) as u8;
            }
        }
    }
    RgbImage::from_raw(out.width, out.height, dst).expect("buffer has the output size")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_draws_centre_the_input() {
        let d = AffineDraws {
            perspective: [0.0; 2],
            angle: 0.0,
            scale: 1.0,
            shear: [0.0; 2],
            translate: [0.5, 0.5],
        };
        let input = ImageSize {
            width: 20,
            height: 10,
        };
        let out = ImageSize {
            width: 30,
            height: 30,
        };
        let m = affine_matrix(&d, input, out);
        assert_eq!(m, [[1.0, 0.0, 5.0], [0.0, 1.0, 10.0], [0.0, 0.0, 1.0]]);
        assert_eq!(
            transform_box([1.0, 2.0, 3.0, 4.0], &m, false),
            [6.0, 12.0, 8.0, 14.0]
        );
        let inv = invert(&m);
        assert_eq!(inv[0][2], -5.0);
        assert_eq!(inv[1][2], -10.0);
        // A pure shift moves pixels and fills the rest with 114.
        let img = RgbImage::from_pixel(20, 10, image::Rgb([7, 8, 9]));
        let w = warp(&img, &m, out, false);
        assert_eq!(w.get_pixel(5, 10).0, [7, 8, 9]);
        assert_eq!(w.get_pixel(24, 19).0, [7, 8, 9]);
        assert_eq!(w.get_pixel(4, 10).0, [FILL; 3]);
        assert_eq!(w.get_pixel(25, 20).0, [FILL; 3]);
    }

    #[test]
    fn box_candidates_thresholds() {
        let b = [0.0, 0.0, 10.0, 10.0];
        assert!(box_candidates(b, [0.0, 0.0, 2.5, 10.0], 2.0, 100.0, 0.1));
        assert!(!box_candidates(b, [0.0, 0.0, 2.0, 10.0], 2.0, 100.0, 0.1));
        assert!(!box_candidates(b, [0.0, 0.0, 3.0, 3.0], 2.0, 100.0, 0.1));
    }
}

//! `RandomHSV`: Ultralytics' look-up-table colour jitter in OpenCV's 8-bit HSV space.
//!
//! [`rgb_to_hsv`] and [`hsv_to_rgb`] follow OpenCV's `COLOR_BGR2HSV` / `COLOR_HSV2BGR` for
//! `uint8` images (hue `0..180`, saturation and value `0..=255`): the forward direction in
//! OpenCV's fixed point with its division tables, the backward one in `f32` as OpenCV converts
//! 8-bit HSV, truncating to `u8` as cv2 5.0's SIMD path does. The channel meaning is the same as cv2's, so running them on RGB
//! gives what cv2 gives on the same picture in BGR.

use image::RgbImage;
use rand_chacha::ChaCha8Rng;

use super::{uniform, AugSample, SampleSource, Transform};

/// Fraction bits of OpenCV's RGB to HSV division tables (`hsv_shift`).
const HSV_SHIFT: u32 = 12;

/// Random hue, saturation and value gains (Ultralytics `RandomHSV`): each gain
/// `uniform(-1, 1) * {h,s,v}gain`, applied through [`hsv_luts`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomHsv {
    /// Hue gain (`hsv_h`, default 0.015), a fraction of the hue circle.
    pub hgain: f64,
    /// Saturation gain (`hsv_s`, 0.7).
    pub sgain: f64,
    /// Value gain (`hsv_v`, 0.4).
    pub vgain: f64,
}

impl Default for RandomHsv {
    fn default() -> Self {
        Self {
            hgain: 0.015,
            sgain: 0.7,
            vgain: 0.4,
        }
    }
}

impl Transform for RandomHsv {
    /// Draws three gains (nothing when all gains are 0, as Ultralytics) and applies them.
    fn apply(&self, mut s: AugSample, rng: &mut ChaCha8Rng, _src: &dyn SampleSource) -> AugSample {
        if self.hgain == 0.0 && self.sgain == 0.0 && self.vgain == 0.0 {
            return s;
        }
        let r = [
            uniform(rng, -1.0, 1.0) * self.hgain,
            uniform(rng, -1.0, 1.0) * self.sgain,
            uniform(rng, -1.0, 1.0) * self.vgain,
        ];
        apply_hsv_gains(&mut s.image, r);
        s
    }
}

/// Ultralytics' three tables for the gains `r` (`[hue, saturation, value]`, the `r` of
/// `RandomHSV.apply_image`): hue `(x + r0 * 180) mod 180`, saturation and value
/// `clip(x * (1 + r), 0, 255)`, truncated to `u8`; saturation 0 stays 0 (8.3.79+).
pub fn hsv_luts(r: [f64; 3]) -> [[u8; 256]; 3] {
    let mut lut = [[0u8; 256]; 3];
    for x in 0..256 {
        let xf = x as f64;
        // np.remainder: the result takes the sign of the divisor.
        let mut h = (xf + r[0] * 180.0) % 180.0;
        if h != 0.0 && h < 0.0 {
            h += 180.0;
        }
        lut[0][x] = h as u8;
        lut[1][x] = (xf * (r[1] + 1.0)).clamp(0.0, 255.0) as u8;
        lut[2][x] = (xf * (r[2] + 1.0)).clamp(0.0, 255.0) as u8;
    }
    lut[1][0] = 0;
    lut
}

/// Applies the gains `r` to an RGB image in place: RGB to HSV, the [`hsv_luts`], back to RGB.
pub fn apply_hsv_gains(img: &mut RgbImage, r: [f64; 3]) {
    let lut = hsv_luts(r);
    let t = Tables::new();
    for px in img.pixels_mut() {
        let [h, s, v] = t.rgb_to_hsv(px.0);
        px.0 = hsv_to_rgb_px([lut[0][h as usize], lut[1][s as usize], lut[2][v as usize]]);
    }
}

/// OpenCV's division tables for 8-bit RGB to HSV (hue range 180).
struct Tables {
    sdiv: [i32; 256],
    hdiv: [i32; 256],
}

impl Tables {
    fn new() -> Self {
        let mut sdiv = [0i32; 256];
        let mut hdiv = [0i32; 256];
        for i in 1..256 {
            sdiv[i] = ((255 << HSV_SHIFT) as f64 / i as f64).round_ties_even() as i32;
            hdiv[i] = ((180 << HSV_SHIFT) as f64 / (6.0 * i as f64)).round_ties_even() as i32;
        }
        Self { sdiv, hdiv }
    }

    fn rgb_to_hsv(&self, [r, g, b]: [u8; 3]) -> [u8; 3] {
        let (r, g, b) = (r as i32, g as i32, b as i32);
        let v = r.max(g).max(b);
        let diff = v - r.min(g).min(b);
        let half = 1 << (HSV_SHIFT - 1);
        let s = (diff * self.sdiv[v as usize] + half) >> HSV_SHIFT;
        let h = if v == r {
            g - b
        } else if v == g {
            b - r + 2 * diff
        } else {
            r - g + 4 * diff
        };
        let mut h = (h * self.hdiv[diff as usize] + half) >> HSV_SHIFT;
        if h < 0 {
            h += 180;
        }
        [h.clamp(0, 255) as u8, s as u8, v as u8]
    }
}

/// OpenCV `COLOR_RGB2HSV` for `u8` (hue `0..180`).
pub fn rgb_to_hsv(img: &RgbImage) -> RgbImage {
    let t = Tables::new();
    let mut out = img.clone();
    for px in out.pixels_mut() {
        px.0 = t.rgb_to_hsv(px.0);
    }
    out
}

/// OpenCV `COLOR_HSV2RGB` for `u8` (hue `0..180`; 180 wraps to 0).
pub fn hsv_to_rgb(img: &RgbImage) -> RgbImage {
    let mut out = img.clone();
    for px in out.pixels_mut() {
        px.0 = hsv_to_rgb_px(px.0);
    }
    out
}

/// One pixel of OpenCV's 8-bit HSV to RGB as cv2 5.0's SIMD path computes it: `f32` with
/// `s, v` scaled by `1/255`, the hue sector table, `1 - s * h` fused (one rounding), results
/// times 255 truncated. cv2 runs that path on blocks of 32 pixels of a row and a scalar
/// fallback (which rounds instead) on the rest, so rows whose width is a multiple of 32 (320,
/// 640) match cv2 exactly; in the last `width % 32` pixels of other rows cv2 gives a level
/// more on some pixels.
fn hsv_to_rgb_px([h, s, v]: [u8; 3]) -> [u8; 3] {
    let (s, v) = (s as f32 * (1.0 / 255.0), v as f32 * (1.0 / 255.0));
    let (r, g, b) = if s == 0.0 {
        (v, v, v)
    } else {
        const SECTORS: [[usize; 3]; 6] = [
            [1, 3, 0],
            [1, 0, 2],
            [3, 0, 1],
            [0, 2, 1],
            [0, 1, 3],
            [2, 1, 0],
        ];
        let mut h = h as f32 * (6.0f32 / 180.0);
        while h < 0.0 {
            h += 6.0;
        }
        while h >= 6.0 {
            h -= 6.0;
        }
        let mut sector = h.floor() as usize;
        h -= sector as f32;
        if sector >= 6 {
            sector = 0;
            h = 0.0;
        }
        // `1 - s * x` with one rounding (a fused multiply-add; exact in f64 up to a double
        // rounding that does not occur for these operands in practice).
        let one_minus = |x: f32| (1.0 - s as f64 * x as f64) as f32;
        let tab = [v, v * (1.0 - s), v * one_minus(h), v * one_minus(1.0 - h)];
        let [bi, gi, ri] = SECTORS[sector];
        (tab[ri], tab[gi], tab[bi])
    };
    [r, g, b].map(|c| (c * 255.0) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luts_follow_ultralytics() {
        let id = hsv_luts([0.0; 3]);
        assert!((0..256).all(|x| id[1][x] == x as u8 && id[2][x] == x as u8));
        assert_eq!(id[0][179], 179);
        assert_eq!(id[0][180], 0); // hue wraps at 180
        let l = hsv_luts([-0.1, 0.5, -0.5]);
        assert_eq!(l[0][0], 162); // (0 - 18) mod 180
        assert_eq!(l[1][0], 0);
        assert_eq!(l[1][200], 255);
        assert_eq!(l[2][201], 100); // 100.5 truncated
    }

    #[test]
    fn primaries_round_trip() {
        let t = Tables::new();
        for (rgb, hsv) in [
            ([255, 0, 0], [0, 255, 255]),
            ([0, 255, 0], [60, 255, 255]),
            ([0, 0, 255], [120, 255, 255]),
            ([128, 128, 128], [0, 0, 128]),
        ] {
            assert_eq!(t.rgb_to_hsv(rgb), hsv);
            assert_eq!(hsv_to_rgb_px(hsv), rgb);
        }
    }
}

//! Letterbox resize with the transform back to the original image.
//!
//! [`LetterBox`] follows Ultralytics' `data/augment.py LetterBox` (scale by one ratio, pad to the
//! target or to a stride multiple with the value 114) and returns a typed
//! [`LetterboxTransform`] that maps labels into the letterboxed image and predicted boxes back
//! to the original, as Ultralytics' `utils/ops.py scale_boxes` does.
//!
//! [`resize_bilinear`] reproduces OpenCV's `cv2.resize(.., INTER_LINEAR)` for 8-bit images bit
//! for bit (checked against cv2 5.0 in `tests/letterbox.rs`); [`resize_area`] reproduces
//! `INTER_AREA` for integer downscale factors.

use image::{Rgb, RgbImage};

use crate::{CoreError, Result};

/// Fraction bits of OpenCV's fixed-point resize coefficients (`INTER_RESIZE_COEF_BITS`).
const COEF_BITS: u32 = 11;
/// `1 << COEF_BITS`: the fixed-point one.
const COEF_SCALE: f32 = (1 << COEF_BITS) as f32;

/// Source index and fixed-point weights `[w0, w1]` (summing to 2048) of one output coordinate.
#[derive(Debug, Clone, Copy)]
struct Tap {
    src: usize,
    next: usize,
    weights: [i32; 2],
}

/// OpenCV's linear interpolation table for one axis (`cv::resize`, `INTER_LINEAR`, 8U).
///
/// Half-pixel centres `f = (d + 0.5) * scale - 0.5` in double, then float as cv2 does; the
/// weights are `saturate_cast<short>((1 - f) * 2048)` and `(f * 2048)`, which round half to even.
/// Out-of-range taps read the edge pixel. cv2 treats the axes differently there: along x
/// (`clamp_weights`) it moves the tap onto the edge pixel with weights `[2048, 0]`; along y it
/// keeps the weights and clamps the row indices, which rounds differently in the vertical pass.
fn linear_taps(src_len: usize, dst_len: usize, clamp_weights: bool) -> Vec<Tap> {
    let scale = 1.0 / (dst_len as f64 / src_len as f64);
    let last = src_len as i64 - 1;
    (0..dst_len)
        .map(|d| {
            let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let s = f.floor();
            let mut frac = f - s;
            let mut s = s as i64;
            if clamp_weights && s < 0 {
                frac = 0.0;
                s = 0;
            }
            if clamp_weights && s >= last {
                frac = 0.0;
                s = last;
            }
            let w0 = ((1.0 - frac) * COEF_SCALE).round_ties_even() as i32;
            let w1 = (frac * COEF_SCALE).round_ties_even() as i32;
            Tap {
                src: s.clamp(0, last) as usize,
                next: (s + 1).clamp(0, last) as usize,
                weights: [w0, w1],
            }
        })
        .collect()
}

/// Bilinear resize of an RGB8 image, identical to OpenCV's
/// `cv2.resize(img, (new_width, new_height), interpolation=cv2.INTER_LINEAR)`.
///
/// OpenCV's 8-bit path: a horizontal pass into `int` with 11-bit weights, then a vertical pass
/// evaluated as its SIMD kernel does (`((b0*(s0>>4))>>16) + ((b1*(s1>>4))>>16) + 2) >> 2`,
/// saturated to `u8`), which cv2 5.0 uses for every pixel. Resizing to the same size copies.
///
/// # Panics
/// If the image or the target size is empty.
pub fn resize_bilinear(img: &RgbImage, new_width: u32, new_height: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    assert!(
        w > 0 && h > 0 && new_width > 0 && new_height > 0,
        "resize_bilinear: empty image or target ({w}x{h} -> {new_width}x{new_height})"
    );
    if (w, h) == (new_width, new_height) {
        return img.clone();
    }
    let (dw, dh) = (new_width as usize, new_height as usize);
    let mut dst = vec![0u8; dw * dh * 3];
    resize_bilinear_into(img, dw, dh, &mut dst, 0, dw * 3, simd_available());
    RgbImage::from_raw(new_width, new_height, dst).expect("buffer has the image size")
}

/// [`resize_bilinear`] of a non-empty `img` to `dw x dh` (> 0) into a window of `dst`: output
/// row `dy` goes to `dst[offset + dy * stride..][..dw * 3]`, so a letterbox resizes straight
/// into its padded canvas.
///
/// Two source rows at a time: the horizontal pass of each source row the output needs (each
/// once: rows are visited in order) is kept as the vertical pass reads it, `>> 4` in `i16`
/// (at most 255 * 2048 >> 4 = 32640), and the vertical pass is `v_mul_hi` of int16 lanes as in
/// cv2's kernel ([`vertical_pass`]). With AVX2 both passes run 8 pixels at a time
/// ([`avx2`]): the kept rows then hold 4 lanes per pixel (the 4th unused), so that a pixel's
/// two source pixels are one 32-bit gather each; the arithmetic, and so every output byte, is
/// the same.
fn resize_bilinear_into(img: &RgbImage, dw: usize, dh: usize, dst: &mut [u8], offset: usize, stride: usize, simd: bool) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let src = img.as_raw();
    // Per output column: the byte offsets of its two source pixels and their weights.
    let xs: Vec<(usize, usize, i32, i32)> = linear_taps(w, dw, true)
        .iter()
        .map(|t| (t.src * 3, t.next * 3, t.weights[0], t.weights[1]))
        .collect();
    // Lanes per pixel in the kept rows.
    let px = if simd { 4 } else { 3 };
    #[cfg(target_arch = "x86_64")]
    let taps = simd.then(|| avx2::Taps::new(&xs));
    let hpass = |y: usize, out: &mut [i16]| {
        let row = y * w * 3;
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if let Some(taps) = &taps {
            // SAFETY: AVX2 is available (`simd`); `out` holds `4 * dw` lanes.
            done = unsafe { avx2::hpass(src, row, taps, out) };
        }
        for (x, &(a, b, w0, w1)) in xs.iter().enumerate().skip(done) {
            let (pa, pb) = (&src[row + a..row + a + 3], &src[row + b..row + b + 3]);
            for c in 0..3 {
                out[x * px + c] = ((pa[c] as i32 * w0 + pb[c] as i32 * w1) >> 4) as i16;
            }
        }
    };
    let mut rows = [vec![0i16; dw * px], vec![0i16; dw * px]];
    let mut held = [usize::MAX; 2];
    for (dy, t) in linear_taps(h, dh, false).iter().enumerate() {
        if held[0] != t.src {
            if held[1] == t.src {
                rows.swap(0, 1);
                held.swap(0, 1);
            } else {
                hpass(t.src, &mut rows[0]);
                held[0] = t.src;
            }
        }
        if held[1] != t.next {
            hpass(t.next, &mut rows[1]);
            held[1] = t.next;
        }
        let out = &mut dst[offset + dy * stride..][..dw * 3];
        let (b0, b1) = (t.weights[0] as i16, t.weights[1] as i16);
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: AVX2 is available (`simd` is only set where it is); the rows hold 4
            // lanes per pixel of `out`'s 3.
            unsafe { avx2::vertical_pass(out, &rows[0], &rows[1], b0, b1) };
            continue;
        }
        vertical_pass(out, &rows[0], &rows[1], b0, b1);
    }
}

/// Whether [`resize_bilinear_into`] can take its AVX2 path on this CPU.
fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return avx2::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// cv2's vertical rounding of one value: `((mulhi(a, b0) + mulhi(b, b1) + 2) >> 2)` saturated
/// to `u8`, where `mulhi(x, k) = (x * k) >> 16`.
fn vertical_value(a: i16, b: i16, b0: i16, b1: i16) -> u8 {
    let mulhi = |x: i16, k: i16| ((x as i32 * k as i32) >> 16) as i16;
    let v = mulhi(a, b0) + mulhi(b, b1);
    ((v + 2) >> 2).clamp(0, 255) as u8
}

/// Both passes with AVX2, 8 output pixels at a time, on rows of 4 lanes per pixel.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Whether the CPU has AVX2 (checked once).
    pub fn available() -> bool {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2"))
    }

    /// The horizontal taps as the kernel reads them: per output pixel, the byte offsets (in
    /// the row) of its two source pixels and the weights `w0 | w1 << 16`.
    pub struct Taps {
        a: Vec<i32>,
        b: Vec<i32>,
        w: Vec<i32>,
    }

    impl Taps {
        pub fn new(xs: &[(usize, usize, i32, i32)]) -> Self {
            Self {
                a: xs.iter().map(|t| t.0 as i32).collect(),
                b: xs.iter().map(|t| t.1 as i32).collect(),
                w: xs.iter().map(|t| (t.2 & 0xffff) | (t.3 << 16)).collect(),
            }
        }
    }

    /// The horizontal pass of the source row starting at byte `row` of `src`, for the output
    /// pixels from 0 while 8 at a time fit: `out[4x + c] = (p_a[c] * w0 + p_b[c] * w1) >> 4`
    /// (lane 3 unused). Returns the pixels done; the caller does the rest.
    ///
    /// Each source pixel is read as 4 bytes (one gather lane), so a group is done here only
    /// when its last read ends inside `src`.
    ///
    /// # Safety
    /// AVX2 must be available; `out` must hold `4 * taps.a.len()` lanes; `row` plus every tap
    /// offset must lie inside `src`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn hpass(src: &[u8], row: usize, taps: &Taps, out: &mut [i16]) -> usize {
        let n = taps.a.len();
        debug_assert!(out.len() >= 4 * n);
        let base = src.as_ptr().cast::<i32>();
        let row_v = _mm256_set1_epi32(row as i32);
        let zero = _mm256_setzero_si256();
        let mut x = 0;
        // The offsets only grow with x: a group is safe when its last `b` read is.
        while x + 8 <= n && row + taps.b[x + 7] as usize + 4 <= src.len() {
            // SAFETY: every offset read is `row + a` or `row + b` of this group, and the last
            // (largest) ends inside `src` (the loop condition); taps and out hold `x + 8`
            // pixels (the loop condition and the caller's contract).
            unsafe {
                let ia = _mm256_add_epi32(_mm256_loadu_si256(taps.a.as_ptr().add(x).cast()), row_v);
                let ib = _mm256_add_epi32(_mm256_loadu_si256(taps.b.as_ptr().add(x).cast()), row_v);
                let ga = _mm256_i32gather_epi32::<1>(base, ia);
                let gb = _mm256_i32gather_epi32::<1>(base, ib);
                // Bytes to i16: pixels 0, 1 | 4, 5 (lo) and 2, 3 | 6, 7 (hi) per 128-bit lane.
                let (a_lo, a_hi) = (_mm256_unpacklo_epi8(ga, zero), _mm256_unpackhi_epi8(ga, zero));
                let (b_lo, b_hi) = (_mm256_unpacklo_epi8(gb, zero), _mm256_unpackhi_epi8(gb, zero));
                // (a, b) pairs of one pixel per 128-bit lane: pixels 0 | 4, 1 | 5, 2 | 6, 3 | 7.
                let p = [
                    _mm256_unpacklo_epi16(a_lo, b_lo),
                    _mm256_unpackhi_epi16(a_lo, b_lo),
                    _mm256_unpacklo_epi16(a_hi, b_hi),
                    _mm256_unpackhi_epi16(a_hi, b_hi),
                ];
                let wv = _mm256_loadu_si256(taps.w.as_ptr().add(x).cast());
                let r = |k: i32, pairs: __m256i| {
                    let wk = _mm256_permutevar8x32_epi32(wv, _mm256_setr_epi32(k, k, k, k, k + 4, k + 4, k + 4, k + 4));
                    _mm256_srai_epi32::<4>(_mm256_madd_epi16(pairs, wk))
                };
                // [0 1 | 4 5] and [2 3 | 6 7], 4 lanes per pixel; values <= 32640 pack exactly.
                let x01 = _mm256_packs_epi32(r(0, p[0]), r(1, p[1]));
                let x23 = _mm256_packs_epi32(r(2, p[2]), r(3, p[3]));
                let o = out.as_mut_ptr().add(4 * x);
                _mm256_storeu_si256(o.cast(), _mm256_permute2x128_si256::<0x20>(x01, x23));
                _mm256_storeu_si256(o.add(16).cast(), _mm256_permute2x128_si256::<0x31>(x01, x23));
            }
            x += 8;
        }
        x
    }

    /// [`super::vertical_pass`] of rows with 4 lanes per pixel into `out`'s 3 bytes per
    /// pixel, 8 pixels at a time while a 28-byte store fits in `out`; the rest per value.
    ///
    /// # Safety
    /// AVX2 must be available; `r0` and `r1` must hold `4 * out.len() / 3` lanes.
    #[target_feature(enable = "avx2")]
    pub unsafe fn vertical_pass(out: &mut [u8], r0: &[i16], r1: &[i16], b0: i16, b1: i16) {
        let n = out.len() / 3;
        assert!(r0.len() >= 4 * n && r1.len() >= 4 * n, "vertical_pass: rows shorter than the output");
        let (k0, k1, two) = (_mm256_set1_epi16(b0), _mm256_set1_epi16(b1), _mm256_set1_epi16(2));
        // Per 128-bit lane: the 4 pixels' first 3 bytes of 4, then 4 bytes not kept.
        let compact = _mm256_setr_epi8(
            0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1, 0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1,
        );
        let mut x = 0;
        // A group writes 16 bytes at 3x and at 3x + 12 (the last 4 of each are overwritten by
        // the next store or unused): it needs 3x + 28 <= len.
        while x + 8 <= n && 3 * x + 28 <= out.len() {
            // SAFETY: lanes 4x..4x + 32 of r0/r1 exist (the contract and x + 8 <= n); the
            // stores end at 3x + 28 <= out.len().
            unsafe {
                let row = |a: *const i16, b: *const i16| {
                    let v = _mm256_add_epi16(
                        _mm256_mulhi_epi16(_mm256_loadu_si256(a.cast()), k0),
                        _mm256_mulhi_epi16(_mm256_loadu_si256(b.cast()), k1),
                    );
                    _mm256_srai_epi16::<2>(_mm256_add_epi16(v, two))
                };
                let (a, b) = (r0.as_ptr().add(4 * x), r1.as_ptr().add(4 * x));
                // 64-bit chunks of 2 pixels: [01 45 | 23 67] after the pack; reorder, compact.
                let packed = _mm256_packus_epi16(row(a, b), row(a.add(16), b.add(16)));
                let ordered = _mm256_permute4x64_epi64::<0b11_01_10_00>(packed);
                let c = _mm256_shuffle_epi8(ordered, compact);
                let o = out.as_mut_ptr().add(3 * x);
                _mm_storeu_si128(o.cast(), _mm256_castsi256_si128(c));
                _mm_storeu_si128(o.add(12).cast(), _mm256_extracti128_si256::<1>(c));
            }
            x += 8;
        }
        for p in x..n {
            for c in 0..3 {
                out[3 * p + c] = super::vertical_value(r0[4 * p + c], r1[4 * p + c], b0, b1);
            }
        }
    }
}

/// cv2's vertical pass of one output row: `((mulhi(a, b0) + mulhi(b, b1) + 2) >> 2)` saturated
/// to `u8`, where `mulhi(x, k) = (x * k) >> 16` of int16 lanes. SSE2 (every x86-64) runs it 16
/// values at a time as cv2 does (`pmulhw`, `packuswb`); the compiler does not find that form
/// itself. `out`, `r0` and `r1` have one length.
fn vertical_pass(out: &mut [u8], r0: &[i16], r1: &[i16], b0: i16, b1: i16) {
    let n = out.len();
    assert!(r0.len() == n && r1.len() == n, "vertical_pass: rows of different lengths");
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of x86-64. Every load reads 16 bytes (8 lanes) at `i` or `i + 8`
        // of `r0`/`r1` and every store writes 16 bytes at `i` of `out`, with `i + 16 <= n` (all
        // three hold `n` elements); unaligned loads and stores.
        unsafe {
            let (k0, k1, two) = (_mm_set1_epi16(b0), _mm_set1_epi16(b1), _mm_set1_epi16(2));
            let row = |a: *const i16, b: *const i16| {
                let v = _mm_add_epi16(
                    _mm_mulhi_epi16(_mm_loadu_si128(a.cast()), k0),
                    _mm_mulhi_epi16(_mm_loadu_si128(b.cast()), k1),
                );
                _mm_srai_epi16::<2>(_mm_add_epi16(v, two))
            };
            while done + 16 <= n {
                let (a, b) = (r0.as_ptr().add(done), r1.as_ptr().add(done));
                let lo = row(a, b);
                let hi = row(a.add(8), b.add(8));
                _mm_storeu_si128(out.as_mut_ptr().add(done).cast(), _mm_packus_epi16(lo, hi));
                done += 16;
            }
        }
    }
    for ((o, &a), &b) in out[done..].iter_mut().zip(&r0[done..]).zip(&r1[done..]) {
        *o = vertical_value(a, b, b0, b1);
    }
}

/// Area (box-filter) downscale of an RGB8 image by integer factors, identical to OpenCV's
/// `cv2.resize(.., interpolation=cv2.INTER_AREA)` when `width / new_width` and
/// `height / new_height` are integers (cv2's `resizeAreaFast`): the mean of each block, with
/// `(sum + 2) >> 2` for 2x2 blocks and `round_half_even(sum as f32 * (1 / area))` otherwise.
///
/// Non-integer factors and upscaling (cv2's general area tables) are not implemented and are
/// reported as [`CoreError::Config`].
pub fn resize_area(img: &RgbImage, new_width: u32, new_height: u32) -> Result<RgbImage> {
    let (w, h) = img.dimensions();
    if new_width == 0 || new_height == 0 || w % new_width != 0 || h % new_height != 0 {
        return Err(CoreError::Config {
            field: "resize_area".into(),
            message: format!(
                "{w}x{h} -> {new_width}x{new_height}: only integer downscale factors are supported"
            ),
        });
    }
    let (kx, ky) = (w / new_width, h / new_height);
    let inv_area = 1.0f32 / (kx * ky) as f32;
    let mut out = RgbImage::new(new_width, new_height);
    for (dx, dy, px) in out.enumerate_pixels_mut() {
        let mut sum = [0u32; 3];
        for y in dy * ky..(dy + 1) * ky {
            for x in dx * kx..(dx + 1) * kx {
                for (s, v) in sum.iter_mut().zip(img.get_pixel(x, y).0) {
                    *s += v as u32;
                }
            }
        }
        *px = Rgb(sum.map(|s| {
            if kx == 2 && ky == 2 {
                ((s + 2) >> 2) as u8
            } else {
                (s as f32 * inv_area).round_ties_even().clamp(0.0, 255.0) as u8
            }
        }));
    }
    Ok(out)
}

/// Resizes `image` so that its long side is `imgsz`, as Ultralytics' `load_image` with
/// `rect_mode=True`: `r = imgsz / max(h, w)`, new sides `min(ceil(side * r), imgsz)`, cv2
/// `INTER_LINEAR`; unchanged when `r == 1`.
///
/// # Panics
/// If the image is empty.
pub fn resize_long_side(image: RgbImage, imgsz: u32) -> RgbImage {
    let (w0, h0) = image.dimensions();
    assert!(w0 > 0 && h0 > 0, "resize_long_side: empty image");
    let r = imgsz as f64 / w0.max(h0) as f64;
    if r == 1.0 {
        return image;
    }
    let side = |s: u32| ((s as f64 * r).ceil() as u32).clamp(1, imgsz);
    resize_bilinear(&image, side(w0), side(h0))
}

/// Ultralytics' `LetterBox`: resize keeping the aspect ratio, then pad.
///
/// Defaults match Ultralytics: `auto = false`, `scale_fill = false`, `scaleup = true`,
/// `center = true`, `stride = 32`, `pad_value = 114`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LetterBox {
    /// Target width in pixels.
    pub width: u32,
    /// Target height in pixels.
    pub height: u32,
    /// Minimal rectangle: pad only up to the next multiple of `stride`.
    pub auto: bool,
    /// Stretch to the target without padding (ignored when `auto`).
    pub scale_fill: bool,
    /// Allow upscaling; when false the ratio is at most 1.
    pub scaleup: bool,
    /// Centre the image (padding split on both sides) instead of placing it top-left.
    pub center: bool,
    /// Stride for `auto`.
    pub stride: u32,
    /// Value of every padded pixel, all channels.
    pub pad_value: u8,
}

impl LetterBox {
    /// A letterbox to `width` x `height` with Ultralytics' defaults.
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            auto: false,
            scale_fill: false,
            scaleup: true,
            center: true,
            stride: 32,
            pad_value: 114,
        }
    }

    /// A square letterbox (`imgsz` x `imgsz`).
    pub fn square(imgsz: u32) -> Self {
        Self::new(imgsz, imgsz)
    }

    /// Sets `auto` (pad to a multiple of `stride` only).
    pub fn with_auto(mut self, auto: bool) -> Self {
        self.auto = auto;
        self
    }

    /// Sets `scale_fill` (stretch, no padding).
    pub fn with_scale_fill(mut self, scale_fill: bool) -> Self {
        self.scale_fill = scale_fill;
        self
    }

    /// Sets `scaleup`.
    pub fn with_scaleup(mut self, scaleup: bool) -> Self {
        self.scaleup = scaleup;
        self
    }

    /// Sets `center`.
    pub fn with_center(mut self, center: bool) -> Self {
        self.center = center;
        self
    }

    /// Sets `stride`.
    pub fn with_stride(mut self, stride: u32) -> Self {
        self.stride = stride;
        self
    }

    /// Sets the padding value.
    pub fn with_pad_value(mut self, pad_value: u8) -> Self {
        self.pad_value = pad_value;
        self
    }

    /// The geometry for an image of `width` x `height` (`LetterBox.get_params`).
    ///
    /// # Panics
    /// If the image is empty or `auto` is set with `stride == 0`.
    pub fn transform(&self, width: u32, height: u32) -> LetterboxTransform {
        assert!(width > 0 && height > 0, "LetterBox: empty image");
        let (w0, h0) = (width as f64, height as f64);
        let (tw, th) = (self.width as f64, self.height as f64);
        let mut r = (th / h0).min(tw / w0);
        if !self.scaleup {
            r = r.min(1.0);
        }
        let (mut ratio_x, mut ratio_y) = (r, r);
        // Python's round() is round-half-to-even.
        let mut unpad_w = ((w0 * r).round_ties_even() as u32).max(1);
        let mut unpad_h = ((h0 * r).round_ties_even() as u32).max(1);
        let mut dw = self.width as f64 - unpad_w as f64;
        let mut dh = self.height as f64 - unpad_h as f64;
        if self.auto {
            assert!(self.stride > 0, "LetterBox: auto needs a stride > 0");
            let s = self.stride as f64;
            dw = dw.rem_euclid(s);
            dh = dh.rem_euclid(s);
        } else if self.scale_fill {
            dw = 0.0;
            dh = 0.0;
            unpad_w = self.width;
            unpad_h = self.height;
            ratio_x = tw / w0;
            ratio_y = th / h0;
        }
        if self.center {
            dw /= 2.0;
            dh /= 2.0;
        }
        // Ultralytics' split: the extra pixel of an odd padding goes right / bottom.
        let split = |d: f64| -> (u32, u32) {
            let first = if self.center {
                (d - 0.1).round_ties_even().max(0.0) as u32
            } else {
                0
            };
            (first, (d + 0.1).round_ties_even().max(0.0) as u32)
        };
        let (pad_top, pad_bottom) = split(dh);
        let (pad_left, pad_right) = split(dw);
        LetterboxTransform {
            orig_width: width,
            orig_height: height,
            ratio_x,
            ratio_y,
            unpad_width: unpad_w,
            unpad_height: unpad_h,
            pad_left,
            pad_top,
            pad_right,
            pad_bottom,
        }
    }

    /// Letterboxes `img`: cv2-exact bilinear resize (only when the size changes), then padding
    /// with `pad_value`.
    ///
    /// # Panics
    /// If the image is empty (0 pixels wide or high).
    pub fn apply(&self, img: &RgbImage) -> (RgbImage, LetterboxTransform) {
        let t = self.transform(img.width(), img.height());
        let (width, height) = (t.width() as usize, t.height() as usize);
        let (uw, uh) = (t.unpad_width as usize, t.unpad_height as usize);
        let (left, top) = (t.pad_left as usize, t.pad_top as usize);
        assert!(img.width() > 0 && img.height() > 0, "LetterBox::apply: empty image");
        // The canvas filled with the pad value, the image resized (or copied) into its window.
        let mut out = vec![self.pad_value; width * height * 3];
        let offset = (top * width + left) * 3;
        if (t.unpad_width, t.unpad_height) == img.dimensions() {
            for (y, row) in img.as_raw().chunks_exact(uw * 3).enumerate() {
                out[offset + y * width * 3..][..uw * 3].copy_from_slice(row);
            }
        } else {
            resize_bilinear_into(img, uw, uh, &mut out, offset, width * 3, simd_available());
        }
        let out = RgbImage::from_raw(t.width(), t.height(), out).expect("buffer has the canvas size");
        (out, t)
    }
}

/// Where an image went in a letterbox: the scale per axis and the padding.
///
/// Maps labels forward into the letterboxed image and boxes back to the original.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LetterboxTransform {
    /// Width of the original image.
    pub orig_width: u32,
    /// Height of the original image.
    pub orig_height: u32,
    /// Horizontal gain (letterboxed px per original px).
    pub ratio_x: f64,
    /// Vertical gain; equal to `ratio_x` unless `scale_fill` stretched the image.
    pub ratio_y: f64,
    /// Width of the resized image before padding.
    pub unpad_width: u32,
    /// Height of the resized image before padding.
    pub unpad_height: u32,
    /// Columns of padding on the left.
    pub pad_left: u32,
    /// Rows of padding on top.
    pub pad_top: u32,
    /// Columns of padding on the right.
    pub pad_right: u32,
    /// Rows of padding at the bottom.
    pub pad_bottom: u32,
}

impl LetterboxTransform {
    /// The transform Ultralytics' `scale_boxes(img1_shape, boxes, img0_shape)` infers when it
    /// gets no `ratio_pad` (as in `predict`): gain `min(h1/h0, w1/w0)`, each side rounded, the
    /// per-axis gains `new / orig` and centred padding `round((w1 - new_w) / 2 - 0.1)`.
    ///
    /// `orig_*` is the original image, `width` x `height` the letterboxed one.
    pub fn infer(orig_width: u32, orig_height: u32, width: u32, height: u32) -> Self {
        let (w0, h0) = (orig_width as f64, orig_height as f64);
        let gain = (height as f64 / h0).min(width as f64 / w0);
        let new_h = ((h0 * gain).round_ties_even() as u32).max(1);
        let new_w = ((w0 * gain).round_ties_even() as u32).max(1);
        let pad = |total: u32, new: u32| -> (u32, u32) {
            let d = (total as f64 - new as f64) / 2.0;
            let first = (d - 0.1).round_ties_even().max(0.0) as u32;
            (first, total.saturating_sub(new + first))
        };
        let (pad_left, pad_right) = pad(width, new_w);
        let (pad_top, pad_bottom) = pad(height, new_h);
        Self {
            orig_width,
            orig_height,
            ratio_x: new_w as f64 / w0,
            ratio_y: new_h as f64 / h0,
            unpad_width: new_w,
            unpad_height: new_h,
            pad_left,
            pad_top,
            pad_right,
            pad_bottom,
        }
    }

    /// Width of the letterboxed image.
    pub fn width(&self) -> u32 {
        self.pad_left + self.unpad_width + self.pad_right
    }

    /// Height of the letterboxed image.
    pub fn height(&self) -> u32 {
        self.pad_top + self.unpad_height + self.pad_bottom
    }

    /// A label box of the original image, normalised `[cx, cy, w, h]`, in pixels `[x1, y1, x2,
    /// y2]` of the letterboxed image (`LetterBox._update_labels`: denormalise, scale, pad).
    pub fn label_to_letterbox(&self, xywhn: [f64; 4]) -> [f64; 4] {
        let [cx, cy, w, h] = xywhn;
        let (w0, h0) = (self.orig_width as f64, self.orig_height as f64);
        let x = |v: f64| v * w0 * self.ratio_x + self.pad_left as f64;
        let y = |v: f64| v * h0 * self.ratio_y + self.pad_top as f64;
        [
            x(cx - w / 2.0),
            y(cy - h / 2.0),
            x(cx + w / 2.0),
            y(cy + h / 2.0),
        ]
    }

    /// A box `[x1, y1, x2, y2]` in letterboxed pixels mapped back to original-image pixels and
    /// clipped to it (`scale_boxes` with `ratio_pad = ((ratio_y, ratio_x), (pad_left, pad_top))`,
    /// then `clip_boxes`).
    pub fn box_to_original(&self, xyxy: [f64; 4]) -> [f64; 4] {
        let (w0, h0) = (self.orig_width as f64, self.orig_height as f64);
        let x = |v: f64| ((v - self.pad_left as f64) / self.ratio_x).clamp(0.0, w0);
        let y = |v: f64| ((v - self.pad_top as f64) / self.ratio_y).clamp(0.0, h0);
        [x(xyxy[0]), y(xyxy[1]), x(xyxy[2]), y(xyxy[3])]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 path against the per-value one, on noise (every byte value), for widths with
    /// and without a tail of fewer than 8 pixels, up- and downscales, and sizes where the last
    /// pixel's 4-byte read would pass the end of the image (done per value there).
    #[test]
    fn simd_path_matches_the_scalar_one() {
        if !simd_available() {
            eprintln!("no AVX2 here: nothing to compare");
            return;
        }
        let mut seed = 0x9e37_79b9_u32;
        for (w, h, dw, dh) in [(53, 37, 64, 45), (1562, 1586, 630, 640), (260, 264, 635, 640), (7, 5, 23, 17), (40, 30, 8, 6), (9, 9, 9, 16), (640, 480, 320, 240), (3, 2, 17, 9)] {
            let img = RgbImage::from_fn(w, h, |_, _| {
                let mut px = [0u8; 3];
                for v in &mut px {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    *v = seed as u8;
                }
                Rgb(px)
            });
            let run = |simd: bool| {
                // A canvas wider than the image, filled, as a letterbox's: writes must stay in
                // the image's window.
                let (cw, pad) = (dw as usize + 5, 2usize);
                let mut out = vec![7u8; cw * dh as usize * 3];
                resize_bilinear_into(&img, dw as usize, dh as usize, &mut out, pad * 3, cw * 3, simd);
                out
            };
            assert!(run(true) == run(false), "{w}x{h} -> {dw}x{dh}");
        }
    }

    #[test]
    fn geometry_of_a_wide_image() {
        let t = LetterBox::square(64).transform(100, 30);
        assert_eq!((t.unpad_width, t.unpad_height), (64, 19));
        assert_eq!((t.pad_top, t.pad_bottom), (22, 23));
        assert_eq!((t.width(), t.height()), (64, 64));
        let t = LetterBox::square(64).with_auto(true).transform(100, 30);
        assert_eq!((t.width(), t.height()), (64, 32));
    }

    #[test]
    fn same_size_resize_copies_and_upscale_of_constant_is_constant() {
        let img = RgbImage::from_pixel(5, 3, Rgb([7, 200, 255]));
        assert_eq!(resize_bilinear(&img, 5, 3), img);
        let up = resize_bilinear(&img, 17, 11);
        assert!(up.pixels().all(|p| *p == Rgb([7, 200, 255])));
    }

    #[test]
    fn inferred_transform_round_trips_a_box() {
        let lb = LetterBox::new(96, 64);
        let t = lb.transform(53, 37);
        let fwd = t.label_to_letterbox([0.5, 0.5, 0.4, 0.2]);
        let back = LetterboxTransform::infer(53, 37, t.width(), t.height()).box_to_original(fwd);
        for (b, e) in back.iter().zip([15.9, 14.8, 37.1, 22.2]) {
            assert!((b - e).abs() < 0.6, "{back:?}");
        }
    }
}

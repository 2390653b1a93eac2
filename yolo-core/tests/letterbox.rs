//! Letterbox and resize parity with Ultralytics 8.4 / OpenCV 5.0.
//!
//! Fixtures from `tools/fixtures/make_letterbox_fixtures.py` (see `cases.json` for versions).

use std::path::{Path, PathBuf};

use image::RgbImage;
use serde_json::Value;
use yolo_core::data::letterbox::{resize_area, resize_bilinear, LetterBox, LetterboxTransform};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/letterbox")
}

fn cases() -> Value {
    let text = std::fs::read_to_string(dir().join("cases.json")).expect("cases.json");
    serde_json::from_str(&text).expect("valid json")
}

fn load(name: &Value) -> RgbImage {
    let path = dir().join(name.as_str().expect("file name"));
    image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

fn u(v: &Value) -> u32 {
    v.as_u64().expect("unsigned") as u32
}

fn f(v: &Value) -> f64 {
    v.as_f64().expect("number")
}

fn boxes(v: &Value) -> Vec<[f64; 4]> {
    v.as_array()
        .expect("list of boxes")
        .iter()
        .map(|b| {
            let b = b.as_array().expect("box");
            [f(&b[0]), f(&b[1]), f(&b[2]), f(&b[3])]
        })
        .collect()
}

/// `(max abs difference, number of differing channel values)`.
fn diff(a: &RgbImage, b: &RgbImage) -> (u8, usize) {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .fold((0, 0), |(m, n), (&x, &y)| {
            let d = x.abs_diff(y);
            (m.max(d), n + (d > 0) as usize)
        })
}

fn assert_close(got: &[f64; 4], want: &[f64; 4], what: &str) {
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-4, "{what}: got {got:?}, want {want:?}");
    }
}

#[test]
fn cv2_resize_parity() {
    let all = cases();
    let mut total = 0;
    for case in all["resize"].as_array().unwrap() {
        let img = load(&case["input"]);
        let want = load(&case["output"]);
        let (w, h) = (u(&case["size_wh"][0]), u(&case["size_wh"][1]));
        let got = match case["interpolation"].as_str().unwrap() {
            "linear" => resize_bilinear(&img, w, h),
            "area" => resize_area(&img, w, h).expect("integer factors"),
            other => panic!("unknown interpolation {other}"),
        };
        let (max, count) = diff(&got, &want);
        println!("resize {case}: max diff {max}, differing values {count}");
        assert_eq!((max, count), (0, 0), "{case}");
        total += 1;
    }
    assert_eq!(total, 11);
}

#[test]
fn resize_area_rejects_fractional_factors() {
    let img = RgbImage::new(10, 10);
    assert!(resize_area(&img, 3, 5).is_err());
    assert!(resize_area(&img, 20, 20).is_err());
}

#[test]
fn letterbox_parity() {
    let all = cases();
    let list = all["letterbox"].as_array().unwrap();
    assert_eq!(list.len(), 30);
    let (mut worst, mut differing) = (0u8, 0usize);
    for case in list {
        let name = format!("{} {}", case["input"], case["setting"]);
        let lb = LetterBox::new(u(&case["new_shape_hw"][1]), u(&case["new_shape_hw"][0]))
            .with_auto(case["auto"].as_bool().unwrap())
            .with_scale_fill(case["scale_fill"].as_bool().unwrap())
            .with_scaleup(case["scaleup"].as_bool().unwrap())
            .with_center(case["center"].as_bool().unwrap())
            .with_stride(u(&case["stride"]));
        let img = load(&case["input"]);
        assert_eq!(
            (img.height(), img.width()),
            (u(&case["orig_hw"][0]), u(&case["orig_hw"][1]))
        );
        let (out, t) = lb.apply(&img);

        // Geometry, exactly.
        assert_eq!(t.ratio_x, f(&case["ratio_wh"][0]), "{name}");
        assert_eq!(t.ratio_y, f(&case["ratio_wh"][1]), "{name}");
        assert_eq!(
            (t.unpad_width, t.unpad_height),
            (u(&case["new_unpad_wh"][0]), u(&case["new_unpad_wh"][1])),
            "{name}"
        );
        assert_eq!(
            (t.pad_top, t.pad_bottom, t.pad_left, t.pad_right),
            (
                u(&case["top"]),
                u(&case["bottom"]),
                u(&case["left"]),
                u(&case["right"])
            ),
            "{name}"
        );
        assert_eq!(
            (out.height(), out.width()),
            (u(&case["out_hw"][0]), u(&case["out_hw"][1])),
            "{name}"
        );
        assert_eq!((t.width(), t.height()), out.dimensions());

        // Pixels: padding is 114 everywhere, the whole image equals Ultralytics' output.
        for (x, y, p) in out.enumerate_pixels() {
            let inside = x >= t.pad_left
                && x < t.pad_left + t.unpad_width
                && y >= t.pad_top
                && y < t.pad_top + t.unpad_height;
            if !inside {
                assert_eq!(p.0, [114; 3], "{name}: padding at ({x}, {y})");
            }
        }
        let (max, count) = diff(&out, &load(&case["output"]));
        worst = worst.max(max);
        differing += count;

        // Labels forward (normalised xywh -> letterboxed xyxy px).
        let fwd_want = boxes(&case["labels_xyxy_out"]);
        for (xywhn, want) in boxes(&case["labels_xywhn"]).iter().zip(&fwd_want) {
            assert_close(
                &t.label_to_letterbox(*xywhn),
                want,
                &format!("{name} forward"),
            );
        }

        // Boxes back: with the letterbox's own ratio/pad, and as scale_boxes infers them.
        let inferred =
            LetterboxTransform::infer(t.orig_width, t.orig_height, t.width(), t.height());
        let back_pad = boxes(&case["scale_boxes_ratio_pad"]);
        let back_inf = boxes(&case["scale_boxes_inferred"]);
        for (i, b) in boxes(&case["boxes_xyxy"]).iter().enumerate() {
            assert_close(
                &t.box_to_original(*b),
                &back_pad[i],
                &format!("{name} ratio_pad"),
            );
            assert_close(
                &inferred.box_to_original(*b),
                &back_inf[i],
                &format!("{name} inferred"),
            );
        }
    }
    println!("letterbox: max pixel diff {worst}, differing channel values {differing}");
    assert_eq!((worst, differing), (0, 0));
}

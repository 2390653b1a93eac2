//! Box geometry shared by NMS, metrics and the data code. Boxes are `[x1, y1, x2, y2]` or
//! `[cx, cy, w, h]` in pixels; no "+1 pixel" convention anywhere.

/// `[cx, cy, w, h]` → `[x1, y1, x2, y2]`.
pub fn xywh_to_xyxy(b: [f32; 4]) -> [f32; 4] {
    let (hw, hh) = (b[2] / 2.0, b[3] / 2.0);
    [b[0] - hw, b[1] - hh, b[0] + hw, b[1] + hh]
}

/// Area of an xyxy box (0 for inverted boxes).
pub fn area(b: &[f32; 4]) -> f32 {
    (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0)
}

/// Intersection area of two xyxy boxes.
pub fn intersection(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    w * h
}

/// IoU of two xyxy boxes as Ultralytics' `box_iou`: `inter / (area1 + area2 - inter + eps)`.
pub fn iou(a: &[f32; 4], b: &[f32; 4], eps: f32) -> f32 {
    let inter = intersection(a, b);
    let (wa, ha) = (a[2] - a[0], a[3] - a[1]);
    let (wb, hb) = (b[2] - b[0], b[3] - b[1]);
    inter / (wa * ha + wb * hb - inter + eps)
}

/// `[x1, y1, x2, y2]` → `[cx, cy, w, h]` (the inverse of [`xywh_to_xyxy`]).
pub fn xyxy_to_xywh(b: [f32; 4]) -> [f32; 4] {
    [
        (b[0] + b[2]) / 2.0,
        (b[1] + b[3]) / 2.0,
        b[2] - b[0],
        b[3] - b[1],
    ]
}

/// Pairwise IoU of xyxy boxes as Ultralytics' `box_iou` (eps 1e-7 in the denominator, no
/// "+1 pixel").
///
/// # Shapes
/// - `a`: `[N]` boxes, `b`: `[M]` boxes
/// - returns `[N][M]`: `out[i][j]` is the IoU of `a[i]` and `b[j]`
pub fn box_iou(a: &[[f32; 4]], b: &[[f32; 4]]) -> Vec<Vec<f32>> {
    a.iter()
        .map(|x| b.iter().map(|y| iou(x, y, 1e-7)).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry() {
        assert_eq!(xywh_to_xyxy([10.0, 20.0, 4.0, 6.0]), [8.0, 17.0, 12.0, 23.0]);
        let a = [0.0, 0.0, 10.0, 10.0];
        let b = [5.0, 0.0, 15.0, 10.0];
        assert_eq!(intersection(&a, &b), 50.0);
        assert!((iou(&a, &b, 0.0) - 50.0 / 150.0).abs() < 1e-7);
        assert_eq!(iou(&a, &[20.0, 20.0, 30.0, 30.0], 1e-7), 0.0);
        assert_eq!(area(&[3.0, 3.0, 1.0, 5.0]), 0.0);
    }
}

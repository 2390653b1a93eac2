//! Box overlap on tensors, as Ultralytics `utils/metrics.py bbox_iou(box1, box2, xywh=False,
//! CIoU=True)` (eps 1e-7). Shared by the assigner (alignment metric) and the box loss.

use yolo_core::burn::tensor::Tensor;

/// Ultralytics' `bbox_iou` eps: added to the heights, the union and the enclosing diagonal.
pub const IOU_EPS: f32 = 1e-7;

/// `4 / pi^2`, the CIoU aspect-ratio factor.
const FOUR_OVER_PI2: f32 = 4.0 / (std::f32::consts::PI * std::f32::consts::PI);

/// Splits the last axis (size 4) into its four coordinates, each `[..., 1]`.
fn coords<const D: usize>(b: Tensor<D>) -> [Tensor<D>; 4] {
    let [c0, c1, c2, c3]: [Tensor<D>; 4] = b
        .chunk(4, D - 1)
        .try_into()
        .unwrap_or_else(|_| panic!("boxes need 4 coordinates on the last axis"));
    [c0, c1, c2, c3]
}

/// Complete IoU of paired xyxy boxes, as Ultralytics `bbox_iou(.., xywh=False, CIoU=True)`:
/// `iou - (rho^2 / c^2 + v * alpha)` with `v = 4/pi^2 (atan(w2/h2) - atan(w1/h1))^2` and
/// `alpha = v / (1 - iou + v + eps)` computed without gradient (PyTorch's `no_grad` block).
/// Heights get `+ eps`, widths do not, exactly as there.
///
/// The value is symmetric in its arguments; the order only matters for rounding.
///
/// # Shapes
/// - `box1`, `box2`: `[..., 4]` xyxy, the same shape (expand before calling)
/// - output: `[..., 1]`
pub fn bbox_ciou<const D: usize>(box1: Tensor<D>, box2: Tensor<D>) -> Tensor<D> {
    assert_eq!(
        box1.dims(),
        box2.dims(),
        "bbox_ciou: boxes must have the same shape"
    );
    let eps = IOU_EPS;
    let [b1_x1, b1_y1, b1_x2, b1_y2] = coords(box1);
    let [b2_x1, b2_y1, b2_x2, b2_y2] = coords(box2);
    let w1 = b1_x2.clone() - b1_x1.clone();
    let h1 = b1_y2.clone() - b1_y1.clone() + eps;
    let w2 = b2_x2.clone() - b2_x1.clone();
    let h2 = b2_y2.clone() - b2_y1.clone() + eps;

    // Intersection and union.
    let iw = (b1_x2.clone().min_pair(b2_x2.clone()) - b1_x1.clone().max_pair(b2_x1.clone()))
        .clamp_min(0.0);
    let ih = (b1_y2.clone().min_pair(b2_y2.clone()) - b1_y1.clone().max_pair(b2_y1.clone()))
        .clamp_min(0.0);
    let inter = iw * ih;
    let union = w1.clone() * h1.clone() + w2.clone() * h2.clone() - inter.clone() + eps;
    let iou = inter / union;

    // Smallest enclosing box: squared diagonal.
    let cw = b1_x2.clone().max_pair(b2_x2.clone()) - b1_x1.clone().min_pair(b2_x1.clone());
    let ch = b1_y2.clone().max_pair(b2_y2.clone()) - b1_y1.clone().min_pair(b2_y1.clone());
    let c2 = cw.square() + ch.square() + eps;
    // Squared distance of the centres.
    let rho2 =
        ((b2_x1 + b2_x2 - b1_x1 - b1_x2).square() + (b2_y1 + b2_y2 - b1_y1 - b1_y2).square()) / 4.0;

    let v = ((w2 / h2).atan() - (w1 / h1).atan()).square() * FOUR_OVER_PI2;
    let alpha = (v.clone() / (iou.clone().neg() + 1.0 + v.clone() + eps)).detach();
    iou - (rho2 / c2 + v * alpha)
}

#[cfg(test)]
mod tests {
    use super::*;
    use yolo_core::backend::cpu_device;
    use yolo_core::burn::tensor::TensorData;

    fn ciou(a: [f32; 4], b: [f32; 4]) -> f32 {
        let d = cpu_device();
        let a = Tensor::<2>::from_data(TensorData::new(a.to_vec(), [1, 4]), &d);
        let b = Tensor::<2>::from_data(TensorData::new(b.to_vec(), [1, 4]), &d);
        bbox_ciou(a, b).into_data().try_to_vec::<f32>().unwrap()[0]
    }

    #[test]
    fn identical_boxes_give_one() {
        let v = ciou([10.0, 20.0, 50.0, 40.0], [10.0, 20.0, 50.0, 40.0]);
        assert!((v - 1.0).abs() < 1e-5, "{v}");
    }

    #[test]
    fn disjoint_boxes_are_negative() {
        let v = ciou([0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]);
        assert!(v < 0.0, "{v}");
        // rho^2 / c^2 = (20^2 + 20^2) / (30^2 + 30^2); same aspect so v = 0.
        assert!((v + 800.0 / 1800.0).abs() < 1e-5, "{v}");
    }

    #[test]
    fn symmetric_and_matches_hand_value() {
        // Nested, same centre: IoU = 100 / 400, rho = 0, v = 0 (both square).
        let a = ciou([0.0, 0.0, 20.0, 20.0], [5.0, 5.0, 15.0, 15.0]);
        let b = ciou([5.0, 5.0, 15.0, 15.0], [0.0, 0.0, 20.0, 20.0]);
        assert!((a - 0.25).abs() < 1e-5, "{a}");
        assert!((a - b).abs() < 1e-6);
    }

    #[test]
    fn aspect_term_penalises_shape() {
        // Same centre, different aspect: CIoU < IoU.
        let v = ciou([0.0, 0.0, 20.0, 10.0], [5.0, -5.0, 15.0, 15.0]);
        let iou = 100.0 / (200.0 + 200.0 - 100.0);
        assert!(v < iou - 1e-3, "{v} vs {iou}");
    }
}

//! Parity of the assigner and the detection loss (value and gradient) with Ultralytics 8.4.190,
//! on fixtures written by `tools/fixtures/make_loss_fixtures.py` (the real package run on random
//! head outputs for a 64x64 input, nc 3, reg_max 16, levels 8x8, 4x4, 2x2, batch 2).
//!
//! Cases: `mixed` (overlapping boxes, a 4x4 box, an image without boxes), `padded` (1 and 3
//! boxes: padding rows), `empty` (no box in the batch).

use yolo_core::backend::cpu_device;
use yolo_core::burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use yolo_core::nn::LevelOutput;
use yolo_core::{HeadMeta, HeadOutput};
use yolo_train::{v8_detection_loss, Assignment, LossConfig, Target, Targets, TaskAlignedAssigner};

const CASES: [&str; 3] = ["mixed", "padded", "empty"];
const TOL: f32 = 1e-4;

struct Fixture(Vec<u8>);

impl Fixture {
    fn load() -> Self {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/loss/loss.safetensors"
        );
        Self(std::fs::read(p).expect("loss fixture (tools/fixtures/make_loss_fixtures.py)"))
    }

    fn get(&self, case: &str, name: &str) -> (Vec<f32>, Vec<usize>) {
        let st = safetensors::SafeTensors::deserialize(&self.0).unwrap();
        let t = st
            .tensor(&format!("{case}/{name}"))
            .unwrap_or_else(|e| panic!("{case}/{name}: {e}"));
        let v = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (v, t.shape().to_vec())
    }

    fn tensor<const D: usize>(&self, case: &str, name: &str, device: &Device) -> Tensor<D> {
        let (v, s) = self.get(case, name);
        Tensor::from_data(TensorData::new(v, s), device)
    }

    fn targets(&self, case: &str) -> Targets {
        let (bi, _) = self.get(case, "batch_idx");
        let (cls, _) = self.get(case, "cls");
        let (bb, _) = self.get(case, "bboxes");
        let boxes = (0..bi.len())
            .map(|i| Target {
                batch_idx: bi[i] as usize,
                cls: cls[i] as usize,
                xywh: [bb[4 * i], bb[4 * i + 1], bb[4 * i + 2], bb[4 * i + 3]],
            })
            .collect();
        Targets { boxes }
    }

    /// The raw head output; tracked for gradients when `device` is an autodiff device.
    fn head(&self, case: &str, device: &Device, track: bool) -> HeadOutput {
        let leaf = |name: String| {
            let t = self.tensor::<4>(case, &name, device);
            if track {
                t.require_grad()
            } else {
                t
            }
        };
        let levels = (0..3)
            .map(|i| LevelOutput {
                boxes: leaf(format!("box{i}")),
                scores: leaf(format!("cls{i}")),
            })
            .collect();
        HeadOutput { levels }
    }
}

fn meta() -> HeadMeta {
    HeadMeta {
        strides: vec![8, 16, 32],
        reg_max: 16,
        nc: 3,
    }
}

fn vec_f<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// Largest `|a - b| / max(1, |b|)`; asserts it is within `TOL`.
fn check(what: &str, got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs() / w.abs().max(1.0);
        assert!(d <= TOL, "{what}[{i}]: got {g}, Ultralytics {w}");
        worst = worst.max(d);
    }
    println!("{what}: max diff {worst:.3e} over {} values", got.len());
    worst
}

fn check_assignment(fx: &Fixture, case: &str, asg: Assignment) {
    let int = |t: Tensor<2, Int>| vec_f(t.float());
    let bool_ = |t: Tensor<2, Bool>| vec_f(t.float());
    check(
        &format!("{case} fg_mask"),
        &bool_(asg.fg_mask),
        &fx.get(case, "fg_mask").0,
    );
    check(
        &format!("{case} target_gt_idx"),
        &int(asg.target_gt_idx),
        &fx.get(case, "target_gt_idx").0,
    );
    check(
        &format!("{case} target_labels"),
        &int(asg.target_labels),
        &fx.get(case, "target_labels").0,
    );
    check(
        &format!("{case} target_bboxes"),
        &vec_f(asg.target_bboxes),
        &fx.get(case, "target_bboxes").0,
    );
    check(
        &format!("{case} target_scores"),
        &vec_f(asg.target_scores),
        &fx.get(case, "target_scores").0,
    );
}

#[test]
fn assigner_matches_ultralytics() {
    let fx = Fixture::load();
    let d = cpu_device();
    for case in CASES {
        let labels: Tensor<3> = fx.tensor(case, "asg_gt_labels", &d);
        let mask: Tensor<3> = fx.tensor(case, "asg_mask_gt", &d);
        let asg = TaskAlignedAssigner::new(3, &[8, 16, 32]).assign(
            fx.tensor(case, "asg_pd_scores", &d),
            fx.tensor(case, "asg_pd_bboxes", &d),
            fx.tensor(case, "asg_anc_points", &d),
            labels.int(),
            fx.tensor(case, "asg_gt_bboxes", &d),
            mask.greater_elem(0.5),
        );
        check_assignment(&fx, case, asg);
    }
}

#[test]
fn loss_matches_ultralytics() {
    let fx = Fixture::load();
    let d = cpu_device();
    for case in CASES {
        let out = v8_detection_loss(
            &fx.head(case, &d, false),
            &meta(),
            &fx.targets(case),
            &LossConfig::default(),
        );
        check(
            &format!("{case} components"),
            &vec_f(out.components),
            &fx.get(case, "loss_items").0,
        );
        check(
            &format!("{case} total"),
            &vec_f(out.total),
            &fx.get(case, "total").0,
        );
        check_assignment(&fx, case, out.assignment);
    }
}

#[test]
fn gradients_match_ultralytics() {
    let fx = Fixture::load();
    let d = cpu_device().autodiff();
    for case in CASES {
        let head = fx.head(case, &d, true);
        let out = v8_detection_loss(&head, &meta(), &fx.targets(case), &LossConfig::default());
        check(
            &format!("{case} total (autodiff)"),
            &vec_f(out.total.clone()),
            &fx.get(case, "total").0,
        );
        let grads = out.total.backward();
        for (i, l) in head.levels.iter().enumerate() {
            let gb = l.boxes.grad(&grads).expect("box gradient");
            let gs = l.scores.grad(&grads).expect("score gradient");
            check(
                &format!("{case} grad box{i}"),
                &vec_f(gb),
                &fx.get(case, &format!("grad_box{i}")).0,
            );
            check(
                &format!("{case} grad cls{i}"),
                &vec_f(gs),
                &fx.get(case, &format!("grad_cls{i}")).0,
            );
        }
    }
}

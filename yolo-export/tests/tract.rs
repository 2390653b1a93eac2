//! A pure-Rust check of the written graphs with tract (no Python needed): the static f32 graph
//! at two sizes and the dynamic graph at a non-square batch of 2, against the native
//! `predict`, with the bounds of the onnxruntime tests. Part of the plain `cargo test`.

mod common;

use common::*;
use tract_onnx::prelude::*;
use yolo_export::{export_model, ExportOptions};

const BOX_REL: f32 = 1e-5;
const SCORE_ABS: f32 = 5e-7;

fn run_tract(bytes: &[u8], x: &[f32], shape: [usize; 4]) -> (Vec<usize>, Vec<f32>) {
    let model = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .unwrap()
        .with_input_fact(0, f32::fact(shape).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let input = tract_ndarray::ArrayD::from_shape_vec(shape.to_vec(), x.to_vec()).unwrap();
    let out = model.run(tvec!(Tensor::from(input).into())).unwrap();
    let view = out[0].to_array_view::<f32>().unwrap();
    (view.shape().to_vec(), view.iter().copied().collect())
}

#[test]
fn tract_matches_native_predict() {
    let (model, meta) = fixture_model();
    let dynamic = ExportOptions { dynamic: true, ..ExportOptions::new([64, 64]) };
    let cases = [
        (ExportOptions::new([64, 64]), [1, 3, 64, 64]),
        (ExportOptions::new([128, 96]), [1, 3, 128, 96]),
        (dynamic, [2, 3, 96, 64]),
    ];
    for (i, (opts, shape)) in cases.into_iter().enumerate() {
        let e = export_model(&model, &meta.names, "tract", &opts).unwrap();
        let x = input(40 + i as u64, shape.iter().product());
        let (got_shape, got) = run_tract(&e.bytes, &x, shape);
        let a: usize = [8, 16, 32].iter().map(|s| (shape[2] / s) * (shape[3] / s)).sum();
        assert_eq!(got_shape, vec![shape[0], 7, a]);
        let want = predict(&model, &x, shape);
        let (eb, es) = output_errors(&got, &want, 7, a);
        println!("tract {shape:?} (dynamic: {}): boxes {eb:.2e} rel, scores {es:.2e} abs", opts.dynamic);
        assert!(eb <= BOX_REL && es <= SCORE_ABS, "{shape:?}: boxes {eb:e}, scores {es:e}");
    }
}

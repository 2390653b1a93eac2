//! Mixed precision training (`amp`): the loss scaler against PyTorch's `GradScaler`
//! (fixtures: tools/fixtures/make_amp_fixtures.py). The first AMP step against PyTorch's is
//! in tests/train_step.rs, whole AMP runs (resume included) in tests/train.rs.

use std::path::PathBuf;

use serde_json::Value;
use yolo_train::amp::{GradScaler, GradScalerConfig};

/// Ultralytics' scaler step by step: the scale each loss is multiplied by, whether the step is
/// taken, and the scale after `update()`, replayed from the overflows PyTorch saw.
#[test]
fn grad_scaler_matches_pytorch() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/amp/grad_scaler.json");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (name, case) in fx["cases"].as_object().unwrap() {
        // PyTorch's argument names are the config's fields.
        let config: GradScalerConfig = serde_json::from_value(case["settings"].clone()).unwrap();
        if name == "defaults" {
            assert_eq!(config, GradScalerConfig::default(), "Ultralytics' scaler has PyTorch's defaults");
        }
        let inf_at: Vec<u64> = case["inf_at"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        let recorded: std::collections::HashMap<u64, &Value> =
            case["steps"].as_array().unwrap().iter().map(|s| (s["step"].as_u64().unwrap(), s)).collect();
        let mut scaler = GradScaler::new(config);
        let mut checked = 0;
        for step in 0..case["n_steps"].as_u64().unwrap() {
            let overflow = inf_at.contains(&step);
            let scale = scaler.scale;
            scaler.update(overflow);
            if let Some(r) = recorded.get(&step) {
                assert_eq!(r["overflow"].as_bool().unwrap(), overflow, "{name} step {step}");
                assert_eq!(scale as f64, r["scale"].as_f64().unwrap(), "{name} step {step}: loss scale");
                assert_eq!(r["stepped"].as_bool().unwrap(), !overflow, "{name} step {step}: step taken");
                assert_eq!(scaler.scale as f64, r["scale_after"].as_f64().unwrap(), "{name} step {step}: scale after update");
                checked += 1;
            }
        }
        assert_eq!(checked, recorded.len(), "{name}");
    }
}

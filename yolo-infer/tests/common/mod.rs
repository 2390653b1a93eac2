//! Helpers shared by yolo-infer's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The model Ultralytics trained on the shapes data (yolo-core/tests/fixtures/val; 3 classes,
/// mAP50 0.43 at 160 px).
pub fn weights() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../yolo-core/tests/fixtures/val/shapes_tiny.safetensors")
}

/// A 54-byte BMP whose header claims `w x h` pixels (24 bit) and holds no pixel data: what a
/// pixel limit must refuse before allocating anything.
pub fn bmp_header(w: u32, h: u32) -> Vec<u8> {
    let mut b = b"BM".to_vec();
    b.extend_from_slice(&0u32.to_le_bytes()); // file size: unused by readers
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&54u32.to_le_bytes());
    b.extend_from_slice(&40u32.to_le_bytes());
    b.extend_from_slice(&w.to_le_bytes());
    b.extend_from_slice(&h.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&24u16.to_le_bytes());
    b.extend_from_slice(&[0; 24]);
    b
}

//! Datasets in the YOLO format, label checks, letterbox and the built-in `shapes` demo data.

pub mod check;
pub mod dataset;
pub mod image;
pub mod labels;
pub mod letterbox;
pub mod shapes;

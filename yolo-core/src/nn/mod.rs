//! Building blocks of YOLOv8, named as in Ultralytics (`nn/modules/{conv,block,head}.py`).

pub mod act;
pub mod block;
pub mod bce_op;
pub mod bn_op;
pub mod cat_op;
pub mod conv;
pub mod conv_op;
pub mod cpu_conv;
pub mod cpu_pool;
pub mod dfl_op;
pub mod gemm_kernel;
pub mod head;
pub mod sgd_op;
pub mod upsample_op;

pub use block::{Bottleneck, BottleneckConfig, C2f, C2fConfig, Sppf, SppfConfig};
pub use conv::{Conv, ConvConfig};
pub use head::{decode, Detect, DetectConfig, HeadMeta, HeadOutput, LevelOutput};

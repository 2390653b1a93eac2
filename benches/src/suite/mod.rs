//! The `yolo-bench` suite: what it measures ([`plan`], [`sections`]), the reference runtimes it
//! drives ([`refs`]), the server load ([`serve`]), and the report it writes ([`report`]).

pub mod machine;
pub mod plan;
pub mod refs;
pub mod report;
pub mod sections;
pub mod serve;
pub mod stats;
pub mod synth;

//! Non-maximum suppression with Ultralytics semantics.

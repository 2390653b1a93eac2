//! Detection metrics with Ultralytics semantics (mAP50, mAP50-95, P, R, confusion matrix).

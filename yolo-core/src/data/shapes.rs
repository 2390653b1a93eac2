//! The built-in `shapes` demo dataset: a deterministic synthetic detection dataset.

//! `data.yaml` parsing and image lists of a split.

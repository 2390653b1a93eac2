//! YOLO label files: parsing, checks with a report, fixes, and the scan cache.

//! Letterbox resize with the transform back to the original image.

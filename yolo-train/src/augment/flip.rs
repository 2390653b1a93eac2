//! `RandomFlip`: left-right or up-down flips with their boxes.

use image::imageops;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{AugSample, SampleSource, Transform};

/// Which way [`RandomFlip`] mirrors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlipDirection {
    /// Left-right (`fliplr`).
    Horizontal,
    /// Up-down (`flipud`).
    Vertical,
}

/// Flips with probability `p` (Ultralytics `RandomFlip`; one draw per sample).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomFlip {
    /// Probability (`fliplr` 0.5, `flipud` 0.0).
    pub p: f64,
    /// Direction.
    pub direction: FlipDirection,
}

impl RandomFlip {
    /// Mirrors the image and its boxes.
    pub fn flip(&self, mut s: AugSample) -> AugSample {
        let (w, h) = (s.image.width() as f32, s.image.height() as f32);
        match self.direction {
            FlipDirection::Horizontal => {
                imageops::flip_horizontal_in_place(&mut s.image);
                for b in &mut s.boxes {
                    b.xyxy = [w - b.xyxy[2], b.xyxy[1], w - b.xyxy[0], b.xyxy[3]];
                }
            }
            FlipDirection::Vertical => {
                imageops::flip_vertical_in_place(&mut s.image);
                for b in &mut s.boxes {
                    b.xyxy = [b.xyxy[0], h - b.xyxy[3], b.xyxy[2], h - b.xyxy[1]];
                }
            }
        }
        s
    }
}

impl Transform for RandomFlip {
    fn apply(&self, s: AugSample, rng: &mut ChaCha8Rng, _src: &dyn SampleSource) -> AugSample {
        if rng.random::<f64>() < self.p {
            self.flip(s)
        } else {
            s
        }
    }
}

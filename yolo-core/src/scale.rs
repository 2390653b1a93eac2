//! Model scales of `yolov8.yaml` and the two helpers that derive every channel and repeat count.

use serde::{Deserialize, Serialize};

/// The five published scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    N,
    S,
    M,
    L,
    X,
}

impl Scale {
    /// `(depth, width, max_channels)` from `yolov8.yaml`.
    pub fn multiples(self) -> Multiples {
        let (depth, width, max_channels) = match self {
            Scale::N => (0.33, 0.25, 1024),
            Scale::S => (0.33, 0.50, 1024),
            Scale::M => (0.67, 0.75, 768),
            Scale::L => (1.00, 1.00, 512),
            Scale::X => (1.00, 1.25, 512),
        };
        Multiples {
            depth,
            width,
            max_channels,
        }
    }

    /// All scales, smallest first.
    pub const ALL: [Scale; 5] = [Scale::N, Scale::S, Scale::M, Scale::L, Scale::X];
}

impl std::str::FromStr for Scale {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "n" => Ok(Scale::N),
            "s" => Ok(Scale::S),
            "m" => Ok(Scale::M),
            "l" => Ok(Scale::L),
            "x" => Ok(Scale::X),
            other => Err(format!("unknown scale `{other}` (expected n, s, m, l or x)")),
        }
    }
}

impl std::fmt::Display for Scale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = match self {
            Scale::N => "n",
            Scale::S => "s",
            Scale::M => "m",
            Scale::L => "l",
            Scale::X => "x",
        };
        f.write_str(c)
    }
}

/// Depth and width multiples of a scale; custom values allow reduced test models.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Multiples {
    pub depth: f64,
    pub width: f64,
    pub max_channels: usize,
}

impl Multiples {
    /// Output channels of a layer whose yaml says `c`:
    /// `make_divisible(min(c, max_channels) * width, 8)`.
    pub fn channels(&self, c: usize) -> usize {
        make_divisible(c.min(self.max_channels) as f64 * self.width, 8)
    }

    /// Repeats of a block whose yaml says `n`: `max(round(n * depth), 1)`.
    pub fn repeats(&self, n: usize) -> usize {
        ((n as f64 * self.depth).round() as usize).max(1)
    }
}

/// Smallest multiple of `divisor` that is `>= x` (Ultralytics `make_divisible`).
pub fn make_divisible(x: f64, divisor: usize) -> usize {
    ((x / divisor as f64).ceil() as usize) * divisor
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yolov8n_channels() {
        let m = Scale::N.multiples();
        let c: Vec<usize> = [64, 128, 256, 512, 1024].iter().map(|&c| m.channels(c)).collect();
        assert_eq!(c, vec![16, 32, 64, 128, 256]);
        assert_eq!(m.repeats(3), 1);
        assert_eq!(m.repeats(6), 2);
        let l = Scale::L.multiples();
        assert_eq!(l.channels(1024), 512);
        assert_eq!(Scale::M.multiples().channels(1024), 576);
    }
}

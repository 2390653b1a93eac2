//! Median / minimum / maximum of repeated measurements.

use serde::{Deserialize, Serialize};

/// Summary of `n` measurements of one figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The middle value (the mean of the two middle ones for an even count).
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// How many measurements.
    pub n: usize,
}

impl Stats {
    /// The summary of `samples`; `None` when there are none or one is not finite.
    pub fn from_samples(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() || samples.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: s[0],
            max: s[n - 1],
            n,
        })
    }

    /// One measurement (peak memory, a whole run's rate).
    pub fn single(v: f64) -> Self {
        Self {
            median: v,
            min: v,
            max: v,
            n: 1,
        }
    }

    /// The same measurements as rates: `k / t` for each `t` (e.g. images/s from ms per batch
    /// with `k = 1000 * batch`); min and max swap places.
    pub fn inverse(&self, k: f64) -> Self {
        Self {
            median: k / self.median,
            min: k / self.max,
            max: k / self.min,
            n: self.n,
        }
    }
}

/// The `q`-quantile (0..=1) of `samples` by the nearest-rank method; `None` when empty.
pub fn quantile(samples: &[f64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = (q.clamp(0.0, 1.0) * s.len() as f64).ceil() as usize;
    Some(s[rank.clamp(1, s.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        let s = Stats::from_samples(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(
            Stats::from_samples(&[4.0, 1.0, 2.0, 3.0]).unwrap().median,
            2.5
        );
        assert!(Stats::from_samples(&[]).is_none());
        assert!(Stats::from_samples(&[1.0, f64::NAN]).is_none());
        let r = Stats::from_samples(&[10.0, 20.0, 40.0])
            .unwrap()
            .inverse(1000.0);
        assert_eq!((r.median, r.min, r.max), (50.0, 25.0, 100.0));
    }

    #[test]
    fn nearest_rank_quantile() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&[7.0], 0.99), Some(7.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}

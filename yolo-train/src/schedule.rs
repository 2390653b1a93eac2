//! Learning-rate, momentum and accumulation schedules of Ultralytics 8.4.190's trainer, as pure
//! functions.
//!
//! Parameter groups are indexed as Ultralytics' `optimizer.param_groups`:
//! 0 = weights with decay, 1 = BatchNorm weights, 2 = biases (see [`crate::optim`]).

/// Index of the bias group, the one whose warmup LR starts at `warmup_bias_lr`.
pub const BIAS_GROUP: usize = 2;

/// `np.interp(x, [x0, x1], [y0, y1])`: linear, clamped to the end values outside `[x0, x1]`.
pub fn interp(x: f64, xp: [f64; 2], fp: [f64; 2]) -> f64 {
    let [x0, x1] = xp;
    let [y0, y1] = fp;
    if x <= x0 {
        y0
    } else if x >= x1 {
        y1
    } else {
        y0 + (x - x0) * (y1 - y0) / (x1 - x0)
    }
}

/// The per-epoch LR factor (`trainer.lf`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrLambda {
    pub epochs: usize,
    pub lrf: f64,
    /// Cosine `one_cycle(1, lrf, epochs)` instead of linear.
    pub cos: bool,
}

impl LrLambda {
    /// Factor for `epoch` (0-based): linear `max(1 - x / epochs, 0) * (1 - lrf) + lrf`, or
    /// `((1 - cos(x * pi / epochs)) / 2) * (lrf - 1) + 1`.
    pub fn factor(&self, epoch: usize) -> f64 {
        let x = epoch as f64;
        let n = self.epochs as f64;
        if self.cos {
            ((1.0 - (x * std::f64::consts::PI / n).cos()) / 2.0).max(0.0) * (self.lrf - 1.0) + 1.0
        } else {
            (1.0 - x / n).max(0.0) * (1.0 - self.lrf) + self.lrf
        }
    }
}

/// Warmup iterations (`_get_warmup_iterations` of 8.4.190): `round(min(warmup_epochs,
/// max(epochs - 1, 0)) * nb)`, 0 when that epoch count is 0. Note: v8-era releases used
/// `max(round(warmup_epochs * nb), 100)`; 8.4.190 has no 100-iteration floor and always leaves
/// the last epoch out of warmup.
pub fn warmup_iterations(warmup_epochs: f64, epochs: usize, nb: usize) -> usize {
    let we = warmup_epochs.min(epochs.saturating_sub(1) as f64);
    if we > 0.0 {
        (we * nb as f64).round_ties_even() as usize
    } else {
        0
    }
}

/// Gradient accumulation steps: `max(round(nbs / batch), 1)` (Python rounds half to even).
pub fn accumulate(nbs: usize, batch: usize) -> usize {
    ((nbs as f64 / batch as f64).round_ties_even() as usize).max(1)
}

/// Weight decay scaled for the effective batch: `wd * batch * accumulate / nbs`.
pub fn scaled_weight_decay(weight_decay: f64, batch: usize, accumulate: usize, nbs: usize) -> f64 {
    weight_decay * batch as f64 * accumulate as f64 / nbs as f64
}

/// The warmup ramp (the `if nw and ni <= nw` block of `BaseTrainer._do_train`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Warmup {
    /// Warmup iterations `nw` (0: no warmup).
    pub nw: usize,
    /// Nominal accumulate reached at the end of warmup.
    pub accumulate: usize,
    pub warmup_bias_lr: f64,
    pub warmup_momentum: f64,
    pub momentum: f64,
}

/// Optimizer settings for one iteration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepSettings {
    pub accumulate: usize,
    /// LR per group (weights, BatchNorm weights, biases).
    pub lr: [f64; 3],
    pub momentum: f64,
}

impl Warmup {
    /// Settings at global iteration `ni` (`i + nb * epoch`), or `None` once warmup is over
    /// (then the LRs are `initial_lr * lf(epoch)`, momentum the final one, accumulate the
    /// nominal one). `target_lr` is `initial_lr * lf(epoch)` of each group.
    pub fn at(&self, ni: usize, target_lr: [f64; 3]) -> Option<StepSettings> {
        if self.nw == 0 || ni > self.nw {
            return None;
        }
        let x = ni as f64;
        let xp = [0.0, self.nw as f64];
        let accumulate =
            (interp(x, xp, [1.0, self.accumulate as f64]).round_ties_even() as usize).max(1);
        let lr = std::array::from_fn(|j| {
            let start = if j == BIAS_GROUP {
                self.warmup_bias_lr
            } else {
                0.0
            };
            interp(x, xp, [start, target_lr[j]])
        });
        let momentum = interp(x, xp, [self.warmup_momentum, self.momentum]);
        Some(StepSettings {
            accumulate,
            lr,
            momentum,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn linear_and_cosine_factors() {
        let lin = LrLambda {
            epochs: 10,
            lrf: 0.01,
            cos: false,
        };
        close(lin.factor(0), 1.0);
        close(lin.factor(5), 0.5 * 0.99 + 0.01);
        close(lin.factor(10), 0.01);
        close(lin.factor(12), 0.01);
        let cos = LrLambda { cos: true, ..lin };
        close(cos.factor(0), 1.0);
        close(cos.factor(5), 0.5 * (0.01 - 1.0) + 1.0);
        close(cos.factor(10), 0.01);
    }

    #[test]
    fn warmup_iterations_follow_8_4_190() {
        assert_eq!(warmup_iterations(3.0, 100, 10), 30);
        // the last epoch is never warmup
        assert_eq!(warmup_iterations(3.0, 3, 10), 20);
        assert_eq!(warmup_iterations(3.0, 1, 10), 0);
        assert_eq!(warmup_iterations(0.0, 10, 10), 0);
        assert_eq!(warmup_iterations(2.5, 10, 3), 8); // 7.5 rounds half to even
    }

    #[test]
    fn accumulate_and_decay() {
        assert_eq!(accumulate(64, 16), 4);
        assert_eq!(accumulate(64, 128), 1);
        assert_eq!(accumulate(64, 24), 3); // 2.67
        assert_eq!(accumulate(64, 128 / 5 * 5), 1);
        assert_eq!(accumulate(10, 4), 2); // 2.5 -> 2 (half to even)
        close(scaled_weight_decay(5e-4, 16, 4, 64), 5e-4);
        close(scaled_weight_decay(5e-4, 8, 8, 64), 5e-4);
        close(scaled_weight_decay(5e-4, 24, 3, 64), 5e-4 * 72.0 / 64.0);
    }

    /// Values computed with numpy for nw = 100, acc0 = 4, lr0 = 0.01, lf(epoch) = 1:
    /// `np.interp(ni, [0, 100], [...])`, accumulate `int(np.interp(..).round())`.
    #[test]
    fn warmup_matches_numpy() {
        let w = Warmup {
            nw: 100,
            accumulate: 4,
            warmup_bias_lr: 0.1,
            warmup_momentum: 0.8,
            momentum: 0.937,
        };
        let t = [0.01; 3];
        let s0 = w.at(0, t).unwrap();
        assert_eq!(s0.accumulate, 1);
        close(s0.lr[0], 0.0);
        close(s0.lr[1], 0.0);
        close(s0.lr[2], 0.1);
        close(s0.momentum, 0.8);
        let s1 = w.at(1, t).unwrap();
        close(s1.lr[2], 0.0991);
        close(s1.lr[0], 0.0001);
        close(s1.momentum, 0.80137);
        let s50 = w.at(50, t).unwrap();
        assert_eq!(s50.accumulate, 2); // 2.5 rounds to 2, as numpy
        close(s50.lr[2], 0.055);
        close(s50.lr[1], 0.005);
        close(s50.momentum, 0.8685);
        let s99 = w.at(99, t).unwrap();
        assert_eq!(s99.accumulate, 4);
        close(s99.lr[2], 0.0109);
        close(s99.lr[0], 0.0099);
        close(s99.momentum, 0.93563);
        let s100 = w.at(100, t).unwrap();
        close(s100.lr[2], 0.01);
        close(s100.momentum, 0.937);
        assert_eq!(w.at(101, t), None);
        assert_eq!(Warmup { nw: 0, ..w }.at(0, t), None);
    }
}

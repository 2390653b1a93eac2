//! `MixUp`: blend with another augmented sample (Ultralytics `MixUp`).

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{uniform, AugSample, SampleSource, Transform};

/// With probability `p`, blends the sample with another one drawn uniformly from the source
/// and passed through `pre` (Ultralytics uses the same Mosaic + RandomPerspective as the main
/// pipeline): `image = (a * r + b * (1 - r))` truncated to `u8`, `r ~ Beta(32, 32)`; the boxes of
/// both are kept.
pub struct MixUp {
    /// Probability (`mixup`, default 0.0).
    pub p: f64,
    /// Transforms for the other sample, so that it matches this one's size.
    pub pre: Vec<Box<dyn Transform>>,
}

impl std::fmt::Debug for MixUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MixUp")
            .field("p", &self.p)
            .field("pre", &self.pre.len())
            .finish()
    }
}

impl MixUp {
    /// Blends `a` (weight `r`) with `b` (weight `1 - r`).
    ///
    /// # Panics
    /// If the images differ in size (a `pre` that does not produce this pipeline's size).
    pub fn blend(mut a: AugSample, b: AugSample, r: f64) -> AugSample {
        assert_eq!(
            a.image.dimensions(),
            b.image.dimensions(),
            "MixUp: the other sample's image has another size"
        );
        for (x, y) in a.image.iter_mut().zip(b.image.iter()) {
            *x = (*x as f64 * r + *y as f64 * (1.0 - r)) as u8;
        }
        a.boxes.extend(b.boxes);
        a
    }
}

impl Transform for MixUp {
    fn apply(&self, s: AugSample, rng: &mut ChaCha8Rng, src: &dyn SampleSource) -> AugSample {
        if rng.random::<f64>() >= self.p || src.is_empty() {
            return s;
        }
        let mut other = src.get(rng.random_range(0..src.len()));
        for t in &self.pre {
            other = t.apply(other, rng, src);
        }
        let r = beta(rng, 32.0, 32.0);
        Self::blend(s, other, r)
    }
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A Gamma(shape `a >= 1`, scale 1) draw (Marsaglia and Tsang).
fn gamma(rng: &mut ChaCha8Rng, a: f64) -> f64 {
    debug_assert!(a >= 1.0);
    let d = a - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = 1.0 + c * x;
        if v <= 0.0 {
            continue;
        }
        let v = v * v * v;
        let u = uniform(rng, 0.0, 1.0);
        if u < 1.0 - 0.0331 * x.powi(4) || u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
            return d * v;
        }
    }
}

/// A Beta(a, b) draw (`np.random.beta`; here as `X / (X + Y)` of two gamma draws), `a, b >= 1`.
pub fn beta(rng: &mut ChaCha8Rng, a: f64, b: f64) -> f64 {
    let x = gamma(rng, a);
    let y = gamma(rng, b);
    x / (x + y)
}

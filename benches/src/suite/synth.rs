//! A seeded synthetic raw detection output with a realistic score distribution, for timing
//! decode + NMS without trained weights (a fresh model's class scores are all near its bias
//! prior, ~1e-4, so nothing passes the predict threshold and NMS would time an empty loop).

/// A small deterministic generator (SplitMix64), so the output does not depend on a crate's
/// RNG version.
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.unit().max(1e-300);
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// What [`prediction`] made.
pub struct Synthetic {
    /// `[4 + nc, A]` row-major: `cx, cy, w, h` in pixels, then class scores in (0, 1).
    pub pred: Vec<f32>,
    pub anchors: usize,
    pub objects: usize,
}

/// A decoded YOLOv8 output for one `imgsz`² image (`A = 8400` anchors at 640: strides 8, 16,
/// 32) and `nc` classes, modelled on a trained detector's:
///
/// - every anchor has a box of 1-4 strides around its centre and background class logits
///   drawn from N(-10, 1.5²) (about 2% of (anchor, class) pairs above conf 0.001, none above
///   0.25);
/// - `objects` objects (class, box of 16-320 px, peak score 0.5-0.95) each light up the anchors
///   of the level matching their size whose centres fall in the box, with a score falling off
///   with the distance from the object's centre, a box jittered around the object's, and on
///   every third anchor a second, confusable class at 40% of the score (multi-label pairs).
pub fn prediction(nc: usize, imgsz: usize, objects: usize, seed: u64) -> Synthetic {
    let mut rng = SplitMix::new(seed);
    let mut centres = Vec::new();
    for s in [8usize, 16, 32] {
        let g = imgsz / s;
        for y in 0..g {
            for x in 0..g {
                centres.push((
                    (x as f64 + 0.5) * s as f64,
                    (y as f64 + 0.5) * s as f64,
                    s as f64,
                ));
            }
        }
    }
    let a = centres.len();
    let mut pred = vec![0f32; (4 + nc) * a];
    let set = |pred: &mut [f32], r: usize, i: usize, v: f64| pred[r * a + i] = v as f32;
    for (i, &(cx, cy, s)) in centres.iter().enumerate() {
        set(&mut pred, 0, i, cx + rng.range(-0.5, 0.5) * s);
        set(&mut pred, 1, i, cy + rng.range(-0.5, 0.5) * s);
        set(&mut pred, 2, i, s * rng.range(1.0, 4.0));
        set(&mut pred, 3, i, s * rng.range(1.0, 4.0));
        for c in 0..nc {
            set(&mut pred, 4 + c, i, sigmoid(-10.0 + 1.5 * rng.normal()));
        }
    }
    let side = imgsz as f64;
    for _ in 0..objects {
        let class = (rng.next_u64() % nc as u64) as usize;
        let other = (class + 1 + (rng.next_u64() % (nc.max(2) as u64 - 1)) as usize) % nc;
        let (w, h) = (
            16f64 * 20f64.powf(rng.unit()),
            16f64 * 20f64.powf(rng.unit()),
        );
        let (ox, oy) = (
            rng.range(w / 2.0, side - w / 2.0),
            rng.range(h / 2.0, side - h / 2.0),
        );
        let peak = rng.range(0.5, 0.95);
        let level = match w.max(h) {
            m if m < 64.0 => 8.0,
            m if m < 160.0 => 16.0,
            _ => 32.0,
        };
        for (i, &(cx, cy, s)) in centres.iter().enumerate() {
            let (dx, dy) = ((cx - ox) / (w / 2.0), (cy - oy) / (h / 2.0));
            if s != level || dx.abs() > 1.0 || dy.abs() > 1.0 {
                continue;
            }
            let score = peak * (-(dx * dx + dy * dy) / (2.0 * 0.35 * 0.35)).exp();
            if (score as f32) <= pred[(4 + class) * a + i] {
                continue;
            }
            set(&mut pred, 0, i, ox + 0.05 * w * rng.normal());
            set(&mut pred, 1, i, oy + 0.05 * h * rng.normal());
            set(&mut pred, 2, i, w * (1.0 + 0.08 * rng.normal()).max(0.5));
            set(&mut pred, 3, i, h * (1.0 + 0.08 * rng.normal()).max(0.5));
            set(&mut pred, 4 + class, i, score);
            if i % 3 == 0 && nc > 1 {
                set(&mut pred, 4 + other, i, 0.4 * score);
            }
        }
    }
    Synthetic {
        pred,
        anchors: a,
        objects,
    }
}

/// Anchors whose best score is above `conf`, and (anchor, class) pairs above it.
pub fn candidates(pred: &[f32], nc: usize, conf: f32) -> (usize, usize) {
    let a = pred.len() / (4 + nc);
    let (mut anchors, mut pairs) = (0, 0);
    for i in 0..a {
        let n = (0..nc).filter(|&c| pred[(4 + c) * a + i] > conf).count();
        anchors += usize::from(n > 0);
        pairs += n;
    }
    (anchors, pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_score_distribution() {
        let s = prediction(80, 640, 12, 0);
        assert_eq!(s.anchors, 8400);
        assert_eq!(s.pred.len(), 84 * 8400);
        assert_eq!(s.pred, prediction(80, 640, 12, 0).pred, "seeded");
        let (objects_pass, _) = candidates(&s.pred, 80, 0.25);
        assert!(
            (12..=2000).contains(&objects_pass),
            "{objects_pass} anchors above 0.25"
        );
        let (_, pairs) = candidates(&s.pred, 80, 0.001);
        // ~2% of 672,000 background pairs.
        assert!(
            (5_000..=30_000).contains(&pairs),
            "{pairs} pairs above 0.001"
        );
    }
}

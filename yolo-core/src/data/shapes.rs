//! The built-in `shapes` demo dataset: a deterministic synthetic detection dataset.
//!
//! Three classes (`rectangle`, `ellipse`, `triangle`) in flat colours from one shared palette
//! (colour does not give the class away) on seeded textured backgrounds (noise, gradients,
//! stripes). 1-4 objects per image, from ~8 px to about half the image; objects may overlap
//! but each keeps at least [`MIN_VISIBLE`] of its pixels and a visible pixel on every edge of
//! its box. About 5% of the images are background only. Image sides are drawn from
//! `[0.75, 1.0] * imgsz`, so most images are rectangular.
//!
//! [`generate`] writes the real YOLO layout:
//!
//! ```text
//! <root>/data.yaml
//! <root>/images/{train,val}/000000.png
//! <root>/labels/{train,val}/000000.txt   # rows `cls cx cy w h`, normalised, 6 decimals
//! ```
//!
//! Every image comes from its own RNG seeded with `(seed, split, index)`, so the files are
//! byte-identical for a seed however rayon schedules the work, and [`render`] gives one image
//! and its objects without touching the disk.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::{CoreError, Result};

/// Class names, in class-index order.
pub const CLASS_NAMES: [&str; 3] = ["rectangle", "ellipse", "triangle"];

/// Fraction of its own pixels every object keeps visible after later objects are drawn.
pub const MIN_VISIBLE: f64 = 0.92;

/// Object colours, shared by all classes.
pub const PALETTE: [[u8; 3]; 8] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
];

/// Probability that an image has no objects.
const BACKGROUND_FRACTION: f64 = 0.05;
/// Smallest object side in pixels.
const MIN_SIDE: f64 = 8.0;
/// Placement attempts per object before it is dropped.
const ATTEMPTS: usize = 20;

/// The class of a drawn object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ShapeClass {
    Rectangle,
    Ellipse,
    Triangle,
}

impl ShapeClass {
    /// All classes in class-index order.
    pub const ALL: [ShapeClass; 3] = [Self::Rectangle, Self::Ellipse, Self::Triangle];

    /// The class index written to the label files.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The class name in `data.yaml`.
    pub fn name(self) -> &'static str {
        CLASS_NAMES[self.index()]
    }
}

/// A dataset split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Split {
    Train,
    Val,
}

impl Split {
    /// The folder name (`train`, `val`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Val => "val",
        }
    }
}

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShapesConfig {
    /// Number of training images.
    pub train: usize,
    /// Number of validation images.
    pub val: usize,
    /// Longest possible image side; each side is drawn from `[0.75, 1.0] * imgsz`.
    pub imgsz: u32,
    /// Seed of the whole dataset.
    pub seed: u64,
    /// Up to this many unlabelled distractors per image (0: none, the default): rings,
    /// crosses and thick lines in the objects' palette, drawn under the objects, so a
    /// detector has to tell the three classes from other coloured shapes.
    #[serde(default)]
    pub clutter: u32,
}

impl Default for ShapesConfig {
    fn default() -> Self {
        Self {
            train: 200,
            val: 50,
            imgsz: 160,
            seed: 0,
            clutter: 0,
        }
    }
}

/// One drawn object: its class, colour and tight pixel box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShapeObject {
    /// The class.
    pub class: ShapeClass,
    /// Fill colour (RGB); every pixel of the shape has exactly this value.
    pub color: [u8; 3],
    /// Left edge of the tight box, first covered column.
    pub x1: u32,
    /// Top edge, first covered row.
    pub y1: u32,
    /// Right edge, one past the last covered column.
    pub x2: u32,
    /// Bottom edge, one past the last covered row.
    pub y2: u32,
}

impl ShapeObject {
    /// The box as a normalised YOLO label `[cx, cy, w, h]` for an image of `width` x `height`.
    pub fn xywhn(&self, width: u32, height: u32) -> [f64; 4] {
        let (w, h) = (width as f64, height as f64);
        [
            (self.x1 + self.x2) as f64 / 2.0 / w,
            (self.y1 + self.y2) as f64 / 2.0 / h,
            (self.x2 - self.x1) as f64 / w,
            (self.y2 - self.y1) as f64 / h,
        ]
    }

    /// The label row `cls cx cy w h` with 6 decimals.
    pub fn label_row(&self, width: u32, height: u32) -> String {
        let [cx, cy, w, h] = self.xywhn(width, height);
        format!("{} {cx:.6} {cy:.6} {w:.6} {h:.6}", self.class.index())
    }
}

/// One generated image with its objects (in drawing order).
#[derive(Debug, Clone)]
pub struct ShapesImage {
    /// The image.
    pub image: RgbImage,
    /// The objects; empty for a background image.
    pub objects: Vec<ShapeObject>,
}

impl ShapesImage {
    /// The label file contents: one row per object, each ending in a newline.
    pub fn label_text(&self) -> String {
        let (w, h) = self.image.dimensions();
        self.objects
            .iter()
            .map(|o| o.label_row(w, h) + "\n")
            .collect()
    }
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShapesSummary {
    /// The dataset root.
    pub root: PathBuf,
    /// `<root>/data.yaml`.
    pub data_yaml: PathBuf,
    /// Training images written.
    pub train_images: usize,
    /// Validation images written.
    pub val_images: usize,
    /// Objects per class, in class-index order, over both splits.
    pub objects_per_class: [usize; 3],
    /// Images without objects, over both splits.
    pub background_images: usize,
}

/// The `data.yaml` written next to the images.
#[derive(serde::Serialize)]
struct DataYaml<'a> {
    path: String,
    train: &'a str,
    val: &'a str,
    nc: usize,
    names: [&'a str; 3],
}

/// The RNG of one image: independent of every other image and of thread scheduling.
fn image_rng(seed: u64, split: Split, index: usize) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(split as u64).to_le_bytes());
    key[16..24].copy_from_slice(&(index as u64).to_le_bytes());
    key[24..].copy_from_slice(b"shapes\0\0");
    ChaCha8Rng::from_seed(key)
}

fn check(config: &ShapesConfig) -> Result<()> {
    if config.imgsz < 32 {
        return Err(CoreError::Config {
            field: "shapes.imgsz".into(),
            message: format!("{} is too small; use at least 32", config.imgsz),
        });
    }
    if config.imgsz > crate::model::MAX_IMGSZ {
        return Err(CoreError::Config {
            field: "shapes.imgsz".into(),
            message: format!("{} is more than {}", config.imgsz, crate::model::MAX_IMGSZ),
        });
    }
    if config.clutter > 100 {
        return Err(CoreError::Config {
            field: "shapes.clutter".into(),
            message: format!("{} distractors per image is more than 100", config.clutter),
        });
    }
    Ok(())
}

/// Renders image `index` of `split`, deterministic in `(config.seed, split, index)`.
///
/// # Panics
/// If `config.imgsz < 32` ([`generate`] reports that as an error instead).
pub fn render(config: &ShapesConfig, split: Split, index: usize) -> ShapesImage {
    assert!(config.imgsz >= 32, "shapes: imgsz must be at least 32");
    let mut rng = image_rng(config.seed, split, index);
    let side = |rng: &mut ChaCha8Rng| (config.imgsz as f64 * rng.random_range(0.75..=1.0)).round();
    let (width, height) = (side(&mut rng) as u32, side(&mut rng) as u32);
    let mut image = background(&mut rng, width, height);
    // Without clutter no draw is made, so datasets without it are what they always were.
    if config.clutter > 0 {
        for _ in 0..rng.random_range(0..=config.clutter) {
            draw_distractor(&mut rng, &mut image);
        }
    }

    let n = if rng.random_bool(BACKGROUND_FRACTION) {
        0
    } else {
        rng.random_range(1..=4)
    };
    // Owner of every pixel (object index + 1, 0 = background) and visible pixels per object.
    let mut owner = vec![0u8; (width * height) as usize];
    let mut visible: Vec<usize> = Vec::new();
    let mut shapes: Vec<(ShapeObject, Vec<u32>)> = Vec::new();
    for _ in 0..n {
        for _ in 0..ATTEMPTS {
            let (obj, pixels) = random_shape(&mut rng, width, height);
            if occludes_too_much(obj.color, &owner, &visible, &shapes, &pixels, width) {
                continue;
            }
            let id = shapes.len() as u8 + 1;
            for &p in &pixels {
                let prev = owner[p as usize];
                if prev > 0 {
                    visible[prev as usize - 1] -= 1;
                }
                owner[p as usize] = id;
            }
            visible.push(pixels.len());
            shapes.push((obj, pixels));
            break;
        }
    }
    for (obj, pixels) in &shapes {
        for &p in pixels {
            image.put_pixel(p % width, p / width, Rgb(obj.color));
        }
    }
    ShapesImage {
        image,
        objects: shapes.into_iter().map(|(o, _)| o).collect(),
    }
}

/// Whether drawing `pixels` in `color` on top would leave an earlier object with less than
/// [`MIN_VISIBLE`] of its pixels or an edge row/column of its box without a visible pixel, or
/// would touch an object of the same colour (the two would merge into one blob).
fn occludes_too_much(
    color: [u8; 3],
    owner: &[u8],
    visible: &[usize],
    shapes: &[(ShapeObject, Vec<u32>)],
    pixels: &[u32],
    width: u32,
) -> bool {
    let mut covered = vec![0usize; shapes.len()];
    for &p in pixels {
        let o = owner[p as usize];
        if o > 0 {
            covered[o as usize - 1] += 1;
        }
    }
    shapes.iter().enumerate().any(|(i, (obj, own))| {
        if covered[i] == 0 {
            return false;
        }
        if obj.color == color {
            return true;
        }
        let left = visible[i] - covered[i];
        if (left as f64) < MIN_VISIBLE * own.len() as f64 {
            return true;
        }
        // Each edge of the box keeps a pixel that is still this object's.
        let id = i as u8 + 1;
        // `pixels` is in row-major order, hence sorted.
        let still = |p: &u32| owner[*p as usize] == id && pixels.binary_search(p).is_err();
        let on_edge =
            |f: &dyn Fn(u32, u32) -> bool| own.iter().any(|p| f(p % width, p / width) && still(p));
        !(on_edge(&|x, _| x == obj.x1)
            && on_edge(&|x, _| x + 1 == obj.x2)
            && on_edge(&|_, y| y == obj.y1)
            && on_edge(&|_, y| y + 1 == obj.y2))
    })
}

/// One random shape inside the image: the object with its tight box and its pixels
/// (`y * width + x`).
fn random_shape(rng: &mut ChaCha8Rng, width: u32, height: u32) -> (ShapeObject, Vec<u32>) {
    let class = ShapeClass::ALL[rng.random_range(0..3)];
    let color = PALETTE[rng.random_range(0..PALETTE.len())];
    // Long side log-uniform from MIN_SIDE to half the short image side, aspect in [0.5, 2].
    let max_side = (width.min(height) as f64 / 2.0).max(MIN_SIDE + 1.0);
    let long = (rng.random_range(MIN_SIDE.ln()..=max_side.ln())).exp();
    let aspect: f64 = rng.random_range(0.5..=1.0);
    let (bw, bh) = if rng.random_bool(0.5) {
        (long, (long * aspect).max(MIN_SIDE.min(long)))
    } else {
        ((long * aspect).max(MIN_SIDE.min(long)), long)
    };
    let (bw, bh) = (bw.round() as u32, bh.round() as u32);
    let x0 = rng.random_range(0..=width - bw);
    let y0 = rng.random_range(0..=height - bh);

    // Pixel-centre tests in box-local coordinates.
    let inside: Box<dyn Fn(f64, f64) -> bool> = match class {
        ShapeClass::Rectangle => Box::new(|_, _| true),
        ShapeClass::Ellipse => {
            let (a, b) = (bw as f64 / 2.0, bh as f64 / 2.0);
            Box::new(move |x, y| ((x - a) / a).powi(2) + ((y - b) / b).powi(2) <= 1.0)
        }
        ShapeClass::Triangle => {
            // Base along one full edge of the box, apex anywhere on the opposite edge: half
            // of the box is covered whatever the orientation.
            let (w, h) = (bw as f64, bh as f64);
            let t: f64 = rng.random_range(0.0..=1.0);
            let v = match rng.random_range(0..4) {
                0 => [(0.0, h), (w, h), (t * w, 0.0)],
                1 => [(0.0, 0.0), (w, 0.0), (t * w, h)],
                2 => [(0.0, 0.0), (0.0, h), (w, t * h)],
                _ => [(w, 0.0), (w, h), (0.0, t * h)],
            };
            Box::new(move |x, y| in_triangle(v, x, y))
        }
    };
    let mut pixels = Vec::new();
    let (mut x1, mut y1, mut x2, mut y2) = (u32::MAX, u32::MAX, 0, 0);
    for y in 0..bh {
        for x in 0..bw {
            if inside(x as f64 + 0.5, y as f64 + 0.5) {
                let (px, py) = (x0 + x, y0 + y);
                pixels.push(py * width + px);
                x1 = x1.min(px);
                y1 = y1.min(py);
                x2 = x2.max(px + 1);
                y2 = y2.max(py + 1);
            }
        }
    }
    assert!(!pixels.is_empty(), "shapes of at least 8 px cover pixels");
    let obj = ShapeObject {
        class,
        color,
        x1,
        y1,
        x2,
        y2,
    };
    (obj, pixels)
}

/// One unlabelled distractor (ring, cross or thick line) in a palette colour, anywhere in the
/// image, from [`MIN_SIDE`] to half the short image side. Drawn before the labelled objects,
/// which are painted over it and keep every pixel.
fn draw_distractor(rng: &mut ChaCha8Rng, image: &mut RgbImage) {
    let (width, height) = image.dimensions();
    let color = Rgb(PALETTE[rng.random_range(0..PALETTE.len())]);
    let max_side = (width.min(height) as f64 / 2.0).max(MIN_SIDE + 1.0);
    let side = (rng.random_range(MIN_SIDE.ln()..=max_side.ln())).exp();
    let cx = rng.random_range(0.0..width as f64);
    let cy = rng.random_range(0.0..height as f64);
    let r = side / 2.0;
    let thick = rng.random_range(1.5..=(r / 3.0).max(2.0));
    let kind = rng.random_range(0..3);
    let angle: f64 = rng.random_range(0.0..std::f64::consts::PI);
    let (ca, sa) = (angle.cos(), angle.sin());
    // Pixel-centre test relative to the centre, in the distractor's turned frame.
    let inside = |dx: f64, dy: f64| -> bool {
        let (u, v) = (dx * ca + dy * sa, -dx * sa + dy * ca);
        let bar = |a: f64, b: f64| a.abs() <= r && b.abs() <= thick / 2.0;
        match kind {
            // Ring: an annulus, hollow unlike the ellipse class.
            0 => {
                let d = dx.hypot(dy);
                d <= r && d >= r - thick
            }
            // Cross: two perpendicular bars through the centre.
            1 => bar(u, v) || bar(v, u),
            // Line: one bar of length `side`.
            _ => bar(u, v),
        }
    };
    let x0 = (cx - r).floor().max(0.0) as u32;
    let y0 = (cy - r).floor().max(0.0) as u32;
    let x1 = ((cx + r).ceil() as u32).min(width);
    let y1 = ((cy + r).ceil() as u32).min(height);
    for y in y0..y1 {
        for x in x0..x1 {
            if inside(x as f64 + 0.5 - cx, y as f64 + 0.5 - cy) {
                image.put_pixel(x, y, color);
            }
        }
    }
}

/// Point-in-triangle by the signs of the three edge functions (either winding).
fn in_triangle(v: [(f64, f64); 3], x: f64, y: f64) -> bool {
    let edge =
        |(ax, ay): (f64, f64), (bx, by): (f64, f64)| (bx - ax) * (y - ay) - (by - ay) * (x - ax);
    let d = [edge(v[0], v[1]), edge(v[1], v[2]), edge(v[2], v[0])];
    d.iter().all(|&e| e >= 0.0) || d.iter().all(|&e| e <= 0.0)
}

/// A muted, seeded background: noise, a gradient or stripes, with light per-pixel noise.
fn background(rng: &mut ChaCha8Rng, width: u32, height: u32) -> RgbImage {
    let muted = |rng: &mut ChaCha8Rng| -> [f64; 3] {
        let base = rng.random_range(60.0..190.0);
        [0, 1, 2].map(|_| base + rng.random_range(-35.0..35.0))
    };
    let (c0, c1) = (muted(rng), muted(rng));
    let kind = rng.random_range(0..3);
    let angle: f64 = rng.random_range(0.0..std::f64::consts::PI);
    let (dx, dy) = (angle.cos(), angle.sin());
    let period = rng.random_range(6.0..24.0);
    let span = (width as f64).hypot(height as f64);
    let noise_amp = if kind == 0 { 40.0 } else { 8.0 };
    let mut img = RgbImage::new(width, height);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let proj = x as f64 * dx + y as f64 * dy;
        let t = match kind {
            0 => 0.5,
            1 => (proj / span).abs().min(1.0),
            _ => (proj / period).floor().rem_euclid(2.0),
        };
        let n = rng.random_range(-noise_amp..=noise_amp);
        *px = Rgb([0, 1, 2].map(|c| (c0[c] * (1.0 - t) + c1[c] * t + n).clamp(0.0, 255.0) as u8));
    }
    img
}

/// Generates the dataset under `root` (created if needed; files of the same name are
/// overwritten, others are left alone) in parallel, byte-identical for a given config.
pub fn generate(config: &ShapesConfig, root: &Path) -> Result<ShapesSummary> {
    check(config)?;
    // Another dataset's files would be overwritten image by image; a shapes dataset (its
    // data.yaml starts with the comment written below) is regenerated in place.
    let yaml = root.join("data.yaml");
    match std::fs::read(&yaml) {
        Ok(bytes) if bytes.starts_with(b"# shapes:") => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        _ => {
            return Err(CoreError::Dataset {
                path: yaml,
                message: "this folder holds another dataset, which the shapes images would overwrite; choose another output folder".into(),
            })
        }
    }
    for split in [Split::Train, Split::Val] {
        for kind in ["images", "labels"] {
            let dir = root.join(kind).join(split.name());
            std::fs::create_dir_all(&dir).map_err(|e| CoreError::io(&dir, e))?;
        }
    }
    let jobs: Vec<(Split, usize)> = (0..config.train)
        .map(|i| (Split::Train, i))
        .chain((0..config.val).map(|i| (Split::Val, i)))
        .collect();
    let counts = jobs
        .par_iter()
        .map(|&(split, index)| -> Result<[usize; 4]> {
            let sample = render(config, split, index);
            let stem = format!("{index:06}");
            let img_path = root
                .join("images")
                .join(split.name())
                .join(format!("{stem}.png"));
            let mut png = Vec::new();
            let encoder = image::codecs::png::PngEncoder::new_with_quality(
                &mut png,
                image::codecs::png::CompressionType::Fast,
                image::codecs::png::FilterType::Adaptive,
            );
            sample
                .image
                .write_with_encoder(encoder)
                .map_err(|e| CoreError::io(&img_path, std::io::Error::other(e)))?;
            std::fs::write(&img_path, &png).map_err(|e| CoreError::io(&img_path, e))?;
            let lbl_path = root
                .join("labels")
                .join(split.name())
                .join(format!("{stem}.txt"));
            std::fs::write(&lbl_path, sample.label_text())
                .map_err(|e| CoreError::io(&lbl_path, e))?;
            let mut c = [0usize; 4];
            for o in &sample.objects {
                c[o.class.index()] += 1;
            }
            c[3] = sample.objects.is_empty() as usize;
            Ok(c)
        })
        .try_reduce(
            || [0; 4],
            |a, b| Ok([a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3]]),
        )?;

    let abs_root = std::path::absolute(root).map_err(|e| CoreError::io(root, e))?;
    let yaml = serde_yaml::to_string(&DataYaml {
        path: abs_root.to_string_lossy().into_owned(),
        train: "images/train",
        val: "images/val",
        nc: CLASS_NAMES.len(),
        names: CLASS_NAMES,
    })
    .expect("data.yaml serialises");
    let header = format!(
        "# shapes: synthetic demo dataset from yolo-core (train {}, val {}, imgsz {}, seed {})\n",
        config.train, config.val, config.imgsz, config.seed
    );
    let data_yaml = root.join("data.yaml");
    crate::files::write_atomic(&data_yaml, (header + &yaml).as_bytes())?;
    Ok(ShapesSummary {
        root: abs_root,
        data_yaml,
        train_images: config.train,
        val_images: config.val,
        objects_per_class: [counts[0], counts[1], counts[2]],
        background_images: counts[3],
    })
}

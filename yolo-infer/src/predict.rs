//! `yolo-infer predict`: detections on files, folders, globs and image lists.
//!
//! Outputs go to one run folder (`runs/predict/predict`, then `predict2`, ... as Ultralytics
//! names them): `json/<stem>.json` per image, `labels/<stem>.txt` (`--save-txt`: YOLO rows
//! `class cx cy w h conf`, normalised), `<stem>.jpg` annotated (`--save`; `.png`, `.bmp`,
//! `.tif` sources keep their format) and
//! `predictions.json` (`--save-coco`: COCO results, `[{image_id, category_id, bbox, score}]`).
//! Two sources with the same stem get `_2`, `_3`, ... so nothing is overwritten. Every file is
//! written atomically inside the run folder and nowhere else. An image that cannot be read is
//! reported and skipped; the others go on.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Serialize;
use yolo_core::data::dataset::image_files;
use yolo_core::data::image::{decode_rgb8_limited, has_image_extension};
use yolo_core::plots::{draw_boxes, LabelledBox};
use yolo_core::runs::increment_path;
use yolo_core::files::write_atomic;

use crate::detector::{DetectOptions, Detection, Detector, Timings};

/// What goes to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per image, one a line, as each batch finishes.
    Jsonl,
    /// One JSON array of every image at the end.
    Json,
    /// Nothing (files only).
    None,
}

/// Arguments of one predict run.
#[derive(Debug, Clone)]
pub struct PredictArgs {
    pub weights: PathBuf,
    /// A file, folder, glob or `.txt` list of images.
    pub source: String,
    pub imgsz: u32,
    pub batch: usize,
    pub opts: DetectOptions,
    pub max_pixels: u64,
    pub project: PathBuf,
    pub name: String,
    pub exist_ok: bool,
    pub format: Format,
    pub save: bool,
    pub save_txt: bool,
    pub save_coco: bool,
    /// Backend (`--device`: cuda, wgpu, flex); `None`: `BURN_DEVICE`, else the machine's best.
    pub device: Option<String>,
    /// Half precision on a GPU backend ([`yolo_core::amp::use_half`]).
    pub half: bool,
}

/// The result for one image, as printed and saved.
#[derive(Debug, Clone, Serialize)]
pub struct ImageResult {
    #[serde(serialize_with = "yolo_core::files::serialize_path_lossy")]
    pub image: PathBuf,
    pub width: u32,
    pub height: u32,
    pub detections: Vec<Detection>,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct PredictSummary {
    #[serde(serialize_with = "yolo_core::files::serialize_path_lossy")]
    pub run_dir: PathBuf,
    pub images: usize,
    /// Sources that could not be read or decoded, with the reason.
    #[serde(serialize_with = "yolo_core::files::serialize_path_pairs_lossy")]
    pub skipped: Vec<(PathBuf, String)>,
    pub detections: usize,
    /// Per-image milliseconds.
    pub speed: Timings,
}

/// The image files a `--source` names: a folder (searched recursively), an image file, a
/// `.txt` list of images (one per line, `./x` relative to the list), or a glob pattern.
/// Sorted as Ultralytics sorts them.
///
/// # Errors
/// A source that does not exist, a glob that matches nothing, a folder without images.
pub fn resolve_source(source: &str) -> anyhow::Result<Vec<PathBuf>> {
    let p = Path::new(source);
    if p.is_dir() || (p.is_file() && p.extension().is_some_and(|e| e == "txt")) {
        return Ok(image_files(&[p.to_path_buf()], Path::new("."))?);
    }
    if p.is_file() {
        return Ok(vec![p.to_path_buf()]);
    }
    if source.contains(['*', '?', '[']) {
        let mut files: Vec<PathBuf> = glob::glob(source)
            .with_context(|| format!("invalid glob pattern `{source}`"))?
            .filter_map(|r| r.ok())
            .filter(|f| f.is_file() && has_image_extension(f))
            .collect();
        files.sort();
        if files.is_empty() {
            bail!("no images match `{source}`");
        }
        return Ok(files);
    }
    bail!("{source}: no such file or folder")
}

/// Names the outputs of each source: its stem, with `_2`, `_3`, ... for repeats.
fn unique_stems(files: &[PathBuf]) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    files
        .iter()
        .map(|f| {
            let stem = f
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "image".into());
            let n = seen.entry(stem.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                stem
            } else {
                format!("{stem}_{n}")
            }
        })
        .collect()
}

/// `%g`-like: up to 6 significant digits, no trailing zeros.
fn g(v: f32) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// YOLO txt rows `class cx cy w h conf`, normalised to the image.
pub fn txt_rows(r: &ImageResult) -> String {
    let (w, h) = (r.width as f32, r.height as f32);
    r.detections
        .iter()
        .map(|d| {
            let [x1, y1, x2, y2] = d.xyxy;
            format!(
                "{} {} {} {} {} {}\n",
                d.class_id,
                g((x1 + x2) / 2.0 / w),
                g((y1 + y2) / 2.0 / h),
                g((x2 - x1) / w),
                g((y2 - y1) / h),
                g(d.score)
            )
        })
        .collect()
}

/// COCO results rows: `image_id` is the stem as a number when it is one (as Ultralytics'
/// `save_json`), else the stem; `bbox` is `[x, y, w, h]`, rounded to 3 decimals; category ids
/// are the class ids.
fn coco_rows(stem: &str, r: &ImageResult) -> Vec<serde_json::Value> {
    let id = match stem.parse::<u64>() {
        Ok(n) => serde_json::json!(n),
        Err(_) => serde_json::json!(stem),
    };
    let r3 = |v: f32| (v as f64 * 1000.0).round() / 1000.0;
    r.detections
        .iter()
        .map(|d| {
            let [x1, y1, x2, y2] = d.xyxy;
            serde_json::json!({
                "image_id": id,
                "category_id": d.class_id,
                "bbox": [r3(x1), r3(y1), r3(x2 - x1), r3(y2 - y1)],
                "score": (d.score as f64 * 1e5).round() / 1e5,
            })
        })
        .collect()
}

/// The annotated image's file name: the source's extension for lossless formats (png, bmp,
/// tif, tiff), `.jpg` otherwise (as Ultralytics keeps the source's suffix).
fn annotated_name(stem: &str, source: &Path) -> String {
    let ext = source
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" | "bmp" | "tif" | "tiff" => format!("{stem}.{ext}"),
        _ => format!("{stem}.jpg"),
    }
}

fn save_annotated(path: &Path, img: &image::RgbImage, r: &ImageResult) -> anyhow::Result<()> {
    let mut canvas = img.clone();
    let boxes: Vec<LabelledBox> = r
        .detections
        .iter()
        .map(|d| LabelledBox {
            xyxy: d.xyxy,
            class: d.class_id,
            label: format!("{} {:.2}", d.class_name, d.score),
        })
        .collect();
    draw_boxes(&mut canvas, &boxes);
    let mut bytes = Vec::new();
    match image::ImageFormat::from_path(path) {
        Ok(f) if f != image::ImageFormat::Jpeg => canvas
            .write_to(&mut std::io::Cursor::new(&mut bytes), f)
            .context("encoding the annotated image")?,
        _ => image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
            .encode_image(&canvas)
            .context("encoding the annotated image")?,
    }
    write_atomic(path, &bytes)?;
    Ok(())
}

/// Runs predict: loads the model once, goes through the sources in batches, writes the outputs
/// and prints per `format`. A progress bar shows on stderr when it is a terminal and there is
/// more than one image.
///
/// # Errors
/// Bad weights or source; an output file that cannot be written. Unreadable images are not
/// errors (see [`PredictSummary::skipped`]).
pub fn run(a: &PredictArgs) -> anyhow::Result<PredictSummary> {
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let selected = yolo_core::backend::select_device_flag(a.device.as_deref())?;
    let mut det = Detector::load(&a.weights, a.imgsz, &selected.device)?;
    if yolo_core::amp::use_half(a.half, &selected, |w| eprintln!("warning: {w}")) {
        det = det.half();
    }
    a.opts
        .validate(det.names().len())
        .map_err(anyhow::Error::from)?;
    let files = resolve_source(&a.source)?;
    let stems = unique_stems(&files);
    let run_dir = increment_path(&a.project.join(&a.name), a.exist_ok);
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("creating {}", run_dir.display()))?;

    let bar = if files.len() > 1 && std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(files.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut stdout = std::io::stdout().lock();
    let mut all = Vec::new();
    let mut coco = Vec::new();
    let mut skipped = Vec::new();
    let mut total = Timings::default();
    let mut n_images = 0usize;
    let mut n_det = 0usize;
    let mut stdout_open = true;
    for chunk in (0..files.len()).collect::<Vec<_>>().chunks(a.batch) {
        let decoded: Vec<(usize, Result<image::RgbImage, String>)> = chunk
            .iter()
            .map(|&i| {
                let img = std::fs::read(&files[i])
                    .map_err(|e| e.to_string())
                    .and_then(|b| {
                        decode_rgb8_limited(&b, &files[i], a.max_pixels)
                            .map(|d| d.image)
                            .map_err(|e| e.to_string())
                    });
                (i, img)
            })
            .collect();
        let mut ok: Vec<(usize, image::RgbImage)> = Vec::new();
        for (i, r) in decoded {
            match r {
                Ok(img) => ok.push((i, img)),
                Err(e) => {
                    bar.suspend(|| eprintln!("skipped {}: {e}", files[i].display()));
                    skipped.push((files[i].clone(), e));
                }
            }
        }
        bar.inc(chunk.len() as u64);
        if ok.is_empty() {
            continue;
        }
        let images: Vec<&image::RgbImage> = ok.iter().map(|(_, img)| img).collect();
        let opts = vec![&a.opts; images.len()];
        let (dets, t) = det.detect_batch(&images, &opts)?;
        total.preprocess_ms += t.preprocess_ms;
        total.inference_ms += t.inference_ms;
        total.postprocess_ms += t.postprocess_ms;
        for ((i, img), d) in ok.iter().zip(dets) {
            n_images += 1;
            n_det += d.len();
            let r = ImageResult {
                image: files[*i].clone(),
                width: img.width(),
                height: img.height(),
                detections: d,
            };
            let stem = &stems[*i];
            let json = serde_json::to_vec_pretty(&r).expect("results serialise");
            write_atomic(&run_dir.join("json").join(format!("{stem}.json")), &json)?;
            if a.save_txt {
                write_atomic(
                    &run_dir.join("labels").join(format!("{stem}.txt")),
                    txt_rows(&r).as_bytes(),
                )?;
            }
            if a.save {
                let name = annotated_name(stem, &files[*i]);
                save_annotated(&run_dir.join(name), img, &r)?;
            }
            if a.save_coco {
                coco.extend(coco_rows(stem, &r));
            }
            match a.format {
                Format::Jsonl if stdout_open => {
                    let line = serde_json::to_string(&r).expect("results serialise");
                    match bar.suspend(|| writeln!(stdout, "{line}")) {
                        // A reader that stopped (`| head`) ends the printing, not the run.
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                            stdout_open = false
                        }
                        other => other.context("writing to stdout")?,
                    }
                }
                Format::Jsonl => {}
                Format::Json => all.push(r),
                Format::None => {}
            }
        }
    }
    bar.finish_and_clear();
    if a.format == Format::Json {
        serde_json::to_writer_pretty(&mut stdout, &all).context("writing to stdout")?;
        writeln!(stdout).context("writing to stdout")?;
    }
    if a.save_coco {
        let bytes = serde_json::to_vec(&coco).expect("COCO rows serialise");
        write_atomic(&run_dir.join("predictions.json"), &bytes)?;
    }
    let per = |v: f64| if n_images == 0 { 0.0 } else { v / n_images as f64 };
    let speed = Timings {
        preprocess_ms: per(total.preprocess_ms),
        inference_ms: per(total.inference_ms),
        postprocess_ms: per(total.postprocess_ms),
    };
    Ok(PredictSummary {
        run_dir,
        images: n_images,
        skipped,
        detections: n_det,
        speed,
    })
}

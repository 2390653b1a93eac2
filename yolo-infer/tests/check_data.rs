//! `yolo-infer check-data` on a generated corpus holding every defect the checks know and
//! every legal oddity: each defect's file is named in the printed report and in the JSON,
//! no legal file is, exit codes and Tekton result files are as documented, and `val` prints
//! and saves the same findings.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use image::{ImageEncoder, Rgb, RgbImage};
use yolo_core::data::dataset::img2label_path;
use yolo_core::data::shapes::{generate, ShapesConfig};

mod common;
use common::bmp_header;

fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

fn encode(w: u32, h: u32, seed: u8, jpeg: bool) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x * 7) as u8 ^ seed, (y * 5) as u8, seed.wrapping_mul(31)])
    });
    let mut out = Vec::new();
    if jpeg {
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
    } else {
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
    }
    out
}

/// Writes `images/<split>/<name>` and, when given, its label file.
fn put(root: &Path, split: &str, name: &str, image: &[u8], label: Option<&[u8]>) -> PathBuf {
    let img = root.join("images").join(split).join(name);
    write(&img, image);
    if let Some(text) = label {
        write(&img2label_path(&img), text);
    }
    img
}

const GOOD: &[u8] = b"0 0.5 0.5 0.2 0.2\n";

/// The corpus: (file that must be named, finding kind) for every defect, and the legal files
/// that must not be named.
struct Corpus {
    yaml: PathBuf,
    defects: Vec<(PathBuf, &'static str)>,
    legal: Vec<PathBuf>,
}

fn corpus(root: &Path) -> Corpus {
    let mut defects = Vec::new();
    let mut legal = Vec::new();
    let mut seed = 0u8;
    let mut png = || {
        seed += 1;
        encode(32, 24, seed, false)
    };
    let label = |img: &Path| img2label_path(img);

    // Label rows (each drops its image, as Ultralytics does).
    let rows: [(&str, &[u8], &str); 9] = [
        ("columns", b"0 0.5 0.5 0.2\n", "ColumnCount"),
        ("class_range", b"7 0.5 0.5 0.2 0.2\n", "ClassOutOfRange"),
        ("nan", b"0 nan 0.5 0.2 0.2\n", "OutOfBounds"),
        ("inf", b"0 0.5 inf 0.2 0.2\n", "OutOfBounds"),
        ("above_one", b"0 0.5 0.5 1.3 0.2\n", "OutOfBounds"),
        ("negative", b"0 0.5 0.5 -0.2 0.2\n", "Negative"),
        ("text", b"0 0.5 abc 0.2 0.2\n", "Unparsable"),
        ("non_integer", b"0.5 0.5 0.5 0.2 0.2\n", "NonIntegerClass"),
        ("mixed", b"0 0.1 0.1 0.3 0.1 0.3 0.3\n0 0.5 0.5 0.2 0.2\n", "MixedRows"),
    ];
    for (name, text, kind) in rows {
        let img = put(root, "train", &format!("{name}.png"), &png(), Some(text));
        defects.push((label(&img), kind));
    }
    // Label files that cannot be used.
    let img = put(root, "train", "latin1.png", &png(), Some(b"0 0.5 0.5 0.2 0.2 \xe9\n"));
    defects.push((label(&img), "LabelUnreadable"));
    // Images.
    let mut truncated = encode(40, 30, 99, true);
    truncated.truncate(truncated.len() / 2);
    defects.push((put(root, "train", "truncated.jpg", &truncated, Some(GOOD)), "ImageCorrupt"));
    defects.push((
        put(root, "train", "notes.jpg", b"this is not an image\n", Some(GOOD)),
        "ImageCorrupt",
    ));
    defects.push((put(root, "train", "zero.png", b"", Some(GOOD)), "ImageCorrupt"));
    let tiny = encode(8, 8, 3, false);
    defects.push((put(root, "train", "tiny.png", &tiny, Some(GOOD)), "ImageTooSmall"));
    let mut gif = Vec::new();
    image::codecs::gif::GifEncoder::new(&mut gif)
        .encode(&[0u8; 32 * 32 * 4], 32, 32, image::ExtendedColorType::Rgba8)
        .unwrap();
    defects.push((put(root, "train", "gif.jpg", &gif, Some(GOOD)), "ImageFormat"));
    defects.push((
        put(root, "train", "huge.bmp", &bmp_header(50_000, 50_000), Some(GOOD)),
        "ImageTooLarge",
    ));
    // Fixed or kept with a warning.
    let img = put(
        root,
        "train",
        "dup_rows.png",
        &png(),
        Some(b"0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n"),
    );
    defects.push((label(&img), "Duplicate"));
    let img = put(
        root,
        "train",
        "polygon.png",
        &png(),
        Some(b"0 0.1 0.1 0.4 0.1 0.4 0.4 0.1 0.4\n"),
    );
    defects.push((label(&img), "Polygon"));
    let img = put(root, "train", "zero_box.png", &png(), Some(b"0 0.5 0.5 0 0.2\n"));
    defects.push((label(&img), "ZeroSize"));
    let mut trailing = encode(40, 30, 7, true);
    trailing.extend_from_slice(b"garbage after the end marker");
    defects.push((put(root, "train", "trailing.jpg", &trailing, Some(GOOD)), "JpegTrailingData"));
    // A label whose image was renamed away.
    let orphan = root.join("labels/train/lost_image.txt");
    write(&orphan, GOOD);
    defects.push((orphan, "LabelWithoutImage"));
    // The same image in train and val.
    let shared = encode(48, 40, 200, false);
    put(root, "train", "shared.png", &shared, Some(GOOD));
    defects.push((put(root, "val", "copy_of_shared.png", &shared, Some(GOOD)), "DuplicateImage"));

    // Legal oddities: none of these may be named.
    let odd: [(&str, Option<&[u8]>); 6] = [
        ("blank_lines.png", Some(b"\n\n0 0.5 0.5 0.2 0.2\n\n\n")),
        ("trailing_spaces.png", Some(b"0 0.5 0.5 0.2 0.2   \t\n1 0.3 0.3 0.1 0.1  \n")),
        ("crlf.png", Some(b"0 0.5 0.5 0.2 0.2\r\n1 0.3 0.3 0.1 0.1\r\n")),
        ("bom.png", Some(b"\xef\xbb\xbf0 0.5 0.5 0.2 0.2\n")),
        ("empty_label.png", Some(b"")),
        ("no_label.png", None),
    ];
    for (name, text) in odd {
        let img = put(root, "train", name, &png(), text);
        legal.push(img.clone());
        legal.push(label(&img));
    }
    legal.push(put(root, "val", "fine.png", &png(), Some(GOOD)));

    // A split whose labels folder is missing altogether (a wrong path).
    let t = put(root, "test", "a.png", &png(), None);
    put(root, "test", "b.png", &png(), None);
    defects.push((t.parent().unwrap().to_path_buf(), "NoLabelFiles"));

    let yaml = root.join("data.yaml");
    write(
        &yaml,
        "path: .\ntrain: images/train\nval: images/val\ntest: images/test\nnames: [a, b]\n",
    );
    Corpus { yaml, defects, legal }
}

fn check_data(args: &[&str], yaml: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_yolo-infer"))
        .arg("check-data")
        .arg("--data")
        .arg(yaml)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn every_defect_named_no_legal_file_named() {
    let tmp = tempfile::tempdir().unwrap();
    let c = corpus(tmp.path());
    let report = tmp.path().join("out/report.json");
    let results = tmp.path().join("results");
    let out = check_data(
        &[
            "--max-print",
            "1000",
            "--report",
            report.to_str().unwrap(),
            "--results-dir",
            results.to_str().unwrap(),
        ],
        &c.yaml,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "defects fail the data\n{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("data check FAILED"), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
    let findings = json["findings"].as_array().unwrap();
    for (file, kind) in &c.defects {
        let name = file.display().to_string();
        assert!(stdout.contains(&name), "{name} ({kind}) not printed:\n{stdout}");
        assert!(
            findings
                .iter()
                .any(|f| f["file"].as_str() == Some(name.as_str()) && f["kind"] == *kind),
            "{name}: no {kind} finding in the JSON"
        );
    }
    for file in &c.legal {
        let name = file.display().to_string();
        assert!(!stdout.contains(&name), "legal file {name} was reported:\n{stdout}");
        assert!(findings.iter().all(|f| f["file"].as_str() != Some(name.as_str())));
    }
    // Label rows are named with their line: the mixed file's second row.
    let mixed = c.defects.iter().find(|(_, k)| *k == "MixedRows").unwrap().0.display().to_string();
    assert!(stdout.contains(&format!("{mixed}:2: ")), "{stdout}");
    // Every finding carries its split and action.
    assert!(findings.iter().all(|f| f["split"].is_string() && f["action"].is_string()));
    let train = &json["splits"][0];
    assert_eq!(train["split"], "train");
    assert_eq!(train["skipped"], 16, "{train}");
    assert_eq!(json["outcome"]["passed"], false);
    let read = |n: &str| fs::read_to_string(results.join(n)).unwrap();
    assert_eq!(read("passed"), "false");
    assert_eq!(read("skipped"), "16");
    let images: usize = read("images").parse().unwrap();
    assert_eq!(images, json["splits"].as_array().unwrap().iter().map(|s| s["images"].as_u64().unwrap() as usize).sum::<usize>());

    // The printed list is cut at --max-print and points at the report.
    let short = check_data(&["--max-print", "3", "--report", report.to_str().unwrap()], &c.yaml);
    let s = String::from_utf8_lossy(&short.stdout);
    assert!(s.contains(&format!("more, see {}", report.display())), "{s}");
}

#[test]
fn clean_data_passes_and_thresholds_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = ShapesConfig {
        train: 12,
        val: 4,
        imgsz: 64,
        seed: 3,
        clutter: 0,
    };
    let s = generate(&cfg, &tmp.path().join("shapes")).unwrap();
    let results = tmp.path().join("results");
    let report = tmp.path().join("r.json");
    let args = ["--report", report.to_str().unwrap(), "--results-dir", results.to_str().unwrap()];
    let out = check_data(&args, &s.data_yaml);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("train: 12 images") && stdout.contains("0 findings"), "{stdout}");
    assert!(stdout.contains("data check passed"), "{stdout}");
    assert_eq!(fs::read_to_string(results.join("passed")).unwrap(), "true");
    assert_eq!(fs::read_to_string(results.join("images")).unwrap(), "16");
    // The second run reads the scan from the cache and says so; same verdict.
    let again = check_data(&args, &s.data_yaml);
    assert_eq!(again.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&again.stdout).contains("scan read from"));

    // One corrupt label of 12 train images: fails at the default 0, passes at 0.1.
    let first = fs::read_dir(tmp.path().join("shapes/labels/train"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    fs::write(&first, "9 0.5 0.5 0.1 0.1\n").unwrap();
    let fail = check_data(&args, &s.data_yaml);
    assert_eq!(fail.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&fail.stdout).contains(&first.display().to_string()));
    let mut relaxed = args.to_vec();
    relaxed.extend(["--max-skipped-frac", "0.1"]);
    assert_eq!(check_data(&relaxed, &s.data_yaml).status.code(), Some(0));
    // Only the val split: the train label is not looked at.
    let mut val_only = args.to_vec();
    val_only.extend(["--split", "val"]);
    assert_eq!(check_data(&val_only, &s.data_yaml).status.code(), Some(0));
    // Usage errors exit 2.
    let mut bad = args.to_vec();
    bad.extend(["--max-skipped-frac", "2"]);
    assert_eq!(check_data(&bad, &s.data_yaml).status.code(), Some(2));
}

#[test]
fn broken_yaml_exits_1_naming_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir_all(tmp.path().join("images/train")).unwrap();
    write(&tmp.path().join("images/train/a.png"), encode(16, 16, 1, false));
    let cases = [
        ("no_val.yaml", "train: images/train\nnames: [a]\n", "`val`"),
        ("invalid.yaml", "train: [images/train\nnames: a\n", "(yaml)"),
        ("missing_dir.yaml", "train: images/train\nval: images/nowhere\nnames: [a]\n", "`val`"),
        ("no_names.yaml", "train: images/train\nval: images/train\n", "`names`"),
    ];
    for (file, text, field) in cases {
        let yaml = tmp.path().join(file);
        write(&yaml, text);
        let out = check_data(&["--report", tmp.path().join("r.json").to_str().unwrap()], &yaml);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{file}: {err}");
        assert!(err.contains(file) && err.contains(field), "{file}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let missing = check_data(&[], &tmp.path().join("absent.yaml"));
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("absent.yaml"));
}

#[test]
fn val_prints_and_saves_the_findings() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = ShapesConfig {
        train: 1,
        val: 6,
        imgsz: 64,
        seed: 5,
        clutter: 0,
    };
    let s = generate(&cfg, &tmp.path().join("shapes")).unwrap();
    let bad = tmp.path().join("shapes/labels/val/zzz_bad.txt");
    let img = tmp.path().join("shapes/images/val/zzz_bad.png");
    write(&img, encode(64, 64, 9, false));
    write(&bad, "0 0.5 0.5 0.2\n");
    let out_dir = tmp.path().join("val");
    let weights = common::weights();
    let out = Command::new(env!("CARGO_BIN_EXE_yolo-infer"))
        .args(["val", "--imgsz", "64", "--weights"])
        .arg(weights)
        .arg("--data")
        .arg(&s.data_yaml)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(&format!("{}:1: labels require 5 columns", bad.display())), "{stderr}");
    assert!(stderr.contains("val: 7 images, ") && stderr.contains(", 1 skipped"), "{stderr}");
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(out_dir.join("data_report.json")).unwrap()).unwrap();
    assert_eq!(json["findings"][0]["kind"], "ColumnCount");
}

/// `check-data` on `root` (one class) after adding one good val image: (output, report path).
fn check_with_good_val(root: &Path) -> (Output, PathBuf) {
    put(root, "val", "ok.png", &encode(32, 32, 5, false), Some(GOOD));
    let yaml = root.join("data.yaml");
    write(&yaml, "path: .\ntrain: images/train\nval: images/val\nnames: [a]\n");
    let report = root.join("r.json");
    (check_data(&["--report", report.to_str().unwrap()], &yaml), report)
}

/// A file name that is not UTF-8 (a Latin-1 name from an old archive) is named in the
/// report with U+FFFD in place of its bytes; serialising the path failed the whole report
/// before (a panic).
#[cfg(unix)]
#[test]
fn non_utf8_file_names_are_reported() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.png");
    let img = tmp.path().join("images/train").join(name);
    write(&img, encode(32, 32, 4, false));
    write(&img2label_path(&img), "7 0.5 0.5 0.2 0.2\n");
    let (out, report) = check_with_good_val(tmp.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let json = fs::read_to_string(&report).unwrap();
    assert!(json.contains("caf\u{fffd}.txt"), "{json}");
}

/// Every image of a split corrupt, the labels there: the report says the images are corrupt,
/// not that the labels folder is missing.
#[test]
fn all_corrupt_images_are_not_reported_as_missing_labels() {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..3 {
        put(tmp.path(), "train", &format!("{i}.png"), b"not a png", Some(GOOD));
    }
    let (out, _) = check_with_good_val(tmp.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(!stdout.contains("has a label file") && !stdout.contains("no label files"), "{stdout}");
    assert!(stdout.contains("0.png"), "{stdout}");
}

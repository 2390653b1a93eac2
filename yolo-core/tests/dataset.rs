//! Dataset reading and label checks, on fixture datasets built in a temporary folder.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use image::{ImageEncoder, Rgb, RgbImage};
use yolo_core::data::dataset::{image_files, img2label_path, load_split, DataConfig, Split};
use yolo_core::data::image::{read_rgb8, ImageSize};
use yolo_core::data::labels::{
    cache_path, check_image, check_labels, scan, scan_cached, FindingKind, Label,
};
use yolo_core::CoreError;

fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7) as u8, (y * 5) as u8, 90]));
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

fn jpeg(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

/// Writes `images/<split>/<name>` and, when given, its label `labels/<split>/<stem>.txt`.
fn sample(root: &Path, split: &str, name: &str, image: &[u8], label: Option<&str>) -> PathBuf {
    let img = root.join("images").join(split).join(name);
    write(&img, image);
    if let Some(text) = label {
        write(&img2label_path(&img), text);
    }
    img
}

fn yaml(root: &Path, name: &str, text: &str) -> PathBuf {
    let p = root.join(name);
    write(&p, text);
    p
}

/// A dataset with every defect the scan knows, in `root/images/train`, and one good image in
/// `root/images/val`.
fn defect_dataset(root: &Path) {
    let good = png(32, 24);
    let s = |name: &str, bytes: &[u8], label: Option<&str>| {
        sample(root, "train", name, bytes, label);
    };
    s(
        "good1.png",
        &good,
        Some("0 0.5 0.5 0.2 0.2\n2 0.3 0.3 0.1 0.1\n"),
    );
    s(
        "dup.png",
        &good,
        Some("1 0.5 0.5 0.2 0.2\n0 0.1 0.1 0.1 0.1\n1 0.5 0.5 0.2 0.20\n"),
    );
    s("zero.png", &good, Some("0 0.5 0.5 0 0.2\n"));
    s("missing.png", &good, None);
    s("empty.png", &good, Some(""));
    s(
        "badcols.png",
        &good,
        Some("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2\n"),
    );
    s("unparsable.png", &good, Some("0 0.5 abc 0.2 0.2\n"));
    s(
        "negative.png",
        &good,
        Some("0 0.5 0.5 0.2 0.2\n\n0 -0.5 0.5 0.2 0.2\n"),
    );
    s("classbig.png", &good, Some("3 0.5 0.5 0.2 0.2\n"));
    s("coords.png", &good, Some("0 1.5 0.5 0.2 0.2\n"));
    s(
        "corrupt.jpg",
        b"this is not an image",
        Some("0 0.5 0.5 0.2 0.2\n"),
    );
    s("truncated.png", &good[..good.len() / 2], None);
    let j = jpeg(&RgbImage::from_pixel(64, 48, Rgb([10, 200, 30])));
    s("truncated.jpg", &j[..j.len() * 2 / 3], None);
    s("tiny.png", &png(8, 8), Some("0 0.5 0.5 0.2 0.2\n"));
    s("sub/nested.jpg", &j, Some("1 0.25 0.75 0.5 0.5\n"));
    // Not images: ignored by the listing.
    write(&root.join("images/train/notes.txt"), "hello");
    write(&root.join("images/train/.hidden.png"), &good);
    sample(root, "val", "v.png", &good, Some("0 0.5 0.5 0.2 0.2\n"));
}

fn names(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| {
            p.to_string_lossy()
                .rsplit("/images/")
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn yaml_folder_txt_list_and_list_of_folders() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    defect_dataset(&root);

    let y = yaml(
        &root,
        "data.yaml",
        "path: .\ntrain: images/train\nval: images/val\nnames: [a, b, c]\n",
    );
    let cfg = DataConfig::from_yaml(&y).unwrap();
    assert_eq!(cfg.root, root);
    assert_eq!(cfg.train, vec![root.join("images/train")]);
    assert_eq!(cfg.names, ["a", "b", "c"]);
    assert_eq!(cfg.nc(), 3);
    assert!(cfg.test.is_none());
    let train = cfg.image_files(Split::Train).unwrap();
    assert_eq!(train.len(), 15, "{:?}", names(&train));
    let listed = names(&train);
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted);
    assert!(listed.contains(&"train/sub/nested.jpg".to_string()));
    assert!(
        matches!(cfg.image_files(Split::Test), Err(CoreError::DataConfig { field, .. }) if field == "test")
    );

    // A .txt list: `./` is relative to the list's folder, other relative lines to the root,
    // absolute lines as they are; non-image lines dropped; sorted.
    let abs = root.join("images/train/zero.png");
    write(
        &root.join("lists/train.txt"),
        format!(
            "\u{feff}./../images/train/good1.png\nimages/train/dup.png\n{}\n./../images/train/notes.txt\n",
            abs.display()
        ),
    );
    let y = yaml(
        &root,
        "list.yaml",
        "train: lists/train.txt\nval: [images/val, images/train/sub]\ntest: images/val\nnames:\n  2: c\n  0: a\n  1: b\n",
    );
    let cfg = DataConfig::from_yaml(&y).unwrap();
    assert_eq!(cfg.names, ["a", "b", "c"]);
    let files = cfg.image_files(Split::Train).unwrap();
    // Sorted as strings, as Ultralytics sorts them: `<root>/lists/../images/…` after `<root>/images/…`.
    assert_eq!(
        names(&files),
        ["train/dup.png", "train/zero.png", "train/good1.png"]
    );
    assert!(files.iter().all(|f| f.exists()));
    assert_eq!(
        names(&cfg.image_files(Split::Val).unwrap()),
        ["train/sub/nested.jpg", "val/v.png"]
    );
    assert_eq!(names(&cfg.image_files(Split::Test).unwrap()), ["val/v.png"]);

    // `path` relative to the yaml's folder; `nc` without names; `validation` alias.
    let y = yaml(
        &root,
        "cfg/data.yaml",
        "path: ..\ntrain: images/train\nvalidation: images/val\nnc: 2\n",
    );
    let cfg = DataConfig::from_yaml(&y).unwrap();
    assert_eq!(cfg.root, root);
    assert_eq!(cfg.val, vec![root.join("images/val")]);
    assert_eq!(cfg.names, ["class_0", "class_1"]);

    // A missing source is an error naming it.
    let y = yaml(
        &root,
        "nosrc.yaml",
        "train: images/nope\nval: images/val\nnames: [a]\n",
    );
    let err = DataConfig::from_yaml(&y)
        .unwrap()
        .image_files(Split::Train)
        .unwrap_err();
    assert!(err.to_string().contains("images/nope"), "{err}");
}

#[test]
fn yaml_errors_name_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cases = [
        ("noval.yaml", "train: a\nnames: [x]\n", "val"),
        ("notrain.yaml", "val: a\nnames: [x]\n", "train"),
        ("nonames.yaml", "train: a\nval: a\n", "names"),
        (
            "gap.yaml",
            "train: a\nval: a\nnames: {0: x, 2: y}\n",
            "names",
        ),
        (
            "mismatch.yaml",
            "train: a\nval: a\nnc: 3\nnames: [x, y]\n",
            "names",
        ),
        ("badnc.yaml", "train: a\nval: a\nnc: 1.5\n", "nc"),
        ("hugenc.yaml", "train: a\nval: a\nnc: 1e300\n", "nc"),
        (
            "badtrain.yaml",
            "train: {a: 1}\nval: a\nnames: [x]\n",
            "train",
        ),
        (
            "badpath.yaml",
            "path: [1]\ntrain: a\nval: a\nnames: [x]\n",
            "path",
        ),
    ];
    for (file, text, field) in cases {
        let y = yaml(root, file, text);
        match DataConfig::from_yaml(&y) {
            Err(e @ CoreError::DataConfig { .. }) => {
                let CoreError::DataConfig { path, field: f, .. } = &e else {
                    unreachable!()
                };
                assert_eq!(path, &y);
                assert_eq!(f, field, "{file}: {e}");
                let msg = e.to_string();
                assert!(
                    msg.contains(file) && msg.contains(&format!("`{field}`")),
                    "{msg}"
                );
            }
            other => panic!("{file}: expected a DataConfig error, got {other:?}"),
        }
    }
    assert!(matches!(
        DataConfig::from_yaml(root.join("absent.yaml")),
        Err(CoreError::Io { .. })
    ));
}

#[test]
fn defect_dataset_gives_the_documented_report() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    defect_dataset(&root);
    let cfg = DataConfig::from_yaml(yaml(
        &root,
        "data.yaml",
        "train: images/train\nval: images/val\nnames: [a, b, c]\n",
    ))
    .unwrap();
    let (samples, report) = load_split(&cfg, Split::Train).unwrap();

    assert!(!report.from_cache);
    assert_eq!(report.total, 15);
    assert_eq!(report.found, 10, "{report:#?}");
    assert_eq!(report.missing, 1);
    assert_eq!(report.empty, 1);
    assert_eq!(report.corrupt, 9);
    assert_eq!(report.duplicates_removed, 1);
    assert_eq!(
        report.to_string(),
        "10 images, 2 backgrounds, 9 corrupt, 1 duplicate labels removed"
    );

    // Every finding: (file name, kind) -> line.
    let findings: HashMap<(String, FindingKind), Option<usize>> = report
        .messages
        .iter()
        .map(|f| {
            let name = f
                .file
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            ((name, f.kind), f.line)
        })
        .collect();
    let expected: HashMap<(String, FindingKind), Option<usize>> = [
        ("labels/train/zero.txt", FindingKind::ZeroSize, Some(1)),
        ("labels/train/dup.txt", FindingKind::Duplicate, Some(3)),
        (
            "labels/train/badcols.txt",
            FindingKind::ColumnCount,
            Some(2),
        ),
        (
            "labels/train/unparsable.txt",
            FindingKind::Unparsable,
            Some(1),
        ),
        ("labels/train/negative.txt", FindingKind::Negative, Some(3)),
        (
            "labels/train/classbig.txt",
            FindingKind::ClassOutOfRange,
            Some(1),
        ),
        ("labels/train/coords.txt", FindingKind::OutOfBounds, Some(1)),
        ("images/train/corrupt.jpg", FindingKind::ImageCorrupt, None),
        (
            "images/train/truncated.png",
            FindingKind::ImageCorrupt,
            None,
        ),
        (
            "images/train/truncated.jpg",
            FindingKind::ImageCorrupt,
            None,
        ),
        ("images/train/tiny.png", FindingKind::ImageTooSmall, None),
    ]
    .into_iter()
    .map(|(f, k, l)| ((f.to_string(), k), l))
    .collect();
    assert_eq!(
        report.messages.len(),
        expected.len(),
        "{:#?}",
        report.messages
    );
    assert_eq!(findings, expected);
    for f in &report.messages {
        let shown = f.to_string();
        assert!(shown.contains(&*f.file.to_string_lossy()), "{shown}");
        if let Some(line) = f.line {
            assert!(shown.contains(&format!(":{line}: ")), "{shown}");
        }
    }

    // Exactly the valid samples, in Ultralytics' sorted order, with their labels.
    let l = |class, cx, cy, w, h| Label {
        class,
        cx,
        cy,
        w,
        h,
    };
    let got: Vec<(String, Vec<Label>)> = samples
        .iter()
        .map(|s| (names(&[s.image.clone()])[0].clone(), s.labels.clone()))
        .collect();
    let want = vec![
        // Duplicates removed; the rest sorted like np.unique(axis=0).
        (
            "train/dup.png".to_string(),
            vec![l(0, 0.1, 0.1, 0.1, 0.1), l(1, 0.5, 0.5, 0.2, 0.2)],
        ),
        ("train/empty.png".to_string(), vec![]),
        (
            "train/good1.png".to_string(),
            vec![l(0, 0.5, 0.5, 0.2, 0.2), l(2, 0.3, 0.3, 0.1, 0.1)],
        ),
        ("train/missing.png".to_string(), vec![]),
        (
            "train/sub/nested.jpg".to_string(),
            vec![l(1, 0.25, 0.75, 0.5, 0.5)],
        ),
        ("train/zero.png".to_string(), vec![l(0, 0.5, 0.5, 0.0, 0.2)]),
    ];
    assert_eq!(got, want);
    let sizes: Vec<ImageSize> = samples.iter().map(|s| s.size).collect();
    assert_eq!(
        sizes[0],
        ImageSize {
            width: 32,
            height: 24
        }
    );
    assert_eq!(
        sizes[4],
        ImageSize {
            width: 64,
            height: 48
        }
    );

    // The val split is clean.
    let (val, report) = load_split(&cfg, Split::Val).unwrap();
    assert_eq!((val.len(), report.found, report.corrupt), (1, 1, 0));
    assert!(report.messages.is_empty());
}

#[test]
fn a_split_without_valid_images_is_an_error_listing_why() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    sample(&root, "train", "bad.png", b"\x89PNG\r\n\x1a\nxx", None);
    sample(
        &root,
        "train",
        "bad2.png",
        &png(40, 40),
        Some("0 0.5 0.5 0.2 0.2 0.1\n"),
    );
    let cfg = DataConfig::from_yaml(yaml(
        &root,
        "d.yaml",
        "train: images/train\nval: images/train\nnames: [a]\n",
    ))
    .unwrap();
    let err = load_split(&cfg, Split::Train).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CoreError::Dataset { .. }));
    assert!(
        msg.contains("bad.png") && msg.contains("bad2.txt:1"),
        "{msg}"
    );
    // Nothing valid: no cache written (as Ultralytics).
    assert!(!root.join("labels/train.cache.json").exists());
}

#[test]
fn hostile_label_text_never_panics() {
    let texts = [
        "",
        "\0",
        "0",
        "0 0 0 0 0 0",
        "0 0.5 0.5 0.2 0.2 extra more ones",
        "1e40 0.5 0.5 0.1 0.1",
        "-0 0.5 0.5 0.1 0.1",
        "0 inf 0.5 0.1 0.1",
        "0 NaN 0.5 0.1 0.1",
        "0 -inf 0.5 0.1 0.1",
        "18446744073709551616 0.5 0.5 0.1 0.1",
        "0 0.1 0.1 0.2",
        "\u{feff}\u{feff}0 1 1 1 1",
        "0 0.1 0.2 0.3",
        "0 0.1 0.2 0.3 0.4 0.5 0.6 0.7",
        "0 ٣ 0.5 0.1 0.1",
    ];
    for t in texts {
        let c = check_labels(t, Path::new("x.txt"), 2);
        assert!(c.corrupt || c.empty || !c.labels.is_empty(), "{t:?}");
        assert!(c.labels.iter().all(|l| l.class < 2));
    }
    // `-0` is class 0; `1e40` is +inf (class not an integer).
    assert!(!check_labels("-0 0.5 0.5 0.1 0.1", Path::new("x"), 1).corrupt);
    assert!(check_labels("1e40 0.5 0.5 0.1 0.1", Path::new("x"), 1).corrupt);
}

/// A JPEG with an EXIF APP1 segment (orientation `o`) inserted right after SOI.
fn jpeg_with_orientation(img: &RgbImage, o: u16) -> Vec<u8> {
    let plain = jpeg(img);
    let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
    tiff.extend([0, 1]); // one IFD entry
    tiff.extend([0x01, 0x12, 0, 3, 0, 0, 0, 1]); // Orientation, SHORT, count 1
    tiff.extend(o.to_be_bytes());
    tiff.extend([0, 0]);
    tiff.extend([0, 0, 0, 0]); // no next IFD
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend(tiff);
    let len = (payload.len() + 2) as u16;
    let mut out = plain[..2].to_vec();
    out.extend([0xFF, 0xE1]);
    out.extend(len.to_be_bytes());
    out.extend(payload);
    out.extend(&plain[2..]);
    out
}

#[test]
fn exif_orientation_rotates_the_decoded_image() {
    let dir = tempfile::tempdir().unwrap();
    // 40 wide, 20 high; left half red, right half blue.
    let img = RgbImage::from_fn(40, 20, |x, _| {
        if x < 20 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    });
    let p = dir.path().join("images/train/rot.jpg");
    write(&p, jpeg_with_orientation(&img, 6));
    let decoded = read_rgb8(&p).unwrap();
    // Orientation 6: rotate 90° clockwise, so the left half becomes the top half.
    assert_eq!(decoded.dimensions(), (20, 40));
    let top = decoded.get_pixel(10, 5);
    let bottom = decoded.get_pixel(10, 35);
    assert!(top[0] > 200 && top[2] < 60, "{top:?}");
    assert!(bottom[2] > 200 && bottom[0] < 60, "{bottom:?}");
    let (size, warning) = check_image(&p).unwrap();
    assert_eq!(
        size,
        ImageSize {
            width: 20,
            height: 40
        }
    );
    assert!(warning.is_none());

    // Orientation 1 leaves it as it is.
    let q = dir.path().join("plain.jpg");
    write(&q, jpeg_with_orientation(&img, 1));
    assert_eq!(read_rgb8(&q).unwrap().dimensions(), (40, 20));

    // Errors name the file.
    let bad = dir.path().join("bad.jpg");
    write(&bad, b"garbage");
    let err = read_rgb8(&bad).unwrap_err();
    assert!(
        matches!(err, CoreError::Image { .. }) && err.to_string().contains("bad.jpg"),
        "{err}"
    );
}

#[test]
fn jpeg_with_trailing_bytes_is_kept_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = jpeg(&RgbImage::from_pixel(16, 16, Rgb([1, 2, 3])));
    j.extend(b"trailing");
    let p = dir.path().join("t.jpg");
    write(&p, j);
    let (size, warning) = check_image(&p).unwrap();
    assert_eq!(
        size,
        ImageSize {
            width: 16,
            height: 16
        }
    );
    assert_eq!(warning.unwrap().kind, FindingKind::JpegTrailingData);
    // A GIF is decodable but not one of Ultralytics' image formats.
    let mut gif = Vec::new();
    RgbImage::from_pixel(16, 16, Rgb([1, 2, 3]))
        .write_to(&mut std::io::Cursor::new(&mut gif), image::ImageFormat::Gif)
        .unwrap();
    let g = dir.path().join("g.jpg");
    write(&g, gif);
    assert_eq!(check_image(&g).unwrap_err().kind, FindingKind::ImageFormat);
}

#[test]
fn scan_cache_is_reused_and_invalidated() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    defect_dataset(&root);
    let images = image_files(&[root.join("images/train")], &root).unwrap();
    let cache = cache_path(&images).unwrap();
    assert_eq!(cache, root.join("labels/train.cache.json"));

    let (s1, r1) = scan_cached(&images, 3);
    assert!(!r1.from_cache && cache.exists());
    let (s2, r2) = scan_cached(&images, 3);
    assert!(r2.from_cache);
    assert_eq!(s1, s2);
    assert_eq!(
        (r2.found, r2.corrupt, r2.messages.clone()),
        (r1.found, r1.corrupt, r1.messages.clone())
    );
    // The uncached scan agrees.
    assert_eq!(scan(&images, 3).0, s1);
    // Another class count is another key.
    assert!(!scan_cached(&images, 4).1.from_cache);
    assert!(!scan_cached(&images, 3).1.from_cache);
    assert!(scan_cached(&images, 3).1.from_cache);

    // Changing a label file invalidates it, and the new label is read.
    let good = root.join("labels/train/good1.txt");
    write(&good, "0 0.5 0.5 0.2 0.2\n");
    let (s, r) = scan_cached(&images, 3);
    assert!(!r.from_cache);
    let g = s.iter().find(|s| s.image.ends_with("good1.png")).unwrap();
    assert_eq!(g.labels.len(), 1);
    assert!(scan_cached(&images, 3).1.from_cache);

    // Touching it (same bytes, new mtime) invalidates it too.
    let f = fs::File::options().write(true).open(&good).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(f);
    assert!(!scan_cached(&images, 3).1.from_cache);
    assert!(scan_cached(&images, 3).1.from_cache);

    // A label file appearing for a background image invalidates it.
    write(
        &root.join("labels/train/missing.txt"),
        "2 0.5 0.5 0.5 0.5\n",
    );
    let (_, r) = scan_cached(&images, 3);
    assert!(!r.from_cache);
    assert_eq!(r.missing, 0);

    // Removing an image (the list changes) is another key.
    let fewer: Vec<PathBuf> = images
        .iter()
        .filter(|p| !p.ends_with("dup.png"))
        .cloned()
        .collect();
    assert!(!scan_cached(&fewer, 3).1.from_cache);

    // A corrupt cache is ignored and rebuilt.
    write(&cache, b"{ not json");
    let (s, r) = scan_cached(&images, 3);
    assert!(!r.from_cache);
    assert_eq!(s.len(), 6);
    assert!(scan_cached(&images, 3).1.from_cache);
    // No temp files left beside it.
    let leftovers: Vec<_> = fs::read_dir(root.join("labels"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        leftovers.iter().all(|n| !n.starts_with('.')),
        "{leftovers:?}"
    );
    assert!(leftovers.contains(&"train.cache.json".to_string()));
}

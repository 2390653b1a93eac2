//! The built-in `shapes` dataset: determinism, layout, labels and that every box holds its object.

use std::path::Path;
use std::time::Instant;

use yolo_core::data::shapes::{
    generate, render, ShapeClass, ShapesConfig, ShapesImage, Split, CLASS_NAMES, PALETTE,
};

fn small() -> ShapesConfig {
    ShapesConfig {
        train: 40,
        val: 10,
        imgsz: 160,
        seed: 7,
        clutter: 0,
    }
}

/// Every file under `root` except data.yaml (which names the root), with its bytes, sorted.
fn files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for kind in ["images", "labels"] {
        for split in ["train", "val"] {
            let dir = root.join(kind).join(split);
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                let name = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push((name, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn same_seed_gives_identical_files() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    generate(&small(), a.path()).unwrap();
    generate(&small(), b.path()).unwrap();
    let (fa, fb) = (files(a.path()), files(b.path()));
    assert_eq!(fa.len(), 2 * (40 + 10));
    assert!(fa == fb, "two generations with one seed differ");
    let strip = |p: &Path| {
        std::fs::read_to_string(p.join("data.yaml"))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("path:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(a.path()), strip(b.path()));
    // Another seed gives other images.
    generate(&ShapesConfig { seed: 8, ..small() }, c.path()).unwrap();
    assert!(files(c.path()) != fa);
}

#[test]
fn layout_and_data_yaml() {
    #[derive(serde::Deserialize)]
    struct Data {
        path: String,
        train: String,
        val: String,
        names: Vec<String>,
    }
    let dir = tempfile::tempdir().unwrap();
    let s = generate(&small(), dir.path()).unwrap();
    assert_eq!((s.train_images, s.val_images), (40, 10));
    let data: Data =
        serde_yaml::from_str(&std::fs::read_to_string(dir.path().join("data.yaml")).unwrap())
            .unwrap();
    assert_eq!(
        Path::new(&data.path),
        std::path::absolute(dir.path()).unwrap()
    );
    assert_eq!(
        (data.train.as_str(), data.val.as_str()),
        ("images/train", "images/val")
    );
    assert_eq!(data.names, CLASS_NAMES);
    for (split, n) in [("train", 40), ("val", 10)] {
        for i in 0..n {
            let img = dir.path().join(format!("images/{split}/{i:06}.png"));
            let lbl = dir.path().join(format!("labels/{split}/{i:06}.txt"));
            assert!(img.is_file() && lbl.is_file(), "{}", img.display());
        }
    }
    // The files are what `render` gives.
    let sample = render(&small(), Split::Val, 3);
    let png = image::open(dir.path().join("images/val/000003.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(png, sample.image);
    let txt = std::fs::read_to_string(dir.path().join("labels/val/000003.txt")).unwrap();
    assert_eq!(txt, sample.label_text());
    let total: usize = s.objects_per_class.iter().sum();
    assert!(
        total >= 50 && s.objects_per_class.iter().all(|&c| c > 0),
        "{s:?}"
    );
}

#[test]
fn labels_are_normalised_and_non_degenerate() {
    let dir = tempfile::tempdir().unwrap();
    generate(&small(), dir.path()).unwrap();
    for (name, bytes) in files(dir.path())
        .iter()
        .filter(|(n, _)| n.ends_with(".txt"))
    {
        for row in String::from_utf8(bytes.clone()).unwrap().lines() {
            let cols: Vec<&str> = row.split(' ').collect();
            assert_eq!(cols.len(), 5, "{name}: {row}");
            let cls: usize = cols[0].parse().unwrap();
            assert!(cls < 3);
            let v: Vec<f64> = cols[1..].iter().map(|c| c.parse().unwrap()).collect();
            assert!(cols[1..]
                .iter()
                .all(|c| c.split('.').nth(1).unwrap().len() == 6));
            let [cx, cy, w, h] = [v[0], v[1], v[2], v[3]];
            assert!(w > 0.0 && h > 0.0, "{name}: {row}");
            for e in [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0] {
                assert!((-1e-6..=1.0 + 1e-6).contains(&e), "{name}: {row}");
            }
        }
    }
}

/// Fraction of the box with the object's colour, and whether each edge row/column has it.
fn coverage(s: &ShapesImage, i: usize) -> (f64, bool) {
    let o = &s.objects[i];
    let hit = |x: u32, y: u32| s.image.get_pixel(x, y).0 == o.color;
    let mut n = 0;
    for y in o.y1..o.y2 {
        for x in o.x1..o.x2 {
            n += hit(x, y) as usize;
        }
    }
    let area = ((o.x2 - o.x1) * (o.y2 - o.y1)) as f64;
    let row = |y: u32| (o.x1..o.x2).any(|x| hit(x, y));
    let col = |x: u32| (o.y1..o.y2).any(|y| hit(x, y));
    let edges = row(o.y1) && row(o.y2 - 1) && col(o.x1) && col(o.x2 - 1);
    (n as f64 / area, edges)
}

#[test]
fn every_box_holds_its_object_and_is_tight() {
    let config = ShapesConfig {
        train: 300,
        ..small()
    };
    let (mut objects, mut background, mut min_side, mut max_side) = (0, 0, u32::MAX, 0);
    let mut sizes = std::collections::HashSet::new();
    let mut colors =
        std::collections::HashMap::<ShapeClass, std::collections::HashSet<[u8; 3]>>::new();
    for i in 0..config.train {
        let s = render(&config, Split::Train, i);
        let (w, h) = s.image.dimensions();
        assert!(
            (120..=160).contains(&w) && (120..=160).contains(&h),
            "{w}x{h}"
        );
        sizes.insert((w, h));
        background += s.objects.is_empty() as usize;
        assert!(s.objects.len() <= 4);
        for (k, o) in s.objects.iter().enumerate() {
            assert!(
                o.x1 < o.x2 && o.y1 < o.y2 && o.x2 <= w && o.y2 <= h,
                "{o:?}"
            );
            let (frac, edges) = coverage(&s, k);
            let min = match o.class {
                ShapeClass::Rectangle => 0.90,
                ShapeClass::Ellipse => 0.45,
                ShapeClass::Triangle => 0.40,
            };
            assert!(
                frac >= min,
                "image {i} object {k} {o:?}: colour covers {frac:.3} of its box"
            );
            assert!(edges, "image {i} object {k} {o:?}: box not tight");
            objects += 1;
            let side = (o.x2 - o.x1).max(o.y2 - o.y1);
            min_side = min_side.min(side);
            max_side = max_side.max(side);
            colors.entry(o.class).or_default().insert(o.color);
        }
    }
    println!("{objects} objects, {background} background images, sides {min_side}..{max_side}");
    assert!(
        (3..=40).contains(&background),
        "{background} background images of 300"
    );
    assert!(
        min_side <= 12 && max_side >= 60,
        "sides {min_side}..{max_side}"
    );
    assert!(sizes.len() > 50, "image sizes barely vary");
    assert!(
        colors.values().all(|c| c.len() >= 4),
        "colours per class: {colors:?}"
    );
}

/// Images with palette-coloured pixels outside every labelled box (at least 20 of them) in
/// `n` images of `config`, after checking that each box still holds its object.
fn images_with_unlabelled_colour(config: &ShapesConfig, n: usize) -> usize {
    (0..n)
        .filter(|&i| {
            let s = render(config, Split::Train, i);
            for (k, o) in s.objects.iter().enumerate() {
                let (frac, edges) = coverage(&s, k);
                assert!(edges && frac >= 0.40, "image {i} object {k} {o:?}: {frac:.3}, tight {edges}");
            }
            let outside = s
                .image
                .enumerate_pixels()
                .filter(|(x, y, p)| {
                    PALETTE.contains(&p.0)
                        && !s.objects.iter().any(|o| (o.x1..o.x2).contains(x) && (o.y1..o.y2).contains(y))
                })
                .count();
            outside >= 20
        })
        .count()
}

/// `clutter` draws unlabelled distractors under the objects: the boxes still hold their
/// objects, and most images get palette colours outside every box, which without clutter
/// (where the boxes cover every object pixel) almost never happens.
#[test]
fn clutter_adds_unlabelled_distractors_under_the_objects() {
    let cluttered = images_with_unlabelled_colour(&ShapesConfig { clutter: 6, ..small() }, 60);
    let plain = images_with_unlabelled_colour(&small(), 60);
    assert!(cluttered >= 40, "{cluttered} of 60 cluttered images show a distractor");
    assert!(plain <= 3, "{plain} of 60 images without clutter show unlabelled palette colours");
}

#[test]
fn two_hundred_images_are_fast() {
    let dir = tempfile::tempdir().unwrap();
    let config = ShapesConfig {
        train: 160,
        val: 40,
        imgsz: 160,
        seed: 0,
        clutter: 0,
    };
    let t = Instant::now();
    generate(&config, dir.path()).unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!("200 images at 160 px: {secs:.3} s");
    // Generous for a debug build on a loaded 2-core machine; the point is "not minutes".
    assert!(secs < 20.0, "{secs} s");
}

#[test]
fn tiny_imgsz_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = generate(
        &ShapesConfig {
            imgsz: 16,
            ..small()
        },
        dir.path(),
    )
    .unwrap_err();
    assert!(matches!(err, yolo_core::CoreError::Config { .. }), "{err}");
    for (cfg, field) in [
        (ShapesConfig { imgsz: 20000, ..small() }, "shapes.imgsz"),
        (ShapesConfig { clutter: 1000, ..small() }, "shapes.clutter"),
    ] {
        match generate(&cfg, dir.path()) {
            Err(yolo_core::CoreError::Config { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{other:?}"),
        }
    }
}

/// A folder holding another dataset is not written over; a shapes dataset is regenerated in
/// place.
#[test]
fn another_dataset_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ShapesConfig { train: 2, val: 1, ..small() };
    generate(&cfg, dir.path()).unwrap();
    generate(&cfg, dir.path()).unwrap();
    std::fs::write(dir.path().join("data.yaml"), "train: images/train\nval: images/val\nnames: [a]\n").unwrap();
    let err = generate(&cfg, dir.path()).unwrap_err().to_string();
    assert!(err.contains("data.yaml") && err.contains("another dataset"), "{err}");
}

/// Writes a small dataset for a look by eye: `SHAPES_OUT=/tmp/shapes cargo test -p yolo-core
/// --test shapes -- --ignored dump`.
#[test]
#[ignore]
fn dump() {
    let out = std::env::var("SHAPES_OUT").expect("set SHAPES_OUT");
    let s = generate(&small(), Path::new(&out)).unwrap();
    println!("{s:?}");
}

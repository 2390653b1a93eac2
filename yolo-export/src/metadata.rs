//! `metadata_props` as Ultralytics writes them, so tools that read Ultralytics ONNX files take
//! ours. Ultralytics stores `str(value)` of Python objects and reads `imgsz`, `names`, `args`
//! and `end2end` back with `ast.literal_eval`, `stride`, `batch` and `channels` with `int`: the
//! values here are Python literals (`{0: 'person', 1: 'car'}`, `[640, 640]`, `False`).

use crate::export::ExportOptions;

/// A Python `repr` of a string: single quotes unless the text holds a `'` and no `"`, with
/// backslashes, the quote and control characters escaped.
pub fn py_str(s: &str) -> String {
    let q = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(q);
    out
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// A Python float literal (`0.25`, `1.0`).
fn py_float(v: f32) -> String {
    let s = v.to_string();
    if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
        s
    } else {
        format!("{s}.0")
    }
}

/// `{0: 'a', 1: 'b'}`.
pub fn py_names(names: &[String]) -> String {
    let items: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{i}: {}", py_str(n)))
        .collect();
    format!("{{{}}}", items.join(", "))
}

/// An ISO 8601 UTC time (`2026-01-31T12:00:00+00:00`) of `secs` after the Unix epoch.
pub fn iso8601(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Export time: `SOURCE_DATE_EPOCH` when set (reproducible files), else now.
pub fn export_time() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        })
}

/// The `(key, value)` pairs of the exported file, in Ultralytics' order.
pub fn metadata_props(
    names: &[String],
    stride: usize,
    opts: &ExportOptions,
    description: &str,
    secs: u64,
) -> Vec<(String, String)> {
    let [h, w] = opts.imgsz;
    let mut args = vec![
        format!("'batch': {}", opts.batch),
        format!("'dynamic': {}", py_bool(opts.dynamic)),
        format!("'half': {}", py_bool(opts.half)),
        format!("'opset': {}", opts.opset),
        "'simplify': False".to_string(),
        format!("'nms': {}", py_bool(opts.nms.is_some())),
    ];
    if let Some(n) = &opts.nms {
        args.push(format!("'conf': {}", py_float(n.conf)));
        args.push(format!("'iou': {}", py_float(n.iou)));
        args.push(format!("'max_det': {}", n.max_det));
        args.push(format!("'agnostic_nms': {}", py_bool(n.agnostic)));
    }
    vec![
        ("description".into(), description.to_string()),
        ("author".into(), "yolo-rs".into()),
        ("date".into(), iso8601(secs)),
        ("version".into(), env!("CARGO_PKG_VERSION").into()),
        ("license".into(), env!("CARGO_PKG_LICENSE").into()),
        ("docs".into(), "yolo-rs README, section ONNX export".into()),
        ("stride".into(), stride.to_string()),
        ("task".into(), "detect".into()),
        ("head".into(), "Detect".into()),
        ("batch".into(), opts.batch.to_string()),
        ("imgsz".into(), format!("[{h}, {w}]")),
        ("names".into(), py_names(names)),
        ("args".into(), format!("{{{}}}", args.join(", "))),
        ("channels".into(), "3".into()),
        ("end2end".into(), "False".into()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_literals() {
        assert_eq!(py_str("car"), "'car'");
        assert_eq!(py_str("it's"), "\"it's\"");
        assert_eq!(py_str("a'\"b\\"), "'a\\'\"b\\\\'");
        assert_eq!(py_str("x\ny"), "'x\\ny'");
        assert_eq!(py_names(&["a".into(), "b c".into()]), "{0: 'a', 1: 'b c'}");
        assert_eq!(py_float(0.25), "0.25");
        assert_eq!(py_float(1.0), "1.0");
    }

    #[test]
    fn dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00+00:00");
        assert_eq!(iso8601(1_700_000_000), "2023-11-14T22:13:20+00:00");
    }
}

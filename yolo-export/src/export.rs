//! Walks a [`YoloV8`] and writes its inference graph as ONNX.
//!
//! The graph is the fused model (BatchNorm folded into every conv, as Ultralytics' export) and
//! ends in the same decode as [`YoloV8::predict`]: `output0` is `[B, 4 + nc, A]`, `cx, cy, w, h`
//! in input pixels then sigmoid class scores, anchors level by level (strides 8, 16, 32),
//! row-major within a level. With [`NmsOptions`] the graph goes on into NMS and returns
//! `[B, max_det, 6]` rows `x1, y1, x2, y2, score, class`, zero-padded, as Ultralytics'
//! `nms=True` export.
//!
//! For static shapes nothing in the graph computes shapes: reshapes use `[0, C, -1]`, and the
//! anchor points and strides are initializers. With `dynamic` the anchors are built in the
//! graph from each level's map size.

use prost::Message;
use sha2::{Digest, Sha256};
use yolo_core::burn::nn::conv::Conv2d;
use yolo_core::burn::nn::PaddingConfig2d;
use yolo_core::burn::tensor::Tensor;
use yolo_core::nn::head::{make_anchors, BranchLayer, STRIDES};
use yolo_core::nn::{Bottleneck, C2f, Conv, Sppf};
use yolo_core::model::MAX_STRIDE;
use yolo_core::YoloV8;

use crate::error::{bad_option, ExportError, Result};
use crate::graph::{value_info, Attr, Dim, FloatType, GraphBuilder};
use crate::proto::{DataType, ModelProto, OperatorSetIdProto, StringStringEntryProto};

/// Oldest opset written: `Softmax` over one axis, `Unsqueeze`/`Slice` axes as inputs.
pub const MIN_OPSET: i64 = 13;
/// Newest opset written: the newest that the onnxruntime the tests pin (1.23) runs.
pub const MAX_OPSET: i64 = 23;
/// Default opset (as Ultralytics' default for current torch).
pub const DEFAULT_OPSET: i64 = 17;

/// The IR version that goes with an opset (`onnx.helper.VERSION_TABLE`): the oldest that
/// allows it, so older runtimes read the file.
pub fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        21..=22 => 10,
        _ => 11,
    }
}

/// NMS at the end of the graph (`--nms`).
#[derive(Debug, Clone, PartialEq)]
pub struct NmsOptions {
    /// Keep scores strictly above this.
    pub conf: f32,
    /// Suppress boxes whose IoU with a kept box is strictly above this.
    pub iou: f32,
    /// Rows of the output per image.
    pub max_det: usize,
    /// Suppress across classes.
    pub agnostic: bool,
}

impl Default for NmsOptions {
    /// Ultralytics' `predict` defaults: conf 0.25, IoU 0.7, 300 detections, per class.
    fn default() -> Self {
        Self {
            conf: 0.25,
            iou: 0.7,
            max_det: 300,
            agnostic: false,
        }
    }
}

/// What to export.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportOptions {
    /// Input `[height, width]`, multiples of 32 (with `dynamic`: the nominal size written to
    /// the metadata).
    pub imgsz: [usize; 2],
    /// Batch size (with `dynamic`: nominal).
    pub batch: usize,
    /// Batch, height and width symbolic.
    pub dynamic: bool,
    /// f16 weights and computation.
    pub half: bool,
    /// With `half`: keep the input and output f32 (casts at both ends).
    pub fp32_io: bool,
    /// End the graph in NMS.
    pub nms: Option<NmsOptions>,
    /// ONNX opset, [`MIN_OPSET`]..=[`MAX_OPSET`].
    pub opset: i64,
}

impl ExportOptions {
    /// Static f32 graph for `imgsz` (`[h, w]`), batch 1, default opset, no NMS.
    pub fn new(imgsz: [usize; 2]) -> Self {
        Self {
            imgsz,
            batch: 1,
            dynamic: false,
            half: false,
            fp32_io: false,
            nms: None,
            opset: DEFAULT_OPSET,
        }
    }

    /// Checks every value and combination; the message says what to change.
    pub fn validate(&self) -> Result<()> {
        let [h, w] = self.imgsz;
        if h == 0 || w == 0 || h % MAX_STRIDE != 0 || w % MAX_STRIDE != 0 {
            return bad_option(
                "imgsz",
                format!("{h}x{w}: height and width must be positive multiples of {MAX_STRIDE}"),
            );
        }
        let max = yolo_core::model::MAX_IMGSZ as usize;
        if h > max || w > max {
            return bad_option("imgsz", format!("{h}x{w}: height and width must be at most {max}"));
        }
        if self.batch == 0 {
            return bad_option("batch", "must be at least 1");
        }
        if !(MIN_OPSET..=MAX_OPSET).contains(&self.opset) {
            return bad_option(
                "opset",
                format!("{} is outside the supported range {MIN_OPSET}..={MAX_OPSET}", self.opset),
            );
        }
        if self.fp32_io && !self.half {
            return bad_option("fp32-io", "only applies with --half (an f32 graph has f32 I/O already)");
        }
        if let Some(n) = &self.nms {
            if !(0.0..1.0).contains(&n.conf) {
                return bad_option("conf", format!("{} is not in [0, 1)", n.conf));
            }
            if !(n.iou > 0.0 && n.iou <= 1.0) {
                return bad_option("iou", format!("{} is not in (0, 1]", n.iou));
            }
            if n.max_det == 0 {
                return bad_option("max-det", "must be at least 1");
            }
        }
        Ok(())
    }

    fn float(&self) -> FloatType {
        if self.half {
            FloatType::F16
        } else {
            FloatType::F32
        }
    }

    /// Element type of the graph's input and output.
    pub fn io_type(&self) -> DataType {
        if self.half && !self.fp32_io {
            DataType::Float16
        } else {
            DataType::Float
        }
    }
}

/// A graph input or output as written.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSummary {
    pub name: String,
    /// `float32` or `float16`.
    pub dtype: &'static str,
    pub dims: Vec<Dim>,
}

impl std::fmt::Display for TensorSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> = self.dims.iter().map(|d| d.to_string()).collect();
        write!(f, "{} {} [{}]", self.name, self.dtype, dims.join(", "))
    }
}

/// An exported model: the file's bytes and what it holds.
#[derive(Debug, Clone)]
pub struct Exported {
    pub bytes: Vec<u8>,
    pub opset: i64,
    pub ir_version: i64,
    pub inputs: Vec<TensorSummary>,
    pub outputs: Vec<TensorSummary>,
    /// `input:axis=name` for every symbolic dimension.
    pub dynamic_axes: Vec<String>,
    pub nodes: usize,
    /// Operator types with counts.
    pub ops: Vec<(String, usize)>,
    /// The `metadata_props` written.
    pub metadata: Vec<(String, String)>,
}

impl Exported {
    /// Hex SHA-256 of [`bytes`](Self::bytes).
    pub fn sha256(&self) -> String {
        Sha256::digest(&self.bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

fn dtype_name(dt: DataType) -> &'static str {
    match dt {
        DataType::Float16 => "float16",
        _ => "float32",
    }
}

/// Exports `model` (fused on a copy; the model itself is untouched) with class `names`.
///
/// `description` goes to the metadata (Ultralytics writes the model name and its data there).
pub fn export_model(
    model: &YoloV8,
    names: &[String],
    description: &str,
    opts: &ExportOptions,
) -> Result<Exported> {
    opts.validate()?;
    let meta = model.meta();
    if names.len() != meta.nc {
        return Err(ExportError::Unsupported(format!(
            "{} class names for a model with nc = {}",
            names.len(),
            meta.nc
        )));
    }
    if meta.strides != STRIDES {
        return Err(ExportError::Unsupported(format!(
            "head strides {:?}, expected {STRIDES:?}",
            meta.strides
        )));
    }
    let fused = model.clone().fuse();
    let mut w = Writer {
        g: GraphBuilder::new(opts.float()),
        opts,
    };
    let io = opts.io_type();
    let [h, wd] = opts.imgsz;
    let (in_dims, batch_dim) = if opts.dynamic {
        let b = Dim::Named("batch".into());
        (
            vec![b.clone(), Dim::Fixed(3), Dim::Named("height".into()), Dim::Named("width".into())],
            b,
        )
    } else {
        (
            vec![Dim::Fixed(opts.batch), Dim::Fixed(3), Dim::Fixed(h), Dim::Fixed(wd)],
            Dim::Fixed(opts.batch),
        )
    };
    let mut x = "images".to_string();
    if opts.half && opts.fp32_io {
        x = w.g.node("Cast", "input", &[&x], vec![("to", Attr::Int(DataType::Float16 as i64))]);
    }
    let pred = w.model(&fused, &x)?;

    let a: usize = STRIDES.iter().map(|s| (h / s) * (wd / s)).sum();
    let out_dims = match &opts.nms {
        None => {
            if opts.half && opts.fp32_io {
                w.g.node("Cast", "output", &[&pred], vec![("to", Attr::Int(DataType::Float as i64))]);
            } else {
                w.g.node("Identity", "output", &[&pred], vec![]);
            }
            let anchors = if opts.dynamic {
                Dim::Named("anchors".into())
            } else {
                Dim::Fixed(a)
            };
            vec![batch_dim, Dim::Fixed(4 + meta.nc), anchors]
        }
        Some(n) => {
            let mut p = pred;
            if opts.half {
                p = w.g.node("Cast", "nms.input", &[&p], vec![("to", Attr::Int(DataType::Float as i64))]);
            }
            let out = w.nms(&p, n, meta.nc, a)?;
            if io == DataType::Float16 {
                w.g.node("Cast", "output", &[&out], vec![("to", Attr::Int(DataType::Float16 as i64))]);
            } else {
                w.g.node("Identity", "output", &[&out], vec![]);
            }
            vec![batch_dim, Dim::Fixed(n.max_det), Dim::Fixed(6)]
        }
    };
    w.g.rename_last_output("output0");

    let nodes = w.g.len();
    let ops = w.g.op_counts();
    let graph = w.g.finish(
        "yolo-rs",
        vec![value_info("images", io, &in_dims)],
        vec![value_info("output0", io, &out_dims)],
    );
    let metadata = crate::metadata::metadata_props(
        names,
        MAX_STRIDE,
        opts,
        description,
        crate::metadata::export_time(),
    );
    let model_proto = ModelProto {
        ir_version: ir_version(opts.opset),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opts.opset,
        }],
        producer_name: "yolo-rs".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        metadata_props: metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        ..Default::default()
    };
    let dynamic_axes = if opts.dynamic {
        let mut v = vec![
            "images:0=batch".to_string(),
            "images:2=height".into(),
            "images:3=width".into(),
            "output0:0=batch".into(),
        ];
        if opts.nms.is_none() {
            v.push("output0:2=anchors".into());
        }
        v
    } else {
        Vec::new()
    };
    Ok(Exported {
        bytes: model_proto.encode_to_vec(),
        opset: opts.opset,
        ir_version: ir_version(opts.opset),
        inputs: vec![TensorSummary {
            name: "images".into(),
            dtype: dtype_name(io),
            dims: in_dims,
        }],
        outputs: vec![TensorSummary {
            name: "output0".into(),
            dtype: dtype_name(io),
            dims: out_dims,
        }],
        dynamic_axes,
        nodes,
        ops,
        metadata,
    })
}

fn f32s<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 tensor data")
}

fn ints(v: &[usize]) -> Attr {
    Attr::Ints(v.iter().map(|&x| x as i64).collect())
}

/// Walks the fused model and emits its nodes.
struct Writer<'a> {
    g: GraphBuilder,
    opts: &'a ExportOptions,
}

impl Writer<'_> {
    /// A Conv2d with its bias (every conv of a fused model has one).
    fn conv2d(&mut self, name: &str, c: &Conv2d, x: &str) -> Result<String> {
        let weight = c.weight.val();
        let dims = weight.dims();
        let bias = c.bias.as_ref().ok_or_else(|| {
            ExportError::Unsupported(format!("{name}: conv without bias (BatchNorm not folded)"))
        })?;
        let pads = match c.padding {
            PaddingConfig2d::Explicit(t, l, b, r) => [t, l, b, r],
            PaddingConfig2d::Valid => [0; 4],
            PaddingConfig2d::Same => {
                return Err(ExportError::Unsupported(format!("{name}: `Same` padding")))
            }
        };
        let wn = self.g.init_float(&format!("{name}.weight"), &dims, &f32s(weight));
        let bn = self.g.init_float(&format!("{name}.bias"), &[dims[0]], &f32s(bias.val()));
        Ok(self.g.node(
            "Conv",
            name,
            &[x, &wn, &bn],
            vec![
                ("dilations", ints(&c.dilation)),
                ("group", Attr::Int(c.groups as i64)),
                ("kernel_shape", ints(&c.kernel_size)),
                // ONNX order: begins of (H, W), then ends.
                ("pads", ints(&pads)),
                ("strides", ints(&c.stride)),
            ],
        ))
    }

    /// `Conv` block: conv (BatchNorm folded) + SiLU as `x * sigmoid(x)`.
    fn conv(&mut self, name: &str, m: &Conv, x: &str) -> Result<String> {
        let y = self.conv2d(&format!("{name}.conv"), &m.conv, x)?;
        let s = self.g.node("Sigmoid", name, &[&y], vec![]);
        Ok(self.g.node("Mul", name, &[&y, &s], vec![]))
    }

    fn concat(&mut self, name: &str, xs: &[&str], axis: i64) -> String {
        if xs.len() == 1 {
            return xs[0].to_string();
        }
        self.g.node("Concat", name, xs, vec![("axis", Attr::Int(axis))])
    }

    fn slice(&mut self, name: &str, x: &str, axis: i64, start: i64, end: i64) -> String {
        let (s, e, a) = (
            self.g.const_i64(&[start]),
            self.g.const_i64(&[end]),
            self.g.const_i64(&[axis]),
        );
        self.g.node("Slice", name, &[x, &s, &e, &a], vec![])
    }

    fn bottleneck(&mut self, name: &str, m: &Bottleneck, x: &str) -> Result<String> {
        let y = self.conv(&format!("{name}.cv1"), &m.cv1, x)?;
        let y = self.conv(&format!("{name}.cv2"), &m.cv2, &y)?;
        Ok(if m.add {
            self.g.node("Add", name, &[x, &y], vec![])
        } else {
            y
        })
    }

    /// C2f over `xs` concatenated along channels. cv1's whole output enters the final concat
    /// (its two halves side by side are itself); the bottlenecks run on its second half.
    fn c2f(&mut self, name: &str, m: &C2f, xs: &[&str]) -> Result<String> {
        let x = self.concat(&format!("{name}.in"), xs, 1);
        let y = self.conv(&format!("{name}.cv1"), &m.cv1, &x)?;
        let c = m.c as i64;
        let mut last = self.slice(&format!("{name}.split"), &y, 1, c, 2 * c);
        let mut ys = vec![y];
        for (i, b) in m.m.iter().enumerate() {
            last = self.bottleneck(&format!("{name}.m.{i}"), b, &last)?;
            ys.push(last.clone());
        }
        let refs: Vec<&str> = ys.iter().map(|s| s.as_str()).collect();
        let cat = self.concat(name, &refs, 1);
        self.conv(&format!("{name}.cv2"), &m.cv2, &cat)
    }

    fn sppf(&mut self, name: &str, m: &Sppf, x: &str) -> Result<String> {
        let [k, kw] = m.m.kernel_size;
        let pads = match m.m.padding {
            PaddingConfig2d::Explicit(t, l, b, r) => [t, l, b, r],
            _ => return Err(ExportError::Unsupported(format!("{name}: max-pool padding"))),
        };
        let y0 = self.conv(&format!("{name}.cv1"), &m.cv1, x)?;
        let mut ys = vec![y0];
        for _ in 0..3 {
            let prev = ys.last().unwrap().clone();
            // ONNX MaxPool pads with -inf, like PyTorch's.
            ys.push(self.g.node(
                "MaxPool",
                &format!("{name}.m"),
                &[&prev],
                vec![
                    ("kernel_shape", ints(&[k, kw])),
                    ("pads", ints(&pads)),
                    ("strides", ints(&m.m.stride)),
                ],
            ));
        }
        let refs: Vec<&str> = ys.iter().map(|s| s.as_str()).collect();
        let cat = self.concat(name, &refs, 1);
        self.conv(&format!("{name}.cv2"), &m.cv2, &cat)
    }

    /// Nearest 2x upsampling: every pixel becomes a 2x2 block (asymmetric + floor is exact).
    fn upsample(&mut self, name: &str, x: &str) -> String {
        let scales = self.g.init_f32(&format!("{name}.scales"), &[4], &[1.0, 1.0, 2.0, 2.0]);
        self.g.node(
            "Resize",
            name,
            &[x, "", &scales],
            vec![
                ("coordinate_transformation_mode", Attr::Str("asymmetric".into())),
                ("mode", Attr::Str("nearest".into())),
                ("nearest_mode", Attr::Str("floor".into())),
            ],
        )
    }

    /// One head branch (`cv2.i` or `cv3.i`): Conv, Conv, Conv2d.
    fn branch(&mut self, name: &str, layers: &[BranchLayer], x: &str) -> Result<String> {
        let mut y = x.to_string();
        for (j, l) in layers.iter().enumerate() {
            let n = format!("{name}.{j}");
            y = match l {
                BranchLayer::Conv(c) => self.conv(&n, c, &y)?,
                BranchLayer::Out(c) => self.conv2d(&n, c, &y)?,
            };
        }
        Ok(y)
    }

    /// The whole model; returns the decoded prediction `[B, 4 + nc, A]` in the graph's float
    /// type. Names follow Ultralytics' `model.{i}`.
    fn model(&mut self, m: &YoloV8, x: &str) -> Result<String> {
        let b = &m.backbone;
        let x = self.conv("model.0", &b.stem, x)?;
        let x = self.conv("model.1", &b.down1, &x)?;
        let x = self.c2f("model.2", &b.c2f1, &[&x])?;
        let x = self.conv("model.3", &b.down2, &x)?;
        let p3 = self.c2f("model.4", &b.c2f2, &[&x])?;
        let x = self.conv("model.5", &b.down3, &p3)?;
        let p4 = self.c2f("model.6", &b.c2f3, &[&x])?;
        let x = self.conv("model.7", &b.down4, &p4)?;
        let x = self.c2f("model.8", &b.c2f4, &[&x])?;
        let p5 = self.sppf("model.9", &b.sppf, &x)?;

        let n = &m.neck;
        let u = self.upsample("model.10", &p5);
        let t4 = self.c2f("model.12", &n.top_p4, &[&u, &p4])?;
        let u = self.upsample("model.13", &t4);
        let o3 = self.c2f("model.15", &n.top_p3, &[&u, &p3])?;
        let d = self.conv("model.16", &n.down_p3, &o3)?;
        let o4 = self.c2f("model.18", &n.out_p4, &[&d, &t4])?;
        let d = self.conv("model.19", &n.down_p4, &o4)?;
        let o5 = self.c2f("model.21", &n.out_p5, &[&d, &p5])?;

        self.head(m, &[o3, o4, o5])
    }

    /// Detect head, DFL and decode.
    fn head(&mut self, m: &YoloV8, xs: &[String]) -> Result<String> {
        let head = &m.head;
        let meta = head.meta();
        let (r, nc) = (meta.reg_max, meta.nc);
        let box_shape = self.g.const_i64(&[0, 4 * r as i64, -1]);
        let cls_shape = self.g.const_i64(&[0, nc as i64, -1]);
        let (mut boxes, mut scores, mut maps) = (Vec::new(), Vec::new(), Vec::new());
        for (i, x) in xs.iter().enumerate() {
            let bx = self.branch(&format!("model.22.cv2.{i}"), &head.cv2[i], x)?;
            let sc = self.branch(&format!("model.22.cv3.{i}"), &head.cv3[i], x)?;
            boxes.push(self.g.node("Reshape", &format!("model.22.boxes.{i}"), &[&bx, &box_shape], vec![]));
            scores.push(self.g.node("Reshape", &format!("model.22.scores.{i}"), &[&sc, &cls_shape], vec![]));
            maps.push(sc);
        }
        let b: Vec<&str> = boxes.iter().map(|s| s.as_str()).collect();
        let s: Vec<&str> = scores.iter().map(|s| s.as_str()).collect();
        let boxes = self.concat("model.22.boxes", &b, 2); // [B, 4 * reg_max, A]
        let scores = self.concat("model.22.scores", &s, 2); // [B, nc, A]

        // DFL: softmax over the bins of each side, then the expectation Σ j·p_j as one MatMul
        // with the projection 0..reg_max (Ultralytics' 1x1 conv with the same weights).
        let shape = self.g.const_i64(&[0, 4, r as i64, -1]);
        let bins = self.g.node("Reshape", "model.22.dfl", &[&boxes, &shape], vec![]);
        let prob = self.g.node("Softmax", "model.22.dfl", &[&bins], vec![("axis", Attr::Int(2))]);
        let proj: Vec<f32> = (0..r).map(|j| j as f32).collect();
        let proj = self.g.init_float("model.22.dfl.conv.weight", &[1, r], &proj);
        let dist = self.g.node("MatMul", "model.22.dfl", &[&proj, &prob], vec![]); // [B, 4, 1, A]
        let shape = self.g.const_i64(&[0, 4, -1]);
        let dist = self.g.node("Reshape", "model.22.dfl", &[&dist, &shape], vec![]); // [B, 4, A]

        let (anchors, strides) = if self.opts.dynamic {
            self.dynamic_anchors(&maps)
        } else {
            let [h, w] = self.opts.imgsz;
            let grids: Vec<(usize, usize)> = STRIDES.iter().map(|s| (h / s, w / s)).collect();
            let (points, strides) = make_anchors(&grids, &STRIDES);
            let a = strides.len();
            // points are (x, y) pairs per anchor; the graph wants [1, 2, A].
            let mut xy = vec![0f32; 2 * a];
            for i in 0..a {
                xy[i] = points[2 * i];
                xy[a + i] = points[2 * i + 1];
            }
            (
                self.g.init_float("model.22.anchors", &[1, 2, a], &xy),
                self.g.init_float("model.22.strides", &[1, 1, a], &strides),
            )
        };

        // dist2bbox (xywh) then * strides, in yolo-core's order.
        let lt = self.slice("model.22.lt", &dist, 1, 0, 2);
        let rb = self.slice("model.22.rb", &dist, 1, 2, 4);
        let x1y1 = self.g.node("Sub", "model.22.x1y1", &[&anchors, &lt], vec![]);
        let x2y2 = self.g.node("Add", "model.22.x2y2", &[&anchors, &rb], vec![]);
        let sum = self.g.node("Add", "model.22.cxy", &[&x1y1, &x2y2], vec![]);
        let two = self.g.init_float("model.22.two", &[1], &[2.0]);
        let cxy = self.g.node("Div", "model.22.cxy", &[&sum, &two], vec![]);
        let wh = self.g.node("Sub", "model.22.wh", &[&x2y2, &x1y1], vec![]);
        let xywh = self.concat("model.22.xywh", &[&cxy, &wh], 1);
        let xywh = self.g.node("Mul", "model.22.xywh", &[&xywh, &strides], vec![]);
        let cls = self.g.node("Sigmoid", "model.22.cls", &[&scores], vec![]);
        Ok(self.concat("model.22.output", &[&xywh, &cls], 1))
    }

    /// Anchor points `[1, 2, A]` and strides `[1, 1, A]` computed from each level's map size
    /// (dynamic height and width).
    fn dynamic_anchors(&mut self, maps: &[String]) -> (String, String) {
        let (mut pts, mut strs) = (Vec::new(), Vec::new());
        // Range in f32 (ONNX Range has no f16; tract infers an integer Range over a shape as a
        // symbolic dimension and refuses it), then the graph's float type.
        let half = self.g.init_f32_scalar("anchors.offset", 0.5);
        let one = self.g.init_f32_scalar("anchors.step", 1.0);
        let ax0 = self.g.const_i64(&[0]);
        let ax1 = self.g.const_i64(&[1]);
        let ft = self.g.float;
        for (i, m) in maps.iter().enumerate() {
            let n = format!("anchors.{i}");
            let shape = self.g.node("Shape", &n, &[m], vec![]);
            let hi = self.g.scalar_i64(&format!("{n}.h_index"), 2);
            let wi = self.g.scalar_i64(&format!("{n}.w_index"), 3);
            let h = self.g.node("Gather", &n, &[&shape, &hi], vec![("axis", Attr::Int(0))]);
            let w = self.g.node("Gather", &n, &[&shape, &wi], vec![("axis", Attr::Int(0))]);
            // 0.5, 1.5, ..., len - 0.5
            let coord = |len: &str, g: &mut GraphBuilder| {
                let f = g.node("Cast", &n, &[len], vec![("to", Attr::Int(DataType::Float as i64))]);
                let end = g.node("Add", &n, &[&f, &half], vec![]);
                let r = g.node("Range", &n, &[&half, &end, &one], vec![]);
                if ft == FloatType::F16 {
                    g.node("Cast", &n, &[&r], vec![("to", Attr::Int(DataType::Float16 as i64))])
                } else {
                    r
                }
            };
            let xs = coord(&w, &mut self.g); // [w]
            let ys = coord(&h, &mut self.g); // [h]
            let h1 = self.g.node("Unsqueeze", &n, &[&h, &ax0], vec![]);
            let w1 = self.g.node("Unsqueeze", &n, &[&w, &ax0], vec![]);
            let hw = self.g.node("Concat", &n, &[&h1, &w1], vec![("axis", Attr::Int(0))]);
            let xr = self.g.node("Unsqueeze", &n, &[&xs, &ax0], vec![]); // [1, w]
            let yc = self.g.node("Unsqueeze", &n, &[&ys, &ax1], vec![]); // [h, 1]
            let gx = self.g.node("Expand", &n, &[&xr, &hw], vec![]);
            let gy = self.g.node("Expand", &n, &[&yc, &hw], vec![]);
            let gx = self.g.node("Unsqueeze", &n, &[&gx, &ax0], vec![]);
            let gy = self.g.node("Unsqueeze", &n, &[&gy, &ax0], vec![]);
            let grid = self.g.node("Concat", &n, &[&gx, &gy], vec![("axis", Attr::Int(0))]); // [2, h, w]
            let shape = self.g.const_i64(&[1, 2, -1]);
            pts.push(self.g.node("Reshape", &n, &[&grid, &shape], vec![]));
            let count = self.g.node("Mul", &n, &[&h1, &w1], vec![]);
            let ones = self.g.const_i64(&[1, 1]);
            let sshape = self.g.node("Concat", &n, &[&ones, &count], vec![("axis", Attr::Int(0))]);
            let s = self.g.init_float(&format!("{n}.stride"), &[1, 1, 1], &[STRIDES[i] as f32]);
            strs.push(self.g.node("Expand", &n, &[&s, &sshape], vec![]));
        }
        let p: Vec<&str> = pts.iter().map(|s| s.as_str()).collect();
        let s: Vec<&str> = strs.iter().map(|s| s.as_str()).collect();
        (
            self.g.node("Concat", "anchors", &p, vec![("axis", Attr::Int(2))]),
            self.g.node("Concat", "strides", &s, vec![("axis", Attr::Int(2))]),
        )
    }

    /// NMS on the f32 prediction `[B, 4 + nc, A]`: `[B, max_det, 6]` rows
    /// `x1, y1, x2, y2, score, class` by descending score, zero rows after the last detection.
    ///
    /// Same semantics as `yolo_core::nms` with `multi_label = false`: each anchor is a
    /// candidate with its best class (first on ties) when that score is above `conf`;
    /// suppression per class (or across classes with `agnostic`), IoU strictly above `iou`;
    /// the best `max_det` kept boxes. Per-class suppression uses ONNX NMS's class axis (every
    /// class row holds the scores of the anchors whose best class it is, -1 elsewhere), so no
    /// coordinate offsets are needed. Kept boxes are scattered back into a dense `[B, A]`
    /// score map (-1 where not kept) and the top `max_det` taken, which sorts and pads without
    /// any shape computation.
    fn nms(&mut self, pred: &str, n: &NmsOptions, nc: usize, a: usize) -> Result<String> {
        let g = &mut self.g;
        let nm = "nms";
        let sl = |g: &mut GraphBuilder, x: &str, axis: i64, s: i64, e: i64| {
            let (s, e, ax) = (g.const_i64(&[s]), g.const_i64(&[e]), g.const_i64(&[axis]));
            g.node("Slice", nm, &[x, &s, &e, &ax], vec![])
        };
        let xywh = sl(g, pred, 1, 0, 4);
        let scores = sl(g, pred, 1, 4, 4 + nc as i64); // [B, nc, A]
        // xywh → xyxy as yolo_core::boxes::xywh_to_xyxy.
        let cxy = sl(g, &xywh, 1, 0, 2);
        let wh = sl(g, &xywh, 1, 2, 4);
        let two = g.init_f32("nms.two", &[1], &[2.0]);
        let halfwh = g.node("Div", nm, &[&wh, &two], vec![]);
        let x1y1 = g.node("Sub", nm, &[&cxy, &halfwh], vec![]);
        let x2y2 = g.node("Add", nm, &[&cxy, &halfwh], vec![]);
        let xyxy = g.node("Concat", nm, &[&x1y1, &x2y2], vec![("axis", Attr::Int(1))]);
        let boxes = g.node("Transpose", nm, &[&xyxy], vec![("perm", Attr::Ints(vec![0, 2, 1]))]); // [B, A, 4]

        let cls = g.node(
            "ArgMax",
            nm,
            &[&scores],
            vec![("axis", Attr::Int(1)), ("keepdims", Attr::Int(1)), ("select_last_index", Attr::Int(0))],
        ); // [B, 1, A]
        let best = g.node("GatherElements", nm, &[&scores, &cls], vec![("axis", Attr::Int(1))]); // [B, 1, A]
        let nms_scores = if n.agnostic {
            best.clone()
        } else {
            let ids: Vec<i64> = (0..nc as i64).collect();
            let ids_name = g.init_raw_i64("nms.class_ids", &[1, nc, 1], &ids);
            let is_best = g.node("Equal", nm, &[&ids_name, &cls], vec![]);
            let neg = g.init_f32("nms.minus_one", &[1], &[-1.0]);
            g.node("Where", nm, &[&is_best, &scores, &neg], vec![]) // [B, nc, A]
        };
        let max_out = g.const_i64(&[n.max_det as i64]);
        let iou = g.init_f32("nms.iou_threshold", &[1], &[n.iou]);
        let conf = g.init_f32("nms.score_threshold", &[1], &[n.conf]);
        let sel = g.node(
            "NonMaxSuppression",
            nm,
            &[&boxes, &nms_scores, &max_out, &iou, &conf],
            vec![("center_point_box", Attr::Int(0))],
        ); // [N, 3]: batch, class, anchor
        let cols = g.const_i64(&[0, 2]);
        let ba = g.node("Gather", nm, &[&sel, &cols], vec![("axis", Attr::Int(1))]); // [N, 2]
        let ax1 = g.const_i64(&[1]);
        let best2 = g.node("Squeeze", nm, &[&best, &ax1], vec![]); // [B, A]
        let upd = g.node("GatherND", nm, &[&best2, &ba], vec![]); // [N]
        let dense0 = if self.opts.dynamic {
            let zero = g.init_f32("nms.zero", &[1], &[0.0]);
            let one = g.init_f32("nms.one", &[1], &[1.0]);
            let z = g.node("Mul", nm, &[&best2, &zero], vec![]);
            g.node("Sub", nm, &[&z, &one], vec![])
        } else {
            let b = self.opts.batch;
            g.init_f32("nms.not_kept", &[b, a], &vec![-1.0; b * a])
        };
        let mut kept = g.node("ScatterND", nm, &[&dense0, &ba, &upd], vec![]); // [B, A]
        let cls_f = g.node("Cast", nm, &[&cls], vec![("to", Attr::Int(DataType::Float as i64))]);
        let mut cls_f = g.node("Squeeze", nm, &[&cls_f, &ax1], vec![]); // [B, A]
        let mut boxes = boxes;
        let k = n.max_det;
        if self.opts.dynamic || a < k {
            // Fewer anchors than rows (or unknown): pad with not-kept entries so TopK's k fits.
            let p = k as i64;
            let pad2 = g.const_i64(&[0, 0, 0, p]);
            let pad3 = g.const_i64(&[0, 0, 0, 0, p, 0]);
            let neg = g.init_f32("nms.pad_score", &[], &[-1.0]);
            let zero = g.init_f32("nms.pad_zero", &[], &[0.0]);
            kept = g.node("Pad", nm, &[&kept, &pad2, &neg], vec![]);
            cls_f = g.node("Pad", nm, &[&cls_f, &pad2, &zero], vec![]);
            boxes = g.node("Pad", nm, &[&boxes, &pad3, &zero], vec![]);
        }
        let kk = g.const_i64(&[k as i64]);
        let top = g.node_n(
            "TopK",
            nm,
            &[&kept, &kk],
            2,
            vec![("axis", Attr::Int(1)), ("largest", Attr::Int(1)), ("sorted", Attr::Int(1))],
        );
        let (vals, idx) = (&top[0], &top[1]); // [B, k]
        let ax2 = g.const_i64(&[2]);
        let idx3 = g.node("Unsqueeze", nm, &[idx, &ax2], vec![]);
        let box_k = g.node("GatherND", nm, &[&boxes, &idx3], vec![("batch_dims", Attr::Int(1))]); // [B, k, 4]
        let cls_k = g.node("GatherElements", nm, &[&cls_f, idx], vec![("axis", Attr::Int(1))]);
        let vals3 = g.node("Unsqueeze", nm, &[vals, &ax2], vec![]);
        let cls3 = g.node("Unsqueeze", nm, &[&cls_k, &ax2], vec![]);
        let det = g.node("Concat", nm, &[&box_k, &vals3, &cls3], vec![("axis", Attr::Int(2))]); // [B, k, 6]
        let thr = g.init_f32("nms.kept_above", &[], &[-0.5]);
        let valid = g.node("Greater", nm, &[&vals3, &thr], vec![]);
        let zero = g.init_f32("nms.out_zero", &[], &[0.0]);
        Ok(g.node("Where", nm, &[&valid, &det, &zero], vec![]))
    }
}

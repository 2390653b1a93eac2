//! A small typed builder for ONNX graphs: nodes with unique names, initializers in the
//! graph's float type (f32 or f16), deduplicated integer constants.

use std::collections::HashMap;

use crate::proto::{
    tensor_shape_proto::{dimension, Dimension},
    type_proto, AttributeProto, AttributeType, DataType, GraphProto, NodeProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// Element type of the graph's float tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatType {
    F32,
    F16,
}

impl FloatType {
    pub fn data_type(self) -> DataType {
        match self {
            Self::F32 => DataType::Float,
            Self::F16 => DataType::Float16,
        }
    }

    /// Little-endian bytes of `v` in this type (f16: round to nearest even).
    pub fn bytes(self, v: &[f32]) -> Vec<u8> {
        match self {
            Self::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Self::F16 => v
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect(),
        }
    }
}

/// One dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// A symbolic dimension (`--dynamic`), e.g. `batch`.
    Named(String),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fixed(n) => write!(f, "{n}"),
            Self::Named(s) => f.write_str(s),
        }
    }
}

/// A node attribute value.
#[derive(Debug, Clone)]
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Str(String),
    Tensor(TensorProto),
}

impl Attr {
    fn into_proto(self, name: &str) -> AttributeProto {
        let mut a = AttributeProto {
            name: name.into(),
            ..Default::default()
        };
        let ty = match self {
            Self::Int(v) => {
                a.i = Some(v);
                AttributeType::Int
            }
            Self::Ints(v) => {
                a.ints = v;
                AttributeType::Ints
            }
            Self::Float(v) => {
                a.f = Some(v);
                AttributeType::Float
            }
            Self::Str(v) => {
                a.s = Some(v.into_bytes());
                AttributeType::String
            }
            Self::Tensor(t) => {
                a.t = Some(t);
                AttributeType::Tensor
            }
        };
        a.r#type = ty as i32;
        a
    }
}

/// A tensor proto with raw little-endian data.
pub fn tensor(name: &str, dt: DataType, dims: &[usize], raw: Vec<u8>) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: dt as i32,
        name: name.into(),
        raw_data: raw,
        ..Default::default()
    }
}

/// A graph input or output of element type `dt`.
pub fn value_info(name: &str, dt: DataType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => dimension::Value::DimValue(*n as i64),
                Dim::Named(s) => dimension::Value::DimParam(s.clone()),
            }),
            denotation: String::new(),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: dt as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

/// Builds the nodes and initializers of one graph.
pub struct GraphBuilder {
    /// Type of the float initializers made by [`init_float`](Self::init_float).
    pub float: FloatType,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    names: HashMap<String, usize>,
    i64_consts: HashMap<Vec<i64>, String>,
}

impl GraphBuilder {
    pub fn new(float: FloatType) -> Self {
        Self {
            float,
            nodes: Vec::new(),
            initializers: Vec::new(),
            names: HashMap::new(),
            i64_consts: HashMap::new(),
        }
    }

    /// `base`, or `base_2`, `base_3` … if already taken.
    fn unique(&mut self, base: &str) -> String {
        let n = self.names.entry(base.to_string()).or_insert(0);
        *n += 1;
        if *n == 1 {
            base.to_string()
        } else {
            format!("{base}_{n}")
        }
    }

    /// Adds a node with `n_out` outputs named after the node; returns the output names.
    pub fn node_n(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        n_out: usize,
        attrs: Vec<(&str, Attr)>,
    ) -> Vec<String> {
        let name = self.unique(&format!("{name}/{op}"));
        let outputs: Vec<String> = if n_out == 1 {
            vec![format!("{name}_output_0")]
        } else {
            (0..n_out).map(|i| format!("{name}_output_{i}")).collect()
        };
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.clone(),
            name,
            op_type: op.into(),
            attribute: attrs.into_iter().map(|(k, v)| v.into_proto(k)).collect(),
            ..Default::default()
        });
        outputs
    }

    /// Adds a node with one output; returns its name.
    pub fn node(&mut self, op: &str, name: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        self.node_n(op, name, inputs, 1, attrs).remove(0)
    }

    /// Renames the output of the last node (to make it a graph output).
    pub fn rename_last_output(&mut self, to: &str) -> String {
        let last = self.nodes.last_mut().expect("graph has a node");
        last.output[0] = to.to_string();
        to.to_string()
    }

    /// A float initializer stored in the graph's float type.
    pub fn init_float(&mut self, name: &str, dims: &[usize], v: &[f32]) -> String {
        self.init_raw(name, self.float.data_type(), dims, self.float.bytes(v), v.len())
    }

    /// An f32 initializer whatever the graph's float type (operator inputs that must be f32).
    pub fn init_f32(&mut self, name: &str, dims: &[usize], v: &[f32]) -> String {
        self.init_raw(name, DataType::Float, dims, FloatType::F32.bytes(v), v.len())
    }

    /// A scalar (rank 0) f32 initializer.
    pub fn init_f32_scalar(&mut self, name: &str, v: f32) -> String {
        self.init_raw(name, DataType::Float, &[], v.to_le_bytes().to_vec(), 1)
    }

    /// An int64 constant, shared by every use of the same values.
    pub fn const_i64(&mut self, v: &[i64]) -> String {
        if let Some(n) = self.i64_consts.get(v) {
            return n.clone();
        }
        let vals: Vec<String> = v.iter().map(|x| x.to_string()).collect();
        let name = format!("const_i64_{}", vals.join("_").replace('-', "m"));
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let name = self.init_raw(&name, DataType::Int64, &[v.len()], raw, v.len());
        self.i64_consts.insert(v.to_vec(), name.clone());
        name
    }

    /// A named int64 initializer of any shape.
    pub fn init_raw_i64(&mut self, name: &str, dims: &[usize], v: &[i64]) -> String {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.init_raw(name, DataType::Int64, dims, raw, v.len())
    }

    /// A scalar (rank 0) int64 constant.
    pub fn scalar_i64(&mut self, name: &str, v: i64) -> String {
        self.init_raw(name, DataType::Int64, &[], v.to_le_bytes().to_vec(), 1)
    }

    fn init_raw(&mut self, name: &str, dt: DataType, dims: &[usize], raw: Vec<u8>, len: usize) -> String {
        assert_eq!(
            dims.iter().product::<usize>(),
            len,
            "initializer {name}: {len} values for dims {dims:?}"
        );
        let name = self.unique(name);
        self.initializers.push(tensor(&name, dt, dims, raw));
        name
    }

    /// Number of nodes so far.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Operator types used, sorted, with counts.
    pub fn op_counts(&self) -> Vec<(String, usize)> {
        let mut m: std::collections::BTreeMap<String, usize> = Default::default();
        for n in &self.nodes {
            *m.entry(n.op_type.clone()).or_default() += 1;
        }
        m.into_iter().collect()
    }

    /// The finished graph.
    pub fn finish(self, name: &str, inputs: Vec<ValueInfoProto>, outputs: Vec<ValueInfoProto>) -> GraphProto {
        GraphProto {
            node: self.nodes,
            name: name.into(),
            initializer: self.initializers,
            input: inputs,
            output: outputs,
            ..Default::default()
        }
    }
}

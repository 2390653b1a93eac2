//! The CPU backend's (`flex`) f32 tensors as slices and back without copies, and new buffers
//! filled on all cores: what every CPU kernel and backend operation reads and writes through.

use burn::backend::TensorMetadata;
use burn::tensor::{Bytes, DType, Device, Shape, Tensor};
use burn_flex::{Flex, FlexTensor, Layout};
use rayon::prelude::*;


/// Whether `device` is the `flex` CPU backend, with or without autodiff (`Device` equality
/// does not look at autodiff).
pub fn is_flex(device: &Device) -> bool {
    *device == Device::flex()
}

/// A new buffer of `len` values filled on rayon's pool: `f(i, chunk)` writes chunk `i` (of
/// `chunk` values; the last may be shorter), which it finds zeroed; returns the buffer and each
/// chunk's result, in chunk order. Each chunk is zeroed just before `f` writes it, while it
/// is in cache: a big `vec![0.0; n]` is zeroed up front by one thread (calloc's memset, or
/// page faults on first touch) while the other cores wait, and then written again.
pub(crate) fn par_fill<R: Send>(len: usize, chunk: usize, f: impl Fn(usize, &mut [f32]) -> R + Sync + Send) -> (Vec<f32>, Vec<R>) {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    let results = v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .map(|(i, c)| {
            c.iter_mut().for_each(|e| {
                e.write(0.0);
            });
            // SAFETY: every element of `c` was initialised just above, and `MaybeUninit<f32>`
            // has the layout of `f32`.
            let c = unsafe { &mut *(c as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
            f(i, c)
        })
        .collect();
    // SAFETY: the chunks above cover and initialise all `len` elements.
    unsafe { v.set_len(len) };
    (v, results)
}

/// [`par_fill`] without the zeroing, for buffers whose every element `f` writes: `f(i,
/// chunk)` initialises chunk `i` (of `chunk` values; the last may be shorter).
///
/// # Safety
/// `f` must write every element of each chunk it is given.
pub(crate) unsafe fn par_init<R: Send>(len: usize, chunk: usize, f: impl Fn(usize, &mut [std::mem::MaybeUninit<f32>]) -> R + Sync + Send) -> (Vec<f32>, Vec<R>) {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    let results = v.spare_capacity_mut()[..len].par_chunks_mut(chunk.max(1)).enumerate().map(|(i, c)| f(i, c)).collect();
    // SAFETY: the chunks cover all `len` elements, and `f` initialised each (the contract).
    unsafe { v.set_len(len) };
    (v, results)
}

/// `len` zeros, written on rayon's pool ([`par_fill`]).
pub(crate) fn par_zeroed(len: usize) -> Vec<f32> {
    par_fill(len, 1 << 16, |_, _| ()).0
}

/// The values of an f32 `flex` primitive, contiguous: borrowed, or copied when it is a
/// strided view. Panics on another dtype (callers check it first).
pub(crate) fn flex_values(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    assert_eq!(t.dtype(), DType::F32, "CPU kernels take f32 tensors");
    match t.as_slice::<f32>() {
        Some(v) => std::borrow::Cow::Borrowed(v),
        None => std::borrow::Cow::Owned(contiguous_values(t)),
    }
}

/// The values of a strided f32 view in row-major order. Views whose inner dimensions are
/// contiguous in blocks of at least 256 values (channel slices of NCHW tensors: C2f's halves,
/// the slices of a concat's gradient) are copied block by block on all cores; others go
/// through Burn's `to_contiguous` (one thread).
fn contiguous_values(t: &FlexTensor) -> Vec<f32> {
    let layout = t.layout();
    let blocks = layout.strided_blocks();
    let len = blocks.block_len();
    if len >= 256 && layout.has_positive_strides() {
        let starts: Vec<usize> = blocks.block_starts().collect();
        let src = t.storage::<f32>();
        // SAFETY: each chunk (one block; the blocks cover the view) is written whole.
        return unsafe {
            par_init(layout.num_elements(), len, |i, o| {
                for (o, &v) in o.iter_mut().zip(&src[starts[i]..starts[i] + len]) {
                    o.write(v);
                }
            })
        }
        .0;
    }
    t.clone().to_contiguous().as_slice::<f32>().expect("contiguous").to_vec()
}

/// `t` itself when it is contiguous, else a contiguous copy ([`flex_values`]).
pub(crate) fn flex_contiguous(t: FlexTensor) -> FlexTensor {
    if t.dtype() != DType::F32 || t.as_slice::<f32>().is_some() {
        return t;
    }
    let shape = t.layout().shape().clone();
    flex_primitive(contiguous_values(&t), shape)
}

/// A contiguous f32 `flex` primitive that takes ownership of `data` (no copy).
pub(crate) fn flex_primitive(data: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::new(Bytes::from_elems(data), Layout::contiguous(shape), DType::F32)
}

/// A contiguous f32 `flex` tensor that takes ownership of `data` (no copy).
pub(crate) fn flex_tensor<const D: usize>(data: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
    let t = FlexTensor::new(Bytes::from_elems(data), Layout::contiguous(Shape::new(shape)), DType::F32);
    Tensor::from_primitive::<Flex>(t)
}

/// Whether `t` is a plain (not autodiff) f32 tensor on `flex`: what the fast paths here run.
pub(crate) fn is_plain_flex<const D: usize>(t: &Tensor<D>) -> bool {
    t.dtype() == DType::F32 && t.clone().try_into_primitive::<Flex>().is_ok()
}

/// The tensor's `flex` primitive, contiguous (copied only if it is a strided view), or `None`
/// when it is not an f32 tensor on `flex`.
pub(crate) fn flex_f32<const D: usize>(t: Tensor<D>) -> Option<FlexTensor> {
    if t.dtype() != DType::F32 {
        return None;
    }
    let p = t.try_into_primitive::<Flex>().ok()?;
    // flex's own `to_contiguous` copies on one thread: C2f's `narrow` of `cv1`'s output at
    // batch > 1 (a view of B runs) went through it, ~1% of a batch-8 forward.
    Some(flex_contiguous(p))
}

/// `[B, C, H, W]` of a 4-D tensor; panics naming `op` on another rank.
pub(crate) fn dims4(t: &FlexTensor, op: &str) -> [usize; 4] {
    let s = t.shape();
    assert_eq!(s.num_dims(), 4, "{op} takes NCHW tensors, got {s:?}");
    [s[0], s[1], s[2], s[3]]
}

/// A pointer that tiles write through; each tile owns a disjoint set of output elements.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: tasks write disjoint elements (see `run`), and `run` joins them before returning.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    /// [`flex_f32`]'s strided views come out contiguous with the same values as Burn's copy:
    /// a batch's channel range and a band of rows (long runs: the parallel copy), and short
    /// runs and a permuted view (`flex`'s copy).
    #[test]
    fn contiguous_views_match_burn() {
        let device = crate::backend::cpu_device();
        let x = Tensor::<4>::from_data(TensorData::new((0..3 * 8 * 40 * 40).map(|i| i as f32).collect::<Vec<_>>(), [3, 8, 40, 40]), &device);
        for view in [x.clone().narrow(1, 4, 4), x.clone().narrow(1, 2, 5), x.clone().narrow(2, 3, 30), x.clone().narrow(3, 5, 20), x.clone().swap_dims(1, 3)] {
            let ours = flex_f32(view.clone()).expect("flex f32");
            assert!(ours.as_slice::<f32>().is_some(), "contiguous");
            let got = Tensor::<4>::from_primitive::<Flex>(ours);
            assert_eq!(got.dims(), view.dims());
            assert_eq!(got.into_data().try_to_vec::<f32>().unwrap(), view.into_data().try_to_vec::<f32>().unwrap());
        }
    }

    /// Strided views come out in row-major order: a channel slice of an NCHW tensor (copied
    /// block by block) and a transpose (Burn's copy).
    #[test]
    fn strided_views_are_made_contiguous() {
        let device = crate::backend::cpu_device();
        let t = Tensor::<4>::random([3, 6, 16, 20], Distribution::Normal(0.0, 1.0), &device);
        for view in [t.clone().narrow(1, 2, 3), t.clone().swap_dims(2, 3)] {
            let want: Vec<f32> = view.clone().into_data().try_to_vec().unwrap();
            let prim = view.try_into_primitive::<Flex>().unwrap();
            assert!(prim.as_slice::<f32>().is_none(), "the view should be strided");
            assert_eq!(flex_values(&prim).into_owned(), want);
            let c = flex_contiguous(prim);
            assert_eq!(c.as_slice::<f32>().unwrap(), &want[..]);
        }
    }
}

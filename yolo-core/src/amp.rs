//! Autocast for mixed precision training (Ultralytics' `amp=True`, PyTorch's
//! `torch.autocast`): while an [`autocast`] scope is open on a thread, the training forward's
//! convolutions ([`crate::ops::conv::conv2d_any`]) run in half precision and hand back f32.
//! It is for training (an autodiff device) and for the training loop's validation on a GPU
//! backend (Ultralytics 8.4 validates under autocast with AMP; the fused convs there go
//! through `conv2d_any` too). Other inference paths do not consult it: the fused convs of the
//! CPU backend run f32, and branches the CPU forward runs in parallel on other threads would
//! not see the scope. Half-precision inference is [`crate::YoloV8::half`].
//!
//! What runs in which precision, against PyTorch's autocast (CUDA):
//! - convs (and the matrix products of the GPU backends' im2col convs): the input, the weight
//!   and the bias are cast to the autocast dtype, the product runs in it, as PyTorch's
//!   autocast does for `conv2d`;
//! - the conv's output is cast back to f32 before BatchNorm, SiLU, concatenation and the loss.
//!   PyTorch keeps it in f16 and runs BatchNorm on f16 input with f32 statistics. Here Burn's
//!   BatchNorm composition would mix dtypes, so it gets f32; with Burn's fusion on the GPU the
//!   cast back should fold into the element-wise kernel after the product (not measured
//!   yet). The cost is memory traffic (activations stay f32), not accuracy;
//! - the parameters (master weights), gradients, optimizer and EMA stay f32; the cast's
//!   backward hands each weight an f32 gradient.
//!
//! The loss is scaled before backward so that small f16 gradients do not flush to zero; the
//! training loop's `GradScaler` (`yolo-train`) unscales, skips steps whose gradients
//! overflowed and adapts the scale, as PyTorch's `GradScaler`.
//!
//! The scope is per thread, like PyTorch's: open it on the thread that runs the forward.
//! Backward needs no scope (the casts are recorded in the graph).

use std::cell::Cell;

use burn::tensor::{Device, FloatDType};

/// The half precision of mixed precision training: f16, as Ultralytics' AMP (PyTorch's
/// `autocast` on CUDA).
pub const DTYPE: FloatDType = FloatDType::F16;

/// Whether `device` has [`DTYPE`] arithmetic (Burn's `supports_dtype`). Where it does not (a
/// Vulkan adapter without `shaderFloat16`, say), half-precision kernels compute garbage, so
/// mixed precision is not used there.
pub fn supported(device: &Device) -> bool {
    device.supports_dtype(DTYPE)
}

/// Whether half-precision inference (Ultralytics' `half=True`, [`crate::YoloV8::half`]) is
/// used on `backend`'s `device`, and if not, why: as Ultralytics, only on a GPU (on `flex` f16
/// is emulated, slower than f32), and only where the device has f16 arithmetic.
pub fn half_inference(backend: crate::backend::BackendKind, device: &Device) -> Result<(), &'static str> {
    if backend == crate::backend::BackendKind::Flex {
        Err("half precision applies to GPU backends (flex emulates f16, slower than f32)")
    } else if !supported(device) {
        Err("the device has no f16 arithmetic")
    } else {
        Ok(())
    }
}

/// Whether `--half` (`requested`) applies on `selected` ([`half_inference`]); where it does
/// not, `warn` gets the message and the run stays f32, as Ultralytics does.
pub fn use_half(requested: bool, selected: &crate::backend::Selected, warn: impl FnOnce(&str)) -> bool {
    if !requested {
        return false;
    }
    match half_inference(selected.backend, &selected.device) {
        Ok(()) => true,
        Err(why) => {
            warn(&format!("--half ignored on {selected}: {why}; running in f32"));
            false
        }
    }
}

thread_local! {
    static AUTOCAST: Cell<Option<FloatDType>> = const { Cell::new(None) };
}

/// The dtype convs run in on this thread (`None`: no autocast, everything f32).
pub fn autocast_dtype() -> Option<FloatDType> {
    AUTOCAST.with(Cell::get)
}

/// Opens an autocast scope on this thread (`None` closes it for the scope's lifetime); the
/// previous setting comes back when the guard drops.
#[must_use = "autocast ends when the guard drops"]
pub fn autocast(dtype: Option<FloatDType>) -> AutocastGuard {
    AutocastGuard {
        previous: AUTOCAST.with(|c| c.replace(dtype)),
    }
}

/// Restores the previous autocast setting on drop.
pub struct AutocastGuard {
    previous: Option<FloatDType>,
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        AUTOCAST.with(|c| c.set(self.previous));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_and_restore() {
        assert_eq!(autocast_dtype(), None);
        {
            let _outer = autocast(Some(FloatDType::F16));
            assert_eq!(autocast_dtype(), Some(FloatDType::F16));
            {
                let _inner = autocast(None);
                assert_eq!(autocast_dtype(), None);
            }
            assert_eq!(autocast_dtype(), Some(FloatDType::F16));
            // Per thread: another thread sees no scope.
            std::thread::spawn(|| assert_eq!(autocast_dtype(), None)).join().unwrap();
        }
        assert_eq!(autocast_dtype(), None);
    }
}

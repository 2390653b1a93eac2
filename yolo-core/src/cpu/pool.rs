//! SPPF's max-pool kernels (k x k, stride 1, padding k / 2 as -inf) over NCHW f32 buffers,
//! forward and backward, separable and on all cores. [`crate::ops::max_pool`] makes them a
//! backend operation and says how they match PyTorch's and Burn's pools.

use rayon::prelude::*;

use super::flex::par_fill;

/// The larger of `m` and `v`, NaN if either is (as the pools' scan keeps a NaN).
#[inline(always)]
fn max_nan(m: f32, v: f32) -> f32 {
    if v > m || v.is_nan() {
        v
    } else {
        m
    }
}

/// `k x k` max of each window of `xs` (`[B, C, H, W]`), stride 1, padding `k / 2` as -inf.
pub fn max_pool_same(xs: &[f32], [_, _, h, w]: [usize; 4], k: usize) -> Vec<f32> {
    if h * w == 0 {
        return Vec::new();
    }
    let r = k / 2;
    let mut out = vec![0f32; xs.len()];
    out.par_chunks_mut(h * w).zip(xs.par_chunks(h * w)).for_each_init(
        || vec![0f32; h * w],
        |rowmax, (dst, src)| {
            // Rows: rowmax[y, x] = max over src[y, x - r ..= x + r] (clamped to the row).
            for (d, s) in rowmax.chunks_exact_mut(w).zip(src.chunks_exact(w)) {
                for (x, v) in d.iter_mut().enumerate() {
                    *v = s[x.saturating_sub(r)..(x + r + 1).min(w)].iter().copied().fold(f32::NEG_INFINITY, max_nan);
                }
            }
            // Columns: dst[y] = elementwise max of rowmax[y - r ..= y + r] (clamped), one
            // whole row at a time, which vectorises.
            for (y, d) in dst.chunks_exact_mut(w).enumerate() {
                let (y0, y1) = (y.saturating_sub(r), (y + r + 1).min(h));
                d.copy_from_slice(&rowmax[y0 * w..(y0 + 1) * w]);
                for yy in y0 + 1..y1 {
                    for (a, b) in d.iter_mut().zip(&rowmax[yy * w..(yy + 1) * w]) {
                        *a = max_nan(*a, *b);
                    }
                }
            }
        },
    );
    out
}

/// The gradient of [`max_pool_same`]: `gs` (the output's, `[B, C, H, W]`) added at each
/// window's first maximum of `xs` in row-major order.
pub fn max_pool_same_backward(xs: &[f32], gs: &[f32], [b, c, h, w]: [usize; 4], k: usize) -> Vec<f32> {
    let r = k / 2;
    let plane = h * w;
    let (out, _) = par_fill(b * c * plane, plane.max(1), |i, dst| {
        let src = &xs[i * plane..(i + 1) * plane];
        let g = &gs[i * plane..(i + 1) * plane];
        // Rows: the first column of each row window holding its maximum (the last NaN if
        // there is one), and that maximum; the window's first column when all of it is
        // -inf.
        let mut rowmax = vec![0f32; plane];
        let mut rowarg = vec![0u32; plane];
        for y in 0..h {
            let (s, m, a) = (&src[y * w..(y + 1) * w], &mut rowmax[y * w..(y + 1) * w], &mut rowarg[y * w..(y + 1) * w]);
            for x in 0..w {
                m[x] = s[x.saturating_sub(r)];
                a[x] = x.saturating_sub(r) as u32;
            }
            // Offsets in window order: a later column wins only when strictly greater (or
            // NaN), as in the scan of Burn's and PyTorch's pools.
            for t in 0..k {
                for x in 0..w {
                    let xx = x + t;
                    if xx < r || xx - r >= w {
                        continue;
                    }
                    let v = s[xx - r];
                    if v > m[x] || v.is_nan() {
                        m[x] = v;
                        a[x] = (xx - r) as u32;
                    }
                }
            }
        }
        // Columns: the first row of each column window whose row maximum is the largest.
        let (mut best, mut arg) = (vec![0f32; w], vec![0usize; w]);
        for y in 0..h {
            let (y0, y1) = (y.saturating_sub(r), (y + r + 1).min(h));
            best.copy_from_slice(&rowmax[y0 * w..(y0 + 1) * w]);
            arg.iter_mut().for_each(|a| *a = y0);
            for yy in y0 + 1..y1 {
                for ((m, a), v) in best.iter_mut().zip(arg.iter_mut()).zip(&rowmax[yy * w..(yy + 1) * w]) {
                    if *v > *m || v.is_nan() {
                        *m = *v;
                        *a = yy;
                    }
                }
            }
            for x in 0..w {
                let yy = arg[x];
                dst[yy * w + rowarg[yy * w + x] as usize] += g[y * w + x];
            }
        }
    });
    out
}

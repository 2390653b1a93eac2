//! Winograd `F(2x2, 3x3)` for 3x3 stride-1 convs with padding 1 (most of YOLOv8's FLOPs: the
//! bottlenecks and the Detect head), on our micro-kernels.
//!
//! A 2x2 block of outputs is computed from the 4x4 input tile around it as
//! `Y = Aᵀ [Σ_ci (G g Gᵀ) ⊙ (Bᵀ d B)] A` (Lavin & Gray, 2015): the channel sum becomes 16
//! independent GEMMs `M_ξ = U_ξ · V_ξ` (`[C_out, C_in] · [C_in, tiles]`, one per position ξ of
//! the 4x4 transformed tile) with 16 multiplies per 4 outputs where the direct conv needs 36:
//! 2.25x fewer FLOPs for the same micro-kernel. The transforms' coefficients are 0, ±1 and
//! ±1/2, so the rounding stays that of a direct conv (the tests hold it to the same bound).
//!
//! The weights are transformed once (`pack_weights`, cached by the module). A task takes a run
//! of `tc` consecutive tiles of one image (row-major over the tile grid, so a run can span
//! tile rows): it transforms their input tiles into `V` (`[16][C_in][tc]`, read by the kernel
//! in place with a row stride), runs the 16 GEMMs into `M` (`[16][C_out][tc]`) and transforms
//! `M` into the output with bias and activation. Both buffers stay in L2. The input is read
//! from its zero-padded 2x2 phase planes, so that a tile row's 4x4 tiles are contiguous
//! vectors (tile `tx` reads padded columns `2tx..2tx + 4`: even phase columns `tx, tx + 1`,
//! odd ones the same).

use super::*;

/// Whether the Winograd path runs this conv: 3x3, stride 1, padding 1 (output size = input
/// size), and at least 32 input and output channels. Per tile, the GEMMs cost
/// `∝ C_in · C_out` and the transforms `∝ C_in + C_out`: at 16 channels (yolov8n's first
/// bottleneck) the direct conv was faster (`conv-layers`), from 32 Winograd is.
pub(in crate::nn::cpu_conv) fn applies(g: &Geometry) -> bool {
    g.kh == 3 && g.kw == 3 && g.sh == 1 && g.sw == 1 && g.ph == 1 && g.pw == 1 && g.c_in.min(g.c_out) >= 32
}

/// Floats of `V` and `M` together per task (384 KB of a 512 KB L2).
const TASK_FLOATS: usize = 96 * 1024;

/// Input channels per micro-kernel call: a `[kc, nr]` block of `V` stays in L1.
const KC_MAX: usize = 256;

/// The 16 transformed weight matrices `U_ξ = (G g Gᵀ)_ξ`, each `[C_out, C_in]` packed into
/// `mr`-row panels ([`gemm_kernel::pack_a`]), one after another.
pub(in crate::nn::cpu_conv) fn pack_weights(g: &Geometry, w: &[f32], mr: usize) -> Vec<f32> {
    assert!(applies(g), "Winograd weights for {g:?}");
    let (co, ci) = (g.c_out, g.c_in);
    assert_eq!(w.len(), co * ci * 9, "weights for {g:?}");
    // G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]], applied to a 3-vector.
    let gt = |a: f64, b: f64, c: f64| [a, (a + b + c) / 2.0, (a - b + c) / 2.0, c];
    let mut u = vec![0f32; 16 * co * ci];
    for o in 0..co {
        for i in 0..ci {
            let k = &w[(o * ci + i) * 9..(o * ci + i + 1) * 9];
            // G g: columns of the kernel through G.
            let cols: [[f64; 4]; 3] = std::array::from_fn(|c| gt(k[c] as f64, k[3 + c] as f64, k[6 + c] as f64));
            for r in 0..4 {
                let row = gt(cols[0][r], cols[1][r], cols[2][r]);
                for (j, v) in row.iter().enumerate() {
                    u[((r * 4 + j) * co + o) * ci + i] = *v as f32;
                }
            }
        }
    }
    let per = co.div_ceil(mr) * ci * mr;
    let mut out = Vec::with_capacity(16 * per);
    for xi in 0..16 {
        out.extend(gemm_kernel::pack_a(&u[xi * co * ci..(xi + 1) * co * ci], co, ci, mr));
    }
    out
}

/// Tiles per task: a multiple of `nr`; `V` and `M` within [`TASK_FLOATS`]; enough tasks for
/// every thread to take several while a task keeps at least two kernel blocks of tiles.
fn tiles_per_task(g: &Geometry, batch: usize, tiles: usize, rows: usize, nr: usize) -> usize {
    let round = |n: usize| n.div_ceil(nr) * nr;
    let mut tc = (TASK_FLOATS / (16 * (g.c_in + rows)) / nr * nr).max(nr).min(round(tiles));
    let min_tasks = min_tasks();
    if batch * tiles.div_ceil(tc) < min_tasks {
        tc = round(tiles.div_ceil(min_tasks.div_ceil(batch))).max(2 * nr).min(tc);
    }
    tc
}

thread_local! {
    /// Per-thread `V`, `M` and output rows of [`run`], reused across tasks and calls.
    static WINO: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The conv with Winograd `F(2x2, 3x3)` (see the module docs); `a` comes from
/// [`pack_weights`]. Returns the NCHW output.
pub(in crate::nn::cpu_conv) fn run(g: &Geometry, batch: usize, x: &[f32], a: &[f32], bias: Option<&[f32]>, act: Activation, kern: Kernel) -> Vec<f32> {
    assert!(applies(g), "Winograd conv for {g:?}");
    assert_eq!(a.len(), 16 * g.c_out.div_ceil(kern.mr) * g.c_in * kern.mr, "Winograd weights for {g:?}");
    let len = batch * g.c_out * g.oh * g.ow;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let dst = OutPtr(out.as_mut_ptr());
    let plane = g.c_in * g.h * g.w;
    // A tile row reads one phase row of the next (its 4x4 tiles overlap by 2 rows).
    let per_row = g.c_in * 4 * (g.w + 2).div_ceil(2);
    for (i0, ni, t0, nt) in slabs(batch, g.oh.div_ceil(2), 1, per_row, slab_floats()) {
        slab(g, ni, &x[i0 * plane..(i0 + ni) * plane], t0..t0 + nt, a, bias, act, kern, dst, i0);
    }
    // SAFETY: the slabs cover every image and tile row (so every output pixel), and each
    // writes every channel of its tiles.
    unsafe { out.set_len(len) };
    out
}

/// Tile rows `tile_rows` of images `i0..i0 + batch` of a [`run`] conv (`x` holds just those
/// images), written to their places in `dst` (the whole output).
#[allow(clippy::too_many_arguments)]
fn slab(g: &Geometry, batch: usize, x: &[f32], tile_rows: std::ops::Range<usize>, a: &[f32], bias: Option<&[f32]>, act: Activation, kern: Kernel, dst: OutPtr, i0: usize) {
    let (mr, nr) = (kern.mr, kern.nr);
    let (c_in, hw) = (g.c_in, g.oh * g.ow);
    let (t0, th, tw) = (tile_rows.start, tile_rows.len(), g.ow.div_ceil(2));
    let tiles = th * tw;
    let co_panels = g.c_out.div_ceil(mr);
    let per_xi = co_panels * c_in * mr;
    // Vector loads run up to 7 floats past a tile row's last tile.
    let (xp, ps, wq) = phase_planes(g, 2, batch, x, t0..t0 + th + 1, 16);
    let tc = tiles_per_task(g, batch, tiles, co_panels * mr, nr);
    let chunks = tiles.div_ceil(tc);
    let grid = TaskGrid::new(batch, chunks, co_panels, min_tasks());
    // Rows of V and M: whole kernel blocks, room for the vector stores' overrun (up to 7
    // floats past the last tile), never 4 KB apart (nor V's channel blocks, 16 rows).
    let mut ld = acc_stride(tc + 8, nr);
    if ld % 64 == 0 {
        ld += nr;
    }
    // V of one run of tiles is [C_in][16][ld]: the kernel reads V_ξ's rows 16·ld apart.
    let v_len = c_in * 16 * ld;
    // The tile rows of the run `chunk`'s tiles: (tile row, first tile column, tiles, index).
    let segments = move |chunk: usize| {
        let t0 = chunk * tc;
        let end = tiles.min(t0 + tc);
        let mut t = t0;
        std::iter::from_fn(move || {
            (t < end).then(|| {
                let (ty, tx) = (t / tw, t % tw);
                let len = (tw - tx).min(end - t);
                t += len;
                (ty, tx, len, t - len - t0)
            })
        })
    };
    // V = Bᵀ d B for every tile of one run and channel (`v`: the channel's 16 rows).
    let transform = |img: usize, chunk: usize, ci: usize, v: &mut [f32]| {
        let plane = &xp[(img * c_in + ci) * 4 * ps..];
        for (ty, tx, len, at) in segments(chunk) {
            input_tiles(&plane[ty * wq + tx..], ps, wq, len, &mut v[at..], ld);
        }
    };
    // With output channels split between tasks, the input transform runs first, once, on
    // its own tasks (otherwise every task would repeat it for its run of tiles).
    let shared: Option<Vec<f32>> = (grid.co_chunks > 1).then(|| {
        par_fill(batch * chunks * v_len, 16 * ld, |i, v| {
            let (run, ci) = (i / c_in, i % c_in);
            transform(run / chunks, run % chunks, ci, v)
        })
        .0
    });

    (0..grid.len(batch)).into_par_iter().for_each(|task| {
        let dst = dst;
        let Some((img, chunk, cp0, cp1)) = grid.task(task) else { return };
        let n = tc.min(tiles - chunk * tc);
        let rows = (cp1 - cp0) * mr;
        WINO.with(|buf| {
            let mut buf = buf.borrow_mut();
            let own_v = if shared.is_some() { 0 } else { v_len };
            let (m_len, y_len) = (16 * rows * ld, 2 * 2 * (tw + 8));
            if buf.len() < own_v + m_len + y_len {
                buf.resize(own_v + m_len + y_len, 0.0);
            }
            let (v, rest) = buf.split_at_mut(own_v);
            let (m, y) = rest.split_at_mut(m_len);
            let v: &[f32] = match &shared {
                Some(sv) => &sv[(img * chunks + chunk) * v_len..(img * chunks + chunk + 1) * v_len],
                None => {
                    for (ci, vc) in v.chunks_exact_mut(16 * ld).enumerate() {
                        transform(img, chunk, ci, vc);
                    }
                    v
                }
            };
            // M_ξ = U_ξ · V_ξ.
            for xi in 0..16 {
                let u = &a[xi * per_xi..(xi + 1) * per_xi];
                for q in (0..n).step_by(nr) {
                    for cp in cp0..cp1 {
                        for k0 in (0..c_in).step_by(KC_MAX) {
                            let kc = KC_MAX.min(c_in - k0);
                            let ap = u[(cp * c_in + k0) * mr..(cp * c_in + k0 + kc) * mr].as_ptr();
                            let bp = v[(k0 * 16 + xi) * ld + q..((k0 + kc - 1) * 16 + xi) * ld + q + nr].as_ptr();
                            let c = m[(xi * rows + (cp - cp0) * mr) * ld + q..(xi * rows + (cp - cp0 + 1) * mr - 1) * ld + q + nr].as_mut_ptr();
                            // SAFETY: a is kc rows of mr values, b kc rows of nr values 16·ld
                            // apart, c mr rows of nr values ld apart (the slices above hold
                            // them).
                            unsafe { kern.run(kc, ap, mr, bp, 16 * ld, c, ld, k0 > 0) };
                        }
                    }
                }
            }
            // Y = Aᵀ M A, bias and activation, out.
            let (y0, y1) = y.split_at_mut(2 * (tw + 8));
            for co in cp0 * mr..(cp1 * mr).min(g.c_out) {
                let mrow = &m[(co - cp0 * mr) * ld..];
                for (ty, tx, len, at) in segments(chunk) {
                    output_tiles(&mrow[at..], rows * ld, len, y0, y1);
                    let cols = (2 * len).min(g.ow - 2 * tx);
                    for (r, yr) in [(2 * (t0 + ty), &mut *y0), (2 * (t0 + ty) + 1, &mut *y1)] {
                        if r >= g.oh {
                            continue;
                        }
                        let yr = &mut yr[..cols.div_ceil(8) * 8];
                        epilogue(yr, bias.map(|b| b[co]), act);
                        // SAFETY: columns 2tx.. of output row r of channel co of image i0 + img:
                        // only the task holding these tiles writes them.
                        let o = unsafe { std::slice::from_raw_parts_mut(dst.0.add(((i0 + img) * g.c_out + co) * hw + r * g.ow + 2 * tx), cols) };
                        o.copy_from_slice(&yr[..cols]);
                    }
                }
            }
        });
    });
}

/// `V = Bᵀ d B` for `len` consecutive tiles of one tile row and channel: `p` starts at the
/// tile row's first tile in the channel's phase plane (0, 0); the four phase planes are `ps`
/// floats apart and `wq` wide (row `i` of the 4x4 tiles, padded row `2ty + i`, is row
/// `ty + i/2` of row phase `i % 2`; its columns `2tx..2tx + 4` are even and odd phase columns
/// `tx, tx + 1`). Position `ξ` of tile `j` goes to `v[ξ·xs + j]`, 8 tiles at a time: the last
/// vector reads and writes up to 7 floats past tile `len − 1`.
fn input_tiles(p: &[f32], ps: usize, wq: usize, len: usize, v: &mut [f32], xs: usize) {
    let n = len.div_ceil(8) * 8;
    assert!(3 * ps + wq + n < p.len() && 15 * xs + n <= v.len(), "Winograd input tiles out of bounds");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present; reads reach p[3·ps + wq + n] and writes v[15·xs + n − 1]
        // (asserted in bounds).
        return unsafe { x86::input_tiles(p.as_ptr(), ps, wq, n, v.as_mut_ptr(), xs) };
    }
    for j in 0..n {
        let d = |i: usize, k: usize| p[(i % 2) * 2 * ps + (i / 2) * wq + (k % 2) * ps + k / 2 + j];
        // Bᵀ over columns (k), then over rows (i).
        let w: [[f32; 4]; 4] = [0, 1, 2, 3].map(|i| bt([d(i, 0), d(i, 1), d(i, 2), d(i, 3)]));
        for c in 0..4 {
            for (r, val) in bt([w[0][c], w[1][c], w[2][c], w[3][c]]).into_iter().enumerate() {
                v[(r * 4 + c) * xs + j] = val;
            }
        }
    }
}

/// `Y = Aᵀ M A` for `len` consecutive tiles of one tile row and output channel: position `ξ`
/// of tile `j` is `m[ξ·xs + j]`; output rows `2ty` and `2ty + 1` of the tiles go to `y0` and
/// `y1` (tile `j` at columns `2j, 2j + 1`), 8 tiles at a time (reading up to 7 floats past
/// tile `len − 1` and writing up to 14 past its columns).
fn output_tiles(m: &[f32], xs: usize, len: usize, y0: &mut [f32], y1: &mut [f32]) {
    let n = len.div_ceil(8) * 8;
    assert!(15 * xs + n <= m.len() && 2 * n <= y0.len() && 2 * n <= y1.len(), "Winograd output tiles out of bounds");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present; reads reach m[15·xs + n − 1], writes y[2n − 1] (asserted).
        return unsafe { x86::output_tiles(m.as_ptr(), xs, n, y0.as_mut_ptr(), y1.as_mut_ptr()) };
    }
    for j in 0..n {
        let t: [[f32; 2]; 4] = [0, 1, 2, 3].map(|c| at([m[c * xs + j], m[(4 + c) * xs + j], m[(8 + c) * xs + j], m[(12 + c) * xs + j]]));
        for (i, y) in [&mut *y0, &mut *y1].into_iter().enumerate() {
            let [a, b] = at([t[0][i], t[1][i], t[2][i], t[3][i]]);
            y[2 * j] = a;
            y[2 * j + 1] = b;
        }
    }
}

/// `(d0 − d2, d1 + d2, d2 − d1, d1 − d3)`: `Bᵀ` applied to a column (or row) of four.
#[inline(always)]
fn bt(d: [f32; 4]) -> [f32; 4] {
    [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]
}

/// `(m0 + m1 + m2, m1 − m2 − m3)`: `Aᵀ` applied to a column (or row) of four.
#[inline(always)]
fn at(m: [f32; 4]) -> [f32; 2] {
    [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::input_tiles`] over `n` (a multiple of 8) tiles, 8 per step.
    ///
    /// # Safety
    /// AVX2; `p` readable up to `p + 3·ps + wq + n`, `v` writable up to `v + 15·xs + n`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn input_tiles(p: *const f32, ps: usize, wq: usize, n: usize, v: *mut f32, xs: usize) {
        // SAFETY (whole body): in bounds by the caller's guarantee.
        unsafe {
            for j in (0..n).step_by(8) {
                // One column c of Bᵀ-over-columns per pass (keeps few registers live): row i's
                // value is a sum of two of its four phase loads.
                for c in 0..4 {
                    let mut w = [_mm256_setzero_ps(); 4];
                    for (i, w) in w.iter_mut().enumerate() {
                        let e = p.add((i % 2) * 2 * ps + (i / 2) * wq + j);
                        let o = e.add(ps);
                        *w = match c {
                            0 => _mm256_sub_ps(_mm256_loadu_ps(e), _mm256_loadu_ps(e.add(1))),
                            1 => _mm256_add_ps(_mm256_loadu_ps(o), _mm256_loadu_ps(e.add(1))),
                            2 => _mm256_sub_ps(_mm256_loadu_ps(e.add(1)), _mm256_loadu_ps(o)),
                            _ => _mm256_sub_ps(_mm256_loadu_ps(o), _mm256_loadu_ps(o.add(1))),
                        };
                    }
                    _mm256_storeu_ps(v.add(c * xs + j), _mm256_sub_ps(w[0], w[2]));
                    _mm256_storeu_ps(v.add((4 + c) * xs + j), _mm256_add_ps(w[1], w[2]));
                    _mm256_storeu_ps(v.add((8 + c) * xs + j), _mm256_sub_ps(w[2], w[1]));
                    _mm256_storeu_ps(v.add((12 + c) * xs + j), _mm256_sub_ps(w[1], w[3]));
                }
            }
        }
    }

    /// [`super::output_tiles`] over `n` (a multiple of 8) tiles, 8 per step.
    ///
    /// # Safety
    /// AVX2; `m` readable up to `m + 15·xs + n`, `y0` and `y1` writable for `2n` floats.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn output_tiles(m: *const f32, xs: usize, n: usize, y0: *mut f32, y1: *mut f32) {
        // SAFETY (whole body): in bounds by the caller's guarantee.
        unsafe {
            for j in (0..n).step_by(8) {
                // Aᵀ over rows: t[i][c] for output row i and tile column c.
                let mut t = [[_mm256_setzero_ps(); 4]; 2];
                for c in 0..4 {
                    let r = |k: usize| _mm256_loadu_ps(m.add((4 * k + c) * xs + j));
                    let (m1, m2) = (r(1), r(2));
                    t[0][c] = _mm256_add_ps(_mm256_add_ps(r(0), m1), m2);
                    t[1][c] = _mm256_sub_ps(_mm256_sub_ps(m1, m2), r(3));
                }
                for (t, y) in t.iter().zip([y0, y1]) {
                    // Aᵀ over columns: the tiles' left (a) and right (b) output columns.
                    let a = _mm256_add_ps(_mm256_add_ps(t[0], t[1]), t[2]);
                    let b = _mm256_sub_ps(_mm256_sub_ps(t[1], t[2]), t[3]);
                    // Interleaved: a0 b0 a1 b1 … (unpack works within 128-bit halves).
                    let (lo, hi) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
                    _mm256_storeu_ps(y.add(2 * j), _mm256_permute2f128_ps(lo, hi, 0x20));
                    _mm256_storeu_ps(y.add(2 * j + 8), _mm256_permute2f128_ps(lo, hi, 0x31));
                }
            }
        }
    }
}

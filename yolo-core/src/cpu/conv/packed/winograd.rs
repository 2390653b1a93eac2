//! Winograd `F(2x2, 3x3)` and `F(4x4, 3x3)` for 3x3 stride-1 convs with padding 1 (most of
//! YOLOv8's FLOPs: the bottlenecks and the Detect head), on our micro-kernels.
//!
//! A 2x2 block of outputs is computed from the 4x4 input tile around it as
//! `Y = Aᵀ [Σ_ci (G g Gᵀ) ⊙ (Bᵀ d B)] A` (Lavin & Gray, 2015): the channel sum becomes 16
//! independent GEMMs `M_ξ = U_ξ · V_ξ` (`[C_out, C_in] · [C_in, tiles]`, one per position ξ of
//! the 4x4 transformed tile) with 16 multiplies per 4 outputs where the direct conv needs 36:
//! 2.25x fewer FLOPs for the same micro-kernel. The transforms' coefficients are 0, ±1 and
//! ±1/2, so the rounding stays that of a direct conv (the tests hold it to the same bound).
//!
//! The weights are transformed once (`pack_weights`, cached by the module). A task takes a run
//! of `tc` consecutive tiles (row-major over the tile grid and on from one image to the next,
//! so a run can span tile rows and images): it transforms their input tiles into `V`
//! (`[16][C_in][tc]`, read by the kernel in place with a row stride), runs the 16 GEMMs into
//! `M` (`[16][C_out][tc]`) and transforms `M` into the output with bias and activation. Both
//! buffers stay in L2. The input is read from its zero-padded 2x2 phase planes, so that a tile
//! row's 4x4 tiles are contiguous vectors (tile `tx` reads padded columns `2tx..2tx + 4`: even
//! phase columns `tx, tx + 1`, odd ones the same).
//!
//! `F(4x4, 3x3)` ([`Tile::F4`]) computes a 4x4 block from a 6x6 tile with 36 GEMMs, 36
//! multiplies per 16 outputs (4x fewer than the direct conv, 2.25x in `F(2x2)`), from the
//! points 0, ±1, ±2 and ∞ (Lavin & Gray's matrices). Its transforms have coefficients up to 8
//! (and 1/24 in `G`), so its rounding error is a few times that of `F(2x2)`; the tests hold
//! both to the direct conv's bound. Its input is read from 4 column-phase planes (tile `tx`
//! reads padded columns `4tx..4tx + 6`: phase `k mod 4`, column `tx + k / 4`), rows as they
//! are.

use super::*;

/// The output block of a Winograd conv: `F(2x2, 3x3)` or `F(4x4, 3x3)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::cpu::conv) enum Tile {
    F2,
    F4,
}

impl Tile {
    /// Output rows and columns per tile.
    fn m(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }

    /// Positions of the transformed tile (`(m + 2)²`): GEMMs per run of tiles.
    fn positions(self) -> usize {
        (self.m() + 2) * (self.m() + 2)
    }
}

/// The Winograd variant that runs this conv, if any: 3x3, stride 1, padding 1 (output size =
/// input size). Per tile, the GEMMs cost `∝ C_in · C_out` and the transforms
/// `∝ C_in + C_out`, so few channels favour the direct conv. `F(4x4)` on maps of at least
/// [`F4_MIN_SIDE`] (smaller ones waste much of their edge tiles) with 16 to
/// [`F4_MAX_CHANNELS`] channels (beyond, a task's buffers leave L2): yolov8n's 16-channel
/// bottleneck, 80x80 at 320, took 0.77x the direct conv's time (160x160 at 640: 0.64x;
/// interleaved A/B, one thread). `F(2x2)` from 32 channels on the smaller maps: at 16 the
/// direct conv was faster.
pub(in crate::cpu::conv) fn tile(g: &Geometry) -> Option<Tile> {
    let k3 = g.kh == 3 && g.kw == 3 && g.sh == 1 && g.sw == 1 && g.ph == 1 && g.pw == 1;
    let f4 = k3 && g.c_in.min(g.c_out) >= 16 && g.oh.min(g.ow) >= F4_MIN_SIDE && g.c_in.max(g.c_out) <= F4_MAX_CHANNELS;
    if f4 {
        return Some(Tile::F4);
    }
    (k3 && g.c_in.min(g.c_out) >= 32).then_some(Tile::F2)
}

/// The smallest output side that [`Tile::F4`] runs. Interleaved A/B per layer (`conv-layers`,
/// one thread, medians of 16 alternating rounds, F(4x4) / F(2x2)): 40x40 maps 0.80-0.88x
/// (at 640 input, 80x80 and 40x40: 0.65-0.86x); 20x20 0.84-1.16x (five of six convs
/// slower: 25 tiles fill two 16-wide kernel blocks to 78%); 10x10 1.0-1.18x.
const F4_MIN_SIDE: usize = 32;

/// The most channels (input or output) that [`Tile::F4`] runs.
const F4_MAX_CHANNELS: usize = 128;

/// Floats of `V` and `M` together per task (384 KB of a 512 KB L2).
const TASK_FLOATS: usize = 96 * 1024;

/// Input channels per micro-kernel call: a `[kc, nr]` block of `V` stays in L1.
const KC_MAX: usize = 256;

/// `G` applied to a 3-vector: `F(2x2)`'s 4 rows (then zeros) or `F(4x4)`'s 6. An array, not
/// a `Vec`: the training step packs every conv's weights afresh, and allocations here cost it
/// ~8% (measured).
fn g_rows(tile: Tile, a: f64, b: f64, c: f64) -> [f64; 6] {
    match tile {
        // [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]
        Tile::F2 => [a, (a + b + c) / 2.0, (a - b + c) / 2.0, c, 0.0, 0.0],
        // [[¼, 0, 0], [−⅙, −⅙, −⅙], [−⅙, ⅙, −⅙], [1/24, 1/12, ⅙], [1/24, −1/12, ⅙], [0, 0, 1]]
        Tile::F4 => [a / 4.0, -(a + b + c) / 6.0, -(a - b + c) / 6.0, (a + 2.0 * b + 4.0 * c) / 24.0, (a - 2.0 * b + 4.0 * c) / 24.0, c],
    }
}

/// The transformed weight matrices `U_ξ = (G g Gᵀ)_ξ` (16 or 36), each `[C_out, C_in]` packed
/// into `mr`-row panels (as [`gemm_kernel::pack_a`] packs them), one after another.
///
/// The training step packs every conv's weights afresh (forward and stride-1 `dX`), so this
/// is one parallel pass: a task takes one panel of `mr` output channels and a block of 16
/// input channels, transforms each of their kernels once and writes its values straight to
/// their places in the positions' panels (`np · 16 · mr` values, in L1 and L2). Through
/// an intermediate `[C_out, C_in, np]` array, the 36 position passes each read all of it
/// (one value per 144-byte stride): 2.9% of a 320 px, batch-8 train step's CPU time.
pub(in crate::cpu::conv) fn pack_weights(g: &Geometry, w: &[f32], mr: usize, tile: Tile) -> Vec<f32> {
    assert!(self::tile(g).is_some(), "Winograd weights for {g:?}");
    let (co, ci) = (g.c_out, g.c_in);
    assert_eq!(w.len(), co * ci * 9, "weights for {g:?}");
    let (t, np) = (tile.m() + 2, tile.positions());
    let panels = co.div_ceil(mr);
    let per = panels * ci * mr;
    let mut out: Vec<f32> = Vec::with_capacity(np * per);
    let dst = OutPtr(out.as_mut_ptr());
    // Tasks: (panel, block of 16 input channels), so that a few output channels still make
    // enough tasks for a wide machine.
    let i_blocks = ci.div_ceil(16);
    (0..panels * i_blocks).into_par_iter().for_each(|task| {
        let dst = &dst;
        let (p, ib) = (task / i_blocks, task % i_blocks);
        for r in 0..mr {
            let o = p * mr + r;
            for i in ib * 16..((ib + 1) * 16).min(ci) {
                // Value ξ of kernel (o, i) goes to row r, column i of position ξ's panel p.
                let at = |xi: usize| xi * per + (p * ci + i) * mr + r;
                if o >= co {
                    for xi in 0..np {
                        // SAFETY: `at(xi) < np · per`; each (p, r, i, ξ) is one element,
                        // written by this task (panel p, i in its block) only.
                        unsafe { *dst.0.add(at(xi)) = 0.0 };
                    }
                    continue;
                }
                let k = &w[(o * ci + i) * 9..(o * ci + i + 1) * 9];
                // G g: columns of the kernel through G.
                let cols: [[f64; 6]; 3] = std::array::from_fn(|c| g_rows(tile, k[c] as f64, k[3 + c] as f64, k[6 + c] as f64));
                for row in 0..t {
                    for (j, v) in g_rows(tile, cols[0][row], cols[1][row], cols[2][row]).into_iter().take(t).enumerate() {
                        // SAFETY: as above.
                        unsafe { *dst.0.add(at(row * t + j)) = v as f32 };
                    }
                }
            }
        }
    });
    // SAFETY: the tasks wrote every (panel, row, channel, position): `np · per` values.
    unsafe { out.set_len(np * per) };
    out
}

/// Tiles per task: a multiple of `nr`; `V` and `M` within [`TASK_FLOATS`]; enough tasks for
/// every thread to take two ([`min_tasks`]) while a task keeps at least two kernel blocks of tiles.
fn tiles_per_task(g: &Geometry, batch: usize, tiles: usize, rows: usize, nr: usize, np: usize) -> usize {
    let round = |n: usize| n.div_ceil(nr) * nr;
    let mut tc = (TASK_FLOATS / (np * (g.c_in + rows)) / nr * nr).max(nr).min(round(tiles));
    let min_tasks = min_tasks();
    if batch * tiles.div_ceil(tc) < min_tasks {
        tc = round(tiles.div_ceil(min_tasks.div_ceil(batch))).max(2 * nr).min(tc);
    }
    balanced(tiles, tc, nr, batch, 2 * nr)
}

thread_local! {
    /// Per-thread `V`, `M` and output rows of [`run`], reused across tasks and calls.
    static WINO: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The calling thread's shared `V` of [`slab`] (taken out while in use: a conv nested in
    /// another's parallel loop on the same thread finds it empty and allocates its own).
    static SHARED_V: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The conv with Winograd `tile` (see the module docs); `a` comes from [`pack_weights`] for
/// the same tile. Returns the NCHW output.
#[allow(clippy::too_many_arguments)]
pub(in crate::cpu::conv) fn run(g: &Geometry, batch: usize, x: &[f32], a: &[f32], bias: Option<&[f32]>, act: Activation, kern: Kernel, tile: Tile) -> Vec<f32> {
    assert!(self::tile(g).is_some(), "Winograd conv for {g:?}");
    assert_eq!(a.len(), tile.positions() * g.c_out.div_ceil(kern.mr) * g.c_in * kern.mr, "Winograd weights for {g:?}");
    let len = batch * g.c_out * g.oh * g.ow;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let dst = OutPtr(out.as_mut_ptr());
    let plane = g.c_in * g.h * g.w;
    // The plane floats a tile row reads beyond those of the tile rows before it: F(2x2), one
    // phase row of each of the four 2x2 phase planes; F(4x4), four padded rows in four column
    // phases. Both read a little of the next tile row (a halo of one, rounded up).
    let per_row = match tile {
        Tile::F2 => g.c_in * 4 * (g.w + 2).div_ceil(2),
        Tile::F4 => g.c_in * 16 * (g.w + 2).div_ceil(4),
    };
    for (i0, ni, t0, nt) in slabs(batch, g.oh.div_ceil(tile.m()), 1, per_row, slab_floats()) {
        slab(g, ni, &x[i0 * plane..(i0 + ni) * plane], t0..t0 + nt, a, bias, act, kern, dst, i0, tile);
    }
    // SAFETY: the slabs cover every image and tile row (so every output pixel), and each
    // writes every channel of its tiles.
    unsafe { out.set_len(len) };
    out
}

/// The zero-padded input's padded rows `rows` split into 4 column phases: plane
/// `(img·C_in + ci)·4 + q` holds padded columns `q, q + 4, …` of those rows as
/// `[rows.len(), wq]` (`wq` = `ceil(ow / 4) + 1`, zeros past the padded width; rows past the
/// padded input are zeros), planes `ps` floats apart, with `slack` zeros after the last.
/// Returns the buffer, `ps` and `wq`.
fn column_phases(g: &Geometry, batch: usize, x: &[f32], rows: std::ops::Range<usize>, slack: usize) -> (Vec<f32>, usize, usize) {
    let wq = g.ow.div_ceil(4) + 1;
    let (r0, hr) = (rows.start, rows.len());
    let ps = plane_stride(hr * wq);
    let planes = batch * g.c_in;
    // SAFETY: every element of each group of four planes is written below: the slack chunk,
    // each row of each phase and the planes' tails.
    let (xp, _) = unsafe {
        par_init(planes * 4 * ps + slack, 4 * ps, |i, dst| {
            if i >= planes {
                return zero(dst);
            }
            let src = &x[i * g.h * g.w..(i + 1) * g.h * g.w];
            let (p, rest) = dst.split_at_mut(2 * ps);
            let (p0, p1) = p.split_at_mut(ps);
            let (p2, p3) = rest.split_at_mut(ps);
            let mut q = [p0, p1, p2, p3];
            for p in q.iter_mut() {
                zero(&mut p[hr * wq..]);
            }
            for u in 0..hr {
                // Padded row r0 + u is input row r0 + u − 1.
                let Some(y) = (r0 + u).checked_sub(1).filter(|&y| y < g.h) else {
                    q.iter_mut().for_each(|p| zero(&mut p[u * wq..(u + 1) * wq]));
                    continue;
                };
                let row = &src[y * g.w..(y + 1) * g.w];
                let [d0, d1, d2, d3] = q.each_mut().map(|p| &mut p[u * wq..(u + 1) * wq]);
                // Padded column 4v + ph is input column 4v + ph − 1: phases 1, 2 and 3 are the
                // input's phases 0, 1 and 2 in place, phase 0 its phase 3 one column on (its
                // first column the left padding).
                d0[0].write(0.0);
                let mut done = 0;
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2") {
                    // Whole steps of 32 input columns, while phase 0's shifted stores stay in
                    // its row (8 per step from column 1: 8·steps + 1 ≤ wq).
                    let steps = (g.w / 32).min((wq - 1) / 8);
                    let e = [d1.as_mut_ptr(), d2.as_mut_ptr(), d3.as_mut_ptr(), d0[1..].as_mut_ptr()].map(|p| p.cast::<f32>());
                    // SAFETY: AVX2 is present; the steps read 32·steps ≤ W input columns and
                    // write 8·steps ≤ wq − 1 floats to each phase row (from column 1 in
                    // phase 0).
                    // (The closure runs inside `par_init`'s unsafe block.)
                    x86::deinterleave4(row.as_ptr(), e, steps);
                    done = 8 * steps;
                }
                for (ph, d) in [d0, d1, d2, d3].into_iter().enumerate() {
                    // The rest of the row: from column v0 (phase 0 from done + 1).
                    let v0 = if ph == 0 { done + 1 } else { done };
                    for (v, d) in d.iter_mut().enumerate().skip(v0) {
                        let c = (4 * v + ph).wrapping_sub(1);
                        d.write(if c < g.w { row[c] } else { 0.0 });
                    }
                }
            }
        })
    };
    (xp, ps, wq)
}

/// Tile rows `tile_rows` of images `i0..i0 + batch` of a [`run`] conv (`x` holds just those
/// images), written to their places in `dst` (the whole output).
#[allow(clippy::too_many_arguments)]
fn slab(g: &Geometry, batch: usize, x: &[f32], tile_rows: std::ops::Range<usize>, a: &[f32], bias: Option<&[f32]>, act: Activation, kern: Kernel, dst: OutPtr, i0: usize, tile: Tile) {
    let (mr, nr) = (kern.mr, kern.nr);
    let (c_in, hw) = (g.c_in, g.oh * g.ow);
    let (m_out, np) = (tile.m(), tile.positions());
    let (t0, th, tw) = (tile_rows.start, tile_rows.len(), g.ow.div_ceil(m_out));
    let tiles = th * tw;
    let co_panels = g.c_out.div_ceil(mr);
    let per_xi = co_panels * c_in * mr;
    // Vector loads run up to 7 floats past a tile row's last tile (F(4x4): 8, its last two
    // columns read the next phase column).
    let (xp, ps, wq) = match tile {
        Tile::F2 => phase_planes(g, 2, batch, x, t0..t0 + th + 1, 16),
        Tile::F4 => column_phases(g, batch, x, 4 * t0..4 * (t0 + th) + 2, 16),
    };
    // Runs of tiles go on from one image to the next, so that on small maps (25 tiles an
    // image at 10x10) a batch fills whole kernel blocks.
    let total = batch * tiles;
    let tc = tiles_per_task(g, 1, total, co_panels * mr, nr, np);
    let chunks = total.div_ceil(tc);
    let grid = TaskGrid::new(1, chunks, co_panels, min_tasks());
    // Rows of V and M: whole kernel blocks, room for the vector stores' overrun (up to 7
    // floats past the last tile), never 4 KB apart (nor V's channel blocks, np rows).
    let mut ld = acc_stride(tc + 8, nr);
    if ld % 64 == 0 {
        ld += nr;
    }
    // V of one run of tiles is [C_in][np][ld]: the kernel reads V_ξ's rows np·ld apart.
    let v_len = c_in * np * ld;
    // The tile rows of the run `chunk`'s tiles: (image, tile row, first tile column, tiles,
    // index in the run).
    let segments = move |chunk: usize| {
        let t0 = chunk * tc;
        let end = total.min(t0 + tc);
        let mut t = t0;
        std::iter::from_fn(move || {
            (t < end).then(|| {
                let (img, r) = (t / tiles, t % tiles);
                let (ty, tx) = (r / tw, r % tw);
                let len = (tw - tx).min(end - t);
                t += len;
                (img, ty, tx, len, t - len - t0)
            })
        })
    };
    // V = Bᵀ d B for every tile of one run and channel (`v`: the channel's np rows).
    let transform = |chunk: usize, ci: usize, v: &mut [f32]| {
        for (img, ty, tx, len, at) in segments(chunk) {
            let plane = &xp[(img * c_in + ci) * 4 * ps..];
            match tile {
                Tile::F2 => input_tiles(&plane[ty * wq + tx..], ps, wq, len, &mut v[at..], ld),
                Tile::F4 => input_tiles4(&plane[4 * ty * wq + tx..], ps, wq, len, &mut v[at..], ld),
            }
        }
    };
    // With output channels split between tasks, the input transform runs first, once, on
    // its own tasks (otherwise every task would repeat it for its run of tiles).
    // The buffer is reused, not zeroed: the columns past a run's tiles hold stale values,
    // which only reach the columns of M that no output reads (a GEMM's column j depends on
    // column j of V alone). Zeroing a fresh buffer per conv was ~4% of a 320 forward.
    let shared: Option<Vec<f32>> = (grid.co_chunks > 1).then(|| {
        let mut sv = SHARED_V.take();
        let len = chunks * v_len;
        if sv.len() < len {
            sv = vec![0.0; len];
        }
        sv[..len].par_chunks_mut(np * ld).enumerate().for_each(|(i, v)| {
            transform(i / c_in, i % c_in, v)
        });
        sv
    });

    (0..grid.len(1)).into_par_iter().for_each(|task| {
        let dst = dst;
        let Some((_, chunk, cp0, cp1)) = grid.task(task) else { return };
        let n = tc.min(total - chunk * tc);
        let rows = (cp1 - cp0) * mr;
        WINO.with(|buf| {
            let mut buf = buf.borrow_mut();
            let own_v = if shared.is_some() { 0 } else { v_len };
            // Output rows of one tile row: m_out rows of m_out·(tw + 8) floats (the vector
            // stores' overrun).
            let y_row = m_out * (tw + 8);
            let (m_len, y_len) = (np * rows * ld, m_out * y_row);
            if buf.len() < own_v + m_len + y_len {
                buf.resize(own_v + m_len + y_len, 0.0);
            }
            let (v, rest) = buf.split_at_mut(own_v);
            let (m, y) = rest.split_at_mut(m_len);
            let v: &[f32] = match &shared {
                Some(sv) => &sv[chunk * v_len..(chunk + 1) * v_len],
                None => {
                    for (ci, vc) in v.chunks_exact_mut(np * ld).enumerate() {
                        transform(chunk, ci, vc);
                    }
                    v
                }
            };
            // M_ξ = U_ξ · V_ξ.
            for xi in 0..np {
                let u = &a[xi * per_xi..(xi + 1) * per_xi];
                for q in (0..n).step_by(nr) {
                    for cp in cp0..cp1 {
                        for k0 in (0..c_in).step_by(KC_MAX) {
                            let kc = KC_MAX.min(c_in - k0);
                            let ap = u[(cp * c_in + k0) * mr..(cp * c_in + k0 + kc) * mr].as_ptr();
                            let bp = v[(k0 * np + xi) * ld + q..((k0 + kc - 1) * np + xi) * ld + q + nr].as_ptr();
                            let c = m[(xi * rows + (cp - cp0) * mr) * ld + q..(xi * rows + (cp - cp0 + 1) * mr - 1) * ld + q + nr].as_mut_ptr();
                            // SAFETY: a is kc rows of mr values, b kc rows of nr values np·ld
                            // apart, c mr rows of nr values ld apart (the slices above hold
                            // them).
                            unsafe { kern.run(kc, ap, mr, bp, np * ld, c, ld, k0 > 0) };
                        }
                    }
                }
            }
            // Y = Aᵀ M A, bias and activation, out.
            let mut ys: Vec<&mut [f32]> = y[..y_len].chunks_exact_mut(y_row).collect();
            for co in cp0 * mr..(cp1 * mr).min(g.c_out) {
                let mrow = &m[(co - cp0 * mr) * ld..];
                for (img, ty, tx, len, at) in segments(chunk) {
                    match tile {
                        Tile::F2 => {
                            let (y0, y1) = ys.split_at_mut(1);
                            output_tiles(&mrow[at..], rows * ld, len, y0[0], y1[0])
                        }
                        Tile::F4 => output_tiles4(&mrow[at..], rows * ld, len, &mut ys),
                    }
                    let cols = (m_out * len).min(g.ow - m_out * tx);
                    for (dr, yr) in ys.iter_mut().enumerate() {
                        let r = m_out * (t0 + ty) + dr;
                        if r >= g.oh {
                            continue;
                        }
                        // SAFETY: columns m·tx.. of output row r of channel co of image
                        // i0 + img: only the task holding these tiles writes them.
                        let o = unsafe { std::slice::from_raw_parts_mut(dst.0.add(((i0 + img) * g.c_out + co) * hw + r * g.ow + m_out * tx), cols) };
                        epilogue_copy(&yr[..cols], o, bias.map(|b| b[co]), act);
                    }
                }
            }
        });
    });
    if let Some(sv) = shared {
        SHARED_V.with(|c| {
            let kept = c.take();
            c.set(if kept.len() > sv.len() { kept } else { sv });
        });
    }
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

/// `V = Bᵀ d B` of `F(4x4)` for `len` consecutive tiles of one tile row and channel: `p`
/// starts at the tile row's first tile in the channel's column-phase plane 0 ([`column_phases`];
/// row `i` of the 6x6 tiles is plane row `4ty + i`, its column `k` is phase `k mod 4` at
/// `tx + k / 4`), the phase planes `ps` floats apart and `wq` wide. Position `ξ` of tile `j`
/// goes to `v[ξ·xs + j]`, 8 tiles at a time: the last vector reads and writes up to 7 floats
/// past tile `len − 1`.
fn input_tiles4(p: &[f32], ps: usize, wq: usize, len: usize, v: &mut [f32], xs: usize) {
    let n = len.div_ceil(8) * 8;
    assert!(3 * ps + 5 * wq + n <= p.len() && 35 * xs + n <= v.len(), "Winograd input tiles out of bounds");
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::simd::avx2_fma() {
        // SAFETY: AVX2 and FMA are present; reads stay below p[3·ps + 5·wq + n] and writes
        // below v[35·xs + n] (asserted in bounds).
        return unsafe { x86::input_tiles4(p.as_ptr(), ps, wq, n, v.as_mut_ptr(), xs) };
    }
    input_tiles4_portable(p, ps, wq, n, v, xs)
}

/// [`input_tiles4`] without AVX2, over `n` tiles.
fn input_tiles4_portable(p: &[f32], ps: usize, wq: usize, n: usize, v: &mut [f32], xs: usize) {
    for j in 0..n {
        let d = |i: usize, k: usize| p[(k % 4) * ps + i * wq + k / 4 + j];
        // Bᵀ over columns (k), then over rows (i).
        let w: [[f32; 6]; 6] = std::array::from_fn(|i| bt6(std::array::from_fn(|k| d(i, k))));
        for c in 0..6 {
            for (r, val) in bt6(std::array::from_fn(|i| w[i][c])).into_iter().enumerate() {
                v[(r * 6 + c) * xs + j] = val;
            }
        }
    }
}

/// `Y = Aᵀ M A` of `F(4x4)` for `len` consecutive tiles of one tile row and output channel:
/// position `ξ` of tile `j` is `m[ξ·xs + j]`; output row `4ty + i` of the tiles goes to
/// `ys[i]` (tile `j` at columns `4j..4j + 4`), 8 tiles at a time (reading up to 7 floats past
/// tile `len − 1` and writing up to 28 past its columns).
fn output_tiles4(m: &[f32], xs: usize, len: usize, ys: &mut [&mut [f32]]) {
    let n = len.div_ceil(8) * 8;
    assert!(35 * xs + n <= m.len() && ys.len() == 4 && ys.iter().all(|y| 4 * n <= y.len()), "Winograd output tiles out of bounds");
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::simd::avx2_fma() {
        let y: [*mut f32; 4] = std::array::from_fn(|i| ys[i].as_mut_ptr());
        // SAFETY: AVX2 and FMA are present; reads reach m[35·xs + n − 1], writes y[i][4n − 1]
        // (asserted).
        return unsafe { x86::output_tiles4(m.as_ptr(), xs, n, y) };
    }
    output_tiles4_portable(m, xs, n, ys)
}

/// [`output_tiles4`] without AVX2, over `n` tiles.
fn output_tiles4_portable(m: &[f32], xs: usize, n: usize, ys: &mut [&mut [f32]]) {
    for j in 0..n {
        // Aᵀ over rows: t[c][i] for tile column c and output row i.
        let t: [[f32; 4]; 6] = std::array::from_fn(|c| at6(std::array::from_fn(|r| m[(r * 6 + c) * xs + j])));
        for (i, y) in ys.iter_mut().enumerate() {
            let row = at6(std::array::from_fn(|c| t[c][i]));
            y[4 * j..4 * j + 4].copy_from_slice(&row);
        }
    }
}

/// `Bᵀ` of `F(4x4)` applied to a column (or row) of six.
#[inline(always)]
fn bt6(d: [f32; 6]) -> [f32; 6] {
    [
        4.0 * d[0] - 5.0 * d[2] + d[4],
        (d[3] + d[4]) - 4.0 * (d[1] + d[2]),
        (d[4] - d[3]) + 4.0 * (d[1] - d[2]),
        (d[4] - d[2]) + 2.0 * (d[3] - d[1]),
        (d[4] - d[2]) - 2.0 * (d[3] - d[1]),
        4.0 * d[1] - 5.0 * d[3] + d[5],
    ]
}

/// `Aᵀ` of `F(4x4)` applied to a column (or row) of six.
#[inline(always)]
fn at6(m: [f32; 6]) -> [f32; 4] {
    [
        m[0] + m[1] + m[2] + m[3] + m[4],
        (m[1] - m[2]) + 2.0 * (m[3] - m[4]),
        (m[1] + m[2]) + 4.0 * (m[3] + m[4]),
        (m[1] - m[2]) + 8.0 * (m[3] - m[4]) + m[5],
    ]
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

    /// `Bᵀ` of `F(4x4)` over six vectors.
    #[inline(always)]
    unsafe fn bt6(d: [__m256; 6]) -> [__m256; 6] {
        // SAFETY: register-only intrinsics; the caller has AVX2 and FMA.
        unsafe {
            let (four, five, two) = (_mm256_set1_ps(4.0), _mm256_set1_ps(5.0), _mm256_set1_ps(2.0));
            let (s34, s12) = (_mm256_add_ps(d[3], d[4]), _mm256_add_ps(d[1], d[2]));
            let (d43, d12) = (_mm256_sub_ps(d[4], d[3]), _mm256_sub_ps(d[1], d[2]));
            let (d42, d31) = (_mm256_sub_ps(d[4], d[2]), _mm256_sub_ps(d[3], d[1]));
            [
                _mm256_fmadd_ps(four, d[0], _mm256_fnmadd_ps(five, d[2], d[4])),
                _mm256_fnmadd_ps(four, s12, s34),
                _mm256_fmadd_ps(four, d12, d43),
                _mm256_fmadd_ps(two, d31, d42),
                _mm256_fnmadd_ps(two, d31, d42),
                _mm256_fmadd_ps(four, d[1], _mm256_fnmadd_ps(five, d[3], d[5])),
            ]
        }
    }

    /// `Aᵀ` of `F(4x4)` over six vectors.
    #[inline(always)]
    unsafe fn at6(m: [__m256; 6]) -> [__m256; 4] {
        // SAFETY: register-only intrinsics; the caller has AVX2 and FMA.
        unsafe {
            let (s12, d12) = (_mm256_add_ps(m[1], m[2]), _mm256_sub_ps(m[1], m[2]));
            let (s34, d34) = (_mm256_add_ps(m[3], m[4]), _mm256_sub_ps(m[3], m[4]));
            [
                _mm256_add_ps(_mm256_add_ps(m[0], s12), s34),
                _mm256_fmadd_ps(_mm256_set1_ps(2.0), d34, d12),
                _mm256_fmadd_ps(_mm256_set1_ps(4.0), s34, s12),
                _mm256_fmadd_ps(_mm256_set1_ps(8.0), d34, _mm256_add_ps(d12, m[5])),
            ]
        }
    }

    /// [`super::input_tiles4`] over `n` (a multiple of 8) tiles, 8 per step.
    ///
    /// # Safety
    /// AVX2 and FMA; `p` readable below `p + 3·ps + 5·wq + n`, `v` writable below
    /// `v + 35·xs + n`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn input_tiles4(p: *const f32, ps: usize, wq: usize, n: usize, v: *mut f32, xs: usize) {
        // SAFETY (whole body): in bounds by the caller's guarantee.
        unsafe {
            for j in (0..n).step_by(8) {
                // One tile row i at a time through Bᵀ over its columns, kept for the six
                // columns' Bᵀ over rows.
                let mut w = [[_mm256_setzero_ps(); 6]; 6];
                for (i, w) in w.iter_mut().enumerate() {
                    let d: [__m256; 6] = std::array::from_fn(|k| _mm256_loadu_ps(p.add((k % 4) * ps + i * wq + k / 4 + j)));
                    *w = bt6(d);
                }
                for c in 0..6 {
                    let col = bt6(std::array::from_fn(|i| w[i][c]));
                    for (r, val) in col.into_iter().enumerate() {
                        _mm256_storeu_ps(v.add((r * 6 + c) * xs + j), val);
                    }
                }
            }
        }
    }

    /// [`super::output_tiles4`] over `n` (a multiple of 8) tiles, 8 per step.
    ///
    /// # Safety
    /// AVX2 and FMA; `m` readable up to `m + 35·xs + n`, each `y[i]` writable for `4n` floats.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn output_tiles4(m: *const f32, xs: usize, n: usize, y: [*mut f32; 4]) {
        // SAFETY (whole body): in bounds by the caller's guarantee.
        unsafe {
            for j in (0..n).step_by(8) {
                // Aᵀ over rows, each tile column c's six values loaded once: t[i][c] for
                // output row i (kept in L1, 24 vectors).
                let mut t = [[_mm256_setzero_ps(); 6]; 4];
                for c in 0..6 {
                    let col = at6(std::array::from_fn(|k| _mm256_loadu_ps(m.add((k * 6 + c) * xs + j))));
                    for (t, v) in t.iter_mut().zip(col) {
                        t[c] = v;
                    }
                }
                for (t, y) in t.iter().zip(y) {
                    // Aᵀ over columns: the tiles' four output columns a, b, c, d.
                    let [a, b, c, d] = at6(*t);
                    // Interleaved: a0 b0 c0 d0 a1 b1 c1 d1 … (unpacks work within 128-bit
                    // halves).
                    let (ab_lo, ab_hi) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
                    let (cd_lo, cd_hi) = (_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
                    let pd = _mm256_castps_pd;
                    let x0 = _mm256_castpd_ps(_mm256_unpacklo_pd(pd(ab_lo), pd(cd_lo)));
                    let x1 = _mm256_castpd_ps(_mm256_unpackhi_pd(pd(ab_lo), pd(cd_lo)));
                    let x2 = _mm256_castpd_ps(_mm256_unpacklo_pd(pd(ab_hi), pd(cd_hi)));
                    let x3 = _mm256_castpd_ps(_mm256_unpackhi_pd(pd(ab_hi), pd(cd_hi)));
                    let o = y.add(4 * j);
                    _mm256_storeu_ps(o, _mm256_permute2f128_ps(x0, x1, 0x20));
                    _mm256_storeu_ps(o.add(8), _mm256_permute2f128_ps(x2, x3, 0x20));
                    _mm256_storeu_ps(o.add(16), _mm256_permute2f128_ps(x0, x1, 0x31));
                    _mm256_storeu_ps(o.add(24), _mm256_permute2f128_ps(x2, x3, 0x31));
                }
            }
        }
    }

    /// `e[r][u] = src[4u + r]` for `u < steps · 8`: 32 floats a step split into their four
    /// phases.
    ///
    /// # Safety
    /// AVX2; `src` readable for `32 · steps` floats, each `e[r]` writable for `8 · steps`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn deinterleave4(src: *const f32, e: [*mut f32; 4], steps: usize) {
        // SAFETY (whole body): in bounds by the caller's guarantee.
        unsafe {
            let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            for k in 0..steps {
                let s = src.add(32 * k);
                let [a, b, c, d] = [0, 8, 16, 24].map(|o| _mm256_loadu_ps(s.add(o)));
                // A 4x4 transpose within each 128-bit half: u[r] = a_r b_r c_r d_r | a_r+4 …
                let (t0, t1) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
                let (t2, t3) = (_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
                let pd = _mm256_castps_pd;
                let u = [
                    _mm256_unpacklo_pd(pd(t0), pd(t2)),
                    _mm256_unpackhi_pd(pd(t0), pd(t2)),
                    _mm256_unpacklo_pd(pd(t1), pd(t3)),
                    _mm256_unpackhi_pd(pd(t1), pd(t3)),
                ];
                for (u, e) in u.into_iter().zip(e) {
                    // a_r b_r c_r d_r a_r+4 … → a_r a_r+4 b_r b_r+4 …: source order.
                    _mm256_storeu_ps(e.add(8 * k), _mm256_permutevar8x32_ps(_mm256_castpd_ps(u), order));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 `F(4x4)` transforms against the portable ones (which the conv tests do not
    /// reach on AVX2 machines), over 16 tiles.
    #[test]
    fn f4_transforms_match_the_portable_ones() {
        if !crate::cpu::simd::avx2_fma() {
            return;
        }
        let (ps, wq, xs, n) = (211, 13, 24, 16);
        let p: Vec<f32> = (0..4 * ps + 16).map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0).collect();
        let (mut va, mut vb) = (vec![0f32; 36 * xs], vec![0f32; 36 * xs]);
        input_tiles4(&p, ps, wq, n, &mut va, xs);
        input_tiles4_portable(&p, ps, wq, n, &mut vb, xs);
        for (i, (a, b)) in va.iter().zip(&vb).enumerate() {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "V[{i}]: {a} vs {b}");
        }
        let mut ya: Vec<Vec<f32>> = vec![vec![0f32; 4 * n]; 4];
        let mut yb = ya.clone();
        output_tiles4(&va, xs, n, &mut ya.iter_mut().map(|y| y.as_mut_slice()).collect::<Vec<_>>());
        output_tiles4_portable(&va, xs, n, &mut yb.iter_mut().map(|y| y.as_mut_slice()).collect::<Vec<_>>());
        for (r, (a, b)) in ya.iter().zip(&yb).enumerate() {
            for (i, (a, b)) in a.iter().zip(b).enumerate() {
                assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "Y[{r}][{i}]: {a} vs {b}");
            }
        }
    }
}

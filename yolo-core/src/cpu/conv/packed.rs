//! The conv paths on our own micro-kernels ([`gemm_kernel`]): weights packed once per module
//! ([`PackCache`]), convs that read the padded input's phase planes in place
//! ([`run_packed_shifted`]) or pack their im2col columns into the kernel's panels
//! ([`run_packed`]), and the dot-product weight gradient ([`grad_weight_dot`]). A child of
//! `cpu::conv`, whose geometry, buffers and epilogues it shares.

use super::*;
use std::mem::MaybeUninit;

pub(super) mod winograd;
pub(super) mod winograd_grad;

/// How the packed micro-kernel paths run a conv, and so how its weights are packed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Plan {
    /// im2col columns packed into the kernel's panels ([`run_packed`]).
    Im2col,
    /// The padded input's phase planes read in place, one segment per tap
    /// ([`run_packed_shifted`]).
    Shifted,
    /// Winograd `F(2x2, 3x3)` or `F(4x4, 3x3)` ([`winograd::run`]).
    Winograd(winograd::Tile),
}

impl Plan {
    /// The fastest path for `g` (Winograd only with `winograd`).
    pub(super) fn of(g: &Geometry, winograd: bool) -> Self {
        if let Some(tile) = winograd.then(|| winograd::tile(g)).flatten() {
            Plan::Winograd(tile)
        } else if packed_shifted(g) {
            Plan::Shifted
        } else {
            Plan::Im2col
        }
    }
}

/// Weights packed for the micro-kernels ([`pack_weights`]), kept between calls by the
/// module that owns the conv: packing yolov8n's 3.2M weights on every forward would cost a
/// few milliseconds on one thread.
///
/// An entry holds a clone of the weight tensor it was packed from. While it is held, that
/// buffer can be neither freed nor changed in place (`flex` writes in place only into buffers
/// it holds alone), so a weight tensor on the same buffer with the same layout has the same
/// values, and any other tensor (new weights, a loaded record) is packed afresh. Clones of a
/// module share the cache.
#[derive(Clone, Debug, Default)]
pub struct PackCache(std::sync::Arc<std::sync::Mutex<Option<PackEntry>>>);

#[derive(Debug)]
struct PackEntry {
    source: FlexTensor,
    /// The kernel's rows and the plan the weights are packed for ([`pack_weights`]).
    layout: (usize, Plan),
    packed: std::sync::Arc<Vec<f32>>,
}

impl PackCache {
    /// `weight` packed for a conv of geometry `g` ([`pack_weights`]), from the cache when it
    /// holds this very tensor packed the same way.
    pub(super) fn get(&self, weight: &FlexTensor, g: &Geometry, mr: usize, plan: Plan) -> std::sync::Arc<Vec<f32>> {
        let layout = (mr, plan);
        let mut entry = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = entry.as_ref() {
            let same = std::sync::Arc::ptr_eq(&e.source.data_arc(), &weight.data_arc()) && e.source.layout() == weight.layout();
            if same && e.layout == layout {
                return e.packed.clone();
            }
        }
        let w = weight.as_slice::<f32>().expect("contiguous f32 weights");
        let packed = std::sync::Arc::new(pack_weights(g, w, mr, plan));
        *entry = Some(PackEntry { source: weight.clone(), layout, packed: packed.clone() });
        packed
    }
}

/// Pixels per task of [`grad_weight_dot`]: the length of its dot products.
const DOT_TILE: usize = 512;

/// `dW = Σ dY · im2col(X)ᵀ` with the dot-product micro-kernels ([`DotKernel`]): both operands
/// run along the pixels, contiguous (rows of `dY` and im2col rows, or the input's own rows for
/// a 1x1 conv), so neither is transposed or packed. The rows of `X`'s side are taken two
/// blocks (`2·nr`) at a time, which stay in L1 while every block of output channels runs
/// over them (the `dY` rows stream from L2); im2col gathers just those rows. Tasks are
/// (image, pixel tile), summed reproducibly by [`grouped_sum`].
pub(super) fn grad_weight_dot(g: &Geometry, batch: usize, x: &[f32], dy: &[f32], kern: DotKernel) -> Vec<f32> {
    let (mr, nr) = (kern.mr, kern.nr);
    let (hw_in, hw, k) = (g.h * g.w, g.oh * g.ow, g.k());
    let tiles = hw.div_ceil(DOT_TILE);
    // Whole vectors in every tile but the last.
    let n_tile = (hw.div_ceil(tiles).div_ceil(16) * 16).min(hw);
    let tiles = hw.div_ceil(n_tile);
    let chunk = 2 * nr;
    let scratch = || if g.is_pointwise() { Vec::new() } else { vec![0f32; chunk * n_tile] };
    grouped_sum(batch * tiles, g.c_out * k, scratch, |task, cols, acc| {
        let (img, tile) = (task / tiles, task % tiles);
        let p0 = tile * n_tile;
        let n = n_tile.min(hw - p0);
        let x_img = &x[img * g.c_in * hw_in..(img + 1) * g.c_in * hw_in];
        let dy_img = &dy[img * g.c_out * hw..(img + 1) * g.c_out * hw];
        // acc[co, kk0 + j] += Σ_p dy[co, p0 + p] · b[j·ldb + p] for the rows of `b`.
        let mut block = |kk0: usize, rows: usize, b: &[f32], ldb: usize| {
            for co0 in (0..g.c_out).step_by(mr) {
                let m = mr.min(g.c_out - co0);
                let a = dy_img[co0 * hw + p0..].as_ptr();
                for j0 in (0..rows).step_by(nr) {
                    let nn = nr.min(rows - j0);
                    let (bp, c) = (b[j0 * ldb..].as_ptr(), acc[co0 * k + kk0 + j0..].as_mut_ptr());
                    // SAFETY: a is m rows of n values hw apart inside dy_img (p0 + n <=
                    // hw); b is nn rows of n values ldb apart inside `b`; c is m rows of
                    // nn values k apart inside `acc`.
                    unsafe {
                        if m == mr && nn == nr {
                            kern.run(n, a, hw, bp, ldb, c, k);
                        } else {
                            gemm_kernel::dot_edge(n, a, hw, bp, ldb, c, k, m, nn);
                        }
                    }
                }
            }
        };
        if g.is_pointwise() {
            for kk0 in (0..k).step_by(chunk) {
                block(kk0, chunk.min(k - kk0), &x_img[kk0 * hw_in + p0..], hw_in);
            }
            return;
        }
        let khw = g.kh * g.kw;
        for kk0 in (0..k).step_by(chunk) {
            let rows = chunk.min(k - kk0);
            for (r, row) in cols.chunks_exact_mut(n_tile).take(rows).enumerate() {
                let (ci, t) = ((kk0 + r) / khw, (kk0 + r) % khw);
                im2col_row(g, &x_img[ci * hw_in..(ci + 1) * hw_in], t / g.kw, t % g.kw, p0, &mut row[..n]);
            }
            block(kk0, rows, cols, n_tile);
        }
    })
}

/// Most values of `dY` (`C_out · B · oh · ow`) for which [`grad_weight_batch_dot`] runs:
/// every task reads all of `dY`, which then stays in L2 (2 MB). Measured (`conv-layers
/// --backward`, yolov8n at 320, batch 8, one thread): 8-18% faster than the per-image paths on
/// every 3x3 conv it takes (10x10 and 20x20 maps); 16-31% slower on the two larger stride-2 convs
/// a bound of 2M values would add, and 30-40% slower on 1x1 convs (left to the `gemm` crate).
pub(super) const BATCH_DOT_FLOATS: usize = 1 << 19;

/// Longest run of pixels per dot product in [`grad_weight_batch_dot`]: a task's `2·nr` im2col
/// rows of that length stay in L1 while every block of output channels runs over them.
const BATCH_DOT_SEG: usize = 1024;

/// `dW = Σ dY · im2col(X)ᵀ` for small maps, with the dot products running along all images'
/// pixels at once: `dY` is copied to `[C_out, B·oh·ow]` and im2col rows are built across the
/// images, so a sum is reduced across its vector lanes once per segment of up to
/// [`BATCH_DOT_SEG`] pixels instead of once per image (a 10x10 map has 100 pixels: the
/// per-image dot products of [`grad_weight_dot`] and the per-image GEMMs of the `gemm` crate
/// paid that, and kept a zeroed `dW`-sized partial sum per group of images). Tasks are chunks
/// of `2·nr` rows of `im2col(X)`, each writing its own columns of `dW` and summing its
/// segments in order: the same bits on any thread count.
pub(super) fn grad_weight_batch_dot(g: &Geometry, batch: usize, x: &[f32], dy: &[f32], kern: DotKernel) -> Vec<f32> {
    grad_weight_batch_dot_seg(g, batch, x, dy, kern, BATCH_DOT_SEG)
}

/// [`grad_weight_batch_dot`] with segments of at most `seg_max` pixels (the tests take short
/// ones, to cross image boundaries inside a segment).
pub(super) fn grad_weight_batch_dot_seg(g: &Geometry, batch: usize, x: &[f32], dy: &[f32], kern: DotKernel, seg_max: usize) -> Vec<f32> {
    let (mr, nr) = (kern.mr, kern.nr);
    let (hw_in, hw, k, khw) = (g.h * g.w, g.oh * g.ow, g.k(), g.kh * g.kw);
    let l = batch * hw;
    let mut dw = vec![0f32; g.c_out * k];
    if l == 0 {
        return dw;
    }
    // SAFETY: each task writes its whole row (all images' pixels of one output channel).
    let (dyc, _) = unsafe {
        par_init(g.c_out * l, l, |co, row| {
            for (img, dst) in row.chunks_exact_mut(hw).enumerate() {
                for (d, s) in dst.iter_mut().zip(&dy[(img * g.c_out + co) * hw..(img * g.c_out + co + 1) * hw]) {
                    d.write(*s);
                }
            }
        })
    };
    // Segments of equal length (whole vectors but the last), about seg_max pixels at most.
    let seg = l.div_ceil(l.div_ceil(seg_max.max(1))).div_ceil(16) * 16;
    let chunk = 2 * nr;
    let dst = OutPtr(dw.as_mut_ptr());
    (0..k.div_ceil(chunk)).into_par_iter().for_each_init(
        || vec![0f32; chunk * seg],
        |cols, c| {
            let dst = dst;
            let kk0 = c * chunk;
            let rows = chunk.min(k - kk0);
            for s0 in (0..l).step_by(seg) {
                let n = seg.min(l - s0);
                // Rows kk0.. of im2col(X) for pixels s0..s0 + n of the concatenated images.
                for (r, row) in cols.chunks_exact_mut(seg).take(rows).enumerate() {
                    let (ci, t) = ((kk0 + r) / khw, (kk0 + r) % khw);
                    let mut q = s0;
                    while q < s0 + n {
                        let (img, p0) = (q / hw, q % hw);
                        let len = (hw - p0).min(s0 + n - q);
                        let plane = &x[(img * g.c_in + ci) * hw_in..(img * g.c_in + ci + 1) * hw_in];
                        im2col_row(g, plane, t / g.kw, t % g.kw, p0, &mut row[q - s0..q - s0 + len]);
                        q += len;
                    }
                }
                for co0 in (0..g.c_out).step_by(mr) {
                    let m = mr.min(g.c_out - co0);
                    let a = dyc[co0 * l + s0..].as_ptr();
                    for j0 in (0..rows).step_by(nr) {
                        let nn = nr.min(rows - j0);
                        let bp = cols[j0 * seg..].as_ptr();
                        // SAFETY: a is m rows of n values l apart inside dyc (s0 + n <= l); bp is
                        // nn rows of n values seg apart inside `cols`; c is m rows of nn values
                        // k apart inside dw, columns kk0.. that only this task writes.
                        unsafe {
                            let c = dst.0.add(co0 * k + kk0 + j0);
                            if m == mr && nn == nr {
                                kern.run(n, a, l, bp, seg, c, k);
                            } else {
                                gemm_kernel::dot_edge(n, a, l, bp, seg, c, k, m, nn);
                            }
                        }
                    }
                }
            }
        },
    );
    dw
}

/// Pixels of `dY` per band in [`grad_input_col2im`]: the band's columns (`Wᵀ·dY` for a block
/// of input channels) stay in L2 until they are added into `dX`.
const COL2IM_BAND: usize = 512;

/// Most `(channel, tap)` rows per task in [`grad_input_col2im`].
const COL2IM_ROWS: usize = 144;

/// Longest reduction (output channels) per micro-kernel call in [`grad_input_col2im`].
const COL2IM_KC: usize = 128;

/// `dX` of a conv with stride > 1 (or any conv the stride-1 path does not take): the columns
/// `Wᵀ·dY` by our packed micro-kernel, added back into `dX` (col2im) band by band while they
/// are in cache. Tasks are (image, block of input channels) and own their `dX` planes; a
/// block's `(channel, tap)` rows fill whole `mr`-row panels where the channel count allows
/// (4 channels of a 3x3 kernel: 36 rows, 3 panels). Each band of whole output rows packs its
/// `dY` pixels into `nr`-wide panels once for all of the block's row panels, and the
/// accumulated columns are added into the block's planes one (row, tap) segment at a time.
/// (Before: the `gemm` crate per (image, block), which repacked the whole `dY` image for every
/// block, then a per-element col2im over a `[rows, H·W]` buffer.)
///
/// # Shapes
/// - `dy`: `[B, C_out, oh, ow]`, `w`: `[C_out, C_in, kh, kw]`; output `[B, C_in, H, W]`
pub(super) fn grad_input_col2im(g: &Geometry, batch: usize, dy: &[f32], w: &[f32], kern: Kernel) -> Vec<f32> {
    let (mr, nr) = (kern.mr, kern.nr);
    let (khw, k, hw_in, hw) = (g.kh * g.kw, g.k(), g.h * g.w, g.oh * g.ow);
    if batch * g.c_in * hw_in == 0 || g.c_out == 0 {
        return vec![0.0; batch * g.c_in * hw_in];
    }
    // Channels per block: rows in whole panels where the channel count allows, up to about
    // COL2IM_ROWS rows (every band's packed dY panels serve all of them), while there are at
    // least [`min_tasks`].
    let whole = (1..=mr).find(|c| (c * khw) % mr == 0).filter(|c| g.c_in % c == 0).unwrap_or(1);
    let min_tasks = min_tasks();
    let mut cib = whole;
    while g.c_in % (2 * cib) == 0 && 2 * cib * khw <= COL2IM_ROWS && batch * g.c_in / (2 * cib) >= min_tasks {
        cib *= 2;
    }
    let blocks = g.c_in / cib;
    let rows = cib * khw;
    let panels = rows.div_ceil(mr);
    // Wᵀ ([C_in·kh·kw, C_out]) packed per block: block b's panel p at (b·panels + p)·C_out·mr.
    let mut a = vec![0f32; blocks * panels * g.c_out * mr];
    a.par_chunks_exact_mut(g.c_out * mr).enumerate().for_each(|(i, panel)| {
        let (b, p) = (i / panels, i % panels);
        gemm_kernel::pack_a_panel(panel, p, rows, g.c_out, mr, |r, co| w[co * k + b * rows + r]);
    });
    // Stride 2 across, 3 taps, padding 1 (YOLO's downsampling convs): a fused col2im.
    let s2k3 = g.sw == 2 && g.kw == 3 && g.pw == 1 && g.ow == (g.w - 1) / 2 + 1;
    let band_rows = (COL2IM_BAND / g.ow.max(1)).clamp(1, g.oh.max(1));
    let band_px = band_rows * g.ow;
    let ldc = band_px.div_ceil(nr) * nr;
    let kc_max = COL2IM_KC.min(g.c_out).max(1);
    let (dx, _) = par_fill(batch * g.c_in * hw_in, cib * hw_in, |task, dst| {
        let (img, blk) = (task / blocks, task % blocks);
        let ab = &a[blk * panels * g.c_out * mr..(blk + 1) * panels * g.c_out * mr];
        let dy_img = &dy[img * g.c_out * hw..(img + 1) * g.c_out * hw];
        // Scratch from this thread's previous tasks, not zeroed: the kernel's first reduction
        // block overwrites every `acc` value the col2im reads, and `bbuf`'s rows are written
        // (padding included) before each use.
        COL2IM_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            let (acc_len, b_len) = (panels * mr * ldc, kc_max * nr);
            if buf.len() < acc_len + b_len {
                buf.resize(acc_len + b_len, 0.0);
            }
            let (acc, rest) = buf.split_at_mut(acc_len);
            let bbuf = &mut rest[..b_len];
            for oy0 in (0..g.oh).step_by(band_rows) {
                let oy1 = (oy0 + band_rows).min(g.oh);
                let (p0, n) = (oy0 * g.ow, (oy1 - oy0) * g.ow);
                for q in 0..n.div_ceil(nr) {
                    let (c0, cn) = (p0 + q * nr, nr.min(n - q * nr));
                    for k0 in (0..g.c_out).step_by(kc_max) {
                        let kc = kc_max.min(g.c_out - k0);
                        for (kk, row) in bbuf.chunks_exact_mut(nr).take(kc).enumerate() {
                            let src = &dy_img[(k0 + kk) * hw + c0..(k0 + kk) * hw + c0 + cn];
                            row[..cn].copy_from_slice(src);
                            row[cn..].fill(0.0);
                        }
                        for p in 0..panels {
                            let ap = ab[(p * g.c_out + k0) * mr..(p * g.c_out + k0 + kc) * mr].as_ptr();
                            let c = acc[p * mr * ldc + q * nr..].as_mut_ptr();
                            // SAFETY: ap holds kc·mr values and bbuf kc·nr (slices above); c is mr
                            // rows of nr values ldc apart inside acc (q·nr + nr <= ldc).
                            unsafe { kern.run(kc, ap, mr, bbuf.as_ptr(), nr, c, ldc, k0 > 0) };
                        }
                    }
                }
                // col2im: row r = (channel, ky, kx) of the band's columns goes to dX[channel,
                // oy·sh + ky − ph, ox·sw + kx − pw].
                if s2k3 {
                    // The three taps of a kernel row in one pass over each dX row.
                    for (ci, plane) in dst.chunks_exact_mut(hw_in).enumerate() {
                        for ky in 0..g.kh {
                            let r = ci * khw + ky * 3;
                            let (c0, c1, c2) = (&acc[r * ldc..r * ldc + n], &acc[(r + 1) * ldc..(r + 1) * ldc + n], &acc[(r + 2) * ldc..(r + 2) * ldc + n]);
                            for (i, oy) in (oy0..oy1).enumerate() {
                                let iy = (oy * g.sh + ky) as isize - g.ph as isize;
                                if iy >= 0 && (iy as usize) < g.h {
                                    let seg = i * g.ow..(i + 1) * g.ow;
                                    let row = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                                    col2im_s2k3_row(&c0[seg.clone()], &c1[seg.clone()], &c2[seg], row);
                                }
                            }
                        }
                    }
                    continue;
                }
                for r in 0..rows {
                    let (ci, t) = (r / khw, r % khw);
                    let (ky, kx) = (t / g.kw, t % g.kw);
                    let plane = &mut dst[ci * hw_in..(ci + 1) * hw_in];
                    let cols = &acc[r * ldc..r * ldc + n];
                    for (oy, seg) in (oy0..oy1).zip(cols.chunks_exact(g.ow)) {
                        let iy = (oy * g.sh + ky) as isize - g.ph as isize;
                        if iy >= 0 && (iy as usize) < g.h {
                            let row = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                            scatter_add_row(seg, row, g.sw, kx as isize - g.pw as isize);
                        }
                    }
                }
            }
        });
    });
    dx
}

thread_local! {
    /// Per-thread `acc` and `bbuf` of [`grad_input_col2im`], reused across tasks and calls.
    static COL2IM_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One dX row of a stride-2, 3-tap, padding-1 conv from the columns of its three taps `c0`,
/// `c1`, `c2` (one output row each): column `2j` gets `c1[j]`, column `2j + 1` gets `c2[j] +
/// c0[j + 1]` (tap 0 of output column 0 falls in the padding).
#[inline]
fn col2im_s2k3_row(c0: &[f32], c1: &[f32], c2: &[f32], row: &mut [f32]) {
    let (ow, w) = (c1.len(), row.len());
    let full = (w / 2).min(ow - 1);
    for (pair, ((a, b), c)) in row[..2 * full].chunks_exact_mut(2).zip(c1.iter().zip(c2).zip(&c0[1..])) {
        pair[0] += a;
        pair[1] += b + c;
    }
    for j in full..ow {
        if 2 * j < w {
            row[2 * j] += c1[j];
        }
        if 2 * j + 1 < w {
            row[2 * j + 1] += c2[j] + if j + 1 < ow { c0[j + 1] } else { 0.0 };
        }
    }
}

/// `row[t·s + off] += seg[t]` for every `t` whose column falls inside `row`.
#[inline]
fn scatter_add_row(seg: &[f32], row: &mut [f32], s: usize, off: isize) {
    let w = row.len() as isize;
    let t_lo = if off >= 0 { 0 } else { ((-off) as usize).div_ceil(s) };
    let t_hi = if off >= w { 0 } else { (((w - 1 - off) as usize) / s + 1).min(seg.len()) };
    for t in t_lo..t_hi {
        row[(t as isize * s as isize + off) as usize] += seg[t];
    }
}

/// `dst = act(src + bias)`: an accumulator row written to the output with its epilogue.
#[inline]
fn epilogue_copy(src: &[f32], dst: &mut [f32], bias: Option<f32>, act: Activation) {
    if bias.is_none() && act == Activation::Identity {
        dst.copy_from_slice(src);
        return;
    }
    crate::cpu::simd::bias_act_copy(src, dst, bias.unwrap_or(0.0), act == Activation::Silu)
}

/// A row length for an accumulator of rows of `n` values: whole `nr`-blocks, and rows not a
/// multiple of 4 KB apart (rows that are map a block's loads and stores to one L1 set).
fn acc_stride(n: usize, nr: usize) -> usize {
    let s = n.div_ceil(nr) * nr;
    if (s * 4) % 4096 == 0 {
        s + nr
    } else {
        s
    }
}

/// The conv by `plan`; `a` comes from [`pack_weights`] for the same plan.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_packed_any(g: &Geometry, batch: usize, x: &[f32], a: &[f32], bias: Option<&[f32]>, act: Activation, kern: Kernel, plan: Plan) -> Vec<f32> {
    if batch * g.c_out * g.oh * g.ow == 0 {
        return Vec::new();
    }
    match plan {
        Plan::Winograd(tile) => winograd::run(g, batch, x, a, bias, act, kern, tile),
        Plan::Shifted => run_packed_shifted(g, batch, x, a, bias, act, kern),
        Plan::Im2col => run_packed(g, batch, x, a, bias, act, kern),
    }
}

/// Tasks of a packed conv: (image, tile, chunk of output-channel panels). Channels are split
/// only when images x tiles give fewer than `min_tasks` (enough for every thread to take
/// two, [`min_tasks`]).
#[derive(Clone, Copy, Debug)]
struct TaskGrid {
    tiles: usize,
    co_chunks: usize,
    per_chunk: usize,
    co_panels: usize,
}

impl TaskGrid {
    fn new(batch: usize, tiles: usize, co_panels: usize, min_tasks: usize) -> Self {
        let co_chunks = if batch * tiles < min_tasks { min_tasks.div_ceil(batch * tiles).min(co_panels) } else { 1 };
        Self { tiles, co_chunks, per_chunk: co_panels.div_ceil(co_chunks), co_panels }
    }

    fn len(&self, batch: usize) -> usize {
        batch * self.tiles * self.co_chunks
    }

    /// `(image, tile, first panel, end panel)` of `task`, or `None` for a chunk past the last
    /// panel.
    fn task(&self, task: usize) -> Option<(usize, usize, usize, usize)> {
        let (img, rest) = (task / (self.tiles * self.co_chunks), task % (self.tiles * self.co_chunks));
        let (tile, chunk) = (rest / self.co_chunks, rest % self.co_chunks);
        let (cp0, cp1) = (chunk * self.per_chunk, ((chunk + 1) * self.per_chunk).min(self.co_panels));
        (cp0 < cp1).then_some((img, tile, cp0, cp1))
    }
}

/// The fewest tasks a conv is cut into: two per thread. Each task of a small map repeats
/// work (packing, the weights it streams from memory, the edge blocks' padding), so more
/// tasks only pay where they even out the threads; yolov8n (interleaved runs, medians, two
/// threads, Zen 5): 320 px batch 1 6.35 ms at two tasks per thread against 6.85 at four
/// (8.2-8.6 against 8.7-9.3 in a noisier hour), 640 px 20.3 against 22.4, a 320 px batch-8
/// train step 221 against 237 ms; one task per thread was level with two.
fn min_tasks() -> usize {
    2 * rayon::current_num_threads().max(1)
}

/// `size` (a multiple of `unit`) lowered to even out the chunks `total` is cut into: their
/// count rounded up so that the tasks (`batch` x chunks) are a multiple of the thread count,
/// then the least multiple of `unit` that covers `total` in that many chunks (never more than
/// `size`; rounding to `unit` can leave fewer chunks than that count). Cut by `size` alone,
/// the last chunk is what is left over: a 40x40 map in tiles of 512 pixels is 512, 512, 512
/// and 64, and on two threads one waits for most of a tile. Never below `floor` (the
/// caller's least chunk, as `size` is when smaller): the count grows with the threads, and on
/// 16 of them a 20x20 map would otherwise go in one-panel tiles.
fn balanced(total: usize, size: usize, unit: usize, batch: usize, floor: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let mut count = total.div_ceil(size.max(1)).max(1);
    while (batch * count) % threads != 0 {
        count += 1;
    }
    (total.div_ceil(count).div_ceil(unit) * unit).clamp(unit, size.max(unit)).max(floor.min(size))
}

/// Packed columns per task and K block, in floats (128 KB): the block stays in L2 beside the
/// weights' panels while each `[kc, nr]` panel of it is reused from L1 by every output
/// channel block.
const PACKED_B_FLOATS: usize = 32 * 1024;

/// How [`run_packed`] cuts a conv into tasks: (image, tile of `nc` output pixels, chunk of
/// output-channel panels), and K into blocks of `kc`.
#[derive(Clone, Copy, Debug)]
struct PackedBlocking {
    kc: usize,
    kblocks: usize,
    nc: usize,
    grid: TaskGrid,
}

impl PackedBlocking {
    fn new(g: &Geometry, batch: usize, kern: &Kernel) -> Self {
        let k = g.k();
        let hw = g.oh * g.ow;
        // A `[kc, nr]` panel of the packed columns stays in L1 (16 KB).
        let kc_max = (4096 / kern.nr).max(32);
        let kblocks = k.div_ceil(kc_max);
        let kc = k.div_ceil(kblocks);
        let round = |n: usize| n.div_ceil(kern.nr) * kern.nr;
        let mut nc = round((PACKED_B_FLOATS / kc).clamp(kern.nr, 2048)).min(round(hw));
        // At least [`min_tasks`] tasks, evened out ([`balanced`]), but tiles of at least 4
        // panels; below that, output channels are split too.
        let min_tasks = min_tasks();
        if batch * hw.div_ceil(nc) < min_tasks {
            nc = round(hw.div_ceil(min_tasks.div_ceil(batch))).max(4 * kern.nr).min(round(hw));
        }
        let nc = balanced(hw, nc, kern.nr, batch, 4 * kern.nr);
        let grid = TaskGrid::new(batch, hw.div_ceil(nc), g.c_out.div_ceil(kern.mr), min_tasks);
        Self { kc, kblocks, nc, grid }
    }
}

thread_local! {
    /// Per-thread packed column block of [`run_packed`] (plus one im2col row), reused across
    /// tasks and calls.
    static PACKED_B: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The conv over a batch with our packed micro-kernels ([`gemm_kernel`]) and im2col; returns
/// the NCHW output.
///
/// `a` is the weights packed into `mr`-row panels ([`gemm_kernel::pack_a`]). Each task packs
/// its tile's im2col columns straight into `nr`-wide panels, one K block at a time (for a 1x1
/// conv the input rows themselves), and runs the micro-kernel for every (pixel panel, channel
/// panel): the `mr x nr` block's sums stay in registers for the whole K block, and K blocks
/// add up in a per-task accumulator of whole blocks (no edge cases: the panels are zero past
/// the last channel and pixel). Bias and activation are applied as the accumulator's rows
/// are copied to the output; without either, whole blocks add up in the output itself and
/// only the edge blocks go through the accumulator.
pub(super) fn run_packed(g: &Geometry, batch: usize, x: &[f32], a: &[f32], bias: Option<&[f32]>, act: Activation, kern: Kernel) -> Vec<f32> {
    run_packed_parts(g, batch, &[(x, g.c_in)], a, bias, act, kern)
}

/// An image's input channels as planes: from one NCHW buffer, or from several whose channels
/// follow each other (the input of a conv over a concatenation that is never built).
#[derive(Clone, Copy)]
struct Planes<'a> {
    /// Each part's NCHW values and channel count.
    parts: &'a [(&'a [f32], usize)],
    img: usize,
    hw: usize,
}

impl<'a> Planes<'a> {
    /// Channel `ci`'s `[H, W]` plane.
    fn plane(&self, ci: usize) -> &'a [f32] {
        let mut c = ci;
        for &(data, channels) in self.parts {
            if c < channels {
                let at = (self.img * channels + c) * self.hw;
                return &data[at..at + self.hw];
            }
            c -= channels;
        }
        panic!("input channel {ci} past the parts' channels")
    }
}

/// [`run_packed`] over an input given as `parts` (NCHW buffers with their channel counts,
/// `C_in` in all) whose channels follow each other, as if concatenated along channels.
pub(super) fn run_packed_parts(g: &Geometry, batch: usize, parts: &[(&[f32], usize)], a: &[f32], bias: Option<&[f32]>, act: Activation, kern: Kernel) -> Vec<f32> {
    let (mr, nr) = (kern.mr, kern.nr);
    let (hw_in, hw, k) = (g.h * g.w, g.oh * g.ow, g.k());
    assert_eq!(parts.iter().map(|p| p.1).sum::<usize>(), g.c_in, "input channels for {g:?}");
    for &(data, channels) in parts {
        assert_eq!(data.len(), batch * channels * hw_in, "conv input part of {channels} channels for {g:?}, batch {batch}");
    }
    assert_eq!(a.len(), g.c_out.div_ceil(mr) * k * mr, "packed weights for {g:?}");
    let bl = PackedBlocking::new(g, batch, &kern);
    let len = batch * g.c_out * hw;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let dst = OutPtr(out.as_mut_ptr());
    // Without bias and activation (the training step's convs and `dX`), whole `mr x nr`
    // blocks go straight to the output rows, and only the edge blocks through the
    // accumulator: the copy of every row was ~2% of a train step's CPU time. Not on planes of
    // a multiple of 4 KB, whose rows would share cache sets (as `acc_stride` avoids).
    let direct = bias.is_none() && act == Activation::Identity && (hw * 4) % 4096 != 0;
    // Channel panels whose every row is an output channel.
    let cp_whole = if direct { g.c_out / mr } else { 0 };

    (0..bl.grid.len(batch)).into_par_iter().for_each(|task| {
        let dst = dst;
        let Some((img, tile, cp0, cp1)) = bl.grid.task(task) else { return };
        let p0 = tile * bl.nc;
        let n = bl.nc.min(hw - p0);
        let panels = n.div_ceil(nr);
        let n_acc = acc_stride(n, nr);
        // Pixel panels of `nr` pixels inside the tile, written directly with `direct`.
        let q_whole = if direct { n / nr } else { 0 };
        let x_img = Planes { parts, img, hw: hw_in };
        PACKED_B.with(|buf| {
            let mut buf = buf.borrow_mut();
            let (b_len, acc_len) = (bl.kc * panels * nr, (cp1 - cp0) * mr * n_acc);
            if buf.len() < b_len + n + acc_len {
                buf.resize(b_len + n + acc_len, 0.0);
            }
            let (bbuf, rest) = buf.split_at_mut(b_len);
            let (row, acc) = rest.split_at_mut(n);
            for kb in 0..bl.kblocks {
                let k0 = kb * bl.kc;
                let kc = bl.kc.min(k - k0);
                if nr == 32 {
                    pack_b::<32>(g, x_img, p0, n, k0, kc, bbuf, row);
                } else {
                    assert_eq!(nr, 16, "{kern:?}: no column packing for this width");
                    pack_b::<16>(g, x_img, p0, n, k0, kc, bbuf, row);
                }
                for q in 0..panels {
                    let bp = bbuf[q * kc * nr..(q + 1) * kc * nr].as_ptr();
                    for cp in cp0..cp1 {
                        let ap = a[(cp * k + k0) * mr..(cp * k + k0 + kc) * mr].as_ptr();
                        // SAFETY: a and b hold kc·mr and kc·nr values (slices above); c is mr
                        // rows of nr values n_acc apart inside `acc`, or (a whole block) mr
                        // output channels' pixels p0 + q·nr.. of image img, hw apart, which
                        // only this task writes.
                        unsafe {
                            if q < q_whole && cp < cp_whole {
                                let c = dst.0.add((img * g.c_out + cp * mr) * hw + p0 + q * nr);
                                kern.run(kc, ap, mr, bp, nr, c, hw, kb > 0)
                            } else {
                                let c = acc[(cp - cp0) * mr * n_acc + q * nr..].as_mut_ptr();
                                kern.run(kc, ap, mr, bp, nr, c, n_acc, kb > 0)
                            }
                        };
                    }
                }
            }
            for co in cp0 * mr..(cp1 * mr).min(g.c_out) {
                // The pixels that went through the accumulator.
                let from = if co / mr < cp_whole { q_whole * nr } else { 0 };
                let src = &acc[(co - cp0 * mr) * n_acc + from..(co - cp0 * mr) * n_acc + n];
                // SAFETY: pixels p0 + from..p0 + n of channel co of image img: only this task
                // writes them.
                let out_row = unsafe { std::slice::from_raw_parts_mut(dst.0.add((img * g.c_out + co) * hw + p0 + from), n - from) };
                epilogue_copy(src, out_row, bias.map(|b| b[co]), act);
            }
        });
    });
    // SAFETY: the tasks cover every (image, channel, pixel): tiles span 0..hw and chunks span
    // every channel panel.
    unsafe { out.set_len(len) };
    out
}

/// Whether [`run_packed_shifted`] runs this conv: a kernel larger than 1x1, the same stride
/// (1 or 2) both ways, and at least 16 input channels (each tap is a GEMM with `K = C_in`;
/// below that, im2col's longer K is faster, as for the 3-channel stem).
pub(super) fn packed_shifted(g: &Geometry) -> bool {
    g.sh == g.sw && g.sh <= 2 && g.kh * g.kw > 1 && g.c_in >= 16
}

/// Packed weights of the channel panels that [`run_packed_shifted`] runs over one pixel block
/// after another, in floats (256 KB, half of a 512 KB L2).
const A_GROUP_FLOATS: usize = 64 * 1024;

/// Input channels per micro-kernel call of [`run_packed_shifted`]: one call sums all taps of a
/// block of channels, whose rows (three kernel rows of them for a 3x3) stay in L1.
const CI_BLOCK: usize = 32;

/// `(blocks, channels per block)` of the input channels for [`run_packed_shifted`].
fn ci_blocks(c_in: usize) -> (usize, usize) {
    let nb = c_in.div_ceil(CI_BLOCK).max(1);
    (nb, c_in.div_ceil(nb))
}

/// The weights packed for [`run_packed`] (`[C_out, K]` in `mr`-row panels) or, for a conv that
/// [`run_packed_shifted`] runs, the same with K reordered as (channel block, tap, channel):
/// each call's weights, all taps of one block of channels, are then contiguous, at
/// `(panel·K + ci0·taps)·mr` for the block starting at channel `ci0`.
pub(super) fn pack_weights(g: &Geometry, w: &[f32], mr: usize, plan: Plan) -> Vec<f32> {
    match plan {
        Plan::Im2col => return gemm_kernel::pack_a(w, g.c_out, g.k(), mr),
        Plan::Winograd(tile) => return winograd::pack_weights(g, w, mr, tile),
        Plan::Shifted => assert!(packed_shifted(g), "shifted weights for {g:?}"),
    }
    let (taps, k) = (g.kh * g.kw, g.k());
    let (nb, cb) = ci_blocks(g.c_in);
    let mut wr = vec![0f32; g.c_out * k];
    for (co, row) in wr.chunks_exact_mut(k).enumerate() {
        let mut i = 0;
        for blk in 0..nb {
            for t in 0..taps {
                for ci in blk * cb..((blk + 1) * cb).min(g.c_in) {
                    row[i] = w[(co * g.c_in + ci) * taps + t];
                    i += 1;
                }
            }
        }
    }
    gemm_kernel::pack_a(&wr, g.c_out, k, mr)
}

/// The distance in floats between phase planes of `floats` values: whole 64-byte lines, an
/// odd number of them, so that at stride 1 the C_in rows of a block fall in different L1 sets
/// (at stride 2 they are s² planes apart).
fn plane_stride(floats: usize) -> usize {
    let ps = floats.div_ceil(16) * 16;
    if (ps / 16) % 2 == 0 {
        ps + 16
    } else {
        ps
    }
}

/// The zero-padded input split into its `s x s` phases (`s` = 1 or 2), phase rows `rows` of
/// them: plane
/// `((img·C_in + ci)·s² + a·s + b)` holds padded rows `(u0 + u)·s + a` (`u0 = rows.start`)
/// and columns `b, b + s, …` of channel `ci`, as `[rows.len(), ceil(Wp / s)]` (rows past the
/// padded input are zeros), planes `ps` floats apart, with `slack` zeros after the last. For
/// `s = 1` and all rows that is the padded input. Returns the buffer, `ps` and the phase width.
fn phase_planes(g: &Geometry, s: usize, batch: usize, x: &[f32], rows: std::ops::Range<usize>, slack: usize) -> (Vec<f32>, usize, usize) {
    let wq = (g.w + 2 * g.pw).div_ceil(s);
    let (u0, hq) = (rows.start, rows.len());
    let ps = plane_stride(hq * wq);
    let phases = s * s;
    let planes = batch * g.c_in * phases;
    assert!(s == 1 || s == 2, "phase planes at stride {s}");
    if s == 2 {
        // Both column phases of a row phase at once (its two planes are adjacent): each input
        // row is read once and split into its even and odd columns.
        let pairs = planes / 2;
        // Input column 2i goes to phase column `pw mod 2`, at v = i + pw / 2; column 2i + 1 to
        // the other, at v = i + (pw + 1) / 2.
        let (ve, vo) = (g.pw / 2, (g.pw + 1) / 2);
        let (ne, no) = (g.w.div_ceil(2).min(wq.saturating_sub(ve)), (g.w / 2).min(wq.saturating_sub(vo)));
        // SAFETY: every element of each pair of planes is written below: the slack chunk,
        // each row (zeros, or padding zeros around the split row) and the planes' tails.
        let (xp, _) = unsafe {
            par_init(planes * ps + slack, 2 * ps, |i, dst| {
                if i >= pairs {
                    return zero(dst);
                }
                let (plane, a) = (i / 2, i % 2);
                let src = &x[plane * g.h * g.w..(plane + 1) * g.h * g.w];
                let (p0, p1) = dst.split_at_mut(ps);
                zero(&mut p0[hq * wq..]);
                zero(&mut p1[hq * wq..]);
                for u in 0..hq {
                    let (r0, r1) = (&mut p0[u * wq..(u + 1) * wq], &mut p1[u * wq..(u + 1) * wq]);
                    let Some(y) = ((u0 + u) * 2 + a).checked_sub(g.ph).filter(|&y| y < g.h) else {
                        zero(r0);
                        zero(r1);
                        continue;
                    };
                    let (even, odd) = if g.pw % 2 == 0 { (r0, r1) } else { (r1, r0) };
                    zero(&mut even[..ve]);
                    zero(&mut even[ve + ne..]);
                    zero(&mut odd[..vo]);
                    zero(&mut odd[vo + no..]);
                    deinterleave(&src[y * g.w..(y + 1) * g.w], &mut even[ve..ve + ne], &mut odd[vo..vo + no]);
                }
            })
        };
        return (xp, ps, wq);
    }
    // Stride 1: the padded planes.
    // SAFETY: every element of each plane is written below: the slack chunk, each row (zeros,
    // or padding zeros around the copied row) and the plane's tail.
    let (xp, _) = unsafe {
        par_init(planes * ps + slack, ps, |i, dst| {
            if i >= planes {
                return zero(dst);
            }
            let src = &x[i * g.h * g.w..(i + 1) * g.h * g.w];
            let (rows, tail) = dst.split_at_mut(hq * wq);
            zero(tail);
            for (u, drow) in rows.chunks_exact_mut(wq).enumerate() {
                // Row u0 + u of the padded plane is input row u0 + u − ph.
                let Some(y) = (u0 + u).checked_sub(g.ph).filter(|&y| y < g.h) else {
                    zero(drow);
                    continue;
                };
                zero(&mut drow[..g.pw]);
                drow[g.pw..g.pw + g.w].iter_mut().zip(&src[y * g.w..(y + 1) * g.w]).for_each(|(d, &x)| {
                    d.write(x);
                });
                zero(&mut drow[g.pw + g.w..]);
            }
        })
    };
    (xp, ps, wq)
}

/// Zeros `d`. The padding columns of phase rows are 0 to 2 floats, a few hundred thousand
/// times per forward: as `memset` calls they cost about a tenth of the phase split, so runs
/// of up to 8 are stored one by one (volatile, which keeps the compiler from turning the
/// loop back into a `memset` call; an AVX2 masked store was slower still on Zen 3).
#[inline]
fn zero(d: &mut [MaybeUninit<f32>]) {
    if d.len() <= 8 {
        for e in d.iter_mut() {
            // SAFETY: `e` is a valid, writable f32 slot.
            unsafe { std::ptr::write_volatile(e.as_mut_ptr(), 0.0) };
        }
        return;
    }
    d.iter_mut().for_each(|e| {
        e.write(0.0);
    });
}

/// `even[i] = src[2i]` and `odd[i] = src[2i + 1]` (as far as each goes), 8 of each at a time
/// with AVX2: the phase split of stride-2 and Winograd inputs.
fn deinterleave(src: &[f32], even: &mut [MaybeUninit<f32>], odd: &mut [MaybeUninit<f32>]) {
    assert!(even.len() <= src.len().div_ceil(2) && odd.len() <= src.len() / 2, "deinterleave: {} values for {} and {}", src.len(), even.len(), odd.len());
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        let steps = even.len().min(odd.len()).min(src.len() / 16 * 8) / 8;
        // SAFETY: AVX2 is present; step k reads src[16k..16k + 16] and writes
        // even/odd[8k..8k + 8], in bounds for k < steps.
        unsafe { x86_deinterleave(src.as_ptr(), even.as_mut_ptr().cast::<f32>(), odd.as_mut_ptr().cast::<f32>(), steps) };
        i = 8 * steps;
    }
    for (j, d) in even.iter_mut().enumerate().skip(i) {
        d.write(src[2 * j]);
    }
    for (j, d) in odd.iter_mut().enumerate().skip(i) {
        d.write(src[2 * j + 1]);
    }
}

/// # Safety
/// AVX2; `src` readable for `16·steps` floats, `even` and `odd` writable for `8·steps`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn x86_deinterleave(src: *const f32, even: *mut f32, odd: *mut f32, steps: usize) {
    use std::arch::x86_64::*;
    // SAFETY (whole body): in bounds by the caller's guarantee.
    unsafe {
        for k in 0..steps {
            let (a, b) = (_mm256_loadu_ps(src.add(16 * k)), _mm256_loadu_ps(src.add(16 * k + 8)));
            // Per 128-bit half: a0 a2 b0 b2 | a4 a6 b4 b6 (odd: a1 a3 b1 b3 | …); then the
            // 64-bit pairs in order.
            let e = _mm256_shuffle_ps(a, b, 0b10_00_10_00);
            let o = _mm256_shuffle_ps(a, b, 0b11_01_11_01);
            let e = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0b11_01_10_00));
            let o = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), 0b11_01_10_00));
            _mm256_storeu_ps(even.add(8 * k), e);
            _mm256_storeu_ps(odd.add(8 * k), o);
        }
    }
}

/// `dst[i] = src[2i]` (a row's even or odd columns), 8 at a time with AVX2: the stride-2
/// im2col rows (the stem's gather).
pub(super) fn every_other(src: &[f32], dst: &mut [f32]) {
    assert!(dst.is_empty() || 2 * dst.len() - 1 <= src.len(), "every_other: {} values for {}", src.len(), dst.len());
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // Whole steps read src[2i..2i + 16].
        let steps = (src.len() / 2).min(dst.len()) / 8;
        // SAFETY: AVX2 is present; step k reads src[16k..16k + 16] and writes dst[8k..8k + 8],
        // in bounds for k < steps.
        unsafe { x86_every_other(src.as_ptr(), dst.as_mut_ptr(), steps) };
        i = 8 * steps;
    }
    for (d, &x) in dst[i..].iter_mut().zip(src[2 * i..].iter().step_by(2)) {
        *d = x;
    }
}

/// # Safety
/// AVX2; `src` readable for `16·steps` floats, `dst` writable for `8·steps`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn x86_every_other(src: *const f32, dst: *mut f32, steps: usize) {
    use std::arch::x86_64::*;
    // SAFETY (whole body): in bounds by the caller's guarantee.
    unsafe {
        for k in 0..steps {
            let (a, b) = (_mm256_loadu_ps(src.add(16 * k)), _mm256_loadu_ps(src.add(16 * k + 8)));
            // Per 128-bit half: a0 a2 b0 b2 | a4 a6 b4 b6; then the 64-bit pairs in order.
            let e = _mm256_shuffle_ps(a, b, 0b10_00_10_00);
            let e = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0b11_01_10_00));
            _mm256_storeu_ps(dst.add(8 * k), e);
        }
    }
}

thread_local! {
    /// Per-thread accumulator of [`run_packed_shifted`], reused across tasks and calls.
    static ACC_PACKED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A stride-1 or stride-2 conv with our micro-kernels and no im2col: the kernel reads the
/// zero-padded input in place.
///
/// The padded input is split into its stride phases ([`phase_planes`]; for stride 1, just
/// the padded planes), so that tap `(ky, kx)` reads phase `(ky mod s, kx mod s)` at offset
/// `(ky / s, kx / s)` with stride 1. Output pixel `(oy, ox)` is numbered `q = oy·Wq + ox` over
/// "wide" rows of the phase width `Wq` (the first `ow` columns real), so for `nr` consecutive
/// wide pixels a tap reads a `[C_in, nr]` block whose rows are a fixed distance apart, and
/// the micro-kernel reads it as it is (`ldb`). The conv is `Σ_tap W_tap · X_tap`, summed in a
/// per-task `[C_out, n]`
/// accumulator; bias and activation are applied as its real columns are copied to the
/// output. One micro-kernel call sums all taps of a block of input channels in registers
/// (the taps are its segments). The input is copied once (padding and phases) instead of
/// `kh·kw / s²` times (im2col).
pub(super) fn run_packed_shifted(g: &Geometry, batch: usize, x: &[f32], a: &[f32], bias: Option<&[f32]>, act: Activation, kern: Kernel) -> Vec<f32> {
    let co_panels = g.c_out.div_ceil(kern.mr);
    assert_eq!(a.len(), co_panels * g.k() * kern.mr, "packed weights for {g:?}");
    let s = g.sh;
    // Phase rows a block of output rows reads beyond its own: a tap reaches (kh − 1) / s on.
    let halo = (g.kh - 1) / s;
    let per_row = g.c_in * s * s * (g.w + 2 * g.pw).div_ceil(s);
    let len = batch * g.c_out * g.oh * g.ow;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let dst = OutPtr(out.as_mut_ptr());
    let plane = g.c_in * g.h * g.w;
    for (i0, ni, r0, nrows) in slabs(batch, g.oh, halo, per_row, slab_floats()) {
        shifted_slab(g, ni, &x[i0 * plane..(i0 + ni) * plane], r0..r0 + nrows, a, bias, act, kern, dst, i0);
    }
    // SAFETY: the slabs cover every image and output row, and each writes every channel of its
    // rows.
    unsafe { out.set_len(len) };
    out
}

/// Phase-plane floats per slab of the shifted and Winograd convs (1 MB): a slab's planes are
/// built and read while they are still in cache, instead of a whole batch's planes (13 MB for
/// yolov8n's second conv at 320, batch 8) going out to memory and back.
pub(super) const SLAB_FLOATS: usize = 256 * 1024;

/// How a conv whose input is split into phase planes runs in slabs: `(first image, images,
/// first output row, rows)`. The whole batch when its planes fit in `budget` floats, else
/// runs of whole images within it; an image whose planes take more than four budgets (640 px
/// inputs) in bands of rows within one. `per_row` is the plane floats per output row of one
/// image, `halo` the extra rows each slab reads. (Measured at two threads: bands of an image
/// whose planes stay in L3, 1.7 MB at 320, cost that conv a tenth more; at 640, a third less.)
fn slabs(batch: usize, rows: usize, halo: usize, per_row: usize, budget: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    let per_img = per_row * (rows + halo);
    let (imgs, band) = if per_img * batch <= budget {
        (batch, rows)
    } else if per_img <= 4 * budget {
        (budget / per_img, rows)
    } else {
        // At least 4 rows a band, so the halo stays a small part of the copy.
        (1, (budget / per_row).saturating_sub(halo).max(4).min(rows))
    };
    let (imgs, band) = (imgs.max(1), band.max(1));
    (0..batch).step_by(imgs).flat_map(move |i0| (0..rows).step_by(band).map(move |r0| (i0, imgs.min(batch - i0), r0, band.min(rows - r0))))
}

#[cfg(test)]
thread_local! {
    /// [`SLAB_FLOATS`] for the tests on this thread: small, to run convs in several slabs.
    pub(super) static TEST_SLAB_FLOATS: std::cell::Cell<usize> = const { std::cell::Cell::new(SLAB_FLOATS) };
}

/// The slab budget: [`SLAB_FLOATS`] (in tests, as set for the calling thread).
fn slab_floats() -> usize {
    #[cfg(test)]
    return TEST_SLAB_FLOATS.with(|b| b.get());
    #[cfg(not(test))]
    SLAB_FLOATS
}

/// Output rows `rows` of images `i0..i0 + batch` of a [`run_packed_shifted`] conv (`x` holds
/// just those images), written to their places in `dst` (the whole output).
#[allow(clippy::too_many_arguments)]
fn shifted_slab(g: &Geometry, batch: usize, x: &[f32], rows_out: std::ops::Range<usize>, a: &[f32], bias: Option<&[f32]>, act: Activation, kern: Kernel, dst: OutPtr, i0: usize) {
    let (mr, nr) = (kern.mr, kern.nr);
    let s = g.sh;
    let phases = s * s;
    let taps = g.kh * g.kw;
    let hw = g.oh * g.ow;
    let co_panels = g.c_out.div_ceil(mr);
    let k = g.k();
    let (nb, cb) = ci_blocks(g.c_in);
    let (r0, oh) = (rows_out.start, rows_out.len());
    // A block's last columns may run up to nr past the last real pixel (whole blocks); the
    // slack is generous.
    let (xp, ps, wq) = phase_planes(g, s, batch, x, r0..r0 + oh + (g.kh - 1) / s, 2 * nr + 16);
    let ldb = phases * ps;
    // Where tap t starts, from its image's first plane.
    let tap_off: Vec<usize> = (0..taps)
        .map(|t| {
            let (ky, kx) = (t / g.kw, t % g.kw);
            ((ky % s) * s + kx % s) * ps + (ky / s) * wq + kx / s
        })
        .collect();
    let far_tap = tap_off.iter().copied().max().unwrap_or(0);

    // Output rows per task: the accumulator stays around ACC_FLOATS; enough tasks for every
    // thread to take two ([`min_tasks`]), splitting output channels when the rows run out. A task keeps
    // at least 8 blocks of wide pixels: on small maps, tasks of one or two rows ran mostly on
    // the zero columns of their last block (a 10x10 output in 5 tasks used 20 of every 32
    // columns); output channels split instead, at no cost (nothing is packed per task).
    // Measured at 320, two threads: the 10x10-output convs a fifth to a third faster.
    let min_tasks = min_tasks();
    let min_rows = (8 * nr).div_ceil(wq);
    let mut rows = (ACC_FLOATS / (co_panels * mr * wq)).clamp(1, oh);
    if batch * oh.div_ceil(rows) < min_tasks {
        rows = oh.div_ceil(min_tasks.div_ceil(batch)).max(min_rows).clamp(1, oh.max(1));
    }
    let rows = balanced(oh, rows, 1, batch, min_rows);
    let grid = TaskGrid::new(batch, oh.div_ceil(rows), co_panels, min_tasks);

    (0..grid.len(batch)).into_par_iter().for_each(|task| {
        let dst = dst;
        let Some((img, tile, cp0, cp1)) = grid.task(task) else { return };
        let oy0 = tile * rows;
        let nrows = rows.min(oh - oy0);
        // Wide columns of this task, and the accumulator's row length (whole blocks).
        let n = (nrows - 1) * wq + g.ow;
        let n_acc = acc_stride(n, nr);
        let x_img = &xp[img * g.c_in * ldb..];
        // The farthest value a block reads: last channel, farthest tap, last block's end.
        let far = (g.c_in - 1) * ldb + far_tap + oy0 * wq + n.div_ceil(nr) * nr;
        assert!(far <= x_img.len(), "phase planes too short for {g:?}");
        ACC_PACKED.with(|acc| {
            let mut acc = acc.borrow_mut();
            let acc_len = (cp1 - cp0) * mr * n_acc;
            if acc.len() < acc_len {
                acc.resize(acc_len, 0.0);
            }
            let acc = &mut acc[..acc_len];
            // Channel panels in groups whose weights stay in L2 while the pixels go by.
            let group = (A_GROUP_FLOATS / (k * mr)).max(1);
            for (g0, q) in (cp0..cp1).step_by(group).flat_map(|g0| (0..n).step_by(nr).map(move |q| (g0, q))) {
                for blk in 0..nb {
                    let ci0 = blk * cb;
                    let cbn = cb.min(g.c_in - ci0);
                    let bp = x_img[ci0 * ldb + oy0 * wq + q..].as_ptr();
                    for cp in g0..(g0 + group).min(cp1) {
                        let ap = a[(cp * k + ci0 * taps) * mr..(cp * k + (ci0 + cbn) * taps) * mr].as_ptr();
                        let c = acc[(cp - cp0) * mr * n_acc + q..].as_mut_ptr();
                        // SAFETY: a holds taps·cbn rows of mr values (slice above); each tap's
                        // b is cbn rows of nr values ldb apart, the last ending at or before
                        // `far` (checked); c is mr rows of nr values n_acc apart inside `acc`.
                        unsafe { kern.run_segments(&tap_off, cbn, ap, mr, bp, ldb, c, n_acc, blk > 0) };
                    }
                }
            }
            for co in cp0 * mr..(cp1 * mr).min(g.c_out) {
                // Bias and activation over the whole accumulator row in place (whole vectors:
                // n_acc is a multiple of nr), then its real columns out: per output row, a
                // fused epilogue-and-copy spent a tenth of its time on the rows' scalar tails.
                let row = &mut acc[(co - cp0 * mr) * n_acc..(co - cp0 * mr) * n_acc + n.div_ceil(nr) * nr];
                epilogue(row, bias.map(|b| b[co]), act);
                for r in 0..nrows {
                    // SAFETY: row r0 + oy0 + r of channel co of image i0 + img: ow values that
                    // only this task writes.
                    let out_row = unsafe { std::slice::from_raw_parts_mut(dst.0.add(((i0 + img) * g.c_out + co) * hw + (r0 + oy0 + r) * g.ow), g.ow) };
                    out_row.copy_from_slice(&row[r * wq..r * wq + g.ow]);
                }
            }
        });
    });
}

/// Packs rows `k0..k0 + kc` of the `[K, n]` im2col column block of output pixels
/// `p0..p0 + n` of one image into `NR`-wide panels: panel `q` is `[kc, NR]` at
/// `buf[q·kc·NR..]` and holds pixels `p0 + q·NR..`, zero past `n`. A 1x1 stride-1 conv reads
/// its input rows directly; other convs gather each row into `row` first ([`im2col_row`]).
///
/// # Shapes
/// - `x`: `C_in` planes `[H, W]`; `buf`: at least `n.div_ceil(NR) · kc · NR`; `row`: `[n]`
#[allow(clippy::too_many_arguments)]
fn pack_b<const NR: usize>(g: &Geometry, x: Planes<'_>, p0: usize, n: usize, k0: usize, kc: usize, buf: &mut [f32], row: &mut [f32]) {
    let khw = g.kh * g.kw;
    let full = n / NR;
    for r in 0..kc {
        let kk = k0 + r;
        let src: &[f32] = if g.is_pointwise() {
            &x.plane(kk)[p0..p0 + n]
        } else {
            let (ci, t) = (kk / khw, kk % khw);
            im2col_row(g, x.plane(ci), t / g.kw, t % g.kw, p0, row);
            row
        };
        for q in 0..full {
            let d: &mut [f32; NR] = (&mut buf[(q * kc + r) * NR..(q * kc + r + 1) * NR]).try_into().expect("NR values");
            let s: &[f32; NR] = src[q * NR..(q + 1) * NR].try_into().expect("NR values");
            *d = *s;
        }
        if full * NR < n {
            let d = &mut buf[(full * kc + r) * NR..(full * kc + r + 1) * NR];
            let tail = n - full * NR;
            d[..tail].copy_from_slice(&src[full * NR..]);
            d[tail..].fill(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::balanced;

    /// Evened-out chunks still cover the total, are never larger than asked nor below the
    /// floor, and on a pool of two threads come in an even number where the total allows.
    #[test]
    fn balanced_chunks() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
        pool.install(|| {
            // A 40x40 map in tiles of 512 (512, 512, 512, 64): four tiles of 416 (13 panels).
            assert_eq!(balanced(1600, 512, 32, 1, 128), 416);
            // 80x80 in 2048s: four of 1600.
            assert_eq!(balanced(6400, 2048, 32, 1, 128), 1600);
            // Three chunks become four on two threads; with two images, three per image stay.
            assert_eq!(balanced(300, 100, 1, 1, 1), 75);
            assert_eq!(balanced(300, 100, 1, 2, 1), 100);
            // A 10x10 map: two tiles of 64 would be evener, but the floor keeps one of 128.
            assert_eq!(balanced(100, 128, 32, 1, 32), 64);
            assert_eq!(balanced(100, 128, 32, 1, 128), 128);
            for total in 1..700 {
                for size in [1usize, 7, 32, 96, 128, 512] {
                    for unit in [1, 8, 32] {
                        let size = size.div_ceil(unit) * unit;
                        let b = balanced(total, size, unit, 1, unit);
                        assert!(b % unit == 0 && b >= unit && b <= size, "{total} {size} {unit}: {b}");
                        assert!(balanced(total, size, unit, 1, 4 * unit) >= (4 * unit).min(size), "{total} {size} {unit}: under the floor");
                        assert!(total.div_ceil(b) >= total.div_ceil(size), "{total} {size} {unit}: fewer chunks");
                    }
                }
            }
        });
    }
}

//! The weight gradient of 3x3 stride-1 convs (padding 1) by Winograd `F(3x3, 2x2)`: the
//! direct sum `dW[co, ci, ky, kx] = Σ_images Σ_pixels dY[co, y, x] · X[ci, y + ky - 1, x + kx - 1]`
//! takes 36 multiply-adds per 2x2 block of output pixels and (output, input) channel pair;
//! this takes 16, as 16 dot-product GEMMs of the transformed `dY` and `X` tiles.
//!
//! For one 2x2 tile `g` of `dY` and the 4x4 patch `d` of the zero-padded input under it, the
//! tile's share of `dW[co, ci]` is the 3x3 correlation `Σ_{a,b} g[a, b] · d[a + ky, b + kx]`,
//! which is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` with (Toom-Cook at 0, 1, -1, ∞: the transpose of
//! `F(2x2, 3x3)`'s construction)
//!
//! ```text
//!      | 1  0 -1  0 |       | 1   0  |       | 1  1  1  0 |
//! Bᵀ = | 0  1  1  0 |   G = | ½   ½  |  Aᵀ = | 0  1 -1  0 |
//!      | 0 -1  1  0 |       | ½  -½  |       | 0  1  1  1 |
//!      | 0 -1  0  1 |       | 0   1  |
//! ```
//!
//! Summed over the tiles, `dW[co, ci] = Aᵀ M[co, ci] A` with `M_ξ[co, ci] = Σ_t U_ξ[co, t] ·
//! V_ξ[ci, t]` for the 16 positions `ξ` of the 4x4 transforms (`U = G g Gᵀ` of `dY`'s tiles,
//! `V = Bᵀ d B` of the input's patches): a product of two matrices that both run along the
//! tiles, which is what the dot-product kernels ([`DotKernel`]) compute with neither operand
//! transposed. The transforms are additions and halvings only (exact scalings), so the
//! rounding is that of a few more additions; the tests hold it to an f64 reference.
//!
//! The tiles (`batch · ⌈H/2⌉ · ⌈W/2⌉`) are cut into chunks of whole tile rows whose
//! transforms stay in L2 for their dot products. A task is a group of chunks: for each chunk
//! it splits the input and `dY` rows into phase planes once, then for each row `i` of the 4x4
//! transforms (the positions `4i..4i + 4`) transforms that row of every tile and runs its 4
//! dot products, summing its chunks in order into its own `[16, C_out, C_in]` block. The
//! group count does not depend on the thread count and the blocks are added in order, so the
//! result is the same bits however the tasks are run.

use super::*;
use crate::cpu::simd::multiversion;

/// Whether `g` is a conv [`grad_weight`] can run: 3x3 kernels at stride 1 with padding 1
/// (every 3x3 stride-1 conv in YOLOv8), and `16·C_out·C_in` per-group sums of at most 2^22
/// values (16 MB; 512 x 512 channels: yolov8x's 640-channel convs keep the direct path).
pub(in crate::cpu::conv) fn supports(g: &Geometry) -> bool {
    g.kh == 3 && g.kw == 3 && g.sh == 1 && g.sw == 1 && g.ph == 1 && g.pw == 1 && 16 * g.c_out * g.c_in <= 1 << 22
}

/// Whether [`grad_weight`] is the faster path for `g` at this batch: it [`supports`] it, and
/// the tiles make at least 4 chunks. Fewer would leave a core idle, and the smaller maps'
/// short dot products (a 10x10 map has 30 slots an image) pay their final reductions too
/// often: there the direct dot products over pixels were faster.
pub(in crate::cpu::conv) fn pays(g: &Geometry, batch: usize) -> bool {
    let p = g.w.div_ceil(2) + 1;
    supports(g) && (batch * g.h.div_ceil(2)).div_ceil((CHUNK_SLOTS / p).max(1)) >= 4
}

/// Slots per chunk aimed at: 256, so that a task's buffers (the chunk's phase planes and one
/// row of positions' transforms, about `32·(C_in + C_out)` bytes a slot: 1 MB at 64 -> 64
/// channels) stay in L2 while the dot products stay long enough to pay their final
/// reductions. Measured on an Intel Xeon (2 MB L2), batch 8, against the direct dot products:
/// a 64 -> 64 conv at 40x40 1.4x faster at 256 and 384 slots on one thread, 1.1x at 512, 0.5x
/// at 1024; on both threads 1.25x at 128-256. A 16 -> 16 conv at 80x80 on both threads: level
/// at 256, 0.9x at 512, 0.64x at 1024.
const CHUNK_SLOTS: usize = 256;

/// Groups of chunks at most: each has its own block of sums, added at the end.
const MAX_GROUPS: usize = 8;

/// `dW` (`[C_out, C_in, 3, 3]`) of a conv that [`supports`], with the dot-product kernel `kern`.
///
/// # Shapes
/// - `x`: `[B, C_in, H, W]`, `dy`: `[B, C_out, H, W]`; output `[C_out, C_in, 3, 3]`
pub(in crate::cpu::conv) fn grad_weight(g: &Geometry, batch: usize, x: &[f32], dy: &[f32], kern: DotKernel) -> Vec<f32> {
    grad_weight_chunked(g, batch, x, dy, kern, CHUNK_SLOTS)
}

/// [`grad_weight`] with chunks of about `target` tiles (the tests use small ones to reach
/// several chunks and groups on small inputs).
///
/// Layout: a chunk's rows of the input and of `dY` are first split into their four phase
/// planes (even and odd rows and columns; the input zero-padded), rows of `P = ⌈W/2⌉ + 1`
/// values: tile `(ty, tx)` is slot `ty·P + tx`, and the patch rows and columns it needs are
/// the input's phase planes at slots `t`, `t + 1`, `t + P` and `t + P + 1`. So every
/// transform is a few contiguous vector loops over the chunk's slots, and the phase planes
/// (read four times, once per row of positions) stay in L2. The last slot of each row is no
/// tile: its `dY` side is zero (and its input side is zeroed), so it adds nothing.
pub(in crate::cpu::conv) fn grad_weight_chunked(g: &Geometry, batch: usize, x: &[f32], dy: &[f32], kern: DotKernel, target: usize) -> Vec<f32> {
    assert!(supports(g), "Winograd dW needs a 3x3 stride-1 conv with padding 1");
    g.check(batch, Some(x), None, Some(dy), None);
    let (c_in, c_out, h, w) = (g.c_in, g.c_out, g.h, g.w);
    let mm = c_out * c_in;
    if batch * h * w == 0 || mm == 0 {
        return vec![0.0; mm * 9];
    }
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let p = tw + 1;
    let rows = batch * th;
    // Past MAX_GROUPS chunks, rows per chunk for the next multiple of MAX_GROUPS chunks
    // (rounding can leave a few fewer), so that the groups get about equal shares: 14 chunks
    // had made 7 groups of 2, 4 tasks on one thread and 3 on the other (now 16 chunks).
    let mut rows_per = (target / p).max(1);
    if rows.div_ceil(rows_per) > MAX_GROUPS {
        rows_per = rows.div_ceil(rows.div_ceil(rows_per).next_multiple_of(MAX_GROUPS));
    }
    let chunks = rows.div_ceil(rows_per);
    let groups = chunks.min(MAX_GROUPS);
    let per_group = chunks.div_ceil(groups);
    let ld = (rows_per * p).next_multiple_of(16);
    // Whole kernel blocks: the rows past C_out and C_in stay zero.
    let (co_pad, ci_pad) = (c_out.next_multiple_of(kern.mr), c_in.next_multiple_of(kern.nr));
    let mp = co_pad * ci_pad;
    // A chunk's input phase planes per channel and phase: each image segment of `r` rows
    // takes `(r + 1)·P + 1` slots (the row below, and one zero read by the last spare slot).
    let segs_max = rows_per.div_ceil(th) + 1;
    let xs = (rows_per + segs_max) * p + segs_max;
    let ds = rows_per * p;
    // sums[group][ξ][co][ci] += Σ_t U_ξ[co, t] · V_ξ[ci, t] over the group's tiles.
    let mut sums = par_zeroed(groups * 16 * mp);
    let scratch = || Scratch {
        xq: vec![0f32; c_in * 4 * xs],
        dq: vec![0f32; c_out * 4 * ds],
        v: vec![0f32; 4 * ci_pad * ld],
        u: vec![0f32; 4 * co_pad * ld],
    };
    sums.par_chunks_mut(16 * mp).enumerate().for_each_init(scratch, |sc, (grp, block)| {
        for chunk in grp * per_group..((grp + 1) * per_group).min(chunks) {
            let (r0, r1) = (chunk * rows_per, ((chunk + 1) * rows_per).min(rows));
            let n = (r1 - r0) * p;
            let np = n.next_multiple_of(16);
            // Image segments: (image, first tile row, rows, slot in the chunk, slot in xq).
            let mut segs = Vec::with_capacity(segs_max);
            let (mut row, mut at_x) = (r0, 0);
            while row < r1 {
                let (img, a) = (row / th, row % th);
                let rs = (th - a).min(r1 - row);
                segs.push((img, a, rs, (row - r0) * p, at_x));
                at_x += (rs + 1) * p + 1;
                row += rs;
            }
            for ci in 0..c_in {
                let q = &mut sc.xq[ci * 4 * xs..(ci + 1) * 4 * xs];
                for &(img, a, rs, _, at) in &segs {
                    let src = &x[(img * c_in + ci) * h * w..][..h * w];
                    for py in 0..2 {
                        let (d0, d1) = q[2 * py * xs..(2 * py + 2) * xs].split_at_mut(xs);
                        let len = (rs + 1) * p + 1;
                        input_phases(src, h, w, py, a, p, &mut d0[at..at + len], &mut d1[at..at + len]);
                    }
                }
            }
            for co in 0..c_out {
                let r = &mut sc.dq[co * 4 * ds..(co + 1) * 4 * ds];
                for &(img, a, rs, at, _) in &segs {
                    let src = &dy[(img * c_out + co) * h * w..][..h * w];
                    for py in 0..2 {
                        let (d0, d1) = r[2 * py * ds..(2 * py + 2) * ds].split_at_mut(ds);
                        grad_phases(src, h, w, py, a, p, &mut d0[at..at + rs * p], &mut d1[at..at + rs * p]);
                    }
                }
            }
            for i in 0..4 {
                for &(_, _, rs, at, at_x) in &segs {
                    for ci in 0..c_in {
                        input_rows(&sc.xq[ci * 4 * xs..(ci + 1) * 4 * xs], xs, p, at_x, rs * p, i, &mut sc.v[ci * ld + at..], ci_pad * ld);
                    }
                    for co in 0..c_out {
                        grad_rows(&sc.dq[co * 4 * ds..(co + 1) * 4 * ds], ds, at, rs * p, i, &mut sc.u[co * ld + at..], co_pad * ld);
                    }
                }
                // Zeros past the chunk's slots, so that whole vectors run to `np`, and in the
                // input side's spare slots.
                for line in sc.v.chunks_exact_mut(ld).chain(sc.u.chunks_exact_mut(ld)) {
                    line[n..np].fill(0.0);
                }
                for line in sc.v.chunks_exact_mut(ld) {
                    for slot in (tw..n).step_by(p) {
                        line[slot] = 0.0;
                    }
                }
                for j in 0..4 {
                    let (uj, vj) = (&sc.u[j * co_pad * ld..(j + 1) * co_pad * ld], &sc.v[j * ci_pad * ld..(j + 1) * ci_pad * ld]);
                    let mj = &mut block[(4 * i + j) * mp..(4 * i + j + 1) * mp];
                    for co0 in (0..c_out).step_by(kern.mr) {
                        for ci0 in (0..c_in).step_by(kern.nr) {
                            let (a, b, c) = (uj[co0 * ld..].as_ptr(), vj[ci0 * ld..].as_ptr(), mj[co0 * ci_pad + ci0..].as_mut_ptr());
                            // SAFETY: a is mr rows of np values ld apart inside uj (co0 + mr <=
                            // co_pad, np <= ld), b nr rows inside vj likewise, c mr rows of nr
                            // values ci_pad apart inside mj.
                            unsafe { kern.run(np, a, ld, b, ld, c, ci_pad) };
                        }
                    }
                }
            }
        }
    });
    // dW[co, ci] = Aᵀ (Σ_groups M) A.
    let mut dw = vec![0f32; mm * 9];
    dw.par_chunks_mut(c_in * 9).enumerate().for_each(|(co, dst)| {
        for (ci, out) in dst.chunks_exact_mut(9).enumerate() {
            let mut m = [[0f32; 4]; 4];
            for grp in 0..groups {
                for (xi, v) in m.as_flattened_mut().iter_mut().enumerate() {
                    *v += sums[(grp * 16 + xi) * mp + co * ci_pad + ci];
                }
            }
            let r = m.map(|m| [m[0] + m[1] + m[2], m[1] - m[2], m[1] + m[2] + m[3]]);
            for kx in 0..3 {
                out[kx] = r[0][kx] + r[1][kx] + r[2][kx];
                out[3 + kx] = r[1][kx] - r[2][kx];
                out[6 + kx] = r[1][kx] + r[2][kx] + r[3][kx];
            }
        }
    });
    dw
}

/// A task's buffers: a chunk's phase planes and one row of positions' transforms.
struct Scratch {
    xq: Vec<f32>,
    dq: Vec<f32>,
    v: Vec<f32>,
    u: Vec<f32>,
}

multiversion! {
    /// Phase planes `(py, 0)` and `(py, 1)` of the zero-padded input plane `src` (`[h, w]`)
    /// for tile rows `a..`: `d0[r·P + tx] = X[2(a + r) + py - 1][2tx - 1]` and `d1[r·P + tx] =
    /// X[2(a + r) + py - 1][2tx]` (zero outside), for as many rows as they hold whole, zeros
    /// after.
    #[allow(clippy::too_many_arguments)]
    fn input_phases(src: &[f32], h: usize, w: usize, py: usize, a: usize, p: usize, d0: &mut [f32], d1: &mut [f32]) {
        let whole = d0.len() / p * p;
        d0[whole..].fill(0.0);
        d1[whole..].fill(0.0);
        for (r, (r0, r1)) in d0.chunks_exact_mut(p).zip(d1.chunks_exact_mut(p)).enumerate() {
            let y = (2 * (a + r) + py) as isize - 1;
            if y < 0 || y >= h as isize {
                r0.fill(0.0);
                r1.fill(0.0);
                continue;
            }
            let line = &src[y as usize * w..][..w];
            // Padded column 2tx (X column 2tx - 1) to d0, 2tx + 1 to d1.
            r0[0] = 0.0;
            for ((e, o), pair) in r0[1..].iter_mut().zip(r1.iter_mut()).zip(line.chunks_exact(2)) {
                *o = pair[0];
                *e = pair[1];
            }
            let done = w / 2;
            r1[done..].fill(0.0);
            r0[done + 1..].fill(0.0);
            if w % 2 == 1 {
                r1[done] = line[w - 1];
            }
        }
    }
}

multiversion! {
    /// Phase planes `(py, 0)` and `(py, 1)` of the output-gradient plane `src` for tile rows
    /// `a..`: `d0[r·P + tx] = dY[2(a + r) + py][2tx]`, `d1[..] = dY[..][2tx + 1]` (zero outside
    /// and in each row's spare slot).
    #[allow(clippy::too_many_arguments)]
    fn grad_phases(src: &[f32], h: usize, w: usize, py: usize, a: usize, p: usize, d0: &mut [f32], d1: &mut [f32]) {
        for (r, (r0, r1)) in d0.chunks_exact_mut(p).zip(d1.chunks_exact_mut(p)).enumerate() {
            let y = 2 * (a + r) + py;
            if y >= h {
                r0.fill(0.0);
                r1.fill(0.0);
                continue;
            }
            let line = &src[y * w..][..w];
            for ((e, o), pair) in r0.iter_mut().zip(r1.iter_mut()).zip(line.chunks_exact(2)) {
                *e = pair[0];
                *o = pair[1];
            }
            let done = w / 2;
            r0[done..].fill(0.0);
            r1[done..].fill(0.0);
            if w % 2 == 1 {
                r0[done] = line[w - 1];
            }
        }
    }
}

multiversion! {
    /// Row `i` of `Bᵀ d B` for `len` slots from slot `s0` of one input channel's phase planes
    /// `q` (four planes `xs` apart, rows `p` long): `V_{4i+j}` goes to `out[j·stride + t]`.
    /// Row `i` of `Bᵀ d` is `±` two of the patch's rows (phase row planes at slot offsets 0 and
    /// `p`), its even and odd columns `E`, `O`; the columns of `B` then take `E`, `O` at `t`
    /// and `t + 1`.
    fn input_rows(q: &[f32], xs: usize, p: usize, s0: usize, len: usize, i: usize, out: &mut [f32], stride: usize) {
        // (phase row, slot offset, sign) of the two rows: d0 = (0, 0), d1 = (1, 0), d2 = (0, p),
        // d3 = (1, p).
        let ((ra, oa), (rb, ob, sb)) = match i {
            0 => ((0, 0), (0, p, -1.0f32)),
            1 => ((1, 0), (0, p, 1.0)),
            2 => ((0, p), (1, 0, -1.0)),
            _ => ((1, p), (1, 0, -1.0)),
        };
        let plane = |r: usize, c: usize, o: usize| &q[(2 * r + c) * xs + s0 + o..][..len + 1];
        let (ae, be, ao, bo) = (plane(ra, 0, oa), plane(rb, 0, ob), plane(ra, 1, oa), plane(rb, 1, ob));
        let (o0, rest) = out.split_at_mut(stride);
        let (o1, rest) = rest.split_at_mut(stride);
        let (o2, o3) = rest.split_at_mut(stride);
        let (o0, o1, o2, o3) = (&mut o0[..len], &mut o1[..len], &mut o2[..len], &mut o3[..len]);
        for t in 0..len {
            let e0 = ae[t] + sb * be[t];
            let e1 = ae[t + 1] + sb * be[t + 1];
            let d0 = ao[t] + sb * bo[t];
            let d1 = ao[t + 1] + sb * bo[t + 1];
            o0[t] = e0 - e1;
            o1[t] = d0 + e1;
            o2[t] = e1 - d0;
            o3[t] = d1 - d0;
        }
    }
}

multiversion! {
    /// Row `i` of `G g Gᵀ` for `len` slots from slot `s0` of one output-gradient channel's
    /// phase planes `r` (four planes `ds` apart): `U_{4i+j}` goes to `out[j·stride + t]`.
    fn grad_rows(r: &[f32], ds: usize, s0: usize, len: usize, i: usize, out: &mut [f32], stride: usize) {
        let plane = |k: usize| &r[k * ds + s0..][..len];
        let (e_top, o_top, e_bot, o_bot) = (plane(0), plane(1), plane(2), plane(3));
        let (o0, rest) = out.split_at_mut(stride);
        let (o1, rest) = rest.split_at_mut(stride);
        let (o2, o3) = rest.split_at_mut(stride);
        let (o0, o1, o2, o3) = (&mut o0[..len], &mut o1[..len], &mut o2[..len], &mut o3[..len]);
        // Row i of G g: the top row, half their sum or difference, or the bottom row.
        let (sa, sb) = match i {
            0 => (1.0f32, 0.0f32),
            1 => (0.5, 0.5),
            2 => (0.5, -0.5),
            _ => (0.0, 1.0),
        };
        for t in 0..len {
            let e = sa * e_top[t] + sb * e_bot[t];
            let d = sa * o_top[t] + sb * o_bot[t];
            o0[t] = e;
            o1[t] = 0.5 * (e + d);
            o2[t] = 0.5 * (e - d);
            o3[t] = d;
        }
    }
}

//! The artist half-step as passes over blocks of users that scatter each
//! user's products into the artists' accumulators: the same
//! conjugate-gradient steps as the row half-step, with the large user
//! matrix read in order.

use rayon::prelude::*;

use super::cg::{scatter_run, CgKernel};
use super::AlsParams;
use crate::kernels::prefetch_floats;
use crate::linalg::{axpy, dot, gemm_acc, gram, split_lengths, Floats};
use crate::sparse::Csr;

/// Fixed parts of the user blocks in a scatter pass, each with its own
/// artist accumulators, summed in order: the result repeats bit for bit
/// whatever the thread count.
const SCATTER_PARTS: usize = 8;

/// Whether the artist half-step runs as scatter passes: while one part's
/// accumulators (`items × f` floats) fit in 32 MiB.
pub(super) fn scatter_fits(items: usize, f: usize) -> bool {
    items.saturating_mul(f).saturating_mul(4) <= 32 << 20
}

/// The artist half-step with the same conjugate-gradient steps as
/// [`half_step`], run for all artists in lock step, so that each pass
/// visits the nonzeros block of users by block of users (`ub`) instead of
/// artist by artist.
///
/// Each artist's CG needs `Σ_u (c_ui − 1) x_u x_uᵀ p_i` per step. By
/// artist rows that is a visit to a scattered 256-byte user row per
/// nonzero, out of a user matrix far larger than the caches (83% of an
/// iteration on 500 k users × 4 000 artists). By blocks of users, the
/// block's rows of `X` are read in order into the cache, and within the
/// block the nonzeros are visited artist by artist: `p_i` and the run's
/// sum stay in registers and the artist's accumulator is touched once a
/// block. (Visiting each user's nonzeros in turn instead read and wrote a
/// 256-byte accumulator row per nonzero, out of 1 MiB of accumulators and
/// 1 MiB of `p`, more than a core's L2.) Same arithmetic, summed in
/// another order.
pub(super) fn half_step_scatter(y: &mut [f32], x: &[f32], ub: &UserBlocks, params: &AlsParams, work: &mut ScatterWork) {
    let f = params.factors;
    let mut xtx = gram(x, ub.users, f);
    for d in 0..f {
        xtx[d * f + d] += params.regularization;
    }
    let kernel = CgKernel::best(f);
    // r = b − A y: the pass gives Σ_u (c − (c − 1) x_uᵀ y_i) x_u.
    // (XᵀX + λI is symmetric, so the rows' products are one GEMM.)
    let items = ub.items;
    let ScatterWork { parts, r, p, ap } = work;
    scatter_pass::<true>(x, ub, y, f, kernel, parts, r);
    gemm_acc(-1.0, y, &xtx, r, items, f, f);
    p.copy_from_slice(r);
    let mut rsold: Vec<f32> = r.par_chunks(f).map(|ri| dot(ri, ri)).collect();
    let mut active: Vec<bool> = rsold.iter().map(|&v| v >= 1e-20).collect();
    for _ in 0..params.cg_steps {
        if !active.contains(&true) {
            break;
        }
        scatter_pass::<false>(x, ub, p, f, kernel, parts, ap);
        gemm_acc(1.0, p, &xtx, ap, items, f, f);
        y.par_chunks_mut(f)
            .zip(r.par_chunks_mut(f))
            .zip(p.par_chunks_mut(f))
            .zip(ap.par_chunks_mut(f))
            .zip(rsold.par_iter_mut())
            .zip(active.par_iter_mut())
            .for_each(|(((((yi, ri), pi), api), rs), on)| {
                if !*on {
                    return;
                }
                let pap = dot(pi, api);
                if pap <= 0.0 {
                    *on = false;
                    return;
                }
                let a = *rs / pap;
                axpy(a, pi, yi);
                axpy(-a, api, ri);
                let rsnew = dot(ri, ri);
                if rsnew < 1e-20 {
                    *on = false;
                    return;
                }
                let beta = rsnew / *rs;
                for d in 0..f {
                    pi[d] = ri[d] + beta * pi[d];
                }
                *rs = rsnew;
            });
    }
}

/// How the artist half-step reads the confidences: by artist rows (the
/// transpose) or by the scatter passes' blocks of users.
pub(super) enum ArtistSide {
    Rows(Csr),
    Blocks(UserBlocks),
}

/// Users per block of a scatter pass at `f` factors: as many as have
/// 1 MiB of rows (4 096 at 64 factors), at least 1 024 and at most the
/// 65 536 a 16-bit index numbers. The block's rows stay in the core's
/// 2 MiB L2 while each artist's run of nonzeros in the block is summed
/// in registers, and the larger the block, the longer the runs: every run
/// also reads the artist's `p_i` and adds to its accumulator, which with
/// many artists come from beyond the L2. On the kernel benchmark (100 000
/// users × 20 000 artists, 3.8 M nonzeros, runs of about two nonzeros in
/// blocks of 1 024) blocks of 4 096 took an iteration from 0.25–0.28 s to
/// 0.18–0.22 s; 8 192 gave 0.19–0.21 s and 16 384 0.22–0.24 s. On the
/// medium shape (500 000 × 4 000) the block size moved nothing beyond the
/// noise (0.74–0.76 s).
pub(super) fn scatter_block(f: usize) -> usize {
    ((1 << 20) / (4 * f.max(1))).clamp(1024, 1 << 16)
}

/// The nonzeros of the users × artists matrix in fixed blocks of users,
/// artist-major within each block: for each block, one run of
/// (user in the block, confidence) per artist it played, users in order.
/// Built once per fit; the scatter passes read it instead of the rows.
#[derive(Debug, Clone)]
pub(super) struct UserBlocks {
    pub(super) users: usize,
    pub(super) items: usize,
    pub(super) block: usize,
    /// Runs of block `b`: `block_runs[b]..block_runs[b + 1]`.
    pub(super) block_runs: Vec<usize>,
    pub(super) run_artist: Vec<u32>,
    /// Run `r` is `run_bounds[r]..run_bounds[r + 1]` of `user` and `conf`.
    pub(super) run_bounds: Vec<usize>,
    pub(super) user: Vec<u16>,
    pub(super) conf: Vec<f32>,
}

impl UserBlocks {
    pub(super) fn new(cu: &Csr, block: usize) -> Self {
        assert!((1..=1 << 16).contains(&block), "a block's users are numbered in 16 bits");
        let (users, items) = (cu.rows(), cu.cols());
        // Each block's nonzeros go to their place in `user` and `conf` (the
        // block's span of the CSR), in parallel, by a counting sort on the
        // artist: users stay in order within each run.
        let nb = users.div_ceil(block);
        let indptr: Vec<usize> = (0..=nb).map(|b| cu.row_start((b * block).min(users))).collect();
        let mut user = vec![0u16; cu.nnz()];
        let mut conf = vec![0f32; cu.nnz()];
        let lens = || indptr.windows(2).map(|w| w[1] - w[0]);
        let spans: Vec<(&mut [u16], &mut [f32])> =
            split_lengths(&mut user, lens()).into_iter().zip(split_lengths(&mut conf, lens())).collect();
        // Per block: the artists it played, in order, and where each run ends
        // within the block.
        let runs: Vec<(Vec<u32>, Vec<u32>)> = spans
            .into_par_iter()
            .enumerate()
            .map_init(
                || vec![0u32; items + 1],
                |at, (b, (us, cs))| {
                    let (lo, hi) = (b * block, ((b + 1) * block).min(users));
                    at.fill(0);
                    for u in lo..hi {
                        for &i in cu.row(u).0 {
                            at[i as usize + 1] += 1;
                        }
                    }
                    let mut artists = Vec::new();
                    let mut ends = Vec::new();
                    for i in 0..items {
                        if at[i + 1] > 0 {
                            artists.push(i as u32);
                            ends.push(at[i] + at[i + 1]);
                        }
                        at[i + 1] += at[i];
                    }
                    for u in lo..hi {
                        let (idx, vals) = cu.row(u);
                        for (&i, &c) in idx.iter().zip(vals) {
                            let k = at[i as usize] as usize;
                            us[k] = (u - lo) as u16;
                            cs[k] = c;
                            at[i as usize] += 1;
                        }
                    }
                    (artists, ends)
                },
            )
            .collect();
        let (mut block_runs, mut run_artist, mut run_bounds) = (vec![0], Vec::new(), vec![0]);
        for (b, (artists, ends)) in runs.into_iter().enumerate() {
            run_artist.extend_from_slice(&artists);
            run_bounds.extend(ends.iter().map(|&e| indptr[b] + e as usize));
            block_runs.push(run_artist.len());
        }
        UserBlocks { users, items, block, block_runs, run_artist, run_bounds, user, conf }
    }

    pub(super) fn blocks(&self) -> usize {
        self.block_runs.len() - 1
    }
}

/// The artist half-step's buffers, made once per fit and reused by every
/// iteration: the scatter passes' part accumulators, which each pass's sum
/// leaves zeroed for the next, and the CG vectors `r`, `p` and `Ap`
/// (`items × f` each). Made fresh for each pass instead, they were 160 MiB
/// of new pages an iteration on the kernel benchmark's 20 000 artists
/// (eight parts of 5 MiB, four passes), all zeroed by page faults: system
/// time was a sixth to a quarter of a fit's CPU time there.
pub(super) struct ScatterWork {
    pub(super) parts: Vec<Floats>,
    pub(super) r: Floats,
    pub(super) p: Floats,
    pub(super) ap: Floats,
}

impl ScatterWork {
    pub(super) fn new(ub: &UserBlocks, f: usize) -> Self {
        let n = ub.items * f;
        ScatterWork {
            parts: (0..scatter_parts(ub.blocks()).1.len()).map(|_| Floats::zeroed(n)).collect(),
            r: Floats::zeroed(n),
            p: Floats::zeroed(n),
            ap: Floats::zeroed(n),
        }
    }
}

/// The blocks a part of a scatter pass over `blocks` blocks takes, and the
/// first block of each part.
fn scatter_parts(blocks: usize) -> (usize, Vec<usize>) {
    let per = crate::linalg::part_rows(blocks, SCATTER_PARTS, 1);
    (per, (0..blocks).step_by(per.max(1)).collect())
}

/// Floats a task of a scatter pass's sum adds up.
const SUM_CHUNK: usize = 4096;

/// One pass over every nonzero, block by block of users, into `out`
/// (`items × f`): for artist `i`, `Σ_u t_ui x_u` with
/// `t = c − (c − 1) x_uᵀ v_i` when `RESIDUAL`, else `t = (c − 1) x_uᵀ v_i`.
/// Fixed parts of the blocks in parallel, each into its own accumulators
/// in `parts` (zeros on entry, at least one per part), summed in order;
/// the sum leaves them zeroed again.
pub(super) fn scatter_pass<const RESIDUAL: bool>(
    x: &[f32],
    ub: &UserBlocks,
    v: &[f32],
    f: usize,
    kernel: CgKernel,
    parts: &mut [Floats],
    out: &mut [f32],
) {
    let (nb, items, bs) = (ub.blocks(), ub.items, ub.block);
    let (per, starts) = scatter_parts(nb);
    assert!(parts.len() >= starts.len(), "one accumulator per part");
    assert_eq!(out.len(), items * f, "the pass writes items × f floats");
    let parts = &mut parts[..starts.len()];
    parts.par_iter_mut().zip(&starts).for_each(|(acc, &start)| {
        debug_assert_eq!(acc.len(), items * f);
        let mut sum = vec![0f32; f];
        for b in start..(start + per).min(nb) {
            let xb = &x[b * bs * f..((b + 1) * bs).min(ub.users) * f];
            // Fetch the next block's rows while this one is summed.
            if b + 1 < nb {
                let next = &x[(b + 1) * bs * f..((b + 2) * bs).min(ub.users) * f];
                for row in next.chunks(f) {
                    prefetch_floats(row.as_ptr(), row.len());
                }
            }
            let (first, last) = (ub.block_runs[b], ub.block_runs[b + 1]);
            let block_end = ub.run_bounds[last];
            for r in first..last {
                if r + 2 < last {
                    let next = ub.run_artist[r + 2] as usize * f;
                    prefetch_floats(v[next..].as_ptr(), f);
                    prefetch_floats(acc[next..].as_ptr(), f);
                }
                let (i, from, to) = (ub.run_artist[r] as usize * f, ub.run_bounds[r], ub.run_bounds[r + 1]);
                // The kernel reads `to − from` users and fetches ahead
                // into the block's next runs.
                let (users, conf) = (&ub.user[from..block_end], &ub.conf[from..to]);
                scatter_run::<RESIDUAL>(xb, users, conf, &v[i..i + f], &mut acc[i..i + f], &mut sum, kernel);
            }
        }
    });
    // Chunk `c` of every part, in part order, for the chunk's task.
    let mut chunks: Vec<Vec<&mut [f32]>> = (0..out.len().div_ceil(SUM_CHUNK)).map(|_| Vec::new()).collect();
    for part in parts.iter_mut() {
        for (c, chunk) in part.chunks_mut(SUM_CHUNK).enumerate() {
            chunks[c].push(chunk);
        }
    }
    out.par_chunks_mut(SUM_CHUNK).zip(chunks.par_iter_mut()).for_each(|(o, from)| {
        let (first, rest) = from.split_first_mut().expect("a pass has a part");
        o.copy_from_slice(first);
        first.fill(0.0);
        for part in rest {
            for (o, a) in o.iter_mut().zip(part.iter_mut()) {
                *o += *a;
                *a = 0.0;
            }
        }
    });
}

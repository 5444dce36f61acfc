//! The conjugate-gradient row solve and the scatter pass's run.
//!
//! Each is written twice, and only twice: a plain version over slices,
//! the readable reference (the textbook algorithm, `implicit`'s
//! `least_squares_cg`), and one register-held version generic over
//! [`pulp::Simd`], which the AVX2 and the AVX-512 builds share. The
//! register-held version keeps a factor row as `N` SIMD registers, so `p`,
//! `Ap`, `r` and `x` stay in registers across a whole pass over a row's
//! nonzeros; it runs where the factor count is a multiple of 16 up to 128
//! on a CPU with AVX2 (training pads other counts up to one, see
//! `padded_factors`), and the plain version everywhere else.

use pulp::{Simd, WithSimd};

use crate::kernels::{prefetch_floats, prefetch_row, Isa, AHEAD};
use crate::linalg::{axpy, dot};

/// The most factors the register-held bodies are compiled for.
const MAX_ROW_FACTORS: usize = 128;

/// Which body a row solve (or scatter run) takes, chosen once per
/// half-step from the CPU and the factor count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CgKernel {
    isa: Isa,
    rows: bool,
}

impl CgKernel {
    /// The plain slice loops.
    #[cfg(test)]
    pub(super) const PLAIN: CgKernel = CgKernel { isa: Isa::Portable, rows: false };

    /// The fastest body this CPU runs for `f` factors.
    pub(super) fn best(f: usize) -> Self {
        Self::on(Isa::best(), f)
    }

    /// The body for `f` factors on `isa`: register-held when `isa` has
    /// SIMD registers and `f` is a multiple of 16 up to 128.
    pub(super) fn on(isa: Isa, f: usize) -> Self {
        let rows = isa != Isa::Portable && f.is_multiple_of(16) && (16..=MAX_ROW_FACTORS).contains(&f);
        CgKernel { isa, rows }
    }

    /// Whether it holds the CG vectors in registers.
    pub(super) fn register_blocked(self) -> bool {
        self.rows
    }
}

/// `steps` conjugate-gradient steps on
/// `(YᵀY + λI + Σ_i (c_i − 1) y_i y_iᵀ) x = Σ_i c_i y_i`, from the current
/// `x`. `ytyr` is `YᵀY + λI`, or when `diag` its eigenvalues plus `λ`
/// (`f`) followed by its eigenvectors `Q` (`f × f`, row-major,
/// `YᵀY = QΛQᵀ`), with `y` in that basis: `x` is turned to it as it is
/// loaded (`xᵀ ← xᵀQ`) and stored there (register-held bodies only: see
/// `rotates`). `scratch` holds at least `3f` floats.
#[allow(clippy::too_many_arguments)]
pub(super) fn solve_row_cg(
    ytyr: &[f32],
    y: &[f32],
    idx: &[u32],
    conf: &[f32],
    f: usize,
    steps: usize,
    x: &mut [f32],
    scratch: &mut [f32],
    kernel: CgKernel,
    diag: bool,
) {
    assert_eq!(x.len(), f, "x is one row");
    if kernel.rows {
        let need = if diag { f + f * f } else { f * f };
        assert!(ytyr.len() >= need && scratch.len() >= f, "the shared term and scratch are too short");
        kernel.isa.run(RowSolve { ytyr, y, idx, conf, steps, x, pmem: &mut scratch[..f], diag });
    } else {
        assert!(!diag, "a diagonal YᵀY needs a register-held body");
        cg_plain(ytyr, y, idx, conf, f, steps, x, scratch);
    }
}

/// The plain conjugate-gradient steps over slices (see [`solve_row_cg`]).
#[allow(clippy::too_many_arguments)]
fn cg_plain(
    ytyr: &[f32],
    y: &[f32],
    idx: &[u32],
    conf: &[f32],
    f: usize,
    steps: usize,
    x: &mut [f32],
    scratch: &mut [f32],
) {
    let (r, rest) = scratch.split_at_mut(f);
    let (p, ap) = rest.split_at_mut(f);
    let ap = &mut ap[..f];
    // r = b − A x
    for d in 0..f {
        r[d] = -dot(&ytyr[d * f..(d + 1) * f], x);
    }
    for (&i, &c) in idx.iter().zip(conf) {
        let yi = &y[i as usize * f..(i as usize + 1) * f];
        axpy(c - (c - 1.0) * dot(yi, x), yi, r);
    }
    p.copy_from_slice(r);
    let mut rsold = dot(r, r);
    if rsold < 1e-20 {
        return;
    }
    for _ in 0..steps {
        for d in 0..f {
            ap[d] = dot(&ytyr[d * f..(d + 1) * f], p);
        }
        for (&i, &c) in idx.iter().zip(conf) {
            let yi = &y[i as usize * f..(i as usize + 1) * f];
            axpy((c - 1.0) * dot(yi, p), yi, ap);
        }
        let pap = dot(p, ap);
        if pap <= 0.0 {
            break;
        }
        let a = rsold / pap;
        axpy(a, p, x);
        axpy(-a, ap, r);
        let rsnew = dot(r, r);
        if rsnew < 1e-20 {
            break;
        }
        let beta = rsnew / rsold;
        for d in 0..f {
            p[d] = r[d] + beta * p[d];
        }
        rsold = rsnew;
    }
}

/// Calls `$body::<S, N, ...>` with `N = f / S::F32_LANES` registers a
/// row, for the factor counts the register-held bodies are compiled for
/// (16 to 128 in steps of 16, on 8 or 16 lanes).
macro_rules! by_registers {
    ($n:expr, $go:ident) => {
        match $n {
            1 => $go!(1),
            2 => $go!(2),
            3 => $go!(3),
            4 => $go!(4),
            5 => $go!(5),
            6 => $go!(6),
            7 => $go!(7),
            8 => $go!(8),
            10 => $go!(10),
            12 => $go!(12),
            14 => $go!(14),
            16 => $go!(16),
            n => unreachable!("no register-held body for {n} registers a row"),
        }
    };
}

/// One row solve's arguments, run by [`Isa::run`].
struct RowSolve<'a> {
    ytyr: &'a [f32],
    y: &'a [f32],
    idx: &'a [u32],
    conf: &'a [f32],
    steps: usize,
    x: &'a mut [f32],
    pmem: &'a mut [f32],
    diag: bool,
}

impl WithSimd for RowSolve<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let n = self.x.len() / S::F32_LANES;
        macro_rules! go {
            ($n:literal) => {
                if self.diag {
                    cg_rows::<S, $n, true>(s, self)
                } else {
                    cg_rows::<S, $n, false>(s, self)
                }
            };
        }
        by_registers!(n, go)
    }
}

/// A factor row held as `N` SIMD registers.
type Row<S, const N: usize> = [<S as Simd>::f32s; N];

#[inline(always)]
fn load<S: Simd, const N: usize>(a: &[f32]) -> Row<S, N> {
    let (v, _) = S::as_simd_f32s(&a[..N * S::F32_LANES]);
    std::array::from_fn(|k| v[k])
}

#[inline(always)]
fn store<S: Simd, const N: usize>(r: &Row<S, N>, a: &mut [f32]) {
    let (v, _) = S::as_mut_simd_f32s(&mut a[..N * S::F32_LANES]);
    v.copy_from_slice(r);
}

/// `Σ a_i b_i` in two chains.
#[inline(always)]
fn dot_rows<S: Simd, const N: usize>(s: S, a: &Row<S, N>, b: &Row<S, N>) -> f32 {
    let (mut s0, mut s1) = (s.mul_f32s(a[0], b[0]), s.splat_f32s(0.0));
    for k in 1..N {
        if k % 2 == 1 {
            s1 = s.mul_add_e_f32s(a[k], b[k], s1);
        } else {
            s0 = s.mul_add_e_f32s(a[k], b[k], s0);
        }
    }
    s.reduce_sum_f32s(s.add_f32s(s0, s1))
}

/// `acc += a · x`.
#[inline(always)]
fn axpy_rows<S: Simd, const N: usize>(s: S, a: f32, x: &Row<S, N>, acc: &mut Row<S, N>) {
    let va = s.splat_f32s(a);
    for (v, xv) in acc.iter_mut().zip(x) {
        *v = s.mul_add_e_f32s(va, *xv, *v);
    }
}

/// `M v` for a symmetric `f × f` row-major `m`, as `Σ_d v_d · m_d` (no
/// horizontal sums).
#[inline(always)]
fn symv<S: Simd, const N: usize>(s: S, m: &[f32], v: &[f32]) -> Row<S, N> {
    let f = N * S::F32_LANES;
    let (m, v) = (&m[..f * f], &v[..f]);
    let mut acc = [s.splat_f32s(0.0); N];
    for (d, &vd) in v.iter().enumerate() {
        axpy_rows(s, vd, &load::<S, N>(&m[d * f..d * f + f]), &mut acc);
    }
    acc
}

/// `G v` for the shared part `G = YᵀY + λI` of a row's system, `v` in
/// memory (`vm`) and in registers (`vr`): `G` whole, or when `DIAG` its
/// diagonal (the first `f` floats of `g`).
#[inline(always)]
fn gram_times<S: Simd, const N: usize, const DIAG: bool>(s: S, g: &[f32], vm: &[f32], vr: &Row<S, N>) -> Row<S, N> {
    if DIAG {
        let mut out = load::<S, N>(g);
        for (o, vk) in out.iter_mut().zip(vr) {
            *o = s.mul_f32s(*o, *vk);
        }
        out
    } else {
        symv::<S, N>(s, g, vm)
    }
}

/// [`solve_row_cg`]'s steps with `f = N · lanes` and the vectors in
/// registers (`p` also in `pmem`, for the dense product to read back).
#[inline(always)]
fn cg_rows<S: Simd, const N: usize, const DIAG: bool>(s: S, job: RowSolve<'_>) {
    let RowSolve { ytyr, y, idx, conf, steps, x, pmem, .. } = job;
    let f = N * S::F32_LANES;
    let zero = s.splat_f32s(0.0);
    let mut xr = if DIAG { symv::<S, N>(s, &ytyr[f..f + f * f], x) } else { load::<S, N>(x) };
    let mut r = gram_times::<S, N, DIAG>(s, ytyr, x, &xr);
    for v in r.iter_mut() {
        *v = s.sub_f32s(zero, *v);
    }
    for (j, (&i, &c)) in idx.iter().zip(conf).enumerate() {
        prefetch_row(y, idx, j + AHEAD, f);
        let yi = load::<S, N>(&y[i as usize * f..(i as usize + 1) * f]);
        axpy_rows(s, c - (c - 1.0) * dot_rows(s, &yi, &xr), &yi, &mut r);
    }
    let mut p = r;
    let mut rsold = dot_rows(s, &r, &r);
    if rsold < 1e-20 {
        store::<S, N>(&xr, x);
        return;
    }
    for _ in 0..steps {
        if !DIAG {
            // The dense product reads `p` back one float at a time.
            store::<S, N>(&p, pmem);
        }
        let mut ap = gram_times::<S, N, DIAG>(s, ytyr, pmem, &p);
        for (j, (&i, &c)) in idx.iter().zip(conf).enumerate() {
            prefetch_row(y, idx, j + AHEAD, f);
            let yi = load::<S, N>(&y[i as usize * f..(i as usize + 1) * f]);
            axpy_rows(s, (c - 1.0) * dot_rows(s, &yi, &p), &yi, &mut ap);
        }
        let pap = dot_rows(s, &p, &ap);
        if pap <= 0.0 {
            break;
        }
        let a = rsold / pap;
        axpy_rows(s, a, &p, &mut xr);
        axpy_rows(s, -a, &ap, &mut r);
        let rsnew = dot_rows(s, &r, &r);
        if rsnew < 1e-20 {
            break;
        }
        let mut np = r;
        axpy_rows(s, rsnew / rsold, &p, &mut np);
        p = np;
        rsold = rsnew;
    }
    store::<S, N>(&xr, x);
}

/// One artist's run of nonzeros in a block of users, in a scatter pass of
/// the artist half-step (see `scatter`): for each `(u, c)`, with
/// `d = x_uᵀ v`, it adds `t · x_u` to a sum, where `t = c − (c − 1) d`
/// when `RESIDUAL`, else `t = (c − 1) d`; then `acc += sum`. `users` may
/// run on past the run (the block's next runs, whose rows are fetched
/// ahead); the run is as long as `conf`. `sum` is `f` floats of scratch
/// for the plain body.
pub(super) fn scatter_run<const RESIDUAL: bool>(
    xb: &[f32],
    users: &[u16],
    conf: &[f32],
    v: &[f32],
    acc: &mut [f32],
    sum: &mut [f32],
    kernel: CgKernel,
) {
    let f = v.len();
    assert!(acc.len() == f && users.len() >= conf.len(), "acc is one row and every nonzero has a user");
    if kernel.rows {
        kernel.isa.run(ScatterRun::<RESIDUAL> { xb, users, conf, v, acc });
        return;
    }
    sum.fill(0.0);
    for (&u, &c) in users.iter().zip(conf) {
        let xu = &xb[u as usize * f..(u as usize + 1) * f];
        let d = dot(xu, v);
        let t = if RESIDUAL { c - (c - 1.0) * d } else { (c - 1.0) * d };
        axpy(t, xu, sum);
    }
    axpy(1.0, sum, acc);
}

/// One scatter run's arguments, run by [`Isa::run`].
struct ScatterRun<'a, const RESIDUAL: bool> {
    xb: &'a [f32],
    users: &'a [u16],
    conf: &'a [f32],
    v: &'a [f32],
    acc: &'a mut [f32],
}

impl<const RESIDUAL: bool> WithSimd for ScatterRun<'_, RESIDUAL> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let n = self.v.len() / S::F32_LANES;
        macro_rules! go {
            ($n:literal) => {
                scatter_rows::<S, $n, RESIDUAL>(s, self)
            };
        }
        by_registers!(n, go)
    }
}

/// [`scatter_run`] with `v` and the run's sum in registers and the
/// block's rows read from cache, so `acc` is read and written once a run,
/// not once a nonzero.
#[inline(always)]
fn scatter_rows<S: Simd, const N: usize, const RESIDUAL: bool>(s: S, job: ScatterRun<'_, RESIDUAL>) {
    let ScatterRun { xb, users, conf, v, acc } = job;
    let f = N * S::F32_LANES;
    let vr = load::<S, N>(v);
    let mut sum = [s.splat_f32s(0.0); N];
    for (j, (&u, &c)) in users.iter().zip(conf).enumerate() {
        // `users` runs on past this run to the block's end.
        if let Some(&a) = users.get(j + AHEAD) {
            prefetch_floats(xb.as_ptr().wrapping_add(a as usize * f), f);
        }
        let at = u as usize * f;
        let xu = load::<S, N>(&xb[at..at + f]);
        let d = dot_rows(s, &xu, &vr);
        let t = if RESIDUAL { c - (c - 1.0) * d } else { (c - 1.0) * d };
        axpy_rows(s, t, &xu, &mut sum);
    }
    let mut a = load::<S, N>(acc);
    for (a, v) in a.iter_mut().zip(&sum) {
        *a = s.add_f32s(*a, *v);
    }
    store::<S, N>(&a, acc);
}

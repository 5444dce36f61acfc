//! The one module of the core with `unsafe` code and `std::arch`, each
//! block behind a safe function and with a `SAFETY` note:
//!
//! - [`Isa`]: the SIMD instruction set the row kernels run, detected once.
//!   Its AVX2 and AVX-512 values carry pulp's `V3` and `V4` tokens, which
//!   exist only on a CPU that has those instructions, so the bodies
//!   written once against [`pulp::Simd`] (the ALS row solves in
//!   `als::cg`, the slice [`dot`] and [`axpy`]) are compiled for each and
//!   run safely.
//! - [`nearest`]: the AVX-512 micro-kernels of the k-means assignment
//!   and seeding, hand-written (a BLIS-style tile with lane-wise minima).
//! - prefetch hints, SGEMM through matrixmultiply, cache-line buffers and
//!   the disjoint parallel writes of the sparse build.
//!
//! The rest of the crate denies `unsafe_code`; the other crates forbid it.
#![allow(unsafe_code)]

mod gemm;
mod memory;
#[cfg(target_arch = "x86_64")]
pub mod nearest;
mod prefetch;

pub use gemm::sgemm;
#[cfg(test)]
pub(crate) use memory::FILL_PART;
pub use memory::{par_fill_with, par_filled, Floats, PlaceWriter, Places};
pub use prefetch::{prefetch, prefetch_floats, prefetch_row, AHEAD};

use pulp::{Simd, WithSimd};

/// pulp's AVX-512 token: a value exists only on a CPU with AVX-512.
#[cfg(target_arch = "x86_64")]
pub type Avx512 = pulp::x86::V4;

/// No AVX-512 off x86-64: a type with no values.
#[cfg(not(target_arch = "x86_64"))]
#[derive(Debug, Clone, Copy)]
pub enum Avx512 {}

/// The SIMD instruction set a kernel runs on, with the token that proves
/// the CPU has it.
#[derive(Debug, Clone, Copy)]
pub enum Isa {
    /// No SIMD kernels: the portable loops.
    Portable,
    /// AVX2 + FMA, 8 floats a register.
    #[cfg(target_arch = "x86_64")]
    Avx2(pulp::x86::V3),
    /// AVX-512F (with the x86-64-v4 set), 16 floats a register.
    #[cfg(target_arch = "x86_64")]
    Avx512(pulp::x86::V4),
}

impl PartialEq for Isa {
    fn eq(&self, other: &Isa) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Isa {}

impl Isa {
    /// The widest instruction set this CPU runs.
    pub fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(v4) = pulp::x86::V4::try_new() {
                return Isa::Avx512(v4);
            }
            if let Some(v3) = pulp::x86::V3::try_new() {
                return Isa::Avx2(v3);
            }
        }
        Isa::Portable
    }

    /// AVX2 + FMA, when this CPU has it (whatever wider set it also has).
    pub fn avx2() -> Option<Isa> {
        #[cfg(target_arch = "x86_64")]
        if let Some(v3) = pulp::x86::V3::try_new() {
            return Some(Isa::Avx2(v3));
        }
        None
    }

    /// AVX-512's token, when this CPU has it.
    pub fn avx512() -> Option<Avx512> {
        #[cfg(target_arch = "x86_64")]
        return pulp::x86::V4::try_new();
        #[cfg(not(target_arch = "x86_64"))]
        None
    }

    /// Its name: `portable`, `avx2` or `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(_) => "avx2",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(_) => "avx512",
        }
    }

    /// Runs `op`'s generic body compiled for this instruction set
    /// (pulp's one-lane `Scalar` for the portable loops).
    #[inline]
    pub fn run<Op: WithSimd>(self, op: Op) -> Op::Output {
        match self {
            Isa::Portable => Simd::vectorize(pulp::Scalar, op),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(v3) => Simd::vectorize(v3, op),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(v4) => Simd::vectorize(v4, op),
        }
    }

    /// `Σ a_i b_i` over the shorter of the two slices, in four chains.
    pub fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        self.run(Dot(&a[..n], &b[..n]))
    }

    /// `y += a · x` over the shorter of the two slices.
    pub fn axpy(self, a: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        self.run(Axpy(a, &x[..n], &mut y[..n]))
    }
}

/// [`Isa::dot`]'s body.
struct Dot<'a>(&'a [f32], &'a [f32]);

impl WithSimd for Dot<'_> {
    type Output = f32;
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) -> f32 {
        let (a, at) = S::as_simd_f32s(self.0);
        let (b, bt) = S::as_simd_f32s(self.1);
        let zero = s.splat_f32s(0.0);
        let mut acc = [zero; 4];
        let (a4, a1) = a.split_at(a.len() / 4 * 4);
        let (b4, b1) = b.split_at(a4.len());
        for (x, y) in a4.chunks_exact(4).zip(b4.chunks_exact(4)) {
            for k in 0..4 {
                acc[k] = s.mul_add_e_f32s(x[k], y[k], acc[k]);
            }
        }
        for (x, y) in a1.iter().zip(b1) {
            acc[0] = s.mul_add_e_f32s(*x, *y, acc[0]);
        }
        let sum = s.add_f32s(s.add_f32s(acc[0], acc[1]), s.add_f32s(acc[2], acc[3]));
        let mut r = s.reduce_sum_f32s(sum);
        for (x, y) in at.iter().zip(bt) {
            r += x * y;
        }
        r
    }
}

/// [`Isa::axpy`]'s body.
struct Axpy<'a>(f32, &'a [f32], &'a mut [f32]);

impl WithSimd for Axpy<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Axpy(a, x, y) = self;
        let va = s.splat_f32s(a);
        let (xs, xt) = S::as_simd_f32s(x);
        let (ys, yt) = S::as_mut_simd_f32s(y);
        for (yv, xv) in ys.iter_mut().zip(xs) {
            *yv = s.mul_add_e_f32s(va, *xv, *yv);
        }
        for (yv, xv) in yt.iter_mut().zip(xt) {
            *yv += a * xv;
        }
    }
}

/// For tests: whether the kernels named `name` (`avx2` or `avx512`) can
/// run here. A test that cannot run them says so on stderr; where
/// `COHORTCAST_REQUIRE_SIMD` names them (`avx2,avx512`), a machine
/// without them fails instead, so a machine that has them cannot skip
/// them by mistake.
#[cfg(test)]
pub(crate) fn kernels_run(name: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    let available = match name {
        "avx2" => Isa::avx2().is_some(),
        "avx512" => Isa::avx512().is_some(),
        other => panic!("no kernels named {other}"),
    };
    #[cfg(not(target_arch = "x86_64"))]
    let available = false;
    let required = std::env::var("COHORTCAST_REQUIRE_SIMD").unwrap_or_default();
    if !available {
        assert!(
            !required.split(',').any(|r| r.trim() == name),
            "COHORTCAST_REQUIRE_SIMD names {name}, but this CPU cannot run those kernels"
        );
        eprintln!("skipped: this CPU cannot run the {name} kernels, so only the portable path was tested");
    }
    available
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_isa_s_dot_and_axpy_match_the_plain_loops() {
        let mut isas = vec![Isa::Portable];
        if kernels_run("avx2") {
            isas.extend(Isa::avx2());
        }
        #[cfg(target_arch = "x86_64")]
        if kernels_run("avx512") {
            isas.extend(Isa::avx512().map(Isa::Avx512));
        }
        for isa in isas {
            for n in [0, 1, 7, 8, 31, 32, 33, 64, 100, 129] {
                let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
                let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
                let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
                let got = isa.dot(&a, &b);
                assert!((want - got).abs() < 1e-4, "{} n={n}: {want} vs {got}", isa.name());
                let mut y1 = b.clone();
                let mut y2 = b.clone();
                y1.iter_mut().zip(&a).for_each(|(y, x)| *y += 0.5 * x);
                isa.axpy(0.5, &a, &mut y2);
                for (p, q) in y1.iter().zip(&y2) {
                    assert!((p - q).abs() < 1e-6, "{} n={n}", isa.name());
                }
            }
        }
    }
}

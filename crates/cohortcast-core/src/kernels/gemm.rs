//! Dense products through matrixmultiply's packed SGEMM kernels, behind a
//! signature of slices that checks every index the strides reach.

/// `C = α · A · B + β · C` for `A` (`m × k`), `B` (`k × n`) and a
/// row-major `C` (`m × n`, row stride `rsc`), with `A` and `B` addressed
/// through their `(row, column)` strides: a transpose is a swap of the
/// strides. Panics when a stride reaches past its slice.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    beta: f32,
    c: &mut [f32],
    rsc: usize,
) {
    if m == 0 || k == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(last(m, k, rsa, csa) < a.len(), "A's strides reach past its {} floats", a.len());
    assert!(last(k, n, rsb, csb) < b.len(), "B's strides reach past its {} floats", b.len());
    assert!(rsc >= n && last(m, n, rsc, 1) < c.len(), "C's rows reach past its {} floats", c.len());
    // SAFETY: the asserts above keep every element the strides address
    // inside its slice; `c` is borrowed uniquely and its rows (stride
    // `rsc ≥ n`) do not overlap, so no element is written twice at once.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            beta,
            c.as_mut_ptr(),
            rsc as isize,
            1,
        );
    }
}

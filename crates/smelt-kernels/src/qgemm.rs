//! Int8 matrix products: per-channel symmetric weights in a 7-bit range, activations quantized
//! per row on the fly to unsigned 8 bits with a zero point (dynamic quantization), exact i32
//! accumulation.
//!
//! ```text
//! W  [n x k]:  w_q[j,c] = round(W[j,c] / s_j) in [-64, 64],    s_j = max_c |W[j,c]| / 64
//! X  [m x k]:  a_u[i,c] = clamp(round(X[i,c] / t_i) + z_i, 0, 255),
//!              t_i = (hi_i - lo_i) / 255,  lo_i = min(0, min_c X[i,c]),  hi_i = max(0, max_c X[i,c]),
//!              z_i = round(-lo_i / t_i)
//! Y  [m x n]:  Y[i,j] = t_i s_j (sum_c a_u[i,c] w_q[j,c] - z_i r_j),   r_j = sum_c w_q[j,c]
//! ```
//! Unsigned activations let the AVX2 kernel feed `maddubs` (u8 x s8, adjacent pairs summed to
//! i16) directly: a pair is at most `2 * 255 * 64 = 32640 < 2^15`, so it never saturates, and
//! `madd` with ones widens pairs to i32. This is the layout ONNX Runtime's "reduce_range"
//! quantization uses; the activations here get their own range per row (not per tensor), which
//! keeps text embeddings close to fp32 (docs/BENCHMARKS.md).
//!
//! With smoothing (SmoothQuant, Xiao et al. 2023), per-input-channel factors `f_c` move
//! activation outliers into the weights before quantizing: `W'[j,c] = W[j,c] f_c` and
//! `X'[i,c] = X[i,c] / f_c`, with `f_c = amax(X_c)^a / amax(W_c)^(1-a)` from calibration maxima;
//! the product is unchanged, but a channel that dominates every row (BERT's `[CLS]` row has one
//! channel holding nearly all its energy) no longer flattens the rest of the row to zero.
//!
//! Rounding is to nearest, ties to even. Rows are zero-padded to a multiple of 32 bytes (zero
//! weights make the padding's activations irrelevant). The scalar twin computes the same
//! integers and the same final scaling, so the two agree exactly.
//!
//! Work is split into (block of activation rows, block of weight rows) tasks; each task runs
//! tiles of 2 activation rows x 4 weight rows held in registers; the few columns past the last
//! multiple of 4 (no encoder has any) and every tile of the scalar path use the scalar twin.

use std::cell::RefCell;

#[cfg_attr(not(target_arch = "x86_64"), allow(unused_imports))]
use crate::cpu::{self, Isa};
use crate::pool::{Disjoint, ThreadPool};
use crate::KernelError;

/// Bytes per step of the kernels; rows are padded to a multiple of it.
pub const STEP: usize = 32;
/// Activation rows per task.
const MB: usize = 64;
/// Weight rows per task.
const NB: usize = 64;
/// Largest weight level: `2 * 255 * W_LEVELS` must stay below `2^15` (see the module docs).
pub const W_LEVELS: f32 = 64.0;
const _: () = assert!(2.0 * 255.0 * W_LEVELS < 32768.0, "maddubs would saturate");
/// Longest row: keeps `|sum_c a_u w_q| + |z r|` within i32 (`2 * 255 * 64 * 2^16 < 2^31`).
pub const MAX_COLS: usize = 1 << 16;

/// A weight matrix quantized per output channel (row).
#[derive(Clone, Debug)]
pub struct I8Matrix {
    pub rows: usize,
    pub cols: usize,
    /// Row stride in bytes: `cols` rounded up to [`STEP`].
    pub stride: usize,
    pub data: Vec<i8>,
    /// `s_j` per row.
    pub scales: Vec<f32>,
    /// `r_j = sum_c w_q[j,c]` per row (the zero points' correction).
    pub row_sums: Vec<i32>,
    /// `1 / f_c` per input channel, applied to activations before they are quantized.
    pub smooth: Option<Vec<f32>>,
}

/// Quantizes one row symmetrically to `[-levels, levels]` (`out` is zero-padded past
/// `x.len()`); returns the scale (0 for an all-zero row).
pub fn quantize_row_symmetric(x: &[f32], out: &mut [i8], levels: f32) -> f32 {
    let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = max / levels;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v * inv).round_ties_even().clamp(-levels, levels) as i8;
    }
    out[x.len()..].fill(0);
    scale
}

/// The scale `t` and zero point `z` of an activation row whose values span `lo..=hi`, the
/// range widened to hold 0 (so that 0 is exact).
fn act_params(lo: f32, hi: f32) -> (f32, f32, i32) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let scale = (hi - lo) / 255.0;
    if !(scale > 0.0 && scale.is_finite()) {
        return (0.0, 0.0, 0);
    }
    let inv = 1.0 / scale;
    (scale, inv, (-lo * inv).round_ties_even() as i32)
}

/// Quantizes one activation row, times `smooth` element-wise when given, to unsigned 8 bits
/// with a zero point (`out` is zero-padded past `x.len()`); returns `(t, z)`. A row with no
/// range (all zero, or not finite) gives `(0, 0)` and all-zero codes.
pub fn quantize_row(x: &[f32], smooth: Option<&[f32]>, out: &mut [u8]) -> (f32, i32) {
    let at = |c: usize| smooth.map_or(x[c], |f| x[c] * f[c]);
    let (lo, hi) = (0..x.len()).fold((0.0f32, 0.0f32), |(l, h), c| (l.min(at(c)), h.max(at(c))));
    let (scale, inv, z) = act_params(lo, hi);
    for (c, o) in out[..x.len()].iter_mut().enumerate() {
        *o = ((at(c) * inv).round_ties_even() as i32 + z).clamp(0, 255) as u8;
    }
    out[x.len()..].fill(0);
    (scale, z)
}

impl I8Matrix {
    /// Quantizes `w` (`rows x cols`, row-major f32).
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> Result<I8Matrix, KernelError> {
        if rows.checked_mul(cols) != Some(w.len()) || cols > MAX_COLS {
            return Err(KernelError::Shape(format!("{} values for a {rows} x {cols} matrix (at most {MAX_COLS} columns)", w.len())));
        }
        let stride = cols.div_ceil(STEP) * STEP;
        let mut data = vec![0i8; rows * stride];
        let scales = (0..rows).map(|r| quantize_row_symmetric(&w[r * cols..(r + 1) * cols], &mut data[r * stride..(r + 1) * stride], W_LEVELS)).collect();
        let row_sums = data.chunks_exact(stride).map(|r| r.iter().map(|&q| q as i32).sum()).collect();
        Ok(I8Matrix { rows, cols, stride, data, scales, row_sums, smooth: None })
    }

    /// Quantizes `w` after smoothing with the activations' per-channel maxima `act_amax` (from
    /// calibration) and migration strength `alpha` (0.5 is SmoothQuant's default).
    pub fn quantize_smoothed(w: &[f32], rows: usize, cols: usize, act_amax: &[f32], alpha: f32) -> Result<I8Matrix, KernelError> {
        if w.len() != rows * cols || act_amax.len() != cols {
            return Err(KernelError::Shape(format!("{} values for a {rows} x {cols} matrix, {} channel maxima", w.len(), act_amax.len())));
        }
        let mut wmax = vec![0f32; cols];
        for row in w.chunks_exact(cols) {
            for (m, v) in wmax.iter_mut().zip(row) {
                *m = m.max(v.abs());
            }
        }
        let f: Vec<f32> = act_amax
            .iter()
            .zip(&wmax)
            .map(|(&a, &m)| if a > 0.0 && m > 0.0 && a.is_finite() { (a.powf(alpha) / m.powf(1.0 - alpha)).clamp(1e-5, 1e5) } else { 1.0 })
            .collect();
        let scaled: Vec<f32> = w.chunks_exact(cols).flat_map(|row| row.iter().zip(&f).map(|(v, s)| v * s)).collect();
        let mut q = I8Matrix::quantize(&scaled, rows, cols)?;
        q.smooth = Some(f.iter().map(|s| 1.0 / s).collect());
        Ok(q)
    }

    /// Row `r` back in f32 (for fidelity checks).
    pub fn dequantize_row(&self, r: usize) -> Vec<f32> {
        self.data[r * self.stride..r * self.stride + self.cols].iter().map(|&q| q as f32 * self.scales[r]).collect()
    }

    pub fn bytes(&self) -> usize {
        self.data.len() + 4 * (self.scales.len() + self.row_sums.len())
    }
}

/// Scalar twin of the tile kernel: `out[i][j] = sum_c a[i*lda + c] w[j*ldw + c]` over `k`.
pub fn tile_scalar<const MR: usize, const NR: usize>(a: &[u8], lda: usize, w: &[i8], ldw: usize, k: usize) -> [[i32; NR]; MR] {
    let mut out = [[0i32; NR]; MR];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, o) in row.iter_mut().enumerate() {
            *o = a[i * lda..i * lda + k].iter().zip(&w[j * ldw..j * ldw + k]).map(|(&x, &y)| x as i32 * y as i32).sum();
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// The `MR x 4` tile of `Y`, corrected for the zero points, scaled and stored:
    /// `y[i*ldy + j] = t[i] s[j] (sum_c a_i[c] w_j[c] - z[i] r[j])`. The four sums of a row come
    /// out of one `hadd` tree, already in column order.
    ///
    /// # Safety
    /// AVX2 present; `a` holds `MR` rows and `w` 4 rows of `k` bytes (a multiple of 32) at
    /// strides `lda`, `ldw`; `s` and `r` hold 4 values; `y` holds `MR` rows of 4 at stride `ldy`.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2")]
    pub unsafe fn tile4_store<const MR: usize>(a: *const u8, lda: usize, w: *const i8, ldw: usize, k: usize, t: &[f32], z: &[i32], s: *const f32, r: *const i32, y: *mut f32, ldy: usize) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); 4]; MR];
        let mut c = 0;
        while c < k {
            let wv = [0, 1, 2, 3].map(|j| _mm256_loadu_si256(w.add(j * ldw + c) as *const __m256i));
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm256_loadu_si256(a.add(i * lda + c) as *const __m256i);
                for (j, sum) in row.iter_mut().enumerate() {
                    // u8 x s8 pairs: at most 2 * 255 * 64, no saturation.
                    let p = _mm256_maddubs_epi16(av, wv[j]);
                    *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(p, ones));
                }
            }
            c += 32;
        }
        let (sv, rv) = (_mm_loadu_ps(s), _mm_loadu_si128(r as *const __m128i));
        for (i, row) in acc.iter().enumerate() {
            let h = _mm256_hadd_epi32(_mm256_hadd_epi32(row[0], row[1]), _mm256_hadd_epi32(row[2], row[3]));
            let sums = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
            let exact = _mm_sub_epi32(sums, _mm_mullo_epi32(_mm_set1_epi32(z[i]), rv));
            let v = _mm_mul_ps(_mm_cvtepi32_ps(exact), _mm_mul_ps(sv, _mm_set1_ps(t[i])));
            _mm_storeu_ps(y.add(i * ldy), v);
        }
    }

    /// `quantize_row` in eight lanes (same products, range, rounding and clamping).
    ///
    /// # Safety
    /// AVX2 and FMA present; `out` at least as long as `x`, `smooth` (when given) as long as `x`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn quantize_row(x: &[f32], smooth: Option<&[f32]>, out: &mut [u8]) -> (f32, i32) {
        let n = x.len() / 8 * 8;
        let load = |i: usize| {
            let v = _mm256_loadu_ps(x.as_ptr().add(i));
            match smooth {
                Some(f) => _mm256_mul_ps(v, _mm256_loadu_ps(f.as_ptr().add(i))),
                None => v,
            }
        };
        let at = |c: usize| smooth.map_or(x[c], |f| x[c] * f[c]);
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for i in (0..n).step_by(8) {
            let v = load(i);
            lo = _mm256_min_ps(lo, v);
            hi = _mm256_max_ps(hi, v);
        }
        let (mut l8, mut h8) = ([0f32; 8], [0f32; 8]);
        _mm256_storeu_ps(l8.as_mut_ptr(), lo);
        _mm256_storeu_ps(h8.as_mut_ptr(), hi);
        let (mut l, mut h) = (l8.iter().fold(0.0f32, |a, &b| a.min(b)), h8.iter().fold(0.0f32, |a, &b| a.max(b)));
        for c in n..x.len() {
            (l, h) = (l.min(at(c)), h.max(at(c)));
        }
        let (scale, inv, z) = super::act_params(l, h);
        let (vi, zv) = (_mm256_set1_ps(inv), _mm256_set1_epi32(z));
        let mut i = 0;
        while i + 32 <= n {
            // Rounded to nearest even, shifted by z, then clamped to 0..=255 by the saturating
            // packs (i32 -> i16 signed, i16 -> u8 unsigned).
            let q = |o: usize| _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(load(i + o), vi)), zv);
            let (a, b, c, d) = (q(0), q(8), q(16), q(24));
            // packs interleave 128-bit lanes; the permute puts the 32 bytes back in order.
            let ab = _mm256_packs_epi32(a, b);
            let cd = _mm256_packs_epi32(c, d);
            let bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(ab, cd), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, bytes);
            i += 32;
        }
        for (c, o) in out[..x.len()].iter_mut().enumerate().skip(i) {
            *o = ((at(c) * inv).round_ties_even() as i32 + z).clamp(0, 255) as u8;
        }
        out[x.len()..].fill(0);
        (scale, z)
    }
}

fn use_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        cpu::best() == Isa::Avx2
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`quantize_row`] with the best kernel of this machine.
pub fn quantize_row_fast(x: &[f32], smooth: Option<&[f32]>, out: &mut [u8]) -> (f32, i32) {
    assert!(out.len() >= x.len() && smooth.is_none_or(|f| f.len() >= x.len()), "quantize_row: lengths");
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: AVX2 and FMA detected; lengths asserted.
        return unsafe { avx2::quantize_row(x, smooth, out) };
    }
    quantize_row(x, smooth, out)
}

thread_local! {
    static ACT: RefCell<(Vec<u8>, Vec<f32>, Vec<i32>)> = const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// `Y = X W^T` (`x`: `m x cols`, `y`: `m x rows`, row-major) with `X` quantized per row.
pub fn gemm_i8(pool: &ThreadPool, w: &I8Matrix, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), KernelError> {
    gemm_i8_with(pool, w, x, m, y, use_avx2())
}

/// [`gemm_i8`] with the kernel chosen by the caller (`avx2 = false`: the scalar twin).
pub fn gemm_i8_with(pool: &ThreadPool, w: &I8Matrix, x: &[f32], m: usize, y: &mut [f32], avx2: bool) -> Result<(), KernelError> {
    let (n, k, kp) = (w.rows, w.cols, w.stride);
    if x.len() != m * k || y.len() != m * n || w.data.len() != n * kp || w.scales.len() != n || w.row_sums.len() != n {
        return Err(KernelError::Shape(format!("W is {n} x {k}, X has {} values for {m} rows, Y has {}", x.len(), y.len())));
    }
    if avx2 && !use_avx2() {
        return Err(KernelError::Shape("the AVX2 int8 kernel was asked for on a CPU without AVX2".into()));
    }
    ACT.with(|act| {
        let (aq, at, az) = &mut *act.borrow_mut();
        aq.resize(m * kp, 0);
        at.resize(m, 0.0);
        az.resize(m, 0);
        {
            let (qs, ts, zs) = (Disjoint::new(aq), Disjoint::new(at), Disjoint::new(az));
            pool.for_chunks(m, m.div_ceil(4 * pool.n_threads()).max(1), &|r| {
                for i in r {
                    // SAFETY: each row is written by one task.
                    let (q, t, z) = unsafe { (qs.slice(i * kp..(i + 1) * kp), ts.slice(i..i + 1), zs.slice(i..i + 1)) };
                    let row = &x[i * k..(i + 1) * k];
                    let smooth = w.smooth.as_deref();
                    (t[0], z[0]) = if avx2 { quantize_row_fast(row, smooth, q) } else { quantize_row(row, smooth, q) };
                }
            });
        }
        let (aq, at, az): (&[u8], &[f32], &[i32]) = (aq, at, az);
        let out = Disjoint::new(y);
        let (mblocks, nblocks) = (m.div_ceil(MB), n.div_ceil(NB));
        pool.run(mblocks * nblocks, &|task| {
            let (mb, nb) = (task % mblocks, task / mblocks);
            let (i0, i1) = (mb * MB, ((mb + 1) * MB).min(m));
            let (j0, j1) = (nb * NB, ((nb + 1) * NB).min(n));
            let store = |i: usize, j: usize, v: i32| {
                let exact = v - az[i] * w.row_sums[j];
                // SAFETY: task (mb, nb) alone writes rows i0..i1, columns j0..j1 of Y.
                unsafe { out.slice(i * n + j..i * n + j + 1)[0] = exact as f32 * (w.scales[j] * at[i]) };
            };
            let mut j = j0;
            while j < j1 {
                let nr = (j1 - j).min(4);
                let wr = &w.data[j * kp..];
                let mut i = i0;
                while i < i1 {
                    let mr = (i1 - i).min(2);
                    let ar = &aq[i * kp..];
                    #[cfg(target_arch = "x86_64")]
                    if avx2 && nr == 4 {
                        // SAFETY: AVX2 checked; rows i..i+mr of X and j..j+4 of W exist (each
                        // padded to kp bytes); this task alone writes Y[i..i+mr, j..j+4].
                        unsafe {
                            let y = out.as_mut_ptr().add(i * n + j);
                            let (a, wp, s, r) = (ar.as_ptr(), wr.as_ptr(), w.scales.as_ptr().add(j), w.row_sums.as_ptr().add(j));
                            if mr == 2 {
                                avx2::tile4_store::<2>(a, kp, wp, kp, kp, &at[i..i + 2], &az[i..i + 2], s, r, y, n);
                            } else {
                                avx2::tile4_store::<1>(a, kp, wp, kp, kp, &at[i..i + 1], &az[i..i + 1], s, r, y, n);
                            }
                        }
                        i += mr;
                        continue;
                    }
                    match (mr, nr) {
                        (2, 4) => tile_scalar::<2, 4>(ar, kp, wr, kp, kp).iter().enumerate().for_each(|(di, r)| r.iter().enumerate().for_each(|(dj, &v)| store(i + di, j + dj, v))),
                        (1, 4) => tile_scalar::<1, 4>(ar, kp, wr, kp, kp)[0].iter().enumerate().for_each(|(dj, &v)| store(i, j + dj, v)),
                        _ => {
                            for di in 0..mr {
                                for dj in 0..nr {
                                    store(i + di, j + dj, tile_scalar::<1, 1>(&ar[di * kp..], kp, &wr[dj * kp..], kp, kp)[0][0]);
                                }
                            }
                        }
                    }
                    i += mr;
                }
                j += nr;
            }
        });
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    #[test]
    fn quantize_row_kernels_agree_and_round_trip() {
        for len in [1, 7, 31, 32, 33, 100, 384] {
            for shift in [0.0, 1.5, -1.5] {
                // shift: rows mostly positive / negative move the zero point to either end.
                let mut x: Vec<f32> = rand(len, len as u64).iter().map(|v| v + shift).collect();
                x[0] = 3.0;
                let (mut a, mut b) = (vec![1u8; len.div_ceil(32) * 32], vec![2u8; len.div_ceil(32) * 32]);
                let ((ta, za), (tb, zb)) = (quantize_row(&x, None, &mut a), quantize_row_fast(&x, None, &mut b));
                assert_eq!((ta, za, &a), (tb, zb, &b), "len {len} shift {shift}");
                let f: Vec<f32> = (0..len).map(|c| 0.5 + (c % 5) as f32).collect();
                let (mut c, mut d) = (vec![0u8; a.len()], vec![0u8; a.len()]);
                assert_eq!(quantize_row(&x, Some(&f), &mut c), quantize_row_fast(&x, Some(&f), &mut d));
                assert_eq!(c, d, "smoothed, len {len}");
                assert!((0..=255).contains(&za));
                for (q, v) in a.iter().zip(&x) {
                    let back = (*q as i32 - za) as f32 * ta;
                    assert!((back - v).abs() <= ta * 0.5 + 1e-5, "len {len}: {v} came back as {back}");
                }
                assert!(a[len..].iter().all(|&q| q == 0));
            }
        }
        let mut z = [5u8; 32];
        assert_eq!(quantize_row(&[0.0; 20], None, &mut z), (0.0, 0));
        assert!(z.iter().all(|&q| q == 0));
        // Not finite: defined codes, no panic.
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        assert_eq!(quantize_row(&[f32::INFINITY, 1.0], None, &mut a), quantize_row_fast(&[f32::INFINITY, 1.0], None, &mut b));
        assert_eq!(a, b);
    }

    #[test]
    fn weights_stay_in_the_non_saturating_range() {
        let w = I8Matrix::quantize(&rand(40 * 70, 4), 40, 70).unwrap();
        assert!(w.data.iter().all(|&q| (q as f32).abs() <= W_LEVELS));
        assert!(w.data.iter().any(|&q| (q as f32).abs() == W_LEVELS));
        for (r, sum) in w.row_sums.iter().enumerate() {
            assert_eq!(*sum, w.data[r * w.stride..(r + 1) * w.stride].iter().map(|&q| q as i32).sum::<i32>());
        }
        assert!(I8Matrix::quantize(&vec![0.0; MAX_COLS + 1], 1, MAX_COLS + 1).is_err());
    }

    #[test]
    fn gemm_i8_kernels_agree_and_approximate_f32() {
        let pool = ThreadPool::new(2);
        for (m, n, k) in [(1, 1, 5), (3, 5, 40), (67, 130, 384), (130, 9, 96)] {
            // Positive-heavy activations (as after GELU) and weights with an outlier column.
            let x: Vec<f32> = rand(m * k, 1).iter().map(|v| v + 0.7).collect();
            let mut wf = rand(n * k, 2);
            (0..n).for_each(|j| wf[j * k] *= 3.0);
            let w = I8Matrix::quantize(&wf, n, k).unwrap();
            let (mut y1, mut y2) = (vec![0f32; m * n], vec![0f32; m * n]);
            gemm_i8_with(&pool, &w, &x, m, &mut y1, false).unwrap();
            gemm_i8(&pool, &w, &x, m, &mut y2).unwrap();
            assert_eq!(y1, y2, "{m}x{n}x{k}: AVX2 and scalar twin differ");
            for i in 0..m {
                let row = &x[i * k..(i + 1) * k];
                let (lo, hi) = row.iter().fold((0.0f32, 0.0f32), |(l, h), &v| (l.min(v), h.max(v)));
                let t = (hi - lo) / 255.0;
                for j in 0..n {
                    let exact: f32 = (0..k).map(|c| row[c] * wf[j * k + c]).sum();
                    // x w - x' w' = x (w - w') + w' (x - x'): at most |x| s/2 + (|w| + s/2) t/2
                    // per product.
                    let s = w.scales[j];
                    let bound = (0..k).map(|c| row[c].abs() * s * 0.5 + (wf[j * k + c].abs() + s * 0.5) * t * 0.5).sum::<f32>() + 1e-4;
                    assert!((y1[i * n + j] - exact).abs() <= bound, "{m}x{n}x{k} [{i},{j}]: {} vs {exact} (bound {bound})", y1[i * n + j]);
                }
            }
        }
        let w = I8Matrix::quantize(&rand(12, 3), 3, 4).unwrap();
        assert!(gemm_i8(&pool, &w, &[0.0; 7], 2, &mut [0.0; 6]).is_err());
    }

    #[test]
    fn smoothing_rescues_rows_dominated_by_one_channel() {
        // Every activation row has channel 5 about 100x the others (BERT's [CLS] row).
        let (m, n, k) = (8, 16, 64);
        let mut x = rand(m * k, 7);
        (0..m).for_each(|i| x[i * k + 5] = 150.0);
        let wf = rand(n * k, 8);
        let exact: Vec<f32> = (0..m * n).map(|e| (0..k).map(|c| x[e / n * k + c] * wf[e % n * k + c]).sum()).collect();
        let amax: Vec<f32> = (0..k).map(|c| (0..m).map(|i| x[i * k + c].abs()).fold(0.0, f32::max)).collect();
        let pool = ThreadPool::new(2);
        let err = |w: &I8Matrix| {
            let mut y = vec![0f32; m * n];
            gemm_i8(&pool, w, &x, m, &mut y).unwrap();
            y.iter().zip(&exact).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max)
        };
        let (plain, smooth) = (err(&I8Matrix::quantize(&wf, n, k).unwrap()), err(&I8Matrix::quantize_smoothed(&wf, n, k, &amax, 0.5).unwrap()));
        assert!(smooth * 3.0 < plain, "smoothed error {smooth} vs plain {plain}");
    }
}

//! f32 vector operations used per token outside the matrix products, with a scalar twin for
//! each and the best ISA chosen once: dot and axpy, and the two halves of single-token
//! attention over a position-major KV cache:
//!
//! - [`attn_scores`]: `s_j = scale * q . k_j` for `j < n`, `k_j` at `k[j * stride..]`;
//! - [`attn_mix`]: `out = sum_j p_j v_j`, `v_j` at `v[j * stride..]`.
//!
//! For head sizes of 64 and 128 the AVX2 kernels keep the query (or the output) in registers
//! and reduce four scores at once, instead of a call and a horizontal sum per position.

use std::sync::OnceLock;

use crate::cpu::{self, Isa};

/// Scalar twin: `sum_i a_i b_i` in eight lanes.
pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [0.0f32; 8];
    let mut i = 0;
    while i + 8 <= n {
        for k in 0..8 {
            acc[k] += a[i + k] * b[i + k];
        }
        i += 8;
    }
    let mut s = acc.iter().sum::<f32>();
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}

/// Scalar twin: `y_i += a x_i`.
pub fn axpy_scalar(a: f32, x: &[f32], y: &mut [f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o += a * v;
    }
}

/// Scalar twin of [`attn_scores`].
pub fn attn_scores_scalar(q: &[f32], k: &[f32], stride: usize, n: usize, scale: f32, out: &mut [f32]) {
    let d = q.len();
    for (j, o) in out[..n].iter_mut().enumerate() {
        *o = dot_scalar(q, &k[j * stride..j * stride + d]) * scale;
    }
}

/// Scalar twin of [`attn_mix`].
pub fn attn_mix_scalar(p: &[f32], v: &[f32], stride: usize, out: &mut [f32]) {
    let d = out.len();
    out.fill(0.0);
    for (j, &pj) in p.iter().enumerate() {
        axpy_scalar(pj, &v[j * stride..j * stride + d], out);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum4(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
        // [a0+a1, a2+a3, b0+b1, b2+b3 | ...] twice, then fold the 128-bit halves.
        let ab = _mm256_hadd_ps(a, b);
        let cd = _mm256_hadd_ps(c, d);
        let abcd = _mm256_hadd_ps(ab, cd);
        _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1))
    }

    /// `N` = head size / 8 (8 or 16).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn attn_scores<const N: usize>(q: &[f32], k: &[f32], stride: usize, n: usize, scale: f32, out: &mut [f32]) {
        let mut qv = [_mm256_setzero_ps(); N];
        for (i, r) in qv.iter_mut().enumerate() {
            *r = _mm256_loadu_ps(q.as_ptr().add(8 * i));
        }
        let (kp, op) = (k.as_ptr(), out.as_mut_ptr());
        let sc = _mm_set1_ps(scale);
        let mut j = 0;
        while j + 4 <= n {
            let mut acc = [_mm256_setzero_ps(); 4];
            for (t, a) in acc.iter_mut().enumerate() {
                let row = kp.add((j + t) * stride);
                for (i, qi) in qv.iter().enumerate() {
                    *a = _mm256_fmadd_ps(*qi, _mm256_loadu_ps(row.add(8 * i)), *a);
                }
            }
            _mm_storeu_ps(op.add(j), _mm_mul_ps(hsum4(acc[0], acc[1], acc[2], acc[3]), sc));
            j += 4;
        }
        while j < n {
            let row = kp.add(j * stride);
            let mut a = _mm256_setzero_ps();
            for (i, qi) in qv.iter().enumerate() {
                a = _mm256_fmadd_ps(*qi, _mm256_loadu_ps(row.add(8 * i)), a);
            }
            let z = _mm256_setzero_ps();
            *op.add(j) = _mm_cvtss_f32(hsum4(a, z, z, z)) * scale;
            j += 1;
        }
    }

    /// `N` = head size / 8.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn attn_mix<const N: usize>(p: &[f32], v: &[f32], stride: usize, out: &mut [f32]) {
        let mut acc = [_mm256_setzero_ps(); N];
        let vp = v.as_ptr();
        for (j, &pj) in p.iter().enumerate() {
            let w = _mm256_set1_ps(pj);
            let row = vp.add(j * stride);
            for (i, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(w, _mm256_loadu_ps(row.add(8 * i)), *a);
            }
        }
        for (i, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * i), *a);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8)), _mm256_loadu_ps(pb.add(i + 8)), s1);
            i += 16;
        }
        if i + 8 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            i += 8;
        }
        let v = _mm256_add_ps(s0, s1);
        let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let mut s = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
        while i < n {
            s += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let va = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(py.add(i), _mm256_fmadd_ps(va, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i))));
            i += 8;
        }
        while i < n {
            *py.add(i) += a * *px.add(i);
            i += 1;
        }
    }
}

type DotFn = unsafe fn(&[f32], &[f32]) -> f32;
type AxpyFn = unsafe fn(f32, &[f32], &mut [f32]);

fn kernels() -> (DotFn, AxpyFn) {
    static K: OnceLock<(DotFn, AxpyFn)> = OnceLock::new();
    *K.get_or_init(|| match cpu::best() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => (avx2::dot as DotFn, avx2::axpy as AxpyFn),
        _ => (dot_scalar as DotFn, axpy_scalar as AxpyFn),
    })
}

/// `sum_i a_i b_i` over the common length.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: the kernel was chosen for an ISA this CPU has; it reads within both slices.
    unsafe { (kernels().0)(a, b) }
}

/// `y_i += a x_i` over the common length.
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    // SAFETY: as for `dot`.
    unsafe { (kernels().1)(a, x, y) }
}

/// `s_j = scale * (q . k_j)` for `j < n`, where `k_j = k[j * stride..j * stride + q.len()]`.
pub fn attn_scores(q: &[f32], k: &[f32], stride: usize, n: usize, scale: f32, out: &mut [f32]) {
    let d = q.len();
    assert!(out.len() >= n && (n == 0 || k.len() >= (n - 1) * stride + d) && stride >= d, "attn_scores: shapes");
    #[cfg(target_arch = "x86_64")]
    if cpu::best() == Isa::Avx2 {
        // SAFETY: bounds asserted above; AVX2 detected.
        match d {
            64 => return unsafe { avx2::attn_scores::<8>(q, k, stride, n, scale, out) },
            128 => return unsafe { avx2::attn_scores::<16>(q, k, stride, n, scale, out) },
            _ => {}
        }
    }
    attn_scores_scalar(q, k, stride, n, scale, out)
}

/// `out = sum_{j < p.len()} p_j v_j`, where `v_j = v[j * stride..j * stride + out.len()]`.
pub fn attn_mix(p: &[f32], v: &[f32], stride: usize, out: &mut [f32]) {
    let (n, d) = (p.len(), out.len());
    assert!((n == 0 || v.len() >= (n - 1) * stride + d) && stride >= d, "attn_mix: shapes");
    #[cfg(target_arch = "x86_64")]
    if cpu::best() == Isa::Avx2 {
        // SAFETY: bounds asserted above; AVX2 detected.
        match d {
            64 => return unsafe { avx2::attn_mix::<8>(p, v, stride, out) },
            128 => return unsafe { avx2::attn_mix::<16>(p, v, stride, out) },
            _ => {}
        }
    }
    attn_mix_scalar(p, v, stride, out)
}

/// The kernels of exactly `isa` (for the conformance test), if it is available.
pub fn kernels_for(isa: Isa) -> Option<(DotFn, AxpyFn)> {
    if !cpu::available().contains(&isa) {
        return None;
    }
    match isa {
        Isa::Scalar => Some((dot_scalar, axpy_scalar)),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some((avx2::dot, avx2::axpy)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tolerance::DOT_FLOAT;

    #[test]
    fn attention_kernels_match_their_scalar_twins() {
        for d in [64usize, 128, 40] {
            for n in [0usize, 1, 3, 4, 5, 33] {
                let stride = d * 3;
                let q: Vec<f32> = (0..d).map(|i| (i as f32 * 0.3).sin()).collect();
                let k: Vec<f32> = (0..n.max(1) * stride).map(|i| (i as f32 * 0.017).cos()).collect();
                let (mut got, mut want) = (vec![0.0; n], vec![0.0; n]);
                attn_scores(&q, &k, stride, n, 0.125, &mut got);
                attn_scores_scalar(&q, &k, stride, n, 0.125, &mut want);
                for j in 0..n {
                    let scale: f32 = q.iter().zip(&k[j * stride..]).map(|(a, b)| (a * b).abs()).sum::<f32>() * 0.125;
                    DOT_FLOAT.check(got[j], want[j], scale).unwrap();
                }
                let p: Vec<f32> = (0..n).map(|j| 1.0 / (j + 1) as f32).collect();
                let (mut o1, mut o2) = (vec![9.0; d], vec![9.0; d]);
                attn_mix(&p, &k, stride, &mut o1);
                attn_mix_scalar(&p, &k, stride, &mut o2);
                for (a, b) in o1.iter().zip(&o2) {
                    assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "d={d} n={n}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn simd_twins_agree() {
        for n in [0, 1, 7, 8, 15, 16, 17, 64, 100] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let scale: f32 = a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum();
            for &isa in cpu::available() {
                let (d, ax) = kernels_for(isa).unwrap_or((dot_scalar, axpy_scalar));
                // SAFETY: ISA available.
                let got = unsafe { d(&a, &b) };
                DOT_FLOAT.check(got, dot_scalar(&a, &b), scale).unwrap();
                let (mut y1, mut y2) = (b.clone(), b.clone());
                unsafe { ax(0.5, &a, &mut y1) };
                axpy_scalar(0.5, &a, &mut y2);
                assert!(y1.iter().zip(&y2).all(|(p, q)| (p - q).abs() <= 1e-6), "{isa} axpy n={n}");
            }
        }
    }
}

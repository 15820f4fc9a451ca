//! f32 vector operations used per token outside the matrix products, with a scalar twin for
//! each and the best ISA chosen once: dot and axpy, and the two halves of single-token
//! attention over a position-major KV cache:
//!
//! - [`attn_scores`]: `s_j = scale * q . k_j` for `j < n`, `k_j` at `k[j * stride..]`;
//! - [`attn_mix`]: `out = sum_j p_j v_j`, `v_j` at `v[j * stride..]`.
//! - over an f16 cache, [`attn_scores_f16_group`] / [`attn_mix_f16_group`] do the query heads
//!   that share a key/value head together, reading and widening each key and value once.
//!
//! For head sizes of 32, 64 and 128 the AVX2 kernels keep the query (or the output) in registers
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

/// f16 storage (raw bits) read as f32.
#[inline]
fn h(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// Scalar twin of [`attn_scores_f16`].
pub fn attn_scores_f16_scalar(q: &[f32], k: &[u16], stride: usize, n: usize, scale: f32, out: &mut [f32]) {
    let d = q.len();
    for (j, o) in out[..n].iter_mut().enumerate() {
        let row = &k[j * stride..j * stride + d];
        *o = q.iter().zip(row).map(|(&a, &b)| a * h(b)).sum::<f32>() * scale;
    }
}

/// Scalar twin of [`attn_mix_f16`].
pub fn attn_mix_f16_scalar(p: &[f32], v: &[u16], stride: usize, out: &mut [f32]) {
    let d = out.len();
    out.fill(0.0);
    for (j, &pj) in p.iter().enumerate() {
        for (o, &b) in out.iter_mut().zip(&v[j * stride..j * stride + d]) {
            *o += pj * h(b);
        }
    }
}

/// Scalar twin of [`f32_to_f16`]: round to nearest even.
pub fn f32_to_f16_scalar(src: &[f32], dst: &mut [u16]) {
    for (o, &x) in dst.iter_mut().zip(src) {
        *o = half::f16::from_f32(x).to_bits();
    }
}

/// Scalar twin of [`f16_to_f32`].
pub fn f16_to_f32_scalar(src: &[u16], dst: &mut [f32]) {
    for (o, &b) in dst.iter_mut().zip(src) {
        *o = h(b);
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

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_h(p: *const u16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn attn_scores_f16<const N: usize>(q: &[f32], k: &[u16], stride: usize, n: usize, scale: f32, out: &mut [f32]) {
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
                    *a = _mm256_fmadd_ps(*qi, load_h(row.add(8 * i)), *a);
                }
            }
            _mm_storeu_ps(op.add(j), _mm_mul_ps(hsum4(acc[0], acc[1], acc[2], acc[3]), sc));
            j += 4;
        }
        while j < n {
            let row = kp.add(j * stride);
            let mut a = _mm256_setzero_ps();
            for (i, qi) in qv.iter().enumerate() {
                a = _mm256_fmadd_ps(*qi, load_h(row.add(8 * i)), a);
            }
            let z = _mm256_setzero_ps();
            *op.add(j) = _mm_cvtss_f32(hsum4(a, z, z, z)) * scale;
            j += 1;
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn attn_mix_f16<const N: usize>(p: &[f32], v: &[u16], stride: usize, out: &mut [f32]) {
        let mut acc = [_mm256_setzero_ps(); N];
        let vp = v.as_ptr();
        for (j, &pj) in p.iter().enumerate() {
            let w = _mm256_set1_ps(pj);
            let row = vp.add(j * stride);
            for (i, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(w, load_h(row.add(8 * i)), *a);
            }
        }
        for (i, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * i), *a);
        }
    }

    /// Keys (or values) ahead of the one being read that the grouped kernels prefetch.
    const PREFETCH_KEYS: usize = 12;

    /// [`attn_scores_f16`] for the `G` query heads of one key/value group: `q` holds `G`
    /// queries of `8 N` (head after head), `out` `G` rows of `n` scores. Each key chunk is
    /// loaded and widened once for all `G` heads; every (key, head) sum takes its products in
    /// the one-head kernel's order, so the scores are bit-identical to `G` calls of it.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn attn_scores_f16_group<const N: usize, const G: usize>(q: &[f32], k: &[u16], stride: usize, n: usize, scale: f32, out: &mut [f32]) {
        let (qp, kp, op) = (q.as_ptr(), k.as_ptr(), out.as_mut_ptr());
        let (d, sc) = (8 * N, _mm_set1_ps(scale));
        let mut j = 0;
        while j + 4 <= n {
            // The cache of a long context comes from memory, not from cache: ask for the
            // keys a few steps ahead (a hint; never faults past the end).
            for t in 0..4 {
                let ahead = kp.wrapping_add((j + t + PREFETCH_KEYS) * stride) as *const i8;
                for line in 0..(2 * N).div_ceil(64 / 8) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line));
                }
            }
            let mut acc = [[_mm256_setzero_ps(); 4]; G];
            for i in 0..N {
                for t in 0..4 {
                    let kv = load_h(kp.add((j + t) * stride + 8 * i));
                    for (g, a) in acc.iter_mut().enumerate() {
                        a[t] = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(g * d + 8 * i)), kv, a[t]);
                    }
                }
            }
            for (g, a) in acc.iter().enumerate() {
                _mm_storeu_ps(op.add(g * n + j), _mm_mul_ps(hsum4(a[0], a[1], a[2], a[3]), sc));
            }
            j += 4;
        }
        while j < n {
            let mut acc = [_mm256_setzero_ps(); G];
            for i in 0..N {
                let kv = load_h(kp.add(j * stride + 8 * i));
                for (g, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(g * d + 8 * i)), kv, *a);
                }
            }
            let z = _mm256_setzero_ps();
            for (g, a) in acc.iter().enumerate() {
                *op.add(g * n + j) = _mm_cvtss_f32(hsum4(*a, z, z, z)) * scale;
            }
            j += 1;
        }
    }

    /// [`attn_mix_f16`] for the `G` query heads of one key/value group: `p` holds `G` rows of
    /// `n` weights, `out` `G` outputs of `8 N` (head after head). The head is done `C` chunks of
    /// 8 at a time (`G x C` accumulators in registers); each value chunk is widened once for
    /// all `G` heads; the sums are bit-identical to `G` calls of the one-head kernel.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn attn_mix_f16_group<const N: usize, const G: usize, const C: usize>(p: &[f32], n: usize, v: &[u16], stride: usize, out: &mut [f32]) {
        let (pp, vp, op) = (p.as_ptr(), v.as_ptr(), out.as_mut_ptr());
        let d = 8 * N;
        let mut c0 = 0;
        while c0 < N {
            let mut acc = [[_mm256_setzero_ps(); C]; G];
            for j in 0..n {
                let row = vp.add(j * stride + 8 * c0);
                let ahead = row.wrapping_add(PREFETCH_KEYS * stride) as *const i8;
                for line in 0..(2 * C).div_ceil(64 / 8) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line));
                }
                let w: [__m256; G] = std::array::from_fn(|g| _mm256_set1_ps(*pp.add(g * n + j)));
                for i in 0..C {
                    let x = load_h(row.add(8 * i));
                    for (a, wg) in acc.iter_mut().zip(&w) {
                        a[i] = _mm256_fmadd_ps(*wg, x, a[i]);
                    }
                }
            }
            for (g, a) in acc.iter().enumerate() {
                for (i, ai) in a.iter().enumerate() {
                    _mm256_storeu_ps(op.add(g * d + 8 * (c0 + i)), *ai);
                }
            }
            c0 += C;
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn f32_to_f16(src: &[f32], dst: &mut [u16]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 8 <= n {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.as_ptr().add(i)));
            _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, h);
            i += 8;
        }
        super::f32_to_f16_scalar(&src[i..n], &mut dst[i..n]);
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), load_h(src.as_ptr().add(i)));
            i += 8;
        }
        super::f16_to_f32_scalar(&src[i..n], &mut dst[i..n]);
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
            32 => return unsafe { avx2::attn_scores::<4>(q, k, stride, n, scale, out) },
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
            32 => return unsafe { avx2::attn_mix::<4>(p, v, stride, out) },
            64 => return unsafe { avx2::attn_mix::<8>(p, v, stride, out) },
            128 => return unsafe { avx2::attn_mix::<16>(p, v, stride, out) },
            _ => {}
        }
    }
    attn_mix_scalar(p, v, stride, out)
}

/// [`attn_scores`] over keys stored as f16 bits.
pub fn attn_scores_f16(q: &[f32], k: &[u16], stride: usize, n: usize, scale: f32, out: &mut [f32]) {
    let d = q.len();
    assert!(out.len() >= n && (n == 0 || k.len() >= (n - 1) * stride + d) && stride >= d, "attn_scores_f16: shapes");
    #[cfg(target_arch = "x86_64")]
    if cpu::best() == Isa::Avx2 {
        // SAFETY: bounds asserted above; AVX2 and F16C detected.
        match d {
            32 => return unsafe { avx2::attn_scores_f16::<4>(q, k, stride, n, scale, out) },
            64 => return unsafe { avx2::attn_scores_f16::<8>(q, k, stride, n, scale, out) },
            128 => return unsafe { avx2::attn_scores_f16::<16>(q, k, stride, n, scale, out) },
            _ => {}
        }
    }
    attn_scores_f16_scalar(q, k, stride, n, scale, out)
}

/// [`attn_mix`] over values stored as f16 bits.
pub fn attn_mix_f16(p: &[f32], v: &[u16], stride: usize, out: &mut [f32]) {
    let (n, d) = (p.len(), out.len());
    assert!((n == 0 || v.len() >= (n - 1) * stride + d) && stride >= d, "attn_mix_f16: shapes");
    #[cfg(target_arch = "x86_64")]
    if cpu::best() == Isa::Avx2 {
        // SAFETY: bounds asserted above; AVX2 and F16C detected.
        match d {
            32 => return unsafe { avx2::attn_mix_f16::<4>(p, v, stride, out) },
            64 => return unsafe { avx2::attn_mix_f16::<8>(p, v, stride, out) },
            128 => return unsafe { avx2::attn_mix_f16::<16>(p, v, stride, out) },
            _ => {}
        }
    }
    attn_mix_f16_scalar(p, v, stride, out)
}

/// [`attn_scores_f16`] for `g` query heads that share one key/value head (grouped-query
/// attention): `q` holds the `g` queries (`g * d` values, head after head), `out` `g` rows of
/// `n` scores. Each key is read and widened once for the group instead of once per head; the
/// scores equal `g` calls of [`attn_scores_f16`] bit for bit.
pub fn attn_scores_f16_group(q: &[f32], g: usize, k: &[u16], stride: usize, n: usize, scale: f32, out: &mut [f32]) {
    let d = q.len().checked_div(g).unwrap_or(0);
    assert!(g > 0 && q.len() == g * d && out.len() >= g * n && (n == 0 || k.len() >= (n - 1) * stride + d) && stride >= d, "attn_scores_f16_group: shapes");
    #[cfg(target_arch = "x86_64")]
    if cpu::best() == Isa::Avx2 {
        // SAFETY: bounds asserted above; AVX2 and F16C detected.
        unsafe {
            match (d, g) {
                (32, 2) => return avx2::attn_scores_f16_group::<4, 2>(q, k, stride, n, scale, out),
                (32, 3) => return avx2::attn_scores_f16_group::<4, 3>(q, k, stride, n, scale, out),
                (64, 2) => return avx2::attn_scores_f16_group::<8, 2>(q, k, stride, n, scale, out),
                (64, 3) => return avx2::attn_scores_f16_group::<8, 3>(q, k, stride, n, scale, out),
                (128, 2) => return avx2::attn_scores_f16_group::<16, 2>(q, k, stride, n, scale, out),
                (128, 3) => return avx2::attn_scores_f16_group::<16, 3>(q, k, stride, n, scale, out),
                _ => {}
            }
        }
    }
    for (h, qh) in q.chunks_exact(d).enumerate() {
        attn_scores_f16(qh, k, stride, n, scale, &mut out[h * n..(h + 1) * n]);
    }
}

/// [`attn_mix_f16`] for `g` query heads that share one key/value head: `p` holds `g` rows of
/// `n` weights, `out` the `g` outputs (head after head). Each value is widened once for the
/// group; the outputs equal `g` calls of [`attn_mix_f16`] bit for bit.
pub fn attn_mix_f16_group(p: &[f32], g: usize, n: usize, v: &[u16], stride: usize, out: &mut [f32]) {
    let d = out.len().checked_div(g).unwrap_or(0);
    assert!(g > 0 && out.len() == g * d && p.len() >= g * n && (n == 0 || v.len() >= (n - 1) * stride + d) && stride >= d, "attn_mix_f16_group: shapes");
    #[cfg(target_arch = "x86_64")]
    if cpu::best() == Isa::Avx2 {
        // SAFETY: bounds asserted above; AVX2 and F16C detected.
        unsafe {
            match (d, g) {
                (32, 2) => return avx2::attn_mix_f16_group::<4, 2, 4>(p, n, v, stride, out),
                (32, 3) => return avx2::attn_mix_f16_group::<4, 3, 4>(p, n, v, stride, out),
                (64, 2) => return avx2::attn_mix_f16_group::<8, 2, 4>(p, n, v, stride, out),
                (64, 3) => return avx2::attn_mix_f16_group::<8, 3, 4>(p, n, v, stride, out),
                (128, 2) => return avx2::attn_mix_f16_group::<16, 2, 4>(p, n, v, stride, out),
                (128, 3) => return avx2::attn_mix_f16_group::<16, 3, 4>(p, n, v, stride, out),
                _ => {}
            }
        }
    }
    for (h, o) in out.chunks_exact_mut(d).enumerate() {
        attn_mix_f16(&p[h * n..(h + 1) * n], v, stride, o);
    }
}

/// f32 -> f16 bits, round to nearest even (bit-identical to the scalar twin).
pub fn f32_to_f16(src: &[f32], dst: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if cpu::best() == Isa::Avx2 {
        // SAFETY: F16C detected with AVX2.
        return unsafe { avx2::f32_to_f16(src, dst) };
    }
    f32_to_f16_scalar(src, dst)
}

/// f16 bits -> f32 (exact).
pub fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if cpu::best() == Isa::Avx2 {
        // SAFETY: F16C detected with AVX2.
        return unsafe { avx2::f16_to_f32(src, dst) };
    }
    f16_to_f32_scalar(src, dst)
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
    fn f16_kernels_match_their_scalar_twins() {
        let xs: Vec<f32> = (0..100).map(|i| (i as f32 * 0.77).sin() * 1000.0 + 1e-5 * i as f32).collect();
        let (mut a, mut b) = (vec![0u16; 100], vec![0u16; 100]);
        f32_to_f16(&xs, &mut a);
        f32_to_f16_scalar(&xs, &mut b);
        assert_eq!(a, b, "f32 -> f16 must round identically");
        let (mut fa, mut fb) = (vec![0.0; 100], vec![0.0; 100]);
        f16_to_f32(&a, &mut fa);
        f16_to_f32_scalar(&a, &mut fb);
        assert_eq!(fa, fb);
        for d in [32usize, 64, 128, 24] {
            for n in [0usize, 1, 5, 9] {
                let stride = 2 * d;
                let q: Vec<f32> = (0..d).map(|i| (i as f32 * 0.3).cos()).collect();
                let kf: Vec<f32> = (0..n.max(1) * stride).map(|i| (i as f32 * 0.013).sin()).collect();
                let mut k = vec![0u16; kf.len()];
                f32_to_f16_scalar(&kf, &mut k);
                let (mut got, mut want) = (vec![0.0; n], vec![0.0; n]);
                attn_scores_f16(&q, &k, stride, n, 0.5, &mut got);
                attn_scores_f16_scalar(&q, &k, stride, n, 0.5, &mut want);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()) * d as f32, "d={d} n={n}");
                }
                let p: Vec<f32> = (0..n).map(|j| 0.1 + j as f32).collect();
                let (mut o1, mut o2) = (vec![0.0; d], vec![0.0; d]);
                attn_mix_f16(&p, &k, stride, &mut o1);
                attn_mix_f16_scalar(&p, &k, stride, &mut o2);
                for (g, w) in o1.iter().zip(&o2) {
                    assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "d={d} n={n}");
                }
            }
        }
    }

    #[test]
    fn grouped_f16_attention_equals_one_head_at_a_time() {
        // Bit for bit against the one-head kernels (the same products in the same order), and
        // so within their tolerance of the scalar twins; g = 4 and d = 24 take the fallback.
        for d in [32usize, 64, 128, 24] {
            for g in [1usize, 2, 3, 4] {
                for n in [0usize, 1, 4, 6, 37] {
                    let stride = 3 * d + 8;
                    let q: Vec<f32> = (0..g * d).map(|i| (i as f32 * 0.31).cos()).collect();
                    let kf: Vec<f32> = (0..n.max(1) * stride).map(|i| (i as f32 * 0.013).sin() * 3.0).collect();
                    let mut k = vec![0u16; kf.len()];
                    f32_to_f16_scalar(&kf, &mut k);
                    let (mut got, mut want) = (vec![7.0; g * n], vec![7.0; g * n]);
                    attn_scores_f16_group(&q, g, &k, stride, n, 0.125, &mut got);
                    for h in 0..g {
                        attn_scores_f16(&q[h * d..(h + 1) * d], &k, stride, n, 0.125, &mut want[h * n..(h + 1) * n]);
                    }
                    assert_eq!(got, want, "scores d={d} g={g} n={n}");
                    let p: Vec<f32> = (0..g * n).map(|j| 1.0 / (j + 2) as f32).collect();
                    let (mut o1, mut o2) = (vec![9.0; g * d], vec![9.0; g * d]);
                    attn_mix_f16_group(&p, g, n, &k, stride, &mut o1);
                    for h in 0..g {
                        attn_mix_f16(&p[h * n..(h + 1) * n], &k, stride, &mut o2[h * d..(h + 1) * d]);
                    }
                    assert_eq!(o1, o2, "mix d={d} g={g} n={n}");
                }
            }
        }
    }

    #[test]
    fn attention_kernels_match_their_scalar_twins() {
        for d in [32usize, 64, 128, 40] {
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

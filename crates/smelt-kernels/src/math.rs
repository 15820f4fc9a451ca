//! Element-wise functions of the encoder and decoder layers, each an AVX2 kernel beside its
//! scalar twin (the same polynomial, so the two agree to a few ulp), chosen once per process:
//!
//! - [`exp`]: `e^x` by range reduction `x = n ln2 + r`, `|r| <= ln2/2`, a degree-7 Taylor
//!   polynomial for `e^r` (truncation error below `r^8/8! < 1e-8` relative) and `2^n` put into the
//!   exponent bits; `x < -87.3` gives 0, `x > 88.7` is clamped.
//! - [`erf_scalar`] and its twins: `erf(x) = x P(x^2) / Q(x^2)` on `x` clamped to `[-4, 4]` (|erf(4)| is 1 within
//!   2e-8), a rational fit with degrees 6 and 4 in `x^2`; absolute error below 5e-7.
//! - [`bias_gelu`]: `x = gelu(x + b)`, `gelu(x) = x/2 (1 + erf(x / sqrt 2))` (BERT's exact GELU),
//!   in place (the bias of the layer before is folded in).
//! - [`softmax`]: `x_i = e^(x_i - max) / sum_j e^(x_j - max)` in place.
//! - [`add_layernorm`]: `x = LayerNorm(x + y + c) w + b` in place (post-norm residual blocks with
//!   the bias `c` of the layer before folded in), mean and variance in two passes.

use std::sync::OnceLock;

#[cfg_attr(not(target_arch = "x86_64"), allow(unused_imports))]
use crate::cpu::{self, Isa};

const EXP_LO: f32 = -87.3;
const EXP_HI: f32 = 88.7;
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// `1/k!` for k = 7 down to 0 (Horner order).
const EXP_POLY: [f32; 8] = [1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0];
/// Numerator of the erf fit in `x^2` (Horner order).
const ERF_P: [f32; 7] = [-2.726_142_3e-10, 2.770_681_4e-8, -2.101_024e-6, -5.692_506_4e-5, -7.349_906_3e-4, -2.954_6e-3, -1.609_603_4e-2];
/// Denominator of the erf fit in `x^2` (Horner order).
const ERF_Q: [f32; 5] = [-1.456_607_2e-5, -2.133_740_6e-4, -1.682_827e-3, -7.373_329_2e-3, -1.426_474e-2];

/// Scalar twin of the vector `e^x`.
pub fn exp_scalar(x: f32) -> f32 {
    if x < EXP_LO || x.is_nan() {
        return if x.is_nan() { x } else { 0.0 };
    }
    let x = x.min(EXP_HI);
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = EXP_POLY.iter().fold(0.0f32, |acc, &c| acc.mul_add(r, c));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Scalar twin of the vector `erf(x)`.
pub fn erf_scalar(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = ERF_P[1..].iter().fold(ERF_P[0], |acc, &c| acc.mul_add(x2, c));
    let q = ERF_Q[1..].iter().fold(ERF_Q[0], |acc, &c| acc.mul_add(x2, c));
    x * p / q
}

/// Scalar twin of [`bias_gelu`].
pub fn bias_gelu_scalar(x: &mut [f32], bias: &[f32]) {
    for (v, &c) in x.iter_mut().zip(bias) {
        let u = *v + c;
        *v = 0.5 * u * (1.0 + erf_scalar(u * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// Scalar twin of [`exp`].
pub fn exp_slice_scalar(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = exp_scalar(*v));
}

/// Scalar twin of [`softmax`].
pub fn softmax_scalar(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return;
    }
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = exp_scalar(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// Scalar twin of [`add_layernorm`].
pub fn add_layernorm_scalar(x: &mut [f32], y: &[f32], c: &[f32], w: &[f32], b: &[f32], eps: f32) {
    let n = x.len() as f32;
    let mut sum = 0.0f32;
    for ((a, &v), &cc) in x.iter_mut().zip(y).zip(c) {
        *a += v + cc;
        sum += *a;
    }
    let mean = sum / n;
    let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((a, &g), &bb) in x.iter_mut().zip(w).zip(b) {
        *a = (*a - mean) * inv * g + bb;
    }
}

type SliceFn = unsafe fn(&mut [f32]);
type BiasFn = unsafe fn(&mut [f32], &[f32]);
type NormFn = unsafe fn(&mut [f32], &[f32], &[f32], &[f32], &[f32], f32);

struct Kernels {
    bias_gelu: BiasFn,
    exp: SliceFn,
    softmax: SliceFn,
    add_layernorm: NormFn,
}

fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| match cpu::best() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Kernels { bias_gelu: avx2::bias_gelu, exp: avx2::exp, softmax: avx2::softmax, add_layernorm: avx2::add_layernorm },
        _ => Kernels { bias_gelu: bias_gelu_scalar, exp: exp_slice_scalar, softmax: softmax_scalar, add_layernorm: add_layernorm_scalar },
    })
}

/// Whether every value is finite (no NaN, no infinity): an exponent field of all ones marks
/// both. Written as an OR over the whole slice, with no early exit, so the compiler vectorizes
/// it on every ISA (this is its own scalar form); a check of one layer's activations costs
/// about as much as reading them once.
pub fn all_finite(x: &[f32]) -> bool {
    const EXP: u32 = 0x7f80_0000;
    x.chunks(1024).all(|c| c.iter().fold(0u32, |acc, v| acc | (((v.to_bits() & EXP) == EXP) as u32)) == 0)
}

/// `x_i = gelu(x_i + bias_i)` (erf form); `bias` has `x.len()` entries.
pub fn bias_gelu(x: &mut [f32], bias: &[f32]) {
    assert_eq!(bias.len(), x.len(), "bias_gelu: lengths");
    // SAFETY: the kernel was chosen for an ISA this CPU has; it stays within `x` and `bias`.
    unsafe { (kernels().bias_gelu)(x, bias) }
}

/// `x_i = e^(x_i)` in place (the sampler's weights over the vocabulary); NaN gives NaN in the
/// scalar twin and a large value in the AVX2 kernel: callers pass no NaN.
pub fn exp(x: &mut [f32]) {
    // SAFETY: as in `bias_gelu`.
    unsafe { (kernels().exp)(x) }
}

/// Softmax in place (a row of all `-inf` is left as is).
pub fn softmax(x: &mut [f32]) {
    // SAFETY: as in `bias_gelu`.
    unsafe { (kernels().softmax)(x) }
}

/// `x = LayerNorm(x + y + c) * w + b`; `y`, `c`, `w` and `b` have `x.len()` entries.
pub fn add_layernorm(x: &mut [f32], y: &[f32], c: &[f32], w: &[f32], b: &[f32], eps: f32) {
    let n = x.len();
    assert!(y.len() == n && c.len() == n && w.len() == n && b.len() == n, "add_layernorm: lengths");
    // SAFETY: as in `bias_gelu`; lengths asserted.
    unsafe { (kernels().add_layernorm)(x, y, c, w, b, eps) }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hmax(v: __m256) -> f32 {
        let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)))
    }

    /// Eight lanes of [`exp_scalar`].
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp8(x: __m256) -> __m256 {
        let under = _mm256_cmp_ps(x, _mm256_set1_ps(EXP_LO), _CMP_LT_OQ);
        let x = _mm256_min_ps(x, _mm256_set1_ps(EXP_HI));
        let n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_setzero_ps();
        for c in EXP_POLY {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
        _mm256_andnot_ps(under, _mm256_mul_ps(p, scale))
    }

    /// Eight lanes of [`erf_scalar`].
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn erf8(x: __m256) -> __m256 {
        let x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(4.0)), _mm256_set1_ps(-4.0));
        let x2 = _mm256_mul_ps(x, x);
        let mut p = _mm256_set1_ps(ERF_P[0]);
        for &c in &ERF_P[1..] {
            p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(c));
        }
        let mut q = _mm256_set1_ps(ERF_Q[0]);
        for &c in &ERF_Q[1..] {
            q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(c));
        }
        _mm256_div_ps(_mm256_mul_ps(x, p), q)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn bias_gelu(x: &mut [f32], bias: &[f32]) {
        let n = x.len() / 8 * 8;
        let (half, s) = (_mm256_set1_ps(0.5), _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
        for i in (0..n).step_by(8) {
            let p = x.as_mut_ptr().add(i);
            let v = _mm256_add_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(bias.as_ptr().add(i)));
            let e = erf8(_mm256_mul_ps(v, s));
            _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(_mm256_set1_ps(1.0), e)));
        }
        bias_gelu_scalar(&mut x[n..], &bias[n..]);
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp(x: &mut [f32]) {
        let n = x.len() / 8 * 8;
        for i in (0..n).step_by(8) {
            let p = x.as_mut_ptr().add(i);
            _mm256_storeu_ps(p, exp8(_mm256_loadu_ps(p)));
        }
        super::exp_slice_scalar(&mut x[n..]);
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn softmax(x: &mut [f32]) {
        let n = x.len() / 8 * 8;
        // The tail runs as one more vector, padded with -inf (whose exp is 0).
        let mut tail = [f32::NEG_INFINITY; 8];
        tail[..x.len() - n].copy_from_slice(&x[n..]);
        let tv = _mm256_loadu_ps(tail.as_ptr());
        let mut m = tv;
        for i in (0..n).step_by(8) {
            m = _mm256_max_ps(m, _mm256_loadu_ps(x.as_ptr().add(i)));
        }
        let max = hmax(m);
        if max == f32::NEG_INFINITY {
            return;
        }
        let vmax = _mm256_set1_ps(max);
        let te = exp8(_mm256_sub_ps(tv, vmax));
        let mut acc = te;
        for i in (0..n).step_by(8) {
            let p = x.as_mut_ptr().add(i);
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), vmax));
            acc = _mm256_add_ps(acc, e);
            _mm256_storeu_ps(p, e);
        }
        let vinv = _mm256_set1_ps(1.0 / hsum(acc));
        for i in (0..n).step_by(8) {
            let p = x.as_mut_ptr().add(i);
            _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_loadu_ps(p), vinv));
        }
        _mm256_storeu_ps(tail.as_mut_ptr(), _mm256_mul_ps(te, vinv));
        let len = x.len();
        x[n..].copy_from_slice(&tail[..len - n]);
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn add_layernorm(x: &mut [f32], y: &[f32], c: &[f32], w: &[f32], b: &[f32], eps: f32) {
        let len = x.len();
        let n = len / 8 * 8;
        let xp = x.as_mut_ptr();
        let mut acc = _mm256_setzero_ps();
        for i in (0..n).step_by(8) {
            let yc = _mm256_add_ps(_mm256_loadu_ps(y.as_ptr().add(i)), _mm256_loadu_ps(c.as_ptr().add(i)));
            let v = _mm256_add_ps(_mm256_loadu_ps(xp.add(i)), yc);
            _mm256_storeu_ps(xp.add(i), v);
            acc = _mm256_add_ps(acc, v);
        }
        let mut sum = hsum(acc);
        for i in n..len {
            x[i] += y[i] + c[i];
            sum += x[i];
        }
        let mean = sum / len as f32;
        let vm = _mm256_set1_ps(mean);
        let mut acc = _mm256_setzero_ps();
        for i in (0..n).step_by(8) {
            let d = _mm256_sub_ps(_mm256_loadu_ps(xp.add(i)), vm);
            acc = _mm256_fmadd_ps(d, d, acc);
        }
        let var = (hsum(acc) + x[n..].iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>()) / len as f32;
        let inv = 1.0 / (var + eps).sqrt();
        let vi = _mm256_set1_ps(inv);
        for i in (0..n).step_by(8) {
            let d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xp.add(i)), vm), vi);
            _mm256_storeu_ps(xp.add(i), _mm256_fmadd_ps(d, _mm256_loadu_ps(w.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i))));
        }
        for i in n..len {
            x[i] = (x[i] - mean) * inv * w[i] + b[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_finite_finds_any_nan_or_infinity_anywhere() {
        let mut x: Vec<f32> = (0..3000).map(|i| (i as f32 - 1500.0) * 1e35).collect();
        x.push(f32::MAX);
        x.push(f32::MIN_POSITIVE / 2.0); // subnormals are finite
        assert!(all_finite(&x) && all_finite(&[]));
        for at in [0, 1, 1023, 1024, 2999, 3001] {
            for bad in [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::from_bits(0x7fc0_1234)] {
                let mut y = x.clone();
                y[at] = bad;
                assert!(!all_finite(&y), "{bad} at {at}");
            }
        }
    }

    fn grid(lo: f32, hi: f32, n: usize) -> Vec<f32> {
        (0..n).map(|i| lo + (hi - lo) * i as f32 / (n - 1) as f32).collect()
    }

    #[test]
    fn scalar_exp_and_erf_match_libm() {
        let mut worst = 0.0f64;
        for x in grid(-87.0, 88.0, 200_001) {
            let (got, want) = (exp_scalar(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 4e-7, "exp relative error {worst}");
        assert_eq!(exp_scalar(-100.0), 0.0);
        assert_eq!(exp_scalar(f32::NEG_INFINITY), 0.0);
        let mut worst = 0.0f64;
        for x in grid(-7.0, 7.0, 200_001) {
            worst = worst.max((erf_scalar(x) as f64 - libm::erf(x as f64)).abs());
        }
        assert!(worst < 5e-7, "erf absolute error {worst}");
    }

    #[test]
    fn softmax_matches_f64_and_survives_large_inputs() {
        for x in [vec![1000.0f32, 1001.0, f32::NEG_INFINITY], (0..37).map(|i| (i as f32 * 1.7).sin() * 30.0).collect()] {
            let max = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let e: Vec<f64> = x.iter().map(|&v| libm::exp(v as f64 - max)).collect();
            let sum: f64 = e.iter().sum();
            for f in [softmax_scalar as fn(&mut [f32]), softmax] {
                let mut y = x.clone();
                f(&mut y);
                for (p, q) in y.iter().zip(&e) {
                    assert!((*p as f64 - q / sum).abs() <= 1e-6 * (q / sum) + 1e-12, "softmax {p} vs {}", q / sum);
                }
            }
        }
    }

    #[test]
    fn every_isa_matches_the_scalar_twins() {
        let x: Vec<f32> = grid(-9.0, 9.0, 1003);
        let (mut a, mut b) = (x.clone(), x.clone());
        let shift: Vec<f32> = x.iter().map(|v| v.cos()).collect();
        bias_gelu_scalar(&mut a, &shift);
        bias_gelu(&mut b, &shift);
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() <= 2e-6 * p.abs().max(1.0), "gelu {p} vs {q}");
        }
        let (mut a, mut b) = (x.clone(), x.clone());
        softmax_scalar(&mut a);
        softmax(&mut b);
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() <= 1e-6 * p.abs() + 1e-12, "softmax {p} vs {q}");
        }
        // exp over the whole range, the tail included, and its limits.
        let mut e: Vec<f32> = grid(-100.0, 100.0, 1003);
        e.push(f32::NEG_INFINITY);
        let (mut a, mut b) = (e.clone(), e.clone());
        exp_slice_scalar(&mut a);
        exp(&mut b);
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() <= 2e-7 * p.abs() || p.to_bits() == q.to_bits(), "exp {p} vs {q}");
        }
        // Short rows (attention over a few tokens): tail only, one vector plus a tail.
        for len in 1..=17 {
            let (mut a, mut b) = (x[..len].to_vec(), x[500..500 + len].to_vec());
            a.copy_from_slice(&b);
            softmax_scalar(&mut a);
            softmax(&mut b);
            for (p, q) in a.iter().zip(&b) {
                assert!((p - q).abs() <= 1e-6 * p.abs() + 1e-12, "softmax of {len}: {p} vs {q}");
            }
        }
        let mut inf = vec![f32::NEG_INFINITY; 11];
        inf[3] = 2.0;
        softmax(&mut inf);
        assert!(inf[3] == 1.0 && inf.iter().enumerate().all(|(i, &v)| i == 3 || v == 0.0));
        let y: Vec<f32> = x.iter().map(|v| (v * 7.0).sin()).collect();
        let w: Vec<f32> = x.iter().map(|v| 1.0 + v / 10.0).collect();
        let bias: Vec<f32> = x.iter().map(|v| v / 3.0).collect();
        let (mut a, mut b) = (x.clone(), x.clone());
        add_layernorm_scalar(&mut a, &y, &shift, &w, &bias, 1e-12);
        add_layernorm(&mut b, &y, &shift, &w, &bias, 1e-12);
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() <= 1e-5, "layernorm {p} vs {q}");
        }
    }

    #[test]
    fn layernorm_against_f64() {
        let x: Vec<f32> = (0..384).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.3 + 100.0).collect();
        let (y, c) = (vec![0.25f32; 384], vec![0.25f32; 384]);
        let (w, b) = (vec![2.0f32; 384], vec![-1.0f32; 384]);
        let mut got = x.clone();
        add_layernorm(&mut got, &y, &c, &w, &b, 1e-12);
        let s: Vec<f64> = x.iter().map(|&v| v as f64 + 0.5).collect();
        let mean = s.iter().sum::<f64>() / 384.0;
        let var = s.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 384.0;
        for (g, v) in got.iter().zip(&s) {
            let want = (v - mean) / (var + 1e-12).sqrt() * 2.0 - 1.0;
            assert!((*g as f64 - want).abs() < 2e-5, "{g} vs {want}");
        }
    }
}

//! Backward passes of the layers the decoders and encoders are built from (llm.c's way: each
//! layer's gradient written by hand beside a plain forward, no autograd), the ground the training
//! engine stands on. Everything is row-major over `t` rows (tokens) and generic over [`Real`]
//! (`f32` for training, `f64` for the finite-difference tests).
//!
//! Conventions: `dy` is the gradient of the loss with respect to a layer's output; input
//! gradients (`dx`) are **written**, parameter gradients (`dw`, `db`, `dg`) are **accumulated**
//! (`+=`), so that gradient accumulation over micro-batches is a loop over calls.
//!
//! | layer | forward | backward |
//! |---|---|---|
//! | linear | `y = x W^T + b` (`x: t x i`, `W: o x i`) | `dx = dy W`, `dW += dy^T x`, `db += sum_t dy` |
//! | frozen linear (any ggml type; [`frozen`]) | `y = x W^T` | `dx = dy W`, W dequantized a tile of rows at a time |
//! | RMSNorm | `y = g * x / r`, `r = sqrt(mean(x^2) + eps)` | `dx = (g dy - x mean(g dy x) / r^2) / r`, `dg += dy x / r` |
//! | LayerNorm | `y = g * xh + b`, `xh = (x - mu) / s` | `dx = (gdy - mean(gdy) - xh mean(gdy xh)) / s` |
//! | GELU (erf) | `y = x Phi(x)` | `dx = dy (Phi(x) + x phi(x))` |
//! | SwiGLU | `h = silu(a) * u` | `da = dy u silu'(a)`, `du = dy silu(a)` |
//! | softmax cross-entropy | `L = mean_t -log softmax(z_t)[y_t]` | `dz = (softmax(z) - onehot(y)) / t` |
//! | RoPE | `y = R_pos x` (a rotation per pair) | `dx = R_pos^T dy` |
//! | attention (GQA, causal or not) | `O = softmax(s Q K^T + mask) V` per head | `dV += P^T dO`, `dS = P (dP - rowsum(dP P))`, `dQ = s dS K`, `dK += s dS^T Q` |
//! | distillation KL | `L = T^2 / t sum_t KL(softmax(z'/T) ‖ softmax(z/T))` | `dz = T / t (softmax(z/T) - softmax(z'/T))` |

use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

pub mod bert;
pub mod frozen;
pub mod llama;
pub mod lora;
pub mod par;
pub mod params;
pub(crate) mod weight;

pub use bert::{ActQuant, BertActs, BertTrain};
pub use frozen::frozen_linear_backward;
pub use llama::{LlamaActs, LlamaTrain};
pub use lora::{LoraSpec, LORA_TARGETS};
pub use params::{Params, Slot};

/// The floating-point types the backward passes run in.
pub trait Real: Copy + PartialOrd + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self> + Neg<Output = Self> + AddAssign + 'static {
    const ZERO: Self;
    const ONE: Self;
    fn of(v: f64) -> Self;
    fn f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn erf(self) -> Self;
    fn max(self, o: Self) -> Self;
}

macro_rules! real {
    ($t:ty, $erf:path) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            fn of(v: f64) -> Self {
                v as $t
            }
            fn f64(self) -> f64 {
                self as f64
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn erf(self) -> Self {
                $erf(self)
            }
            fn max(self, o: Self) -> Self {
                <$t>::max(self, o)
            }
        }
    };
}
real!(f32, libm::erff);
real!(f64, libm::erf);

/// `C (m x n) = beta * C + A B` for row-major `A` (`m x k`, or `k x m` read transposed when
/// `ta`) and `B` (`k x n`, or `n x k` read transposed when `tb`), through the `gemm` crate.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<T: Real>(c: &mut [T], a: &[T], b: &[T], (m, n, k): (usize, usize, usize), ta: bool, tb: bool, accumulate: bool) {
    assert!(c.len() >= m * n && a.len() >= m * k && b.len() >= k * n, "matmul: shapes");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].iter_mut().for_each(|v| *v = T::ZERO);
        }
        return;
    }
    // (column stride, row stride) of each operand as stored.
    let (a_cs, a_rs) = if ta { (m as isize, 1) } else { (1, k as isize) };
    let (b_cs, b_rs) = if tb { (k as isize, 1) } else { (1, n as isize) };
    // SAFETY: the extents were asserted above; the strides address within them.
    unsafe {
        gemm::gemm(m, n, k, c.as_mut_ptr(), 1, n as isize, accumulate, a.as_ptr(), a_cs, a_rs, b.as_ptr(), b_cs, b_rs, T::ONE, T::ONE, false, false, false, gemm::Parallelism::None);
    }
}

/// Linear forward: `y (t x o) = x (t x i) W^T + b` (`W: o x i`).
pub fn linear<T: Real>(x: &[T], w: &[T], b: Option<&[T]>, (t, i, o): (usize, usize, usize), y: &mut [T]) {
    matmul(y, x, w, (t, o, i), false, true, false);
    if let Some(b) = b {
        y[..t * o].chunks_exact_mut(o).for_each(|row| row.iter_mut().zip(b).for_each(|(v, b)| *v += *b));
    }
}

/// Linear backward: `dx = dy W` (written, when asked), `dW += dy^T x`, `db += sum_t dy`.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward<T: Real>(x: &[T], w: &[T], dy: &[T], (t, i, o): (usize, usize, usize), dx: Option<&mut [T]>, dw: Option<&mut [T]>, db: Option<&mut [T]>) {
    if let Some(dx) = dx {
        matmul(dx, dy, w, (t, i, o), false, false, false);
    }
    if let Some(dw) = dw {
        matmul(dw, dy, x, (o, i, t), true, false, true);
    }
    if let Some(db) = db {
        for row in dy[..t * o].chunks_exact(o) {
            db.iter_mut().zip(row).for_each(|(d, g)| *d += *g);
        }
    }
}

/// RMSNorm forward per row of `d`: `y = g * x / r`, `r = sqrt(mean(x^2) + eps)`; returns the
/// `1 / r` of each row (what the backward needs).
pub fn rmsnorm<T: Real>(x: &[T], g: &[T], eps: T, d: usize, y: &mut [T]) -> Vec<T> {
    x.chunks_exact(d)
        .zip(y.chunks_exact_mut(d))
        .map(|(x, y)| {
            let ms = x.iter().fold(T::ZERO, |s, v| s + *v * *v) / T::of(d as f64);
            let inv = T::ONE / (ms + eps).sqrt();
            y.iter_mut().zip(x).zip(g).for_each(|((y, x), g)| *y = *g * *x * inv);
            inv
        })
        .collect()
}

/// RMSNorm backward: `dx` written, `dg += dy x / r`.
pub fn rmsnorm_backward<T: Real>(x: &[T], g: &[T], inv_r: &[T], dy: &[T], d: usize, dx: &mut [T], dg: &mut [T]) {
    for (((x, dy), dx), &inv) in x.chunks_exact(d).zip(dy.chunks_exact(d)).zip(dx.chunks_exact_mut(d)).zip(inv_r) {
        // mean_j(g_j dy_j x_j)
        let m = x.iter().zip(dy).zip(g).fold(T::ZERO, |s, ((x, dy), g)| s + *g * *dy * *x) / T::of(d as f64);
        for j in 0..d {
            dx[j] = (g[j] * dy[j] - x[j] * m * inv * inv) * inv;
            dg[j] += dy[j] * x[j] * inv;
        }
    }
}

/// LayerNorm forward per row of `d`: `y = g * (x - mu) / s + b`, `s = sqrt(var + eps)`; returns
/// `(mu, 1 / s)` per row.
pub fn layernorm<T: Real>(x: &[T], g: &[T], b: &[T], eps: T, d: usize, y: &mut [T]) -> Vec<(T, T)> {
    let n = T::of(d as f64);
    x.chunks_exact(d)
        .zip(y.chunks_exact_mut(d))
        .map(|(x, y)| {
            let mu = x.iter().fold(T::ZERO, |s, v| s + *v) / n;
            let var = x.iter().fold(T::ZERO, |s, v| s + (*v - mu) * (*v - mu)) / n;
            let inv = T::ONE / (var + eps).sqrt();
            for j in 0..d {
                y[j] = g[j] * (x[j] - mu) * inv + b[j];
            }
            (mu, inv)
        })
        .collect()
}

/// LayerNorm backward: `dx` written, `dg += dy xh`, `db += dy`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward<T: Real>(x: &[T], g: &[T], stats: &[(T, T)], dy: &[T], d: usize, dx: &mut [T], dg: &mut [T], db: &mut [T]) {
    let n = T::of(d as f64);
    for (((x, dy), dx), &(mu, inv)) in x.chunks_exact(d).zip(dy.chunks_exact(d)).zip(dx.chunks_exact_mut(d)).zip(stats) {
        let (mut m1, mut m2) = (T::ZERO, T::ZERO);
        for j in 0..d {
            let xh = (x[j] - mu) * inv;
            let gdy = g[j] * dy[j];
            m1 += gdy;
            m2 += gdy * xh;
            dg[j] += dy[j] * xh;
            db[j] += dy[j];
        }
        let (m1, m2) = (m1 / n, m2 / n);
        for j in 0..d {
            let xh = (x[j] - mu) * inv;
            dx[j] = (g[j] * dy[j] - m1 - xh * m2) * inv;
        }
    }
}

/// The standard normal CDF `Phi(x)` and density `phi(x)`.
fn phi<T: Real>(x: T) -> (T, T) {
    let cdf = T::of(0.5) * (T::ONE + (x * T::of(std::f64::consts::FRAC_1_SQRT_2)).erf());
    let pdf = (-(x * x) * T::of(0.5)).exp() * T::of(0.398_942_280_401_432_7);
    (cdf, pdf)
}

/// GELU (erf form) elementwise: `y = x Phi(x)`.
pub fn gelu<T: Real>(x: &[T], y: &mut [T]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y = *x * phi(*x).0);
}

/// GELU backward: `dx = dy (Phi(x) + x phi(x))`, written.
pub fn gelu_backward<T: Real>(x: &[T], dy: &[T], dx: &mut [T]) {
    for ((dx, x), dy) in dx.iter_mut().zip(x).zip(dy) {
        let (c, p) = phi(*x);
        *dx = *dy * (c + *x * p);
    }
}

fn sigmoid<T: Real>(x: T) -> T {
    T::ONE / (T::ONE + (-x).exp())
}

/// SwiGLU elementwise: `h = silu(a) * u`, `silu(a) = a sigmoid(a)`.
pub fn swiglu<T: Real>(a: &[T], u: &[T], h: &mut [T]) {
    for ((h, a), u) in h.iter_mut().zip(a).zip(u) {
        *h = *a * sigmoid(*a) * *u;
    }
}

/// SwiGLU backward: `da = dh u silu'(a)` with `silu'(a) = s (1 + a (1 - s))`, `du = dh silu(a)`.
pub fn swiglu_backward<T: Real>(a: &[T], u: &[T], dh: &[T], da: &mut [T], du: &mut [T]) {
    for i in 0..a.len() {
        let s = sigmoid(a[i]);
        da[i] = dh[i] * u[i] * s * (T::ONE + a[i] * (T::ONE - s));
        du[i] = dh[i] * a[i] * s;
    }
}

/// `log softmax(z / temp)` of one row into `out`.
fn log_softmax_into<T: Real>(z: &[T], temp: T, out: &mut [T]) {
    let m = z.iter().fold(z[0], |m, v| m.max(*v)) / temp;
    let sum = z.iter().fold(T::ZERO, |s, v| s + (*v / temp - m).exp());
    let lse = m + sum.ln();
    out.iter_mut().zip(z).for_each(|(o, z)| *o = *z / temp - lse);
}

/// Softmax cross-entropy over `t` rows of `v` logits with targets `y`: returns the mean
/// `-log softmax(z_t)[y_t]` and writes `dz = (softmax(z) - onehot(y)) / t`; `None` (nothing
/// written) when the shapes disagree or a target is not below `v`.
pub fn cross_entropy<T: Real>(z: &[T], y: &[u32], v: usize, dz: &mut [T]) -> Option<T> {
    let t = y.len();
    if v == 0 || z.len() != t * v || dz.len() != t * v || y.iter().any(|&c| c as usize >= v) {
        return None;
    }
    let mut loss = T::ZERO;
    let scale = T::ONE / T::of(t.max(1) as f64);
    for ((z, dz), &c) in z.chunks_exact(v).zip(dz.chunks_exact_mut(v)).zip(y) {
        log_softmax_into(z, T::ONE, dz);
        loss += -dz[c as usize];
        dz.iter_mut().for_each(|g| *g = g.exp() * scale);
        dz[c as usize] += -scale;
    }
    Some(loss * scale)
}

/// Distillation loss (Hinton et al. 2015): `L = T^2 / t sum_t KL(p_t ‖ q_t)` with the teacher's
/// `p = softmax(z_teacher / T)` and the student's `q = softmax(z / T)`, over `t` rows of `v`;
/// writes the student's `dz = T / t (q - p)`. The `T^2` keeps the gradient's scale independent
/// of `T`.
pub fn distill_kl<T: Real>(z: &[T], z_teacher: &[T], v: usize, temp: T, dz: &mut [T]) -> T {
    let t = z.len() / v.max(1);
    let mut lp = vec![T::ZERO; v];
    let mut loss = T::ZERO;
    let scale = T::ONE / T::of(t.max(1) as f64);
    for ((z, zt), dz) in z.chunks_exact(v).zip(z_teacher.chunks_exact(v)).zip(dz.chunks_exact_mut(v)) {
        log_softmax_into(zt, temp, &mut lp);
        log_softmax_into(z, temp, dz);
        for j in 0..v {
            let p = lp[j].exp();
            loss += p * (lp[j] - dz[j]);
            dz[j] = temp * scale * (dz[j].exp() - p);
        }
    }
    loss * temp * temp * scale
}

/// Mean squared error `L = mean (a - b)^2` over all entries; writes `da = 2 (a - b) / n`.
pub fn mse<T: Real>(a: &[T], b: &[T], da: &mut [T]) -> T {
    let n = T::of(a.len().max(1) as f64);
    let mut loss = T::ZERO;
    for ((da, a), b) in da.iter_mut().zip(a).zip(b) {
        let e = *a - *b;
        loss += e * e;
        *da = T::of(2.0) * e / n;
    }
    loss / n
}

/// Cosine loss of rows of `d`: `L = mean_t (1 - cos(a_t, b_t))`; writes `da`.
pub fn cosine_loss<T: Real>(a: &[T], b: &[T], d: usize, da: &mut [T]) -> T {
    let t = a.len() / d;
    let scale = T::ONE / T::of(t.max(1) as f64);
    let mut loss = T::ZERO;
    for ((a, b), da) in a.chunks_exact(d).zip(b.chunks_exact(d)).zip(da.chunks_exact_mut(d)) {
        let dot = a.iter().zip(b).fold(T::ZERO, |s, (x, y)| s + *x * *y);
        let na = a.iter().fold(T::ZERO, |s, x| s + *x * *x).sqrt();
        let nb = b.iter().fold(T::ZERO, |s, x| s + *x * *x).sqrt();
        let cos = dot / (na * nb);
        loss += T::ONE - cos;
        // d cos / d a = b / (|a||b|) - cos a / |a|^2
        for j in 0..d {
            da[j] = -scale * (b[j] / (na * nb) - cos * a[j] / (na * na));
        }
    }
    loss * scale
}

/// Mean pooling of each sequence's rows (`starts` delimits them) and L2 normalization: the
/// sentence vectors of sentence-transformers' MiniLM models. Returns `(pooled, norms)`.
pub fn mean_pool_normalize<T: Real>(x: &[T], starts: &[usize], d: usize, out: &mut [T]) -> Vec<T> {
    let mut norms = Vec::with_capacity(starts.len().saturating_sub(1));
    for (s, o) in starts.windows(2).zip(out.chunks_exact_mut(d)) {
        let n = T::of((s[1] - s[0]).max(1) as f64);
        o.iter_mut().for_each(|v| *v = T::ZERO);
        for row in x[s[0] * d..s[1] * d].chunks_exact(d) {
            o.iter_mut().zip(row).for_each(|(o, r)| *o += *r);
        }
        o.iter_mut().for_each(|v| *v = *v / n);
        let norm = o.iter().fold(T::ZERO, |a, v| a + *v * *v).sqrt().max(T::of(1e-12));
        o.iter_mut().for_each(|v| *v = *v / norm);
        norms.push(norm);
    }
    norms
}

/// Backward of [`mean_pool_normalize`]: with `e = m / |m|`, `dm = (de - e (e . de)) / |m|`, and
/// every row of a sequence gets `dm / n`; `dx` written.
pub fn mean_pool_normalize_backward<T: Real>(e: &[T], norms: &[T], starts: &[usize], de: &[T], d: usize, dx: &mut [T]) {
    for (((s, e), de), &norm) in starts.windows(2).zip(e.chunks_exact(d)).zip(de.chunks_exact(d)).zip(norms) {
        let n = T::of((s[1] - s[0]).max(1) as f64);
        let dot = e.iter().zip(de).fold(T::ZERO, |a, (x, y)| a + *x * *y);
        for row in dx[s[0] * d..s[1] * d].chunks_exact_mut(d) {
            for j in 0..d {
                row[j] = (de[j] - e[j] * dot) / norm / n;
            }
        }
    }
}

/// RoPE backward: the rotation is orthogonal, so `dx = R^T dy` is the same rotation by the
/// opposite angles (`sin` negated), applied in place to `dy` (`n_heads * head_dim` values).
pub fn rope_backward(rope: &crate::ops::Rope, dy: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    let neg: Vec<f32> = sin.iter().map(|s| -s).collect();
    rope.apply(dy, head_dim, cos, &neg);
}

/// Attention's shape: query heads, key/value heads (a divisor of them: GQA), head width.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub q: usize,
    pub kv: usize,
    pub dim: usize,
}

/// Attention over one sequence of `n` tokens: `q` is `n x (heads.q * dim)`, `k` and `v` are
/// `n x (heads.kv * dim)`; query head `h` reads key/value head `h / (heads.q / heads.kv)`.
/// `O_h = P_h V_g` with `P_h = softmax(Q_h K_g^T / sqrt(dim))`, keys after the query masked when
/// `causal`. Writes `out` (`n x (heads.q * dim)`) and returns every head's `P` (`heads.q x n x
/// n`, row-major; what the backward needs).
pub fn attention<T: Real>(q: &[T], k: &[T], v: &[T], n: usize, heads: Heads, causal: bool, out: &mut [T]) -> Vec<T> {
    let (dq, dkv, hd) = (heads.q * heads.dim, heads.kv * heads.dim, heads.dim);
    let group = heads.q / heads.kv.max(1);
    let scale = T::ONE / T::of(hd as f64).sqrt();
    let mut probs = vec![T::ZERO; heads.q * n * n];
    for h in 0..heads.q {
        let g = h / group.max(1);
        for i in 0..n {
            let row = &mut probs[(h * n + i) * n..(h * n + i + 1) * n];
            let keys = if causal { i + 1 } else { n };
            let mut m = None::<T>;
            for (j, r) in row.iter_mut().enumerate().take(keys) {
                let s = (0..hd).fold(T::ZERO, |a, c| a + q[i * dq + h * hd + c] * k[j * dkv + g * hd + c]) * scale;
                *r = s;
                m = Some(m.map_or(s, |m: T| m.max(s)));
            }
            let m = m.unwrap_or(T::ZERO);
            let mut sum = T::ZERO;
            for r in row.iter_mut().take(keys) {
                *r = (*r - m).exp();
                sum += *r;
            }
            row.iter_mut().take(keys).for_each(|r| *r = *r / sum);
            for c in 0..hd {
                out[i * dq + h * hd + c] = (0..keys).fold(T::ZERO, |a, j| a + row[j] * v[j * dkv + g * hd + c]);
            }
        }
    }
    probs
}

/// Attention backward for [`attention`]: `dq` written, `dk` and `dv` written too (every
/// query head of a group adds into its key/value head, so they are zeroed first).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: Real>(q: &[T], k: &[T], v: &[T], probs: &[T], dout: &[T], n: usize, heads: Heads, dq_out: &mut [T], dk: &mut [T], dv: &mut [T]) {
    let (dqw, dkv, hd) = (heads.q * heads.dim, heads.kv * heads.dim, heads.dim);
    let group = heads.q / heads.kv.max(1);
    let scale = T::ONE / T::of(hd as f64).sqrt();
    dk[..n * dkv].iter_mut().chain(dv[..n * dkv].iter_mut()).for_each(|x| *x = T::ZERO);
    let mut dp = vec![T::ZERO; n];
    for h in 0..heads.q {
        let g = h / group.max(1);
        for i in 0..n {
            let p = &probs[(h * n + i) * n..(h * n + i + 1) * n];
            let go = &dout[i * dqw + h * hd..i * dqw + (h + 1) * hd];
            // dP_ij = dO_i . V_j; dV_j += P_ij dO_i.
            for j in 0..n {
                dp[j] = (0..hd).fold(T::ZERO, |a, c| a + go[c] * v[j * dkv + g * hd + c]);
                for c in 0..hd {
                    dv[j * dkv + g * hd + c] += p[j] * go[c];
                }
            }
            // dS_ij = P_ij (dP_ij - sum_l P_il dP_il); masked entries have P = 0.
            let inner = (0..n).fold(T::ZERO, |a, j| a + p[j] * dp[j]);
            for c in 0..hd {
                dq_out[i * dqw + h * hd + c] = T::ZERO;
            }
            for j in 0..n {
                let ds = p[j] * (dp[j] - inner) * scale;
                for c in 0..hd {
                    dq_out[i * dqw + h * hd + c] += ds * k[j * dkv + g * hd + c];
                    dk[j * dkv + g * hd + c] += ds * q[i * dqw + h * hd + c];
                }
            }
        }
    }
}

/// Embedding lookup backward: `dE[id] += dy_t` for each row `t` of token `ids[t]`.
pub fn embedding_backward<T: Real>(ids: &[u32], dy: &[T], d: usize, de: &mut [T]) {
    for (&id, g) in ids.iter().zip(dy.chunks_exact(d)) {
        let row = &mut de[id as usize * d..(id as usize + 1) * d];
        row.iter_mut().zip(g).for_each(|(r, g)| *r += *g);
    }
}

#[cfg(test)]
mod tests;

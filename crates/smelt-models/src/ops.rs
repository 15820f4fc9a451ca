//! Element-wise operations of transformer layers, on f32 slices. Reductions keep eight
//! independent partial sums so that the compiler vectorizes them. [`par_rows`] spreads a
//! per-token operation over the thread pool for batches.

use smelt_kernels::pool::{Disjoint, ThreadPool};

/// Below this many values [`par_rows`] runs on the calling thread: a norm or a residual add of
/// a few decoding sequences takes about as long as a dispatch to the pool (a decoding step of 8
/// sequences made 22 dispatches a layer, 10 of them for such rows).
const INLINE_VALUES: usize = 8192;

/// Calls `f(t, row_t)` for the `m` rows of `out` (`out.len() / m` values each), in parallel
/// when there is more than one row and more than [`INLINE_VALUES`] values.
pub fn par_rows(pool: &ThreadPool, out: &mut [f32], m: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    let len = out.len() / m.max(1);
    if m <= 1 {
        f(0, out);
        return;
    }
    if out.len() < INLINE_VALUES {
        // A few decoding sequences' norms or residuals: less work than waking the pool.
        out.chunks_exact_mut(len.max(1)).enumerate().for_each(|(t, row)| f(t, row));
        return;
    }
    let sink = Disjoint::new(out);
    let chunk = m.div_ceil(4 * pool.n_threads()).max(1);
    pool.for_chunks(m, chunk, &|r| {
        for t in r {
            // SAFETY: each row index is visited by one task.
            f(t, unsafe { sink.slice(t * len..(t + 1) * len) });
        }
    });
}

/// RMS normalisation: `y_i = x_i / sqrt(mean(x^2) + eps) * w_i` (sum of squares in f64, as
/// ggml does).
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
    let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let scale = (1.0 / (ss / x.len() as f64 + eps as f64).sqrt()) as f32;
    for ((o, &v), &g) in y.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

/// LayerNorm: `y_i = (x_i - mean) / sqrt(var + eps) * w_i + b_i`.
pub fn layernorm(x: &[f32], w: &[f32], b: &[f32], eps: f32, y: &mut [f32]) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let inv = 1.0 / (var + eps as f64).sqrt();
    for (((o, &v), &g), &bb) in y.iter_mut().zip(x).zip(w).zip(b) {
        *o = ((v as f64 - mean) * inv) as f32 * g + bb;
    }
}

/// `x += y`.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `out_i = silu(g_i) u_i`, `silu(g) = g / (1 + e^-g)` (SwiGLU).
pub fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, &a), &b) in out.iter_mut().zip(g).zip(u) {
        *o = a / (1.0 + (-a).exp()) * b;
    }
}

/// `g_i = silu(g_i) u_i` in place.
pub fn silu_mul_in_place(g: &mut [f32], u: &[f32]) {
    for (a, &b) in g.iter_mut().zip(u) {
        *a = *a / (1.0 + (-*a).exp()) * b;
    }
}

/// `sum_i a_i b_i`, eight lanes.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s = ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>();
    for v in acc {
        s += v;
    }
    s
}

/// `y += a x`.
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o += a * v;
    }
}

/// How RoPE pairs the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i + 1)`: ggml's `LLAMA_ROPE_TYPE_NORM`, used by GGUF Llama files
    /// (whose converter permuted Q and K to match).
    Interleaved,
    /// Halves `(i, i + d/2)`: HF's `rotate_half`, ggml's NEOX type (Gemma, Qwen, HF Llama
    /// weights).
    Halves,
}

/// Rotary position embedding: dimension pair `i` of a head at position `p` is rotated by the
/// angle `p / (scale * theta^(2i / dim))`.
#[derive(Clone, Debug)]
pub struct Rope {
    pub style: RopeStyle,
    /// Rotated dimensions per head (the rest pass through).
    pub dim: usize,
    inv_freq: Vec<f64>,
}

impl Rope {
    pub fn new(style: RopeStyle, dim: usize, theta: f64, linear_scale: f64) -> Rope {
        let inv_freq = (0..dim / 2).map(|i| theta.powf(-2.0 * i as f64 / dim as f64) / linear_scale).collect();
        Rope { style, dim, inv_freq }
    }

    /// `(cos, sin)` of every pair's angle at position `pos` (angles in f64).
    pub fn angles(&self, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        for ((c, s), &f) in cos.iter_mut().zip(sin.iter_mut()).zip(&self.inv_freq) {
            let (sv, cv) = (pos as f64 * f).sin_cos();
            *c = cv as f32;
            *s = sv as f32;
        }
    }

    /// Rotates every head of `x` (`n_heads * head_dim` values) with precomputed angles.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
        let half = self.dim / 2;
        for head in x.chunks_exact_mut(head_dim) {
            for i in 0..half {
                let (a, b) = match self.style {
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    RopeStyle::Halves => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos[i] - x1 * sin[i];
                head[b] = x0 * sin[i] + x1 * cos[i];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmsnorm_of_a_constant_is_the_weight() {
        let mut y = [0.0; 4];
        rmsnorm(&[2.0; 4], &[1.0, 2.0, 3.0, 4.0], 0.0, &mut y);
        assert_eq!(y, [1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn rope_preserves_norms_and_is_identity_at_zero() {
        let rope = Rope::new(RopeStyle::Interleaved, 4, 10000.0, 1.0);
        let (mut c, mut s) = ([0.0; 2], [0.0; 2]);
        rope.angles(0, &mut c, &mut s);
        let mut x = [1.0, 2.0, 3.0, 4.0];
        rope.apply(&mut x, 4, &c, &s);
        assert_eq!(x, [1.0, 2.0, 3.0, 4.0]);
        rope.angles(17, &mut c, &mut s);
        rope.apply(&mut x, 4, &c, &s);
        assert!(((x[0] * x[0] + x[1] * x[1]) - 5.0).abs() < 1e-5);
    }

    #[test]
    fn dot_matches_a_plain_sum() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.01).collect();
        let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - want).abs() < 1e-3);
    }
}

//! Every backward pass against central finite differences in f64 on small random shapes: the
//! loss is `L = sum(y * r)` for a fixed random `r` (so `dy = r`), or the loss function itself;
//! each analytic gradient entry must match `(L(p + h) - L(p - h)) / 2h` within [`FD_TOL`]
//! (relative to the gradient's largest entry). The f32 path, the same generic code, is checked
//! against the f64 one within [`F32_TOL`].

use super::*;

/// Step of the central differences.
const H: f64 = 1e-6;
/// Largest difference between an analytic and a finite-difference gradient entry, relative to
/// the largest gradient entry (f64; the differences' own error is about H^2 and 1e-16 / H).
const FD_TOL: f64 = 1e-6;
/// Largest difference between the f32 and f64 gradients, relative to the largest entry.
const F32_TOL: f64 = 1e-4;

/// A seeded generator of values in [-1, 1) (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Checks `grad` (the analytic gradient of `loss` at `p`) entry by entry.
fn check(what: &str, p: &[f64], grad: &[f64], loss: &dyn Fn(&[f64]) -> f64) {
    assert_eq!(p.len(), grad.len(), "{what}: gradient length");
    let scale = grad.iter().fold(1e-12f64, |m, g| m.max(g.abs()));
    let mut q = p.to_vec();
    for j in 0..p.len() {
        q[j] = p[j] + H;
        let up = loss(&q);
        q[j] = p[j] - H;
        let down = loss(&q);
        q[j] = p[j];
        let fd = (up - down) / (2.0 * H);
        assert!((fd - grad[j]).abs() <= FD_TOL * scale, "{what}[{j}]: analytic {} vs finite difference {fd} (scale {scale})", grad[j]);
    }
}

fn to32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn close32(what: &str, a: &[f32], b: &[f64]) {
    let scale = b.iter().fold(1e-12f64, |m, g| m.max(g.abs()));
    for (j, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((*x as f64 - y).abs() <= F32_TOL * scale, "{what}[{j}]: f32 {x} vs f64 {y}");
    }
}

#[test]
fn linear_backward_matches_finite_differences() {
    let (t, i, o) = (3, 5, 4);
    let mut r = Rng(1);
    let (x, w, b, dy) = (r.vec(t * i), r.vec(o * i), r.vec(o), r.vec(t * o));
    let f = |x: &[f64], w: &[f64], b: &[f64]| {
        let mut y = vec![0.0; t * o];
        linear(x, w, Some(b), (t, i, o), &mut y);
        dot(&y, &dy)
    };
    let (mut dx, mut dw, mut db) = (vec![0.0; t * i], vec![0.0; o * i], vec![0.0; o]);
    linear_backward(&x, &w, &dy, (t, i, o), Some(&mut dx), Some(&mut dw), Some(&mut db));
    check("linear dx", &x, &dx, &|p| f(p, &w, &b));
    check("linear dW", &w, &dw, &|p| f(&x, p, &b));
    check("linear db", &b, &db, &|p| f(&x, &w, p));
    // Parameter gradients accumulate; the f32 path agrees.
    let mut dw2 = dw.clone();
    linear_backward(&x, &w, &dy, (t, i, o), None, Some(&mut dw2), None);
    assert!(dw2.iter().zip(&dw).all(|(a, b)| (a - 2.0 * b).abs() < 1e-12));
    let (mut dx32, mut dw32) = (vec![0f32; t * i], vec![0f32; o * i]);
    linear_backward(&to32(&x), &to32(&w), &to32(&dy), (t, i, o), Some(&mut dx32), Some(&mut dw32), None);
    close32("linear dx", &dx32, &dx);
    close32("linear dW", &dw32, &dw);
}

#[test]
fn norms_backward_match_finite_differences() {
    let (t, d) = (3, 8);
    let mut r = Rng(2);
    let (x, g, b, dy) = (r.vec(t * d), r.vec(d), r.vec(d), r.vec(t * d));
    let eps = 1e-5;
    let rms = |x: &[f64], g: &[f64]| {
        let mut y = vec![0.0; t * d];
        rmsnorm(x, g, eps, d, &mut y);
        dot(&y, &dy)
    };
    let mut y = vec![0.0; t * d];
    let inv = rmsnorm(&x, &g, eps, d, &mut y);
    let (mut dx, mut dg) = (vec![0.0; t * d], vec![0.0; d]);
    rmsnorm_backward(&x, &g, &inv, &dy, d, &mut dx, &mut dg);
    check("rmsnorm dx", &x, &dx, &|p| rms(p, &g));
    check("rmsnorm dg", &g, &dg, &|p| rms(&x, p));

    let ln = |x: &[f64], g: &[f64], b: &[f64]| {
        let mut y = vec![0.0; t * d];
        layernorm(x, g, b, eps, d, &mut y);
        dot(&y, &dy)
    };
    let stats = layernorm(&x, &g, &b, eps, d, &mut y);
    let (mut dx, mut dg, mut db) = (vec![0.0; t * d], vec![0.0; d], vec![0.0; d]);
    layernorm_backward(&x, &g, &stats, &dy, d, &mut dx, &mut dg, &mut db);
    check("layernorm dx", &x, &dx, &|p| ln(p, &g, &b));
    check("layernorm dg", &g, &dg, &|p| ln(&x, p, &b));
    check("layernorm db", &b, &db, &|p| ln(&x, &g, p));
}

#[test]
fn activations_backward_match_finite_differences() {
    let n = 12;
    let mut r = Rng(3);
    let (x, u, dy) = (r.vec(n).iter().map(|v| 3.0 * v).collect::<Vec<_>>(), r.vec(n), r.vec(n));
    let mut dx = vec![0.0; n];
    gelu_backward(&x, &dy, &mut dx);
    check("gelu dx", &x, &dx, &|p| {
        let mut y = vec![0.0; n];
        gelu(p, &mut y);
        dot(&y, &dy)
    });
    // GELU(1) = Phi(1) = 0.8413447460685429 (the erf form, not the tanh approximation).
    let mut y = [0.0f64];
    gelu(&[1.0f64], &mut y);
    assert!((y[0] - 0.841_344_746_068_542_9).abs() < 1e-12, "{}", y[0]);
    let (mut da, mut du) = (vec![0.0; n], vec![0.0; n]);
    swiglu_backward(&x, &u, &dy, &mut da, &mut du);
    let f = |a: &[f64], u: &[f64]| {
        let mut h = vec![0.0; n];
        swiglu(a, u, &mut h);
        dot(&h, &dy)
    };
    check("swiglu da", &x, &da, &|p| f(p, &u));
    check("swiglu du", &u, &du, &|p| f(&x, p));
}

#[test]
fn losses_backward_match_finite_differences() {
    let (t, v) = (3, 7);
    let mut r = Rng(4);
    let z: Vec<f64> = r.vec(t * v).iter().map(|x| 4.0 * x).collect();
    let zt: Vec<f64> = r.vec(t * v).iter().map(|x| 4.0 * x).collect();
    let y = [0u32, 6, 3];
    let mut dz = vec![0.0; t * v];
    let loss = cross_entropy(&z, &y, v, &mut dz).unwrap();
    check("cross-entropy dz", &z, &dz, &|p| cross_entropy(p, &y, v, &mut vec![0.0; t * v]).unwrap());
    // Against the definition: mean of -log softmax at the targets.
    let direct: f64 = (0..t).map(|i| {
        let row = &z[i * v..(i + 1) * v];
        let s: f64 = row.iter().map(|x| x.exp()).sum();
        -(row[y[i] as usize].exp() / s).ln()
    }).sum::<f64>() / t as f64;
    assert!((loss - direct).abs() < 1e-12, "{loss} vs {direct}");
    assert!(cross_entropy(&z, &[0, 7, 1], v, &mut dz).is_none(), "a target out of range");

    for temp in [1.0, 2.5] {
        let mut dz = vec![0.0; t * v];
        let l = distill_kl(&z, &zt, v, temp, &mut dz);
        check("distill KL dz", &z, &dz, &|p| distill_kl(p, &zt, v, temp, &mut vec![0.0; t * v]));
        assert!(l > 0.0);
        assert!(distill_kl(&zt, &zt, v, temp, &mut dz).abs() < 1e-12, "KL of a distribution with itself");
    }

    let (a, b) = (r.vec(t * v), r.vec(t * v));
    let mut da = vec![0.0; t * v];
    mse(&a, &b, &mut da);
    check("mse da", &a, &da, &|p| mse(p, &b, &mut vec![0.0; t * v]));
    cosine_loss(&a, &b, v, &mut da);
    check("cosine da", &a, &da, &|p| cosine_loss(p, &b, v, &mut vec![0.0; t * v]));
}

#[test]
fn pooling_and_embedding_backward_match_finite_differences() {
    let d = 4;
    let starts = [0usize, 3, 5];
    let mut r = Rng(5);
    let (x, de) = (r.vec(5 * d), r.vec(2 * d));
    let f = |x: &[f64]| {
        let mut e = vec![0.0; 2 * d];
        mean_pool_normalize(x, &starts, d, &mut e);
        dot(&e, &de)
    };
    let mut e = vec![0.0; 2 * d];
    let norms = mean_pool_normalize(&x, &starts, d, &mut e);
    let mut dx = vec![0.0; 5 * d];
    mean_pool_normalize_backward(&e, &norms, &starts, &de, d, &mut dx);
    check("mean pool + normalize dx", &x, &dx, &f);

    // Embedding: y_t = E[ids_t], L = sum y dy; a repeated id gets both rows' gradients.
    let (vocab, ids) = (6, [2u32, 5, 2]);
    let (emb, dy) = (r.vec(vocab * d), r.vec(3 * d));
    let mut d_emb = vec![0.0; vocab * d];
    embedding_backward(&ids, &dy, d, &mut d_emb);
    check("embedding d_emb", &emb, &d_emb, &|p| ids.iter().enumerate().map(|(t, &id)| dot(&p[id as usize * d..(id as usize + 1) * d], &dy[t * d..(t + 1) * d])).sum());
}

#[test]
fn attention_backward_matches_finite_differences() {
    let (n, heads) = (4, Heads { q: 4, kv: 2, dim: 3 });
    let mut r = Rng(6);
    let (q, k, v) = (r.vec(n * 12), r.vec(n * 6), r.vec(n * 6));
    let dout = r.vec(n * 12);
    for causal in [true, false] {
        let f = |q: &[f64], k: &[f64], v: &[f64]| {
            let mut o = vec![0.0; n * 12];
            attention(q, k, v, n, heads, causal, &mut o);
            dot(&o, &dout)
        };
        let mut o = vec![0.0; n * 12];
        let p = attention(&q, &k, &v, n, heads, causal, &mut o);
        let (mut dq, mut dk, mut dv) = (vec![0.0; n * 12], vec![0.0; n * 6], vec![0.0; n * 6]);
        attention_backward(&q, &k, &v, &p, &dout, n, heads, &mut dq, &mut dk, &mut dv);
        check("attention dQ", &q, &dq, &|x| f(x, &k, &v));
        check("attention dK", &k, &dk, &|x| f(&q, x, &v));
        check("attention dV", &v, &dv, &|x| f(&q, &k, x));
        if causal {
            // The first token sees only itself: its output is its value.
            assert!((0..3).all(|c| (o[c] - v[c]).abs() < 1e-12));
        }
    }
}

/// RoPE is a rotation, so its backward is its transpose: `<R x, dy> = <x, R^T dy>` for every
/// `x` and `dy` (the gradient of a linear map is its adjoint), in both pairings.
#[test]
fn rope_backward_is_the_adjoint() {
    use crate::ops::{Rope, RopeStyle};
    for style in [RopeStyle::Interleaved, RopeStyle::Halves] {
        let (hd, heads) = (8, 2);
        let rope = Rope::new(style, hd, 10000.0, 1.0);
        let (mut cos, mut sin) = (vec![0f32; hd / 2], vec![0f32; hd / 2]);
        rope.angles(7, &mut cos, &mut sin);
        let mut r = Rng(7);
        let (x, dy) = (to32(&r.vec(hd * heads)), to32(&r.vec(hd * heads)));
        let mut rx = x.clone();
        rope.apply(&mut rx, hd, &cos, &sin);
        let mut dx = dy.clone();
        rope_backward(&rope, &mut dx, hd, &cos, &sin);
        let d = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>();
        let (lhs, rhs) = (d(&rx, &dy), d(&x, &dx));
        assert!((lhs - rhs).abs() < 1e-5, "{style:?}: {lhs} vs {rhs}");
        assert!(rx != x, "{style:?}: position 7 rotates");
    }
}

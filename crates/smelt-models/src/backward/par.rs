//! The pool-parallel pieces the models' training passes share: products on chunks of rows
//! through `gemm`, elementwise maps, and attention a sequence per task.

use std::ops::Range;

use smelt_kernels::pool::{Disjoint, ThreadPool};

use super::{attention, attention_backward, gelu_backward, linear, matmul, Heads};

/// Two disjoint sub-slices of `g` at once.
pub fn pair_mut<'a>(g: &'a mut [f32], a: &Range<usize>, b: &Range<usize>) -> (&'a mut [f32], &'a mut [f32]) {
    assert!(a.end <= b.start || b.end <= a.start, "overlapping parameter ranges");
    if a.start < b.start {
        let (lo, hi) = g.split_at_mut(b.start);
        (&mut lo[a.clone()], &mut hi[..b.len()])
    } else {
        let (lo, hi) = g.split_at_mut(a.start);
        (&mut hi[..a.len()], &mut lo[b.clone()])
    }
}

/// Rows per pool task for `n` rows: one chunk per thread, at least 16 rows.
pub(crate) fn row_chunk(pool: &ThreadPool, n: usize) -> usize {
    n.div_ceil(pool.threads_here().max(1)).max(16)
}

/// [`linear`] with the rows of `x` split over the pool.
pub fn par_linear(pool: &ThreadPool, x: &[f32], w: &[f32], b: Option<&[f32]>, (t, i, o): (usize, usize, usize), y: &mut [f32]) {
    let out = Disjoint::new(y);
    pool.for_chunks(t, row_chunk(pool, t), &|r| {
        // SAFETY: each task writes its own rows of `y`.
        let y = unsafe { out.slice(r.start * o..r.end * o) };
        linear(&x[r.start * i..r.end * i], w, b, (r.len(), i, o), y);
    });
}

/// Linear backward on the pool: `dx = dy W` by rows of `dy`, `dW += dy^T x` by rows of `W`
/// (columns of `dy`), `db += sum_t dy` (when there is a bias); `dw` and `db` are ranges of `grads`.
#[allow(clippy::too_many_arguments)]
pub fn par_linear_backward(pool: &ThreadPool, x: &[f32], w: &[f32], dy: &[f32], (t, i, o): (usize, usize, usize), dx: Option<&mut [f32]>, grads: &mut [f32], dw: &Range<usize>, db: Option<&Range<usize>>) {
    if let Some(dx) = dx {
        let out = Disjoint::new(dx);
        pool.for_chunks(t, row_chunk(pool, t), &|r| {
            // SAFETY: each task writes its own rows of `dx`.
            let dx = unsafe { out.slice(r.start * i..r.end * i) };
            matmul(dx, &dy[r.start * o..r.end * o], w, (r.len(), i, o), false, false, false);
        });
    }
    {
        let dw_out = Disjoint::new(&mut grads[dw.clone()]);
        pool.for_chunks(o, row_chunk(pool, o), &|r| {
            // dW[r, :] += dy[:, r]^T x: an (|r| x t) by (t x i) product, `dy` read with strides.
            // SAFETY: rows `r` of dW belong to this task; the strides stay inside `dy` and `x`.
            unsafe {
                gemm::gemm(r.len(), i, t, dw_out.as_mut_ptr().add(r.start * i), 1, i as isize, true, dy.as_ptr().add(r.start), o as isize, 1, x.as_ptr(), 1, i as isize, 1.0f32, 1.0f32, false, false, false, gemm::Parallelism::None);
            }
        });
    }
    if let Some(db) = db {
        let db = &mut grads[db.clone()];
        for row in dy[..t * o].chunks_exact(o) {
            db.iter_mut().zip(row).for_each(|(d, g)| *d += *g);
        }
    }
}

/// `f(a_chunk, out_chunk)` over chunks of elementwise inputs on the pool.
pub fn par_map(pool: &ThreadPool, a: &[f32], out: &mut [f32], f: &(dyn Fn(&[f32], &mut [f32]) + Sync)) {
    let n = a.len();
    let sink = Disjoint::new(out);
    pool.for_chunks(n, n.div_ceil(pool.threads_here().max(1)).max(1024), &|r| f(&a[r.clone()], unsafe { sink.slice(r) }));
}

/// [`gelu_backward`] over chunks on the pool: `du = dg gelu'(u)`.
pub fn par_gelu_backward(pool: &ThreadPool, u: &[f32], dg: &[f32], du: &mut [f32]) {
    let n = u.len();
    let sink = Disjoint::new(du);
    // SAFETY (both maps): each task writes its own elements.
    pool.for_chunks(n, n.div_ceil(pool.threads_here().max(1)).max(1024), &|r| gelu_backward(&u[r.clone()], &dg[r.clone()], unsafe { sink.slice(r) }));
}

/// Offsets of each sequence's probabilities (`h n^2`) in the flat buffer, and its length.
fn prob_offsets(starts: &[usize], h: usize) -> (Vec<usize>, usize) {
    let mut off = Vec::with_capacity(starts.len());
    let mut total = 0;
    for s in starts.windows(2) {
        off.push(total);
        total += h * (s[1] - s[0]).pow(2);
    }
    (off, total)
}

/// Attention of every sequence (causal or not), a pool task each: `q` is `t x (heads.q dim)`,
/// `k` and `v` are `t x (heads.kv dim)`. Returns `(probs, output)`.
pub fn par_attention(pool: &ThreadPool, q: &[f32], k: &[f32], v: &[f32], starts: &[usize], heads: Heads, causal: bool) -> (Vec<f32>, Vec<f32>) {
    let (wq, wkv) = (heads.q * heads.dim, heads.kv * heads.dim);
    let (off, total) = prob_offsets(starts, heads.q);
    let (mut probs, mut att) = (vec![0f32; total], vec![0f32; starts[starts.len() - 1] * wq]);
    let (ps, os) = (Disjoint::new(&mut probs), Disjoint::new(&mut att));
    pool.run(starts.len() - 1, &|s| {
        let (a, z) = (starts[s], starts[s + 1]);
        let n = z - a;
        // SAFETY: sequence `s` alone writes its rows of the output and its probabilities.
        let o = unsafe { os.slice(a * wq..z * wq) };
        let p = attention(&q[a * wq..z * wq], &k[a * wkv..z * wkv], &v[a * wkv..z * wkv], n, heads, causal, o);
        unsafe { ps.slice(off[s]..off[s] + heads.q * n * n) }.copy_from_slice(&p);
    });
    (probs, att)
}

/// Attention backward of every sequence: `(dQ, dK, dV)` from the forward's `(q, k, v)` and
/// probabilities (masked entries have probability 0: causal or not, no mask is needed).
pub fn par_attention_backward(pool: &ThreadPool, (q, k, v): (&[f32], &[f32], &[f32]), probs: &[f32], datt: &[f32], starts: &[usize], heads: Heads) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (wq, wkv) = (heads.q * heads.dim, heads.kv * heads.dim);
    let t = starts[starts.len() - 1];
    let (off, _) = prob_offsets(starts, heads.q);
    let (mut dq, mut dk, mut dv) = (vec![0f32; t * wq], vec![0f32; t * wkv], vec![0f32; t * wkv]);
    let (qs, ks, vs) = (Disjoint::new(&mut dq), Disjoint::new(&mut dk), Disjoint::new(&mut dv));
    pool.run(starts.len() - 1, &|s| {
        let (a, z) = (starts[s], starts[s + 1]);
        let n = z - a;
        let (rq, rkv) = (a * wq..z * wq, a * wkv..z * wkv);
        // SAFETY: sequence `s` alone writes its rows of the three gradients.
        let (gq, gk, gv) = unsafe { (qs.slice(rq.clone()), ks.slice(rkv.clone()), vs.slice(rkv.clone())) };
        attention_backward(&q[rq.clone()], &k[rkv.clone()], &v[rkv], &probs[off[s]..off[s] + heads.q * n * n], &datt[rq], n, heads, gq, gk, gv);
    });
    (dq, dk, dv)
}

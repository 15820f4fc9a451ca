//! Scaled dot-product attention with a KV cache, grouped-query (several query heads share one
//! key/value head).
//!
//! For query head `h` (key/value head `g = h / group`) at position `p`:
//! `out_h = sum_{j <= p} softmax_j(q_h . k_{j,g} * scale) v_{j,g}`, with `scale = 1/sqrt(d_head)`.
//!
//! The cache is position-major: layer `l` holds `K[j, g, :]` at `k[l][(j * n_kv + g) * d_head..]`,
//! so that appending a token writes one contiguous row. It grows with the tokens it holds (up to
//! its maximum), so memory follows use, not the model's trained context.

use std::cell::RefCell;

use smelt_kernels::pool::{Disjoint, ThreadPool};
use smelt_kernels::{math, vec};

/// How the cache stores keys and values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KvType {
    /// Exact (twice the memory).
    F32,
    /// Half precision, as llama.cpp stores them by default.
    #[default]
    F16,
}

#[derive(Debug)]
enum Store {
    F32 { k: Vec<Vec<f32>>, v: Vec<Vec<f32>> },
    F16 { k: Vec<Vec<u16>>, v: Vec<Vec<u16>> },
}

/// One layer's cached keys and values.
#[derive(Clone, Copy)]
pub enum LayerView<'a> {
    F32(&'a [f32], &'a [f32]),
    F16(&'a [u16], &'a [u16]),
}

/// Keys and values of every layer for the tokens seen so far.
#[derive(Debug)]
pub struct KvCache {
    store: Store,
    /// Tokens held.
    pub len: usize,
    /// The most tokens it may hold.
    pub max: usize,
    /// Values per token of each layer (`n_kv * d_head`; layers of a pruned model differ).
    rows: Vec<usize>,
}

fn grow<T: Clone + Default>(buf: &mut Vec<T>, need: usize, cap: usize) {
    if buf.len() < need {
        let target = need.max((buf.len() * 2).min(cap));
        buf.resize(target, T::default());
    }
}

impl KvCache {
    /// An empty cache with `rows[l]` values (`n_kv * d_head`) per token for layer `l`.
    pub fn new(rows: Vec<usize>, max: usize, ty: KvType) -> KvCache {
        let n_layers = rows.len();
        let store = match ty {
            KvType::F32 => Store::F32 { k: vec![Vec::new(); n_layers], v: vec![Vec::new(); n_layers] },
            KvType::F16 => Store::F16 { k: vec![Vec::new(); n_layers], v: vec![Vec::new(); n_layers] },
        };
        KvCache { store, len: 0, max, rows }
    }

    /// Makes room for `n` more tokens (amortised doubling, never past `max`).
    pub fn reserve(&mut self, n: usize) {
        let tokens = (self.len + n).min(self.max);
        match &mut self.store {
            Store::F32 { k, v } => k.iter_mut().chain(v.iter_mut()).zip(self.rows.iter().chain(&self.rows)).for_each(|(b, &r)| grow(b, tokens * r, self.max * r)),
            Store::F16 { k, v } => k.iter_mut().chain(v.iter_mut()).zip(self.rows.iter().chain(&self.rows)).for_each(|(b, &r)| grow(b, tokens * r, self.max * r)),
        }
    }

    /// Forgets everything from position `len` on (reusing a prefix in the next turn of a chat).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Stores keys and values (`m` tokens of `row` values each, at `stride`) of layer `l` at
    /// positions `len..len + m` (the caller advances `len` after the last layer).
    pub fn store(&mut self, l: usize, k: &[f32], v: &[f32], stride: usize, m: usize) {
        let r = self.rows[l];
        for t in 0..m {
            let at = (self.len + t) * r;
            let (ks, vs) = (&k[t * stride..t * stride + r], &v[t * stride..t * stride + r]);
            match &mut self.store {
                Store::F32 { k, v } => {
                    k[l][at..at + r].copy_from_slice(ks);
                    v[l][at..at + r].copy_from_slice(vs);
                }
                Store::F16 { k, v } => {
                    vec::f32_to_f16(ks, &mut k[l][at..at + r]);
                    vec::f32_to_f16(vs, &mut v[l][at..at + r]);
                }
            }
        }
    }

    pub fn layer(&self, l: usize) -> LayerView<'_> {
        match &self.store {
            Store::F32 { k, v } => LayerView::F32(&k[l], &v[l]),
            Store::F16 { k, v } => LayerView::F16(&k[l], &v[l]),
        }
    }

    /// Bytes held (for reports).
    pub fn bytes(&self) -> usize {
        match &self.store {
            Store::F32 { k, v } => k.iter().chain(v.iter()).map(|b| b.len() * 4).sum(),
            Store::F16 { k, v } => k.iter().chain(v.iter()).map(|b| b.len() * 2).sum(),
        }
    }
}

/// Shapes of one attention layer.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub n_heads: usize,
    pub n_kv: usize,
    pub d_head: usize,
}

impl Heads {
    fn group(&self) -> usize {
        self.n_heads / self.n_kv
    }
}

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's attention scratch, `len` scores long (kept between calls, so that
/// tasks do not allocate). Not reentrant.
pub(crate) fn with_scores<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCORES.with(|s| {
        let mut s = s.borrow_mut();
        s.resize(len, 0.0);
        f(&mut s[..len])
    })
}

/// Attention of `m` new tokens at positions `base..base + m` (their keys and values already in
/// the cache) over all positions up to their own. `q` holds each token's query heads at stride
/// `q_stride`; `out` receives `m * n_heads * d_head` values. `widen` is scratch for an f16
/// cache's keys and values as f32 (several tokens at once).
#[allow(clippy::too_many_arguments)]
pub fn attend(pool: &ThreadPool, h: Heads, q: &[f32], q_stride: usize, kv: LayerView, base: usize, m: usize, out: &mut [f32], widen: &mut Vec<f32>) {
    let row = h.n_kv * h.d_head;
    let scale = 1.0 / (h.d_head as f32).sqrt();
    let n = base + m;
    if m == 1 {
        let sink = Disjoint::new(out);
        pool.run(h.n_heads, &|hh| {
            // SAFETY: each head writes its own `d_head` outputs.
            let o = unsafe { sink.slice(hh * h.d_head..(hh + 1) * h.d_head) };
            attend_head(h, hh, &q[hh * h.d_head..(hh + 1) * h.d_head], kv, n, scale, o);
        });
        return;
    }
    let (k, v): (&[f32], &[f32]) = match kv {
        LayerView::F32(k, v) => (k, v),
        LayerView::F16(k16, v16) => {
            // Widen the layer's keys and values once for all heads and chunks.
            widen.resize(2 * n * row, 0.0);
            let (kw, vw) = widen.split_at_mut(n * row);
            vec::f16_to_f32(&k16[..n * row], kw);
            vec::f16_to_f32(&v16[..n * row], vw);
            (kw, vw)
        }
    };
    attend_batch(pool, h, q, q_stride, k, v, base, m, out)
}

/// Head `hh` of one token's query `qh` over the first `n_ctx` keys and values of `kv`:
/// `o = softmax(scale qh K^T) V` for the head's key/value group.
fn attend_head(h: Heads, hh: usize, qh: &[f32], kv: LayerView, n_ctx: usize, scale: f32, o: &mut [f32]) {
    let row = h.n_kv * h.d_head;
    let g = hh / h.group();
    with_scores(n_ctx, |s| {
        match kv {
            LayerView::F32(k, _) => vec::attn_scores(qh, &k[g * h.d_head..], row, n_ctx, scale, s),
            LayerView::F16(k, _) => vec::attn_scores_f16(qh, &k[g * h.d_head..], row, n_ctx, scale, s),
        }
        math::softmax(s);
        match kv {
            LayerView::F32(_, v) => vec::attn_mix(s, &v[g * h.d_head..], row, o),
            LayerView::F16(_, v) => vec::attn_mix_f16(s, &v[g * h.d_head..], row, o),
        }
    });
}

/// One new token of each of several sequences (a decoding step of a batch): query row
/// `seqs[i].0` of `q` (rows at stride `q_stride`, the last token of sequence `i`) attends over
/// `seqs[i].1`, whose first `seqs[i].2` tokens it sees; the result goes to the same row of
/// `out` (at stride `n_heads * d_head`). One pool task per (sequence, head), so a step of many
/// sequences is one dispatch, not one per sequence; over an f16 cache with several sequences,
/// one task per (sequence, key/value head) instead, whose query heads read each cached key and
/// value once (the results are bit-identical).
pub fn attend_one_each(pool: &ThreadPool, h: Heads, q: &[f32], q_stride: usize, seqs: &[(usize, LayerView, usize)], out: &mut [f32]) {
    let scale = 1.0 / (h.d_head as f32).sqrt();
    let d = h.n_heads * h.d_head;
    let sink = Disjoint::new(out);
    let (g, f16) = (h.group(), seqs.first().is_some_and(|s| matches!(s.1, LayerView::F16(..))));
    // Enough group tasks to keep every thread busy: a lone sequence keeps one task per head.
    if f16 && g > 1 && seqs.len() * h.n_kv >= 4 * pool.threads_here() {
        let row = h.n_kv * h.d_head;
        pool.run(seqs.len() * h.n_kv, &|task| {
            let (i, kvh) = (task / h.n_kv, task % h.n_kv);
            let (t, kv, n_ctx) = seqs[i];
            let heads = t * q_stride + kvh * g * h.d_head..t * q_stride + (kvh + 1) * g * h.d_head;
            // SAFETY: each (row, key/value head) task writes its own group's heads.
            let o = unsafe { sink.slice(t * d + kvh * g * h.d_head..t * d + (kvh + 1) * g * h.d_head) };
            match kv {
                LayerView::F16(k, v) => with_scores(g * n_ctx, |s| {
                    vec::attn_scores_f16_group(&q[heads], g, &k[kvh * h.d_head..], row, n_ctx, scale, s);
                    s.chunks_exact_mut(n_ctx.max(1)).for_each(math::softmax);
                    vec::attn_mix_f16_group(s, g, n_ctx, &v[kvh * h.d_head..], row, o);
                }),
                LayerView::F32(..) => {
                    for (j, (qh, oh)) in q[heads].chunks_exact(h.d_head).zip(o.chunks_exact_mut(h.d_head)).enumerate() {
                        attend_head(h, kvh * g + j, qh, kv, n_ctx, scale, oh);
                    }
                }
            }
        });
        return;
    }
    pool.run(seqs.len() * h.n_heads, &|task| {
        let (i, hh) = (task / h.n_heads, task % h.n_heads);
        let (t, kv, n_ctx) = seqs[i];
        let qh = &q[t * q_stride + hh * h.d_head..t * q_stride + (hh + 1) * h.d_head];
        // SAFETY: each (row, head) pair is written by this task alone.
        let o = unsafe { sink.slice(t * d + hh * h.d_head..t * d + (hh + 1) * h.d_head) };
        attend_head(h, hh, qh, kv, n_ctx, scale, o);
    });
}

/// The many-token case of [`attend`] over f32 keys and values.
#[allow(clippy::too_many_arguments)]
fn attend_batch(pool: &ThreadPool, h: Heads, q: &[f32], q_stride: usize, k: &[f32], v: &[f32], base: usize, m: usize, out: &mut [f32]) {
    let d = h.n_heads * h.d_head;
    let row = h.n_kv * h.d_head;
    let scale = 1.0 / (h.d_head as f32).sqrt();
    let sink = Disjoint::new(out);
    if m == 0 {
        return;
    }
    // Many tokens: per (head, chunk of tokens), S = Q K^T with the `gemm` crate, causal mask,
    // row softmax, O = S V.
    const CHUNK: usize = 32;
    let chunks = m.div_ceil(CHUNK);
    pool.run(h.n_heads * chunks, &|task| {
        let (hh, c) = (task / chunks, task % chunks);
        let g = hh / h.group();
        let (t0, t1) = (c * CHUNK, ((c + 1) * CHUNK).min(m));
        let rows = t1 - t0;
        let n_ctx = base + t1; // keys the last token of the chunk sees
        with_scores(rows * n_ctx, |s| {
            scores_gemm(&q[t0 * q_stride + hh * h.d_head..], q_stride, &k[g * h.d_head..], row, (rows, n_ctx, h.d_head), scale, s);
            for (i, srow) in s.chunks_exact_mut(n_ctx).enumerate() {
                let visible = base + t0 + i + 1;
                srow[visible..].fill(f32::NEG_INFINITY);
                math::softmax(srow);
            }
            // SAFETY: this task alone writes head `hh` of tokens `t0..t1`: rows of `out` at
            // stride `d`, columns `hh * d_head..`.
            unsafe { mix_gemm(s, &v[g * h.d_head..], row, (rows, n_ctx, h.d_head), sink.as_mut_ptr().add(t0 * d + hh * h.d_head), d) };
        });
    });
}

/// `S = scale * Q K^T` with the `gemm` crate: `q` holds `rows` query rows at stride `q_stride`,
/// `k` holds `n` key rows at stride `k_stride`, each `d` wide (a head's slice of packed rows);
/// `s` is `rows x n`, row-major.
pub(crate) fn scores_gemm(q: &[f32], q_stride: usize, k: &[f32], k_stride: usize, (rows, n, d): (usize, usize, usize), scale: f32, s: &mut [f32]) {
    if rows == 0 || n == 0 {
        return;
    }
    assert!(q.len() >= (rows - 1) * q_stride + d && k.len() >= (n - 1) * k_stride + d && s.len() >= rows * n, "scores_gemm: shapes");
    // SAFETY: the extents were asserted above.
    unsafe {
        gemm::gemm(
            rows, n, d,
            s.as_mut_ptr(), 1, n as isize, false,
            q.as_ptr(), 1, q_stride as isize,
            k.as_ptr(), k_stride as isize, 1,
            0.0, scale, false, false, false,
            gemm::Parallelism::None,
        );
    }
}

/// `O = P V` with the `gemm` crate: `p` is `rows x n` row-major (softmaxed scores), `v` holds
/// `n` value rows at stride `v_stride`, each `d` wide; `O` is written as `rows` rows of `d` at
/// stride `out_stride` from `out`.
///
/// # Safety
/// `out` must be valid for writes of `rows` rows of `d` at stride `out_stride`, and no one else
/// may access them during the call.
pub(crate) unsafe fn mix_gemm(p: &[f32], v: &[f32], v_stride: usize, (rows, n, d): (usize, usize, usize), out: *mut f32, out_stride: usize) {
    if rows == 0 || n == 0 {
        return;
    }
    assert!(p.len() >= rows * n && v.len() >= (n - 1) * v_stride + d, "mix_gemm: shapes");
    gemm::gemm(
        rows, d, n,
        out, 1, out_stride as isize, false,
        p.as_ptr(), 1, n as isize,
        v.as_ptr(), 1, v_stride as isize,
        0.0, 1.0, false, false, false,
        gemm::Parallelism::None,
    );
}

//! Scalar reference dot products: the oracle every SIMD kernel is tested against, and the
//! portable fallback. Each computes, per block, the integer sum of products of the stored
//! quants exactly and applies the block's float scales once, in the order written in its doc.
//!
//! Notation: `w` is a weight block, `x` an activation block; `dw`, `dx` their scales, `sx` the
//! activation block's stored sum (see [`crate::act`]).

use half::f16;
use smelt_formats::quant::blocks::*;

use crate::act::BlockQ8Sum;

#[inline]
fn blocks<B: bytemuck::Pod>(bytes: &[u8], n: usize) -> impl Iterator<Item = B> + '_ {
    bytes[..n * std::mem::size_of::<B>()].chunks_exact(std::mem::size_of::<B>()).map(bytemuck::pod_read_unaligned::<B>)
}

#[inline]
fn f32s(bytes: &[u8], n: usize) -> impl Iterator<Item = f32> + '_ {
    bytes[..4 * n].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

#[inline]
fn nibble(qs: &[u8; 16], j: usize) -> i32 {
    (if j < 16 { qs[j] & 0xF } else { qs[j - 16] >> 4 }) as i32
}

#[inline]
fn bit5(qh: [u8; 4], j: usize) -> i32 {
    ((u32::from_le_bytes(qh) >> j) & 1) as i32
}

/// `sum_i w_i x_i` in f32, sequentially.
pub fn dot_f32(n: usize, w: &[u8], x: &[u8]) -> f32 {
    f32s(w, n).zip(f32s(x, n)).fold(0.0, |s, (a, b)| s + a * b)
}

/// F16 weights, f32 activations: `sum_i f32(w_i) x_i`.
pub fn dot_f16(n: usize, w: &[u8], x: &[u8]) -> f32 {
    w[..2 * n].chunks_exact(2).zip(f32s(x, n)).fold(0.0, |s, (a, b)| s + f16::from_le_bytes([a[0], a[1]]).to_f32() * b)
}

/// BF16 weights, f32 activations.
pub fn dot_bf16(n: usize, w: &[u8], x: &[u8]) -> f32 {
    w[..2 * n].chunks_exact(2).zip(f32s(x, n)).fold(0.0, |s, (a, b)| {
        s + f32::from_bits((u16::from_le_bytes([a[0], a[1]]) as u32) << 16) * b
    })
}

/// The shared form of the 32-element types against Q8Sum activations: for weights
/// `w_i = a q_i + c`, `sum_b (a dx sum_i q_i y_i + c sx)`, where `block(w) -> (a, c, q)`.
fn dot_q8sum<B: bytemuck::Pod>(n: usize, w: &[u8], x: &[u8], block: impl Fn(&B) -> (f32, f32, [i32; QK])) -> f32 {
    let nb = n / QK;
    blocks::<B>(w, nb).zip(blocks::<BlockQ8Sum>(x, nb)).fold(0.0, |s, (a, b)| {
        let (scale, offset, q) = block(&a);
        let isum: i32 = q.iter().zip(b.qs.iter()).map(|(&p, &y)| p * y as i32).sum();
        s + scale * b.d * isum as f32 + offset * b.s
    })
}

/// Q4_0 (`w = d q - 8 d`, q in 0..16) x Q8Sum.
pub fn dot_q4_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot_q8sum(n, w, x, |b: &BlockQ4_0| (b.d.to_f32(), -8.0 * b.d.to_f32(), std::array::from_fn(|j| nibble(&b.qs, j))))
}

/// Q4_1 (`w = d q + m`) x Q8Sum.
pub fn dot_q4_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot_q8sum(n, w, x, |b: &BlockQ4_1| (b.d.to_f32(), b.m.to_f32(), std::array::from_fn(|j| nibble(&b.qs, j))))
}

/// Q5_0 (`w = d q - 16 d`, q in 0..32 with its fifth bit from `qh`) x Q8Sum.
pub fn dot_q5_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot_q8sum(n, w, x, |b: &BlockQ5_0| (b.d.to_f32(), -16.0 * b.d.to_f32(), std::array::from_fn(|j| nibble(&b.qs, j) + 16 * bit5(b.qh, j))))
}

/// Q5_1 (`w = d q + m`) x Q8Sum.
pub fn dot_q5_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot_q8sum(n, w, x, |b: &BlockQ5_1| (b.d.to_f32(), b.m.to_f32(), std::array::from_fn(|j| nibble(&b.qs, j) + 16 * bit5(b.qh, j))))
}

/// Q8_0 (`w = d q`, q signed) x Q8Sum.
pub fn dot_q8_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot_q8sum(n, w, x, |b: &BlockQ8_0| (b.d.to_f32(), 0.0, b.qs.map(|q| q as i32)))
}

/// Q8_1 weights (`w = d q`; the stored sum is not needed) x Q8Sum.
pub fn dot_q8_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot_q8sum(n, w, x, |b: &BlockQ8_1| (b.d.to_f32(), 0.0, b.qs.map(|q| q as i32)))
}

/// IQ4_NL (`w = d K[q]`, K the non-linear grid) x Q8Sum.
pub fn dot_iq4_nl(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot_q8sum(n, w, x, |b: &BlockIq4Nl| (b.d.to_f32(), 0.0, std::array::from_fn(|j| KVALUES_IQ4NL[nibble(&b.qs, j) as usize] as i32)))
}

/// The 2:4 sparse types against Q8Sum activations: per 64-weight block (two activation blocks
/// `x0`, `x1`, and the two weight scales of the same halves), each kept value `q_k` times the
/// activation at its position, summed in integers per half, then `dw0 dx0 isum0 + dw1 dx1
/// isum1`. `block(w) -> (dw, q, idx)`.
fn dot_s24<B: bytemuck::Pod>(n: usize, w: &[u8], x: &[u8], block: impl Fn(&B) -> ([f32; 2], [i32; QK], [u8; 8])) -> f32 {
    use smelt_formats::quant::sparse::{kept_position, kept_weight, QK_S24};
    let nb = n / QK_S24;
    let mut xs = blocks::<BlockQ8Sum>(x, 2 * nb);
    blocks::<B>(w, nb).fold(0.0, |s, a| {
        let xb = [xs.next(), xs.next()].map(|b| b.unwrap_or_else(bytemuck::Zeroable::zeroed));
        let (d, q, idx) = block(&a);
        let mut isum = [0i32; 2];
        for (k, &qk) in q.iter().enumerate() {
            let at = kept_weight(k, kept_position(&idx, k));
            isum[at / QK] += qk * xb[at / QK].qs[at % QK] as i32;
        }
        s + d[0] * xb[0].d * isum[0] as f32 + d[1] * xb[1].d * isum[1] as f32
    })
}

/// Q4_0_S24 (2:4 sparse, kept `w = d (q - 8)`) x Q8Sum.
pub fn dot_q4_0_s24(n: usize, w: &[u8], x: &[u8]) -> f32 {
    use smelt_formats::quant::sparse::BlockQ4_0S24;
    dot_s24(n, w, x, |b: &BlockQ4_0S24| (b.d.map(|d| d.to_f32()), std::array::from_fn(|k| nibble(&b.qs, k) - 8), b.idx))
}

/// Q8_0_S24 (2:4 sparse, kept `w = d q`) x Q8Sum.
pub fn dot_q8_0_s24(n: usize, w: &[u8], x: &[u8]) -> f32 {
    use smelt_formats::quant::sparse::BlockQ8_0S24;
    dot_s24(n, w, x, |b: &BlockQ8_0S24| (b.d.map(|d| d.to_f32()), b.qs.map(|q| q as i32), b.idx))
}

/// Q2_K x Q8_K: `sum_b dx (dw sum_j sc_j sum_{i in j} q_i y_i - dmin sum_j m_j bsum_j)` over
/// 16 sub-blocks of 16 (bsum_j = the activation block's precomputed `sum y` of sub-block j).
pub fn dot_q2_k_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let nb = n / QK_K;
    blocks::<BlockQ2K>(w, nb).zip(blocks::<BlockQ8K>(x, nb)).fold(0.0, |s, (a, b)| {
        let (mut isum, mut msum) = (0i32, 0i32);
        for j in 0..16 {
            let sub: i32 = (16 * j..16 * j + 16)
                .map(|e| {
                    let (h, sh, l) = (e / 128, (e % 128) / 32, e % 32);
                    ((a.qs[32 * h + l] >> (2 * sh)) & 3) as i32 * b.qs[e] as i32
                })
                .sum();
            isum += (a.scales[j] & 0xF) as i32 * sub;
            msum += (a.scales[j] >> 4) as i32 * b.bsums[j] as i32;
        }
        s + b.d * a.d.to_f32() * isum as f32 - b.d * a.dmin.to_f32() * msum as f32
    })
}

/// Q3_K x Q8_K: `sum_b dx dw sum_j (sc_j - 32) sum_{i in j} q_i y_i`, `q = low2 - 4 (1 - hbit)`.
pub fn dot_q3_k_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let nb = n / QK_K;
    blocks::<BlockQ3K>(w, nb).zip(blocks::<BlockQ8K>(x, nb)).fold(0.0, |s, (a, b)| {
        let sc = q3k_scales(&a.scales);
        let mut isum = 0i32;
        for (j, &scj) in sc.iter().enumerate() {
            let sub: i32 = (16 * j..16 * j + 16)
                .map(|e| {
                    let (h, sh, l) = (e / 128, (e % 128) / 32, e % 32);
                    let low = ((a.qs[32 * h + l] >> (2 * sh)) & 3) as i32;
                    let high = ((a.hmask[l] >> (e / 32)) & 1) as i32;
                    (low - 4 * (1 - high)) * b.qs[e] as i32
                })
                .sum();
            isum += scj as i32 * sub;
        }
        s + b.d * a.d.to_f32() * isum as f32
    })
}

fn k4_sums(qs: &[u8; QK_K / 2], qh: Option<&[u8; QK_K / 8]>, scales: &[u8; K_SCALE_SIZE], b: &BlockQ8K) -> (i32, i32) {
    let (mut isum, mut msum) = (0i32, 0i32);
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, scales);
        let sub: i32 = (32 * j..32 * j + 32)
            .map(|e| {
                let (c, sh, l) = (e / 64, (e % 64) / 32, e % 32);
                let mut q = ((qs[32 * c + l] >> (4 * sh)) & 0xF) as i32;
                if let Some(qh) = qh {
                    q |= (((qh[l] >> j) & 1) as i32) << 4;
                }
                q * b.qs[e] as i32
            })
            .sum();
        isum += sc as i32 * sub;
        msum += m as i32 * (b.bsums[2 * j] as i32 + b.bsums[2 * j + 1] as i32);
    }
    (isum, msum)
}

/// Q4_K x Q8_K: `sum_b dx (dw sum_j sc_j sum_{i in j} q_i y_i - dmin sum_j m_j sum_{i in j} y_i)`
/// over 8 sub-blocks of 32.
pub fn dot_q4_k_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let nb = n / QK_K;
    blocks::<BlockQ4K>(w, nb).zip(blocks::<BlockQ8K>(x, nb)).fold(0.0, |s, (a, b)| {
        let (isum, msum) = k4_sums(&a.qs, None, &a.scales, &b);
        s + b.d * a.d.to_f32() * isum as f32 - b.d * a.dmin.to_f32() * msum as f32
    })
}

/// Q5_K x Q8_K: as Q4_K with the fifth bit of each quant from `qh`.
pub fn dot_q5_k_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let nb = n / QK_K;
    blocks::<BlockQ5K>(w, nb).zip(blocks::<BlockQ8K>(x, nb)).fold(0.0, |s, (a, b)| {
        let (isum, msum) = k4_sums(&a.qs, Some(&a.qh), &a.scales, &b);
        s + b.d * a.d.to_f32() * isum as f32 - b.d * a.dmin.to_f32() * msum as f32
    })
}

/// Q6_K x Q8_K: `sum_b dx dw sum_j scale_j sum_{i in j} (q_i - 32) y_i` over 16 sub-blocks.
pub fn dot_q6_k_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let nb = n / QK_K;
    blocks::<BlockQ6K>(w, nb).zip(blocks::<BlockQ8K>(x, nb)).fold(0.0, |s, (a, b)| {
        let mut isum = 0i32;
        for j in 0..16 {
            let sub: i32 = (16 * j..16 * j + 16)
                .map(|e| {
                    let (h, t) = (e / 128, e % 128);
                    let low = (a.ql[64 * h + t % 64] >> (4 * (t / 64))) & 0xF;
                    let high = (a.qh[32 * h + t % 32] >> (2 * (t / 32))) & 3;
                    ((low | (high << 4)) as i32 - 32) * b.qs[e] as i32
                })
                .sum();
            isum += a.scales[j] as i32 * sub;
        }
        s + b.d * a.d.to_f32() * isum as f32
    })
}

/// Q8_K x Q8_K: `sum_b dw dx sum_i q_i y_i`.
pub fn dot_q8_k_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let nb = n / QK_K;
    blocks::<BlockQ8K>(w, nb).zip(blocks::<BlockQ8K>(x, nb)).fold(0.0, |s, (a, b)| {
        let isum: i32 = a.qs.iter().zip(b.qs.iter()).map(|(&p, &q)| p as i32 * q as i32).sum();
        s + a.d * b.d * isum as f32
    })
}

/// The lattice IQ types (IQ1_S .. IQ4_XS) x Q8_K: `sum_b dx sum_j s_j sum_{i in j} q_i y_i` over
/// 16 runs `j` of 16, with `q` and the real scales `s_j` from
/// [`smelt_formats::quant::iq::unpack`] (a block the unpacker refuses counts as zero).
pub fn dot_lattice_q8_k(ty: smelt_formats::GgmlType, n: usize, w: &[u8], x: &[u8]) -> f32 {
    let nb = n / QK_K;
    let (mut q, mut sc) = ([0i8; QK_K], [0.0f32; 16]);
    w[..nb * ty.block_bytes()].chunks_exact(ty.block_bytes()).zip(blocks::<BlockQ8K>(x, nb)).fold(0.0, |s, (a, b)| {
        if !smelt_formats::quant::iq::unpack(ty, a, &mut q, &mut sc) {
            return s;
        }
        let mut sum = 0.0f32;
        for (j, s) in sc.iter().enumerate() {
            let isum: i32 = (16 * j..16 * j + 16).map(|i| q[i] as i32 * b.qs[i] as i32).sum();
            sum += s * isum as f32;
        }
        s + b.d * sum
    })
}

/// One named kernel per lattice type (the kernel table holds plain function pointers).
macro_rules! lattice_kernels {
    ($($f:ident => $ty:ident),*) => {$(
        #[doc = concat!(stringify!($ty), " x Q8_K, see [`dot_lattice_q8_k`].")]
        pub fn $f(n: usize, w: &[u8], x: &[u8]) -> f32 {
            dot_lattice_q8_k(smelt_formats::GgmlType::$ty, n, w, x)
        }
    )*};
}

lattice_kernels!(
    dot_iq1_s_q8_k => IQ1_S, dot_iq1_m_q8_k => IQ1_M, dot_iq2_xxs_q8_k => IQ2_XXS, dot_iq2_xs_q8_k => IQ2_XS,
    dot_iq2_s_q8_k => IQ2_S, dot_iq3_xxs_q8_k => IQ3_XXS, dot_iq3_s_q8_k => IQ3_S, dot_iq4_xs_q8_k => IQ4_XS
);

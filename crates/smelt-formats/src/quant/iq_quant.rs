//! Quantizers for IQ4_XS and the lattice types IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS and IQ3_S (the
//! layouts are in [`super::iq`]). IQ1_S and IQ1_M are read and run, not written.
//!
//! Every search minimizes the weighted error `E = sum_i w_i (x_i - s q_i)^2` of a run of 16 or
//! 32 weights sharing the scale `s`, with `w_i = imp_i * sqrt(sigma^2 + x_i^2)` (`imp_i` the
//! column's importance, 1 without an importance matrix; `sigma^2` twice the super-block's mean
//! square, as ggml's lattice quantizers weigh).
//!
//! Lattice types: the sign of each weight is stored apart, so the search places `|x|` on the
//! all-positive grid. Where a type keeps only 7 sign bits per 8 weights (even parity: IQ2_XXS,
//! IQ2_XS, IQ3_XXS) and the signs of 8 weights have odd parity, the weight with the least
//! `w_i x_i^2` takes the wrong sign and the target `-|x_i|` (its grid value will be the
//! smallest). For each candidate inverse scale `id` (around `g_max / max|x|`, `g_max` the
//! grid's largest value) each group of 4 or 8 weights takes, among the grid points nearest to
//! the point its values round to coordinate by coordinate (precomputed per type), the one with
//! the least weighted distance to `id |x|`; the run keeps the candidate whose least-squares
//! scale `s = sum w q |x| / sum w q^2` explains most (`(sum w q |x|)^2 / sum w q^2`). The block
//! scale `d` maps the largest run scale to the largest 4-bit code, each run's code is rounded,
//! and every group is placed again against the scale it will be read with.

use std::sync::OnceLock;

use half::f16;

use super::blocks::QK_K;
use super::iq_grids::*;
use super::search::GROUP_MAX_EPS;
use super::GgmlType;

/// How a lattice type stores its grid and scales.
struct Lattice {
    ty: GgmlType,
    /// Values per grid point (4 or 8).
    group: usize,
    /// Weights per stored scale (16 or 32).
    run: usize,
    /// 7 stored sign bits per 8 weights (even parity) instead of 8.
    parity: bool,
    /// The grid's distinct values, ascending.
    levels: Vec<f32>,
    /// Grid point values (the first `group` of each).
    points: Vec<[f32; 8]>,
    /// Per point of the full cube `levels^group` (coordinates as level indices, little-endian
    /// base `levels.len()`): the grid points nearest to it.
    near: Vec<Vec<u16>>,
    /// Run scale `d (a + b l)` for the 4-bit code `l`.
    a: f32,
    b: f32,
}

/// Grid points kept per cube point.
const NEAR: usize = 12;

impl Lattice {
    fn new(ty: GgmlType) -> Lattice {
        let (group, run, parity, grid, a, b): (usize, usize, bool, Vec<u64>, f32, f32) = match ty {
            GgmlType::IQ2_XXS => (8, 32, true, IQ2XXS_GRID.to_vec(), 0.125, 0.25),
            GgmlType::IQ2_XS => (8, 16, true, IQ2XS_GRID.to_vec(), 0.125, 0.25),
            GgmlType::IQ2_S => (8, 16, false, IQ2S_GRID.to_vec(), 0.125, 0.25),
            GgmlType::IQ3_XXS => (4, 32, true, IQ3XXS_GRID.iter().map(|&g| g as u64).collect(), 0.25, 0.5),
            GgmlType::IQ3_S => (4, 32, false, IQ3S_GRID.iter().map(|&g| g as u64).collect(), 1.0, 2.0),
            _ => unreachable!("only lattice types are listed in `lattice`"),
        };
        let points: Vec<[f32; 8]> = grid.iter().map(|&g| std::array::from_fn(|k| if k < group { (g >> (8 * k)) as u8 as f32 } else { 0.0 })).collect();
        let mut levels: Vec<f32> = points.iter().flat_map(|p| p[..group].to_vec()).collect();
        levels.sort_by(f32::total_cmp);
        levels.dedup();
        let cube = levels.len().pow(group as u32);
        let near = (0..cube)
            .map(|c| {
                let v: Vec<f32> = (0..group).map(|k| levels[c / levels.len().pow(k as u32) % levels.len()]).collect();
                let mut order: Vec<(f32, u16)> = points.iter().enumerate().map(|(i, p)| (v.iter().zip(p).map(|(a, b)| (a - b) * (a - b)).sum(), i as u16)).collect();
                order.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
                order.into_iter().take(NEAR).map(|(_, i)| i).collect()
            })
            .collect();
        Lattice { ty, group, run, parity, levels, points, near, a, b }
    }

    /// The grid point of least weighted distance to `u` (one group) among those near it.
    fn nearest(&self, u: &[f32], w: &[f32]) -> u16 {
        let l = self.levels.len();
        let mut cube = 0;
        for (k, &v) in u.iter().enumerate() {
            let i = (0..l).min_by(|&i, &j| (self.levels[i] - v).abs().total_cmp(&(self.levels[j] - v).abs())).unwrap_or(0);
            cube += i * l.pow(k as u32);
        }
        let dist = |p: u16| -> f32 { u.iter().zip(w).zip(&self.points[p as usize]).map(|((u, w), g)| w * (u - g) * (u - g)).sum() };
        // Each candidate's distance once; ties go to the lower index (the list is sorted by it
        // within equal cube distances, and `min_by` keeps the first minimum).
        self.near[cube].iter().map(|&p| (dist(p), p)).min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))).map_or(0, |(_, p)| p)
    }

    /// Grid points for every group of one run at inverse scale `id`, and the run's
    /// `(sum w q a, sum w q^2)`.
    fn place(&self, a: &[f32], w: &[f32], id: f32, idx: &mut [u16]) -> (f32, f32) {
        let (mut sqx, mut sq2) = (0.0f32, 0.0f32);
        let mut u = [0.0f32; 8];
        for (g, slot) in idx.iter_mut().enumerate() {
            let r = g * self.group..(g + 1) * self.group;
            for (o, &v) in u.iter_mut().zip(&a[r.clone()]) {
                *o = id * v;
            }
            *slot = self.nearest(&u[..self.group], &w[r.clone()]);
            let p = &self.points[*slot as usize];
            for (k, i) in r.enumerate() {
                sqx += w[i] * p[k] * a[i];
                sq2 += w[i] * p[k] * p[k];
            }
        }
        (sqx, sq2)
    }

    /// One super-block: 256 weights `x`, search weights `w`, into `out` (one block).
    fn block(&self, x: &[f32], w: &[f32], out: &mut [u8]) {
        out.fill(0);
        // Magnitudes to place and the sign of each weight (parity repaired per 8).
        let mut a: [f32; QK_K] = std::array::from_fn(|i| x[i].abs());
        let mut neg: [bool; QK_K] = std::array::from_fn(|i| x[i] < 0.0);
        if self.parity {
            for g in 0..QK_K / 8 {
                let r = 8 * g..8 * g + 8;
                if neg[r.clone()].iter().filter(|&&n| n).count() % 2 == 1 {
                    let i = r.min_by(|&i, &j| (w[i] * x[i] * x[i]).total_cmp(&(w[j] * x[j] * x[j]))).unwrap_or(8 * g);
                    neg[i] = !neg[i];
                    a[i] = -a[i];
                }
            }
        }
        let runs = QK_K / self.run;
        let per_run = self.run / self.group;
        let mut idx = [0u16; QK_K / 4];
        let mut scales = [0.0f32; 16];
        let top = *self.levels.last().unwrap_or(&1.0);
        let step = if self.levels.len() <= 3 { 0.015 } else { 0.005 };
        let mut trial = [0u16; 8];
        for r in 0..runs {
            let span = r * self.run..(r + 1) * self.run;
            let (ar, wr) = (&a[span.clone()], &w[span]);
            let max = ar.iter().fold(0.0f32, |m, &v| m.max(v));
            if max < GROUP_MAX_EPS {
                continue;
            }
            let mut best = 0.0f32;
            for t in -12..=12 {
                let id = top * (1.0 + step * t as f32) / max;
                let (sqx, sq2) = self.place(ar, wr, id, &mut trial[..per_run]);
                if sq2 > 0.0 && sqx > 0.0 && sqx * sqx > best * sq2 {
                    best = sqx * sqx / sq2;
                    scales[r] = sqx / sq2;
                    idx[r * per_run..(r + 1) * per_run].copy_from_slice(&trial[..per_run]);
                }
            }
        }
        // The block scale: the largest run scale gets code 15.
        let max_scale = scales[..runs].iter().fold(0.0f32, |m, &s| m.max(s));
        let d = f16::from_f32(max_scale / (self.a + 15.0 * self.b));
        let df = d.to_f32();
        let mut codes = [0u8; 16];
        for r in 0..runs {
            if df <= 0.0 || scales[r] <= 0.0 {
                continue;
            }
            let l = (((scales[r] / df - self.a) / self.b).round()).clamp(0.0, 15.0) as u8;
            codes[r] = l;
            let s = self.run_scale(df, l);
            let span = r * self.run..(r + 1) * self.run;
            self.place(&a[span.clone()], &w[span], 1.0 / s, &mut idx[r * per_run..(r + 1) * per_run]);
        }
        self.pack(d, &codes, &idx, &neg, out);
    }

    /// The run scale a reader computes for code `l` (the same f32 operations as
    /// [`super::iq::unpack`]).
    fn run_scale(&self, d: f32, l: u8) -> f32 {
        match self.ty {
            GgmlType::IQ3_S => d * (1 + 2 * l) as f32,
            GgmlType::IQ3_XXS => d * (0.5 + l as f32) * 0.5,
            _ => d * (0.5 + l as f32) * 0.25,
        }
    }

    fn pack(&self, d: f16, codes: &[u8; 16], idx: &[u16; QK_K / 4], neg: &[bool; QK_K], out: &mut [u8]) {
        out[..2].copy_from_slice(&d.to_le_bytes());
        // Sign bits of 8 weights starting at `i`.
        let signs8 = |i: usize| (0..8).fold(0u8, |s, k| s | (neg[i + k] as u8) << k);
        match self.ty {
            GgmlType::IQ2_XXS => {
                for ib in 0..8 {
                    let aux0 = (0..4).fold(0u32, |v, l| v | (idx[4 * ib + l] as u32) << (8 * l));
                    let aux1 = (0..4).fold((codes[ib] as u32) << 28, |v, l| v | ((signs8(32 * ib + 8 * l) & 127) as u32) << (7 * l));
                    out[2 + 8 * ib..6 + 8 * ib].copy_from_slice(&aux0.to_le_bytes());
                    out[6 + 8 * ib..10 + 8 * ib].copy_from_slice(&aux1.to_le_bytes());
                }
            }
            GgmlType::IQ2_XS => {
                for k in 0..32 {
                    let v = idx[k] | ((signs8(8 * k) & 127) as u16) << 9;
                    out[2 + 2 * k..4 + 2 * k].copy_from_slice(&v.to_le_bytes());
                }
                for (j, &l) in codes.iter().enumerate() {
                    out[66 + j / 2] |= l << (4 * (j % 2));
                }
            }
            GgmlType::IQ2_S => {
                for k in 0..32 {
                    out[2 + k] = idx[k] as u8;
                    out[34 + k] = signs8(8 * k);
                    out[66 + k / 4] |= ((idx[k] >> 8) as u8 & 3) << (2 * (k % 4));
                }
                for (j, &l) in codes.iter().enumerate() {
                    out[74 + j / 2] |= l << (4 * (j % 2));
                }
            }
            GgmlType::IQ3_XXS => {
                for k in 0..64 {
                    out[2 + k] = idx[k] as u8;
                }
                for ib in 0..8 {
                    let aux = (0..4).fold((codes[ib] as u32) << 28, |v, l| v | ((signs8(32 * ib + 8 * l) & 127) as u32) << (7 * l));
                    out[66 + 4 * ib..70 + 4 * ib].copy_from_slice(&aux.to_le_bytes());
                }
            }
            GgmlType::IQ3_S => {
                for k in 0..64 {
                    out[2 + k] = idx[k] as u8;
                    out[66 + k / 8] |= ((idx[k] >> 8) as u8 & 1) << (k % 8);
                }
                for (k, o) in out[74..106].iter_mut().enumerate() {
                    *o = signs8(8 * k);
                }
                for ib in 0..8 {
                    out[106 + ib / 2] |= codes[ib] << (4 * (ib % 2));
                }
            }
            _ => unreachable!("only lattice types are listed in `lattice`"),
        }
    }
}

/// The lattice description of `ty`, built once.
fn lattice(ty: GgmlType) -> &'static Lattice {
    static TABLES: [OnceLock<Lattice>; 5] = [OnceLock::new(), OnceLock::new(), OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let i = match ty {
        GgmlType::IQ2_XXS => 0,
        GgmlType::IQ2_XS => 1,
        GgmlType::IQ2_S => 2,
        GgmlType::IQ3_XXS => 3,
        _ => 4,
    };
    TABLES[i].get_or_init(|| Lattice::new(ty))
}

/// Whether [`quantize_block`] writes `ty`.
pub(super) fn can_write(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::IQ2_XXS | GgmlType::IQ2_XS | GgmlType::IQ2_S | GgmlType::IQ3_XXS | GgmlType::IQ3_S | GgmlType::IQ4_XS)
}

/// Search weights of one super-block: `imp_i sqrt(sigma^2 + x_i^2)`, `sigma^2` twice the mean
/// square (`imp` = 1 without an importance matrix).
fn search_weights(x: &[f32], imp: Option<&[f32]>) -> [f32; QK_K] {
    let sigma2 = 2.0 * x.iter().map(|v| v * v).sum::<f32>() / QK_K as f32;
    std::array::from_fn(|i| imp.map_or(1.0, |m| m[i]) * (sigma2 + x[i] * x[i]).sqrt())
}

/// One block of `ty` (see [`can_write`]) from 256 weights, importance-weighted where `imp` is
/// given.
pub(super) fn quantize_block(ty: GgmlType, x: &[f32], imp: Option<&[f32]>, out: &mut [u8]) {
    let w = search_weights(x, imp);
    if ty == GgmlType::IQ4_XS {
        iq4_xs_block(x, &w, out);
    } else {
        lattice(ty).block(x, &w, out);
    }
}

/// IQ4_XS: each run of 32 searched as an IQ4_NL block ([`super::weighted::iq4_scale`]); the
/// block scale `d = -s_max / 32` (`s_max` the run scale of largest magnitude) so that the 6-bit
/// codes `l = round(s / d)` in -32..=31 reach it; indices picked again against `d l`.
fn iq4_xs_block(x: &[f32], w: &[f32], out: &mut [u8]) {
    out.fill(0);
    let s: [f32; 8] = std::array::from_fn(|r| super::weighted::iq4_scale(&x[32 * r..32 * r + 32], &w[32 * r..32 * r + 32]));
    let max_scale = s.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let d = f16::from_f32(-max_scale / 32.0);
    let df = d.to_f32();
    out[..2].copy_from_slice(&d.to_le_bytes());
    let id = if df != 0.0 { 1.0 / df } else { 0.0 };
    let mut high = 0u16;
    for r in 0..8 {
        let l = ((id * s[r]).round() as i32).clamp(-32, 31);
        let code = (l + 32) as u8;
        out[4 + r / 2] |= (code & 0xF) << (4 * (r % 2));
        high |= ((code >> 4) as u16 & 3) << (2 * r);
        let dl = df * l as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        let xr = &x[32 * r..32 * r + 32];
        let q: [u8; 32] = std::array::from_fn(|j| super::weighted::iq4_index(idl * xr[j]) as u8);
        for j in 0..16 {
            out[8 + 16 * r + j] = q[j] | (q[j + 16] << 4);
        }
    }
    out[2..4].copy_from_slice(&high.to_le_bytes());
}

macro_rules! reference_quantizers {
    ($($f:ident => $ty:ident),*) => {$(
        pub(super) fn $f(src: &[f32], dst: &mut [u8]) {
            let bb = GgmlType::$ty.block_bytes();
            for (x, out) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(bb)) {
                quantize_block(GgmlType::$ty, x, None, out);
            }
        }
    )*};
}

reference_quantizers!(
    quantize_iq2_xxs => IQ2_XXS, quantize_iq2_xs => IQ2_XS, quantize_iq2_s => IQ2_S,
    quantize_iq3_xxs => IQ3_XXS, quantize_iq3_s => IQ3_S, quantize_iq4_xs => IQ4_XS
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize_to_vec, quantize_to_vec};

    fn signal(n: usize) -> Vec<f32> {
        let mut s = 99u32;
        (0..n)
            .map(|i| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                let u = (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                u * u * u * 0.3 * (1.0 + (i % 7) as f32 * 0.2)
            })
            .collect()
    }

    fn rel_err(ty: GgmlType, x: &[f32]) -> f64 {
        let y = dequantize_to_vec(ty, &quantize_to_vec(ty, x).unwrap()).unwrap();
        let e: f64 = x.iter().zip(&y).map(|(a, b)| ((a - b) * (a - b)) as f64).sum();
        e / x.iter().map(|a| (a * a) as f64).sum::<f64>()
    }

    /// More bits, less error; and every lattice type below the error of a random sign-only code.
    #[test]
    fn errors_fall_with_bits() {
        let x = signal(256 * 64);
        let order = [GgmlType::IQ2_XXS, GgmlType::IQ2_XS, GgmlType::IQ2_S, GgmlType::IQ3_XXS, GgmlType::IQ3_S, GgmlType::IQ4_XS];
        let errs: Vec<f64> = order.iter().map(|&t| rel_err(t, &x)).collect();
        for (w, t) in errs.windows(2).zip(order.windows(2)) {
            assert!(w[1] < w[0], "{} ({}) not below {} ({})", t[1], w[1], t[0], w[0]);
        }
        assert!(errs[0] < 0.5, "IQ2_XXS relative error {}", errs[0]);
        assert!(errs[5] < 0.02, "IQ4_XS relative error {}", errs[5]);
    }

    #[test]
    fn zero_blocks_stay_zero() {
        for ty in [GgmlType::IQ2_XXS, GgmlType::IQ2_XS, GgmlType::IQ2_S, GgmlType::IQ3_XXS, GgmlType::IQ3_S, GgmlType::IQ4_XS] {
            let y = dequantize_to_vec(ty, &quantize_to_vec(ty, &[0.0; 512]).unwrap()).unwrap();
            assert!(y.iter().all(|&v| v == 0.0), "{ty}");
        }
    }

    /// The stored signs follow the weights' signs (bar the parity repair of one weight in 8).
    #[test]
    fn signs_follow_the_weights() {
        let x = signal(256 * 8);
        for ty in [GgmlType::IQ2_XS, GgmlType::IQ2_S, GgmlType::IQ3_XXS, GgmlType::IQ3_S] {
            let y = dequantize_to_vec(ty, &quantize_to_vec(ty, &x).unwrap()).unwrap();
            let wrong = x.iter().zip(&y).filter(|(a, b)| **b != 0.0 && a.signum() != b.signum()).count();
            assert!(wrong <= x.len() / 8, "{ty}: {wrong} of {} signs differ", x.len());
        }
    }
}

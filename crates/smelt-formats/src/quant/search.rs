//! Scale searches used by the K-quant reference quantizers (the algorithms of ggml's
//! `ggml-quants.c`, written here from their description).
//!
//! All three minimise a weighted squared (or absolute) reconstruction error
//! `E = sum_i w_i (x_i - (s * l_i + m))^2` over the integer levels `l_i` and the scale `s` (and
//! for the asymmetric search the offset `m <= 0`) by trying a small grid of candidate scales,
//! rounding each element to its nearest level for that scale, and solving for the best `s`
//! (and `m`) in closed form by least squares. Weights `w_i` let callers favour large
//! magnitudes or, later, calibrated importance.

use super::nearest_int;

/// Groups whose largest magnitude is below this are treated as all zero.
pub const GROUP_MAX_EPS: f32 = 1e-15;

/// Weighting used by [`make_qx_quants`] when no importance weights are given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RmseWeight {
    /// No search: `s = max / -nmax`, plain rounding.
    None,
    /// `w_i = x_i^2`: errors on large weights matter more (ggml's `rmse_type = 1`).
    Square,
    /// `w_i = 1`.
    Uniform,
    /// `w_i = |x_i|`.
    Abs,
    /// `w_i = sqrt(|x_i|)`.
    SqrtAbs,
}

impl RmseWeight {
    fn weight(self, x: f32) -> f32 {
        match self {
            RmseWeight::None | RmseWeight::Uniform => 1.0,
            RmseWeight::Square => x * x,
            RmseWeight::Abs => x.abs(),
            RmseWeight::SqrtAbs => x.abs().sqrt(),
        }
    }
}

fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

/// Symmetric search: levels `l_i in [-nmax, nmax)` stored as `l_i + nmax` in `out`; returns the
/// scale `s` with `x_i ~ s * l_i`.
///
/// Starts from `s = max / -nmax` (the signed absmax maps to `-nmax`), then tries the 18
/// neighbouring candidates `-(nmax + 0.1 k) / max` for `k = -9..=9` and keeps the one maximising
/// `(sum w x l)^2 / sum w l^2` (equivalently, minimising `E` at the least-squares `s`).
pub fn make_qx_quants(x: &[f32], nmax: i32, out: &mut [i8], rmse: RmseWeight, qw: Option<&[f32]>) -> f32 {
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        out.fill(0);
        return 0.0;
    }
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    let mut iscale = -(nmax as f32) / max;
    if rmse == RmseWeight::None && qw.is_none() {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = (clamp(nearest_int(iscale * v)) + nmax) as i8;
        }
        return 1.0 / iscale;
    }
    let weight = |i: usize| qw.map_or_else(|| rmse.weight(x[i]), |w| w[i]);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for (i, &v) in x.iter().enumerate() {
            let l = clamp(nearest_int(iscale * v));
            let w = weight(i);
            sumlx += w * v * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        (sumlx, suml2)
    };
    let fill = |iscale: f32, out: &mut [i8]| {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = (clamp(nearest_int(iscale * v)) + nmax) as i8;
        }
    };
    fill(iscale, out);
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for k in -9..=9 {
        if k == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * k as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            fill(iscale, out);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Symmetric 3-bit search with iterative refinement: levels in `[-nmax, nmax)` stored as
/// `l + nmax`, weights `w_i = x_i^2`. After the initial rounding, each level is moved to the
/// nearest level for the current least-squares scale when that improves
/// `(sum w x l)^2 / sum w l^2`, for at most 5 sweeps.
pub fn make_q3_quants(x: &[f32], nmax: i32, out: &mut [i8], do_rmse: bool) -> f32 {
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        out.fill(0);
        return 0.0;
    }
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    let iscale = -(nmax as f32) / max;
    if !do_rmse {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = (clamp(nearest_int(iscale * v)) + nmax) as i8;
        }
        return 1.0 / iscale;
    }
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (o, &v) in out.iter_mut().zip(x) {
        let l = clamp(nearest_int(iscale * v));
        *o = l as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for (o, &v) in out.iter_mut().zip(x) {
            let w = v * v;
            let l = *o as i32;
            let mut slx = sumlx - w * v * l as f32;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * l as f32 * l as f32;
                let new_l = clamp(nearest_int(v * sl2 / slx));
                if new_l != l {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *o = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    for o in out.iter_mut() {
        *o += nmax as i8;
    }
    if suml2 > 0.0 { sumlx / suml2 } else { 0.0 }
}

/// Parameters of the asymmetric grid search.
#[derive(Clone, Copy, Debug)]
pub struct AsymSearch {
    /// First candidate is `(nmax + rmin) / (max - min)`.
    pub rmin: f32,
    /// Step between candidates.
    pub rdelta: f32,
    /// Number of steps (candidates are `0..=nstep`).
    pub nstep: i32,
    /// Minimise absolute instead of squared error.
    pub use_mad: bool,
}

/// Asymmetric search: levels `l_i in [0, nmax]`, `x_i ~ s * l_i - m` with `m >= 0` returned as
/// `(s, m)`.
///
/// For each candidate inverse scale `(nmax + rmin + rdelta k) / (max - min)` the levels are
/// rounded, then `s` and the offset solve the 2x2 weighted least-squares system
/// `[sum w, sum w l; sum w l, sum w l^2] [off; s] = [sum w x; sum w x l]`
/// (offset clamped to `<= 0`, refitting `s` alone then); the candidate with the smallest
/// weighted error wins.
pub fn make_qkx2_quants(x: &[f32], weights: &[f32], nmax: i32, out: &mut [u8], p: AsymSearch) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        out.fill(0);
        return (0.0, -min);
    }
    let err = |d: f32| if p.use_mad { d.abs() } else { d * d };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        out[i] = l as u8;
        best_error += weights[i] * err(scale * l as f32 + min - x[i]);
    }
    if p.nstep < 1 {
        return (scale, -min);
    }
    let mut aux = [0u8; 32];
    let aux = &mut aux[..n];
    for is in 0..=p.nstep {
        iscale = (p.rmin + p.rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = l as u8;
            let (w, lf) = (weights[i], l as f32);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                cur_error += weights[i] * err(this_scale * aux[i] as f32 + this_min - x[i]);
            }
            if cur_error < best_error {
                out.copy_from_slice(aux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn qx_search_never_worse_than_plain_rounding() {
        for seed in 0..50 {
            let x = sample(16, seed);
            let err = |rmse| {
                let mut l = [0i8; 16];
                let s = make_qx_quants(&x, 32, &mut l, rmse, None);
                x.iter().zip(l).map(|(v, q)| { let e = v - s * (q as i32 - 32) as f32; v * v * e * e }).sum::<f32>()
            };
            assert!(err(RmseWeight::Square) <= err(RmseWeight::None) * 1.0001, "seed {seed}");
        }
    }

    #[test]
    fn asym_search_reconstructs_an_exact_grid() {
        // Values that lie exactly on a 4-bit grid with scale 0.25 and offset -1 are recovered.
        let x: Vec<f32> = (0..32).map(|i| 0.25 * (i % 16) as f32 - 1.0).collect();
        let w = vec![1.0; 32];
        let mut l = [0u8; 32];
        let (s, m) = make_qkx2_quants(&x, &w, 15, &mut l, AsymSearch { rmin: -1.0, rdelta: 0.1, nstep: 20, use_mad: false });
        for (v, q) in x.iter().zip(l) {
            assert!((s * q as f32 - m - v).abs() < 1e-5);
        }
    }
}

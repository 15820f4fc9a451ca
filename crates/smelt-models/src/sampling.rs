//! Choosing the next token from logits, in llama.cpp's order: repetition penalty, top-k,
//! top-p, min-p, temperature, then a draw from a seeded generator (the same seed gives the same
//! text). Temperature 0 is greedy (argmax after the penalty).

use std::collections::VecDeque;

use crate::settings::{Bound, SettingError};

/// Sampling settings; defaults are llama.cpp's.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// Divides the logits; 0 means greedy.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the most likely tokens whose probabilities sum to `top_p` (1: all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0: none).
    pub min_p: f32,
    /// Penalise tokens seen in the last `repeat_last_n` tokens: positive logits are divided by
    /// it, negative ones multiplied (1: off).
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig { temperature: 0.8, top_k: 40, top_p: 0.95, min_p: 0.05, repeat_penalty: 1.0, repeat_last_n: 64, seed: 0x5EED }
    }
}

impl SamplerConfig {
    /// `temperature`: 0 (greedy) to 100.
    pub const TEMPERATURE: Bound = Bound::float("temperature", 0.0, 100.0);
    /// `top_p`: 0 (the most likely token only) to 1 (all).
    pub const TOP_P: Bound = Bound::float("top-p", 0.0, 1.0);
    /// `min_p`: 0 (none dropped) to 1.
    pub const MIN_P: Bound = Bound::float("min-p", 0.0, 1.0);
    /// `repeat_penalty`: above 0 (1 is off; below 1 favours repeats), at most 10.
    pub const REPEAT_PENALTY: Bound = Bound::positive("repeat-penalty", 10.0);

    /// Greedy decoding.
    pub fn greedy() -> Self {
        SamplerConfig { temperature: 0.0, ..Default::default() }
    }

    /// Checks every setting against its range (the command line and the server's requests call
    /// this; a NaN temperature would otherwise sample garbage).
    pub fn validate(&self) -> Result<(), SettingError> {
        Self::TEMPERATURE.check(self.temperature as f64)?;
        Self::TOP_P.check(self.top_p as f64)?;
        Self::MIN_P.check(self.min_p as f64)?;
        Self::REPEAT_PENALTY.check(self.repeat_penalty as f64)?;
        Ok(())
    }
}

/// xoshiro256** (Blackman & Vigna), seeded through splitmix64.
#[derive(Clone, Debug)]
struct Rng([u64; 4]);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A sampler with its random state and the recent tokens the penalty looks at.
#[derive(Clone, Debug)]
pub struct Sampler {
    pub cfg: SamplerConfig,
    rng: Rng,
    recent: VecDeque<u32>,
    cand: Vec<(u32, f32)>,
    /// The candidates' weights in [`Sampler::draw`] (kept to reuse its allocation).
    weights: Vec<f32>,
    /// [`Sampler::draw_dense`]'s block sums, and the penalised logits (allocations reused).
    block_sums: Vec<f64>,
    penalised: Vec<f32>,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Sampler {
        let rng = Rng::new(cfg.seed);
        Sampler { cfg, rng, recent: VecDeque::new(), cand: Vec::new(), weights: Vec::new(), block_sums: Vec::new(), penalised: Vec::new() }
    }

    /// Records a token as part of the text (prompt tokens too, for the penalty).
    pub fn accept(&mut self, token: u32) {
        if self.cfg.repeat_last_n == 0 {
            return;
        }
        if self.recent.len() == self.cfg.repeat_last_n {
            self.recent.pop_front();
        }
        self.recent.push_back(token);
    }

    /// Chooses the next token from `logits` (one per vocabulary entry).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        // The penalty changes at most `repeat_last_n` logits: a copy with those changed, not a
        // lookup in the recent tokens for each of the vocabulary's entries.
        let mut pen = std::mem::take(&mut self.penalised);
        let logits = if self.cfg.repeat_penalty != 1.0 && !self.recent.is_empty() {
            pen.clear();
            pen.extend_from_slice(logits);
            let p = self.cfg.repeat_penalty;
            let mut done: Vec<u32> = Vec::with_capacity(self.recent.len());
            for &t in &self.recent {
                if done.contains(&t) {
                    continue; // each token is penalised once, however often it appeared
                }
                done.push(t);
                if let Some(l) = pen.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / p } else { *l * p };
                }
            }
            &pen[..]
        } else {
            logits
        };
        let id = self.choose(logits);
        self.penalised = pen;
        id
    }

    fn choose(&mut self, logits: &[f32]) -> u32 {
        let c = self.cfg.clone();
        if c.temperature <= 0.0 {
            let mut best = (0usize, f32::NEG_INFINITY);
            for (i, &l) in logits.iter().enumerate() {
                if l > best.1 {
                    best = (i, l);
                }
            }
            return best.0 as u32;
        }
        let max = max_finite(logits);
        if max == f32::NEG_INFINITY {
            return 0;
        }
        let k = if c.top_k > 0 && c.top_k < logits.len() { c.top_k } else { 0 };
        if c.top_p >= 1.0 && k == 0 {
            // No top-k or top-p cut (OpenAI's defaults): no sort, no candidate list. A token
            // whose weight exp((l - max) / t) is below exp(-40) (4e-18 of the most likely
            // token's) never changes a draw and gets weight 0; min-p keeps the tokens within
            // a factor of the most likely: l >= max + ln(min_p).
            let mut floor = max - 40.0 * c.temperature;
            if c.min_p > 0.0 {
                floor = floor.max(max + c.min_p.ln());
            }
            return self.draw_dense(logits, max, floor);
        }
        if k == 0 {
            // Top-p (and min-p) over the whole vocabulary: no sort of it, see `nucleus`.
            self.nucleus(logits, max);
            if c.min_p > 0.0 {
                let floor = max + c.min_p.ln();
                self.cand.retain(|x| x.1 >= floor);
            }
            return self.draw(max);
        }
        // A top-k cut: the tokens within `d` of the best, `d` doubling until they are at least
        // k (every token above the floor is in, so the list's best are the vocabulary's best).
        let mut d = 8.0f32;
        loop {
            let all = d > 128.0; // e^-128 is 0 in f32: every token that could be drawn is in
            let floor = if all { f32::NEG_INFINITY } else { max - d };
            above(logits, floor, max, &mut self.cand);
            if all || self.cand.len() >= k {
                break;
            }
            d *= 2.0;
        }
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
        if k < self.cand.len() {
            self.cand.select_nth_unstable_by(k - 1, by_logit);
            self.cand.truncate(k);
        }
        if c.top_p >= 1.0 {
            // A top-k cut alone: the k candidates need no sort either.
            if c.min_p > 0.0 {
                let floor = max + c.min_p.ln();
                self.cand.retain(|x| x.1 >= floor);
            }
            return self.draw(max);
        }
        self.cand.sort_unstable_by(by_logit);
        // Probabilities of the k, at temperature 1 (as llama.cpp's top-p and min-p see them).
        let probs: Vec<f32> = self.cand.iter().map(|x| (x.1 - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        let mut keep = self.cand.len();
        let mut acc = 0.0;
        for (i, p) in probs.iter().enumerate() {
            acc += p / total;
            if acc >= c.top_p {
                keep = i + 1;
                break;
            }
        }
        if c.min_p > 0.0 {
            let floor = c.min_p * probs[0];
            keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
        }
        self.cand.truncate(keep);
        self.draw(max)
    }

    /// Fills the candidate list with top-p's nucleus over the whole vocabulary: the most
    /// likely tokens whose probabilities (at temperature 1) first reach `top_p`, in no
    /// particular order. Sorting the vocabulary for it was a millisecond a token; instead, with
    /// the weights `w_i = e^(l_i - max)` and `M(tau) = sum of w_i over l_i >= tau` (a
    /// vectorized pass), a threshold `lo` with `M(lo) >= top_p M(-inf)` and one `hi` with
    /// `M(hi)` below it are found by doubling `max - lo`, then bisection. Every token at or
    /// above `hi` is in the nucleus; only the few in `[lo, hi)` are sorted, to place the cut.
    fn nucleus(&mut self, logits: &[f32], max: f32) {
        weights(logits, max, f32::NEG_INFINITY, 1.0, &mut self.weights);
        let w = &self.weights;
        let mass = |tau: f32| -> f64 { logits.chunks(DRAW_BLOCK).zip(w.chunks(DRAW_BLOCK)).map(|(l, w)| masked_sum(l, w, tau)).sum() };
        let target = self.cfg.top_p as f64 * mass(f32::NEG_INFINITY);
        // M(max + 1) = 0 is below any target; e^-64 is below f32's precision of the top weight.
        let (mut lo, mut hi) = (max - 1.0, max + 1.0);
        while mass(lo) < target && max - lo < 64.0 {
            hi = lo;
            lo = max - 2.0 * (max - lo);
        }
        for _ in 0..6 {
            let mid = 0.5 * (lo + hi);
            if mass(mid) >= target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        above(logits, lo, max, &mut self.cand);
        // The sure part first, then the band in descending order: the cut is where the mass
        // reaches the target.
        let mut sure = 0;
        for i in 0..self.cand.len() {
            if self.cand[i].1 >= hi {
                self.cand.swap(i, sure);
                sure += 1;
            }
        }
        let w = &self.weights;
        let mut acc: f64 = self.cand[..sure].iter().map(|x| w[x.0 as usize] as f64).sum();
        let band = &mut self.cand[sure..];
        band.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        let mut keep = sure;
        for x in band.iter() {
            if acc >= target {
                break;
            }
            acc += w[x.0 as usize] as f64;
            keep += 1;
        }
        self.cand.truncate(keep.max(1));
    }

    /// Temperature, then a draw from the candidates left (`max` is the largest logit): weights
    /// `e^((l - max) / t)` in f32 (the vectorized `exp` of smelt-kernels, relative error below
    /// 4e-7), summed and walked in f64.
    fn draw(&mut self, max: f32) -> u32 {
        let t = self.cfg.temperature;
        self.weights.clear();
        self.weights.extend(self.cand.iter().map(|x| (x.1 - max) / t));
        smelt_kernels::math::exp(&mut self.weights);
        let sum: f64 = self.weights.iter().map(|&w| w as f64).sum();
        let mut u = self.rng.uniform() * sum;
        for (x, &w) in self.cand.iter().zip(&self.weights) {
            let w = w as f64;
            if u < w {
                return x.0;
            }
            u -= w;
        }
        self.cand[self.cand.len() - 1].0
    }

    /// A draw over the whole vocabulary at temperature `t`: token `i` has weight
    /// `e^((l_i - max) / t)` when `floor <= l_i <= max` (`max` the largest finite logit), else 0.
    /// The weights are summed in f32 over blocks of [`DRAW_BLOCK`] and the block sums in f64;
    /// the uniform draw skips whole blocks, then walks the one it falls in. Every step is a
    /// straight pass the compiler vectorizes: at 49,152 entries this takes a tenth of a
    /// candidate list's time, which was 3-4% of a decoding step.
    fn draw_dense(&mut self, logits: &[f32], max: f32, floor: f32) -> u32 {
        weights(logits, max, floor, self.cfg.temperature, &mut self.weights);
        self.block_sums.clear();
        self.block_sums.extend(self.weights.chunks(DRAW_BLOCK).map(sum_f32));
        let total: f64 = self.block_sums.iter().sum();
        let mut u = self.rng.uniform() * total;
        // Rounding can carry `u` past the weights it walks: then the last token with a weight
        // in the block it fell in (which has one, its sum exceeding `u >= 0`), or in the last
        // block that has any.
        let mut fell_in = None;
        for (b, &s) in self.block_sums.iter().enumerate() {
            if s > 0.0 {
                fell_in = Some(b);
            }
            if u >= s {
                u -= s;
                continue;
            }
            let start = b * DRAW_BLOCK;
            for (i, &w) in self.weights[start..].iter().take(DRAW_BLOCK).enumerate() {
                let w = w as f64;
                if u < w {
                    return (start + i) as u32;
                }
                u -= w;
            }
            break;
        }
        let Some(b) = fell_in else { return 0 };
        let block = &self.weights[b * DRAW_BLOCK..((b + 1) * DRAW_BLOCK).min(self.weights.len())];
        (b * DRAW_BLOCK + block.iter().rposition(|&w| w > 0.0).unwrap_or(0)) as u32
    }
}

/// `(max, ln sum_i e^(x_i))` over the finite entries of `x` (`max` their largest; both `-inf`
/// when none is finite): the normalizer of `log softmax(x)`, for log-probabilities of a
/// vocabulary's logits. `e^(x_i - max)` by the vectorized `exp` in blocks on the stack, each
/// block summed in f32 lanes, the blocks in f64; a twentieth of the time of an f64 `exp` per
/// entry.
pub fn log_sum_exp(x: &[f32]) -> (f32, f32) {
    let max = max_finite(x);
    if max == f32::NEG_INFINITY {
        return (max, max);
    }
    let mut buf = [0.0f32; DRAW_BLOCK];
    let mut total = 0.0f64;
    for c in x.chunks(DRAW_BLOCK) {
        let b = &mut buf[..c.len()];
        for (o, &v) in b.iter_mut().zip(c) {
            *o = if v <= max { v - max } else { f32::NEG_INFINITY };
        }
        smelt_kernels::math::exp(b);
        total += sum_f32(b);
    }
    (max, max + total.ln() as f32)
}

/// `out[i] = e^((l_i - max) / t)` for `floor <= l_i <= max` (`max` the largest finite logit),
/// else 0 (NaN and +inf included), by the vectorized `exp`.
fn weights(logits: &[f32], max: f32, floor: f32, t: f32, out: &mut Vec<f32>) {
    out.clear();
    out.extend(logits.iter().map(|&l| if l >= floor && l <= max { (l - max) / t } else { f32::NEG_INFINITY }));
    smelt_kernels::math::exp(out);
}

/// The candidates `(token, logit)` with `floor <= logit <= max`, in token order, into `out`.
fn above(logits: &[f32], floor: f32, max: f32, out: &mut Vec<(u32, f32)>) {
    out.clear();
    out.extend(logits.iter().enumerate().filter(|(_, &l)| l >= floor && l <= max).map(|(i, &l)| (i as u32, l)));
}

/// Weights summed per block in [`Sampler::draw_dense`].
const DRAW_BLOCK: usize = 256;

/// The largest finite value (`-inf` if none), with eight running maxima so that it vectorizes.
fn max_finite(x: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 8];
    let (chunks, rest) = x.as_chunks::<8>();
    for c in chunks {
        for j in 0..8 {
            // NaN and +inf fail `v < INF` and are skipped; -inf never raises a maximum.
            let v = if c[j] < f32::INFINITY { c[j] } else { f32::NEG_INFINITY };
            m[j] = m[j].max(v);
        }
    }
    let rest = rest.iter().copied().filter(|v| *v < f32::INFINITY).fold(f32::NEG_INFINITY, f32::max);
    m.iter().copied().fold(rest, f32::max)
}

/// `sum of w_i over l_i >= tau` of a block, in eight f32 lanes (see [`sum_f32`]).
fn masked_sum(l: &[f32], w: &[f32], tau: f32) -> f64 {
    let mut acc = [0.0f32; 8];
    let ((lc, lr), (wc, wr)) = (l.as_chunks::<8>(), w.as_chunks::<8>());
    for (l, w) in lc.iter().zip(wc) {
        for j in 0..8 {
            // A mask, not a branch, so that it vectorizes.
            acc[j] += f32::from_bits(w[j].to_bits() & ((l[j] >= tau) as u32).wrapping_neg());
        }
    }
    acc.iter().map(|&a| a as f64).sum::<f64>() + lr.iter().zip(wr).filter(|(l, _)| **l >= tau).map(|(_, &w)| w as f64).sum::<f64>()
}

/// A block's sum in f64, accumulated in eight f32 lanes (weights are at most 1, blocks short).
fn sum_f32(x: &[f32]) -> f64 {
    let mut acc = [0.0f32; 8];
    let (chunks, rest) = x.as_chunks::<8>();
    for c in chunks {
        for j in 0..8 {
            acc[j] += c[j];
        }
    }
    acc.iter().map(|&a| a as f64).sum::<f64>() + rest.iter().map(|&w| w as f64).sum::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..100).map(|i| -((i as f32 - 10.0).abs()) * 0.3).collect()
    }

    #[test]
    fn greedy_takes_the_argmax_and_the_penalty_moves_it() {
        let mut s = Sampler::new(SamplerConfig::greedy());
        assert_eq!(s.sample(&logits()), 10);
        let mut l = logits();
        l[10] = 1.0;
        l[11] = 0.9;
        let mut s = Sampler::new(SamplerConfig { repeat_penalty: 1.5, ..SamplerConfig::greedy() });
        s.accept(10);
        assert_eq!(s.sample(&l), 11);
    }

    #[test]
    fn same_seed_same_tokens_other_seed_other_tokens() {
        let draw = |seed| {
            let mut s = Sampler::new(SamplerConfig { seed, temperature: 1.5, top_k: 0, top_p: 1.0, min_p: 0.0, ..Default::default() });
            (0..50).map(|_| s.sample(&logits())).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_and_min_p_bound_the_choices() {
        let mut s = Sampler::new(SamplerConfig { top_k: 3, top_p: 1.0, min_p: 0.0, temperature: 5.0, ..Default::default() });
        for _ in 0..200 {
            assert!((9..=11).contains(&s.sample(&logits())));
        }
        let mut s = Sampler::new(SamplerConfig { top_k: 0, top_p: 1.0, min_p: 0.5, temperature: 5.0, ..Default::default() });
        // p_i / p_max >= 0.5 means |i - 10| * 0.3 <= ln 2: i in 8..=12.
        for _ in 0..200 {
            assert!((8..=12).contains(&s.sample(&logits())));
        }
    }

    #[test]
    fn draws_follow_the_distribution() {
        // Two tokens with probabilities 0.75 and 0.25 at temperature 1.
        let l = [0.0f32, -(3.0f32).ln()];
        let mut s = Sampler::new(SamplerConfig { top_k: 0, top_p: 1.0, min_p: 0.0, temperature: 1.0, seed: 1, ..Default::default() });
        let n = 20000;
        let zeros = (0..n).filter(|_| s.sample(&l) == 0).count() as f64 / n as f64;
        assert!((zeros - 0.75).abs() < 0.015, "{zeros}");
    }

    #[test]
    fn draws_over_many_blocks_follow_the_softmax_and_skip_non_finite_logits() {
        // 1000 tokens (four blocks of the dense draw), logits rising with the index (so that
        // the groups' shares depend on the temperature) with some scatter, and entries
        // that must never be drawn: NaN, +inf, -inf.
        let mut l: Vec<f32> = (0..1000).map(|i| i as f32 * 0.004 + ((i * 37 % 101) as f32) * 0.01).collect();
        l[5] = f32::NAN;
        l[600] = f32::INFINITY;
        l[999] = f32::NEG_INFINITY;
        let t = 0.7f64;
        let max = l.iter().filter(|v| v.is_finite()).fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let w: Vec<f64> = l.iter().map(|&v| if v.is_finite() { ((v as f64 - max) / t).exp() } else { 0.0 }).collect();
        let total: f64 = w.iter().sum();
        let mut s = Sampler::new(SamplerConfig { top_k: 0, top_p: 1.0, min_p: 0.0, temperature: t as f32, seed: 3, ..Default::default() });
        let n = 60_000;
        let mut counts = [0usize; 10];
        for _ in 0..n {
            let id = s.sample(&l) as usize;
            assert!(![5, 600, 999].contains(&id), "drew {id}");
            counts[id / 100] += 1;
        }
        for (g, &c) in counts.iter().enumerate() {
            let want: f64 = w[g * 100..(g + 1) * 100].iter().sum::<f64>() / total;
            let got = c as f64 / n as f64;
            assert!((got - want).abs() < 0.01, "tokens {}..{}: drawn {got:.4}, softmax {want:.4}", g * 100, (g + 1) * 100);
        }
    }

    #[test]
    fn a_repeated_token_is_penalised_once() {
        let mut l = logits();
        l[10] = 1.0;
        l[11] = 0.6;
        // 1.0 / 1.5 = 0.67 beats 0.6; penalised twice (0.44) it would not.
        let mut s = Sampler::new(SamplerConfig { repeat_penalty: 1.5, ..SamplerConfig::greedy() });
        s.accept(10);
        s.accept(10);
        assert_eq!(s.sample(&l), 10);
        // The penalty lowers a negative logit: -0.2 * 1.5 = -0.3 loses to -0.25.
        let mut l = vec![-5.0f32; 20];
        l[3] = -0.2;
        l[4] = -0.25;
        s.accept(3);
        assert_eq!(s.sample(&l), 4);
    }

    #[test]
    fn top_p_keeps_exactly_the_nucleus() {
        // 1000 tokens whose probabilities fall geometrically in a scattered order; the nucleus
        // is found here by sorting in f64, independently of the sampler's threshold search.
        // Logits 0.02 apart, and 0.001 apart (many tokens near the cut).
        for (step, top_p, min_p) in [(0.02f32, 0.5f32, 0.0f32), (0.02, 0.9, 0.0), (0.02, 0.9, 0.5), (0.001, 0.5, 0.0), (0.001, 0.8, 0.0)] {
            let l: Vec<f32> = (0..1000).map(|i| -step * ((i * 379) % 1000) as f32).collect();
            let mut order: Vec<usize> = (0..l.len()).collect();
            order.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
            let w: Vec<f64> = l.iter().map(|&v| (v as f64).exp()).collect();
            let total: f64 = w.iter().sum();
            let (mut acc, mut keep) = (0.0, 0);
            for &i in &order {
                acc += w[i] / total;
                keep += 1;
                if acc >= top_p as f64 {
                    break;
                }
            }
            let mut nucleus: Vec<usize> = order[..keep].iter().copied().filter(|&i| min_p == 0.0 || w[i] >= min_p as f64 * w[order[0]]).collect();
            nucleus.sort_unstable();
            let mut s = Sampler::new(SamplerConfig { top_k: 0, top_p, min_p, temperature: 1.0, seed: 9, ..Default::default() });
            let mut drawn: Vec<usize> = (0..40_000).map(|_| s.sample(&l) as usize).collect();
            drawn.sort_unstable();
            drawn.dedup();
            assert_eq!(drawn, nucleus, "step {step}, top-p {top_p}, min-p {min_p}: {} drawn, nucleus of {}", drawn.len(), nucleus.len());
        }
    }

    #[test]
    fn log_sum_exp_matches_f64_and_skips_non_finite_entries() {
        let mut x = 1u64;
        let mut v: Vec<f32> = (0..49_999).map(|_| { x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((x >> 40) as f32 / (1u64 << 24) as f32) * 60.0 - 20.0 }).collect();
        v[7] = f32::NAN;
        v[70] = f32::INFINITY;
        v[700] = f32::NEG_INFINITY;
        let finite: Vec<f64> = v.iter().filter(|a| a.is_finite()).map(|&a| a as f64).collect();
        let m = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let want = m + finite.iter().map(|&a| (a - m).exp()).sum::<f64>().ln();
        let (max, lse) = log_sum_exp(&v);
        assert_eq!(max as f64, m);
        assert!((lse as f64 - want).abs() < 1e-5 * want.abs(), "{lse} against {want}");
        assert_eq!(log_sum_exp(&[f32::NAN, f32::NEG_INFINITY]).1, f32::NEG_INFINITY);
    }
}

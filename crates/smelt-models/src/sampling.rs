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
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Sampler {
        let rng = Rng::new(cfg.seed);
        Sampler { cfg, rng, recent: VecDeque::new(), cand: Vec::new(), weights: Vec::new() }
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
        let c = &self.cfg;
        let penalised = |i: usize, l: f32| -> f32 {
            if c.repeat_penalty != 1.0 && self.recent.contains(&(i as u32)) {
                if l > 0.0 { l / c.repeat_penalty } else { l * c.repeat_penalty }
            } else {
                l
            }
        };
        if c.temperature <= 0.0 {
            let mut best = (0usize, f32::NEG_INFINITY);
            for (i, &l) in logits.iter().enumerate() {
                let l = penalised(i, l);
                if l > best.1 {
                    best = (i, l);
                }
            }
            return best.0 as u32;
        }
        if c.top_p >= 1.0 && (c.top_k == 0 || c.top_k >= logits.len()) {
            // No top-k or top-p cut (OpenAI's defaults): no sort, and only the tokens whose
            // weight could matter become candidates: exp((l - max) / t) below exp(-40) (4e-18
            // of the most likely token's) never changes a draw. min-p keeps the tokens within
            // a factor of the most likely: l >= max + ln(min_p).
            let max = logits.iter().enumerate().map(|(i, &l)| penalised(i, l)).filter(|l| l.is_finite()).fold(f32::NEG_INFINITY, f32::max);
            if max == f32::NEG_INFINITY {
                return 0;
            }
            let mut floor = max - 40.0 * c.temperature;
            if c.min_p > 0.0 {
                floor = floor.max(max + c.min_p.ln());
            }
            self.cand.clear();
            self.cand.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, penalised(i, l))).filter(|x| x.1 >= floor && x.1.is_finite()));
            return self.draw(max);
        }
        self.cand.clear();
        self.cand.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, penalised(i, l))).filter(|c| c.1.is_finite()));
        if self.cand.is_empty() {
            return 0;
        }
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
        if c.top_k > 0 && c.top_k < self.cand.len() {
            self.cand.select_nth_unstable_by(c.top_k - 1, by_logit);
            self.cand.truncate(c.top_k);
        }
        if c.top_p >= 1.0 {
            // A top-k cut alone: the k candidates need no sort either.
            let max = self.cand.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
            if c.min_p > 0.0 {
                let floor = max + c.min_p.ln();
                self.cand.retain(|x| x.1 >= floor);
            }
            return self.draw(max);
        }
        self.cand.sort_unstable_by(by_logit);
        // Probabilities of what is left, at temperature 1 (as llama.cpp's top-p and min-p see them).
        let max = self.cand[0].1;
        let probs: Vec<f32> = self.cand.iter().map(|x| (x.1 - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        let mut keep = self.cand.len();
        if c.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, p) in probs.iter().enumerate() {
                acc += p / total;
                if acc >= c.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if c.min_p > 0.0 {
            let floor = c.min_p * probs[0];
            keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
        }
        self.cand.truncate(keep);
        self.draw(max)
    }

    /// Temperature, then a draw from the candidates left (`max` is the largest logit): weights
    /// `e^((l - max) / t)` in f32 (the vectorized `exp` of smelt-kernels, relative error below
    /// 4e-7; the candidates can be most of the vocabulary), summed and walked in f64.
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
}

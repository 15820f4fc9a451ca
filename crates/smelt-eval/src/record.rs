//! One record of an evaluation: the machine, the setup and every model's measurements. Every
//! report (terminal table, JSON, CSV, Markdown, HTML) is rendered from it, and it round-trips
//! through JSON, so a saved record can be rendered again later.

use serde::{Deserialize, Serialize};

use crate::efficiency::{DecoderSpeed, EncoderSpeed};
use crate::encoder::EncoderQuality;
use crate::lm::LmQuality;

pub const SCHEMA: &str = "smelt-eval-record";
pub const VERSION: u32 = 1;

/// Where it ran.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    pub cpu: String,
    pub threads: usize,
    pub os: String,
    pub arch: String,
}

/// How energy and carbon were obtained.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EnergySetup {
    pub watts_per_core: f64,
    pub grid_g_per_kwh: f64,
    pub grid_source: String,
}

/// Everything measured on one model.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ModelResult {
    /// Short display name (`Q4_K`, `int8`, a file name).
    pub name: String,
    pub path: String,
    /// `decoder` or `encoder`.
    pub kind: String,
    pub weight_type: String,
    /// Size of the model file(s) on disk, when it is a file.
    pub file_bytes: Option<u64>,
    /// Bytes of the weight matrices as run.
    pub weight_bytes: u64,
    pub params: u64,
    /// `8 * weight_bytes / params`.
    pub bits_per_weight: f64,
    /// Fraction of the block matrices' weights that are exactly zero (pruning's sparsity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zero_fraction: Option<f64>,
    /// The model the others are compared with.
    pub reference: bool,
    pub lm: Option<LmQuality>,
    pub encoder: Option<EncoderQuality>,
    pub decoder_speed: Option<DecoderSpeed>,
    pub encoder_speed: Option<EncoderSpeed>,
    /// Peak resident memory of a process that loaded only this model and measured its speed.
    pub peak_rss: Option<u64>,
}

impl ModelResult {
    /// The size reports use: the file when there is one, else the weights as run.
    pub fn size(&self) -> u64 {
        self.file_bytes.unwrap_or(self.weight_bytes)
    }

    /// Relative quality loss against the reference, in percent (lower is better): perplexity
    /// increase for decoders; STS Spearman drop (else `1 - mean cosine`) for encoders.
    pub fn quality_loss_pct(&self, reference: Option<&ModelResult>) -> Option<f64> {
        if self.reference {
            return Some(0.0);
        }
        if let Some(v) = self.lm.as_ref().and_then(|q| q.vs_ref.as_ref().map(|r| (q.ppl, r.ppl_ref))) {
            return Some(100.0 * (v.0 / v.1 - 1.0));
        }
        let e = self.encoder.as_ref()?;
        let sts_ref = reference.and_then(|r| r.encoder.as_ref()).and_then(|q| q.sts.as_ref()).map(|s| s.spearman);
        match (e.sts.as_ref(), sts_ref) {
            (Some(s), Some(r)) if r > 0.0 => Some(100.0 * (r - s.spearman) / r),
            _ => e.cosine.as_ref().map(|c| 100.0 * (1.0 - c.mean)),
        }
    }
}

/// A whole evaluation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub schema: String,
    pub version: u32,
    pub smelt: String,
    pub created_unix: u64,
    pub title: String,
    pub machine: Machine,
    pub energy: EnergySetup,
    /// What the quality numbers were measured on (text, tokens, chunks ...).
    pub data: Vec<String>,
    pub models: Vec<ModelResult>,
    /// Loss budget (percent) the recommendation used.
    pub max_loss_pct: f64,
    pub recommendation: Option<String>,
    /// Index into `models` of the recommended one.
    pub recommended: Option<usize>,
    pub notes: Vec<String>,
}

impl Record {
    pub fn new(title: &str, machine: Machine, energy: EnergySetup) -> Record {
        let created_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Record {
            schema: SCHEMA.into(),
            version: VERSION,
            smelt: env!("CARGO_PKG_VERSION").into(),
            created_unix,
            title: title.into(),
            machine,
            energy,
            data: Vec::new(),
            models: Vec::new(),
            max_loss_pct: 5.0,
            recommendation: None,
            recommended: None,
            notes: Vec::new(),
        }
    }

    pub fn reference(&self) -> Option<&ModelResult> {
        self.models.iter().find(|m| m.reference)
    }

    /// The smallest model whose quality loss is within `max_loss_pct`, and the sentence that
    /// says so (stored in `recommendation`).
    pub fn recommend(&mut self, max_loss_pct: f64) -> Option<usize> {
        self.max_loss_pct = max_loss_pct;
        let r = self.reference();
        let ok = |m: &ModelResult| m.quality_loss_pct(r).is_some_and(|l| l <= max_loss_pct);
        let best = (0..self.models.len()).filter(|&i| ok(&self.models[i])).min_by_key(|&i| self.models[i].size());
        let what = |m: &ModelResult| if m.kind == "decoder" { "perplexity" } else if m.encoder.as_ref().is_some_and(|e| e.sts.is_some()) { "STS Spearman" } else { "mean cosine" };
        self.recommendation = best.map(|i| {
            let m = &self.models[i];
            let loss = m.quality_loss_pct(r).unwrap_or(0.0);
            let base = r.map(|r| r.size()).unwrap_or(m.size()).max(1);
            format!(
                "{}: the smallest model within {max_loss_pct}% of the original's {} ({:+.2}%), {:.1} MB = {:.0}% of the original's size",
                m.name,
                what(m),
                if loss.abs() < 5e-3 { 0.0 } else { loss },
                m.size() as f64 / 1e6,
                100.0 * m.size() as f64 / base as f64
            )
        });
        self.recommended = best;
        best
    }
}

/// Indices of the points on the Pareto front when both coordinates are to be minimized: no
/// other point is at least as good in both and strictly better in one. NaN points never are;
/// the front is returned sorted by the first coordinate.
pub fn pareto(pts: &[(f64, f64)]) -> Vec<usize> {
    let ok = |p: &(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let mut front: Vec<usize> = (0..pts.len())
        .filter(|&i| ok(&pts[i]))
        .filter(|&i| {
            let (a, b) = pts[i];
            !pts.iter().enumerate().any(|(j, &(c, d))| j != i && ok(&(c, d)) && c <= a && d <= b && (c < a || d < b))
        })
        .collect();
    front.sort_by(|&x, &y| pts[x].0.total_cmp(&pts[y].0));
    front
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_keeps_only_undominated_points() {
        // (size, loss): 1 dominates 3; 0, 1, 2 trade size for loss.
        let pts = [(10.0, 0.0), (5.0, 1.0), (2.0, 8.0), (6.0, 2.0), (f64::NAN, 0.0)];
        assert_eq!(pareto(&pts), vec![2, 1, 0]);
    }
}

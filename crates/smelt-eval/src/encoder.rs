//! Encoder quality against a reference encoder: per-text cosine fidelity, STS Spearman,
//! retrieval overlap, and classification with a head kept fixed and refit.
//!
//! - Fidelity: `cos(e_i, r_i)` for every text; summarized by its low tail (min, 0.1/1/5/10th
//!   percentiles, median, mean).
//! - STS: Spearman correlation between `cos(s1, s2)` and the gold scores (ties ranked as
//!   `scipy.stats.spearmanr` does).
//! - Retrieval: for each query, the top `k` documents by cosine under the model and under the
//!   reference; overlap@k = `|top_k ∩ top_k_ref| / k`, averaged over queries; top-1 agreement.
//! - Classification: a logistic-regression head trained on the reference's embeddings and
//!   applied unchanged to the model's ("fixed"), and one retrained on the model's ("refit").

use serde::{Deserialize, Serialize};
use smelt_models::classify::{self, Metrics, TrainOptions};
use smelt_models::stats::{cosine, spearman};

use crate::stats::Summary;
use crate::EvalError;

/// STS result: pairs scored and the Spearman correlation with the gold scores.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Sts {
    pub pairs: usize,
    pub spearman: f64,
}

/// Retrieval agreement with the reference.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Retrieval {
    pub k: usize,
    pub queries: usize,
    pub documents: usize,
    /// Mean `|top_k ∩ top_k_ref| / k`.
    pub overlap: f64,
    /// Fraction of queries whose best document is the reference's best.
    pub top1: f64,
}

/// A classification task scored three ways.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClassTask {
    pub name: String,
    /// The head trained on the reference's embeddings, on the reference's test embeddings.
    pub reference: Metrics,
    /// The same head on this model's test embeddings.
    pub fixed: Metrics,
    /// A head trained on this model's embeddings.
    pub refit: Metrics,
}

/// Everything measured on an encoder.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EncoderQuality {
    /// Cosine to the reference's embedding of the same text (low tail).
    pub cosine: Option<Summary>,
    pub sts: Option<Sts>,
    pub retrieval: Option<Retrieval>,
    pub classification: Vec<ClassTask>,
}

fn same_shape(a: &[Vec<f32>], b: &[Vec<f32>]) -> Result<(), EvalError> {
    let dim = |v: &[Vec<f32>]| v.first().map_or(0, |r| r.len());
    if a.len() != b.len() || dim(a) != dim(b) {
        return Err(EvalError::ShapeMismatch { a: format!("{} x {}", a.len(), dim(a)), b: format!("{} x {}", b.len(), dim(b)) });
    }
    Ok(())
}

/// Cosine of each embedding to the reference's, summarized by the low tail.
pub fn fidelity(emb: &[Vec<f32>], reference: &[Vec<f32>]) -> Result<Summary, EvalError> {
    same_shape(emb, reference)?;
    let mut c: Vec<f64> = emb.iter().zip(reference).map(|(a, b)| cosine(a, b)).collect();
    Ok(Summary::low_tail(&mut c))
}

/// Spearman of pair cosines against gold scores; `emb` holds `s1, s2` of pair `i` at `2i, 2i+1`.
pub fn sts(emb: &[Vec<f32>], gold: &[f64]) -> Result<Sts, EvalError> {
    if emb.len() != 2 * gold.len() || gold.len() < 2 {
        return Err(EvalError::ShapeMismatch { a: format!("{} embeddings", emb.len()), b: format!("{} pairs", gold.len()) });
    }
    let cos: Vec<f64> = (0..gold.len()).map(|i| cosine(&emb[2 * i], &emb[2 * i + 1])).collect();
    Ok(Sts { pairs: gold.len(), spearman: spearman(&cos, gold) })
}

/// Indices of the `k` best documents for each query, best first (ties by index).
pub fn top_k(queries: &[Vec<f32>], docs: &[Vec<f32>], k: usize) -> Vec<Vec<usize>> {
    queries
        .iter()
        .map(|q| {
            let mut s: Vec<(f64, usize)> = docs.iter().enumerate().map(|(i, d)| (cosine(q, d), i)).collect();
            s.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            s.into_iter().take(k).map(|(_, i)| i).collect()
        })
        .collect()
}

/// Retrieval overlap@k of the model's rankings with the reference's.
pub fn retrieval(q: &[Vec<f32>], d: &[Vec<f32>], q_ref: &[Vec<f32>], d_ref: &[Vec<f32>], k: usize) -> Result<Retrieval, EvalError> {
    same_shape(q, q_ref)?;
    same_shape(d, d_ref)?;
    let k = k.clamp(1, d.len().max(1));
    let (a, b) = (top_k(q, d, k), top_k(q_ref, d_ref, k));
    let n = a.len().max(1) as f64;
    let overlap = a.iter().zip(&b).map(|(x, y)| x.iter().filter(|i| y.contains(i)).count() as f64 / k as f64).sum::<f64>() / n;
    let top1 = a.iter().zip(&b).filter(|(x, y)| x.first() == y.first()).count() as f64 / n;
    Ok(Retrieval { k, queries: q.len(), documents: d.len(), overlap, top1 })
}

/// Embeddings and labels of one split.
pub struct Split<'a> {
    pub x: &'a [Vec<f32>],
    pub y: &'a [usize],
}

/// Trains the reference head, applies it to the model, and refits on the model.
pub fn classification(name: &str, labels: &[String], reference: (Split, Split), model: (Split, Split), opts: TrainOptions) -> Result<ClassTask, EvalError> {
    let (rtr, rte) = reference;
    let (mtr, mte) = model;
    same_shape(rte.x, mte.x)?;
    let head = classify::train(rtr.x, rtr.y, labels, opts, |_, _| {})?;
    let refit = classify::train(mtr.x, mtr.y, labels, opts, |_, _| {})?;
    let score = |h: &classify::Head, s: &Split| {
        let pred: Vec<usize> = s.x.iter().map(|x| h.predict(x)).collect();
        classify::metrics(s.y, &pred, labels)
    };
    Ok(ClassTask { name: name.into(), reference: score(&head, &rte), fixed: score(&head, &mte), refit: score(&refit, &mte) })
}

/// Reads the STS Benchmark TSV (genre, file, year, id, score, s1, s2): texts as
/// `s1, s2` per pair and the gold scores. Lines that do not parse are skipped and counted.
pub fn read_sts(text: &str) -> (Vec<String>, Vec<f64>, usize) {
    let (mut texts, mut gold, mut bad) = (Vec::new(), Vec::new(), 0);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        match (f.len() >= 7).then(|| f[4].trim().parse::<f64>().ok()).flatten() {
            Some(g) => {
                gold.push(g);
                texts.push(f[5].to_string());
                texts.push(f[6].to_string());
            }
            None => bad += 1,
        }
    }
    (texts, gold, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retrieval_overlap_counts_shared_documents() {
        let docs: Vec<Vec<f32>> = vec![vec![1.0, 0.0], vec![0.9, 0.1], vec![0.0, 1.0], vec![0.5, 0.5]];
        let q = vec![vec![1.0, 0.05]];
        let r = retrieval(&q, &docs, &q, &docs, 2).unwrap();
        assert_eq!((r.overlap, r.top1), (1.0, 1.0));
        // A model whose query points elsewhere shares one of two documents.
        let q2 = vec![vec![0.6, 0.4]];
        let r2 = retrieval(&q2, &docs, &q, &docs, 2).unwrap();
        assert_eq!(top_k(&q2, &docs, 2), vec![vec![3, 1]]);
        assert_eq!(r2.overlap, 0.5);
        assert_eq!(r2.top1, 0.0);
    }

    #[test]
    fn mismatched_shapes_are_refused() {
        let a = vec![vec![1.0f32, 0.0]];
        let b = vec![vec![1.0f32, 0.0, 0.0]];
        assert!(matches!(fidelity(&a, &b), Err(EvalError::ShapeMismatch { .. })));
    }

    #[test]
    fn sts_reader_skips_broken_lines() {
        let (t, g, bad) = read_sts("g\tf\t2012\t1\t4.5\tA cat.\tA dog.\nbroken line\ng\tf\t2012\t2\t1.0\tX\tY\n");
        assert_eq!((t.len(), g, bad), (4, vec![4.5, 1.0], 1));
    }
}

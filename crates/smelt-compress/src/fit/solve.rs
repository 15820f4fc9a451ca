//! One candidate per matrix: the multiple-choice knapsack `min sum_t L(t, c_t)` subject to
//! `sum_t B(t, c_t) <= budget`, solved on the lower convex hulls.
//!
//! Per matrix, the candidates sorted by size form points `(B, L)`; only the lower convex hull
//! matters (a candidate above it is beaten by a mix of its neighbours at every price). Starting
//! from every matrix's smallest candidate, the upgrades along all hulls are taken in order of
//! loss removed per byte added; since the slopes along one hull decrease, the global order takes
//! each matrix's upgrades in sequence. Every prefix of that order is a point of the (predicted)
//! Pareto front of size against loss; under a budget, upgrades that no longer fit are skipped
//! and smaller later ones still taken. This is exact at the hull's vertices (the Lagrangian
//! relaxation) and within one upgrade of the optimum between them.

use super::TensorChoices;

/// A choice of candidate per matrix with its total size and predicted loss.
#[derive(Clone, Debug, PartialEq)]
pub struct Mix {
    /// Index into each matrix's candidates.
    pub choice: Vec<usize>,
    /// Sum of the chosen candidates' bytes.
    pub bytes: u64,
    /// Sum of the chosen candidates' predicted losses.
    pub loss: f64,
}

/// One step along a matrix's hull.
#[derive(Clone, Copy, Debug)]
struct Upgrade {
    tensor: usize,
    to: usize,
    /// Loss removed per byte added.
    gain: f64,
}

/// The indices of the lower convex hull of `(bytes, loss)`, from the smallest candidate on,
/// each strictly smaller in loss than the one before.
fn hull(points: &[(u64, f64)]) -> Vec<usize> {
    let mut out = vec![0];
    let mut i = 0;
    loop {
        let (bi, li) = points[i];
        // The next vertex: the steepest descent from the current one (ties: the larger step).
        let next = (i + 1..points.len())
            .filter(|&j| points[j].1 < li && points[j].0 > bi)
            .map(|j| (j, (li - points[j].1) / (points[j].0 - bi) as f64))
            .fold(None, |best: Option<(usize, f64)>, (j, g)| match best {
                Some((_, bg)) if bg > g => best,
                _ => Some((j, g)),
            });
        match next {
            Some((j, _)) => {
                out.push(j);
                i = j;
            }
            None => return out,
        }
    }
}

fn start_and_upgrades(choices: &[TensorChoices]) -> (Mix, Vec<Upgrade>) {
    let mut ups = Vec::new();
    for (t, tc) in choices.iter().enumerate() {
        let points: Vec<(u64, f64)> = tc.candidates.iter().map(|c| (c.bytes, c.loss)).collect();
        let h = hull(&points);
        for w in h.windows(2) {
            let (a, b) = (points[w[0]], points[w[1]]);
            ups.push(Upgrade {
                tensor: t,
                to: w[1],
                gain: (a.1 - b.1) / (b.0 - a.0) as f64,
            });
        }
    }
    // Stable: equal gains keep each matrix's hull order.
    ups.sort_by(|a, b| b.gain.total_cmp(&a.gain));
    let choice = vec![0; choices.len()];
    let bytes = choices.iter().map(|tc| tc.candidates[0].bytes).sum();
    let loss = choices.iter().map(|tc| tc.candidates[0].loss).sum();
    (
        Mix {
            choice,
            bytes,
            loss,
        },
        ups,
    )
}

fn apply(mix: &mut Mix, choices: &[TensorChoices], u: Upgrade) {
    let cands = &choices[u.tensor].candidates;
    let from = &cands[mix.choice[u.tensor]];
    let to = &cands[u.to];
    mix.bytes = mix.bytes - from.bytes + to.bytes;
    mix.choice[u.tensor] = u.to;
    // Summed afresh (not updated by differences), so that a mix of lossless choices is exactly 0.
    mix.loss = choices
        .iter()
        .zip(&mix.choice)
        .map(|(tc, &k)| tc.candidates[k].loss)
        .sum();
}

/// The predicted Pareto front: from every matrix at its smallest candidate to every matrix at
/// its least lossy one, one point per upgrade.
pub fn front(choices: &[TensorChoices]) -> Vec<Mix> {
    let (mut mix, ups) = start_and_upgrades(choices);
    let mut out = vec![mix.clone()];
    for u in ups {
        apply(&mut mix, choices, u);
        out.push(mix.clone());
    }
    out
}

/// The least lossy mix of at most `budget` bytes, or `None` when even the smallest candidates
/// do not fit.
pub fn solve_budget(choices: &[TensorChoices], budget: u64) -> Option<Mix> {
    let (mut mix, ups) = start_and_upgrades(choices);
    if mix.bytes > budget {
        return None;
    }
    let mut blocked = vec![false; choices.len()];
    for u in ups {
        if blocked[u.tensor] {
            continue;
        }
        let cands = &choices[u.tensor].candidates;
        let grown = mix.bytes - cands[mix.choice[u.tensor]].bytes + cands[u.to].bytes;
        if grown <= budget {
            apply(&mut mix, choices, u);
        } else {
            // Its later upgrades build on this one.
            blocked[u.tensor] = true;
        }
    }
    Some(mix)
}

/// The smallest mix on the front whose predicted loss is at most `max_loss`.
pub fn solve_loss(choices: &[TensorChoices], max_loss: f64) -> Option<Mix> {
    front(choices).into_iter().find(|m| m.loss <= max_loss)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fit::Candidate;
    use smelt_formats::GgmlType;

    fn tensor(points: &[(u64, f64)]) -> TensorChoices {
        let candidates = points
            .iter()
            .map(|&(bytes, loss)| Candidate {
                ty: GgmlType::Q4_0,
                bytes,
                werr: loss,
                loss,
                kept: loss == 0.0,
                data: Vec::new(),
                gptq: false,
            })
            .collect();
        TensorChoices {
            name: "t".into(),
            rows: 1,
            cols: 32,
            source: GgmlType::Q8_0,
            candidates,
            probe: None,
            probe_all: false,
            factors: None,
        }
    }

    /// Every assignment, by brute force.
    fn brute(choices: &[TensorChoices], budget: u64) -> f64 {
        let mut best = f64::INFINITY;
        let n: usize = choices.iter().map(|c| c.candidates.len()).product();
        for mut k in 0..n {
            let (mut b, mut l) = (0, 0.0);
            for tc in choices {
                let c = &tc.candidates[k % tc.candidates.len()];
                k /= tc.candidates.len();
                b += c.bytes;
                l += c.loss;
            }
            if b <= budget {
                best = best.min(l);
            }
        }
        best
    }

    #[test]
    fn hull_skips_points_above_it() {
        // (20, 5) lies above the segment from (10, 8) to (30, 0).
        assert_eq!(hull(&[(10, 8.0), (20, 5.0), (30, 0.0)]), vec![0, 2]);
        assert_eq!(hull(&[(10, 8.0), (20, 2.0), (30, 0.0)]), vec![0, 1, 2]);
        // A larger candidate that loses more is never taken.
        assert_eq!(hull(&[(10, 8.0), (20, 9.0), (30, 1.0)]), vec![0, 2]);
    }

    #[test]
    fn budget_solutions_are_feasible_and_near_the_brute_force_optimum() {
        let choices = vec![
            tensor(&[(10, 9.0), (14, 4.0), (20, 0.0)]),
            tensor(&[(5, 3.0), (8, 1.0), (10, 0.0)]),
            tensor(&[(30, 20.0), (35, 2.0), (40, 0.0)]),
            tensor(&[(12, 1.0), (16, 0.0)]),
        ];
        for budget in [57, 60, 65, 70, 75, 80, 85, 90] {
            let mix = solve_budget(&choices, budget).unwrap();
            assert!(mix.bytes <= budget, "{budget}: {mix:?}");
            let best = brute(&choices, budget);
            // Exact at hull vertices; otherwise within the largest single-matrix loss step.
            assert!(
                mix.loss <= best + 5.0,
                "budget {budget}: {} vs optimum {best}",
                mix.loss
            );
        }
        assert_eq!(solve_budget(&choices, 56), None);
        assert_eq!(solve_budget(&choices, 86).unwrap().loss, 0.0);
    }

    #[test]
    fn the_front_runs_from_smallest_to_lossless_and_never_grows_loss() {
        let choices = vec![
            tensor(&[(10, 9.0), (14, 4.0), (20, 0.0)]),
            tensor(&[(5, 3.0), (8, 1.0), (10, 0.0)]),
        ];
        let f = front(&choices);
        assert_eq!(f[0].bytes, 15);
        assert_eq!(f.last().unwrap().loss, 0.0);
        for w in f.windows(2) {
            assert!(w[1].bytes > w[0].bytes && w[1].loss < w[0].loss);
        }
        // Front: (15, 12) (19, 7) (25, 3) (28, 1) (30, 0).
        assert_eq!(
            solve_loss(&choices, 4.5).unwrap(),
            Mix {
                choice: vec![2, 0],
                bytes: 25,
                loss: 3.0
            }
        );
    }
}

#!/usr/bin/env python3
"""Records reference values of the metrics smelt-eval computes, from numpy, scipy and
scikit-learn, on fixed seeded inputs: metrics.json beside this script.

Rerun (needs numpy, scipy, scikit-learn; sentence-transformers' environment has them):
    python3 make_metric_fixtures.py
The tests in ../metrics_vs_scipy.rs and src/lm.rs read metrics.json; they never call Python.
"""
import json
import os

import numpy as np
from scipy import special, stats
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

rng = np.random.default_rng(20261121)
out = {"generator": "make_metric_fixtures.py", "numpy": np.__version__, "scipy": __import__("scipy").__version__,
       "sklearn": __import__("sklearn").__version__}

# Percentiles (numpy's default linear interpolation) of a skewed sample, like per-token KLD.
x = rng.exponential(0.05, size=1001)
qs = [0.0, 0.001, 0.01, 0.1, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0]
out["percentile"] = {"values": x.tolist(), "q": qs, "expected": [float(np.percentile(x, 100 * q)) for q in qs]}

# Mean and standard error of the mean (ddof=1), llama-perplexity's uncertainty.
y = rng.normal(2.5, 1.3, size=257)
out["sem"] = {"values": y.tolist(), "mean": float(np.mean(y)), "sem": float(stats.sem(y))}

# Spearman with ties (rounded scores, like STS gold labels) and Pearson.
a = np.round(rng.uniform(0, 5, size=300) * 5) / 5
b = a + rng.normal(0, 0.8, size=300)
b[::7] = np.round(b[::7], 1)
out["spearman"] = {"x": a.tolist(), "y": b.tolist(), "spearman": float(stats.spearmanr(a, b).statistic),
                   "pearson": float(stats.pearsonr(a, b).statistic)}

# Classification metrics with a class that is never predicted (zero_division=0).
labels = 4
truth = rng.integers(0, labels, size=200)
pred = np.where(rng.uniform(size=200) < 0.7, truth, rng.integers(0, labels - 1, size=200))
pred[pred == 3] = 2  # class 3 never predicted
p, r, f, s = precision_recall_fscore_support(truth, pred, labels=list(range(labels)), zero_division=0)
mp, mr, mf, _ = precision_recall_fscore_support(truth, pred, labels=list(range(labels)), average="macro", zero_division=0)
out["classification"] = {"truth": truth.tolist(), "pred": pred.tolist(), "labels": labels,
                         "accuracy": float(accuracy_score(truth, pred)),
                         "precision": p.tolist(), "recall": r.tolist(), "f1": f.tolist(), "support": s.tolist(),
                         "macro_precision": float(mp), "macro_recall": float(mr), "macro_f1": float(mf),
                         "confusion": confusion_matrix(truth, pred, labels=list(range(labels))).tolist()}

# KL divergence, nll and top-1 agreement for logits over a 1000-token vocabulary.
cases = []
for _ in range(5):
    zr = rng.normal(0, 3, size=1000).astype(np.float32)
    z = (zr + rng.normal(0, 0.5, size=1000)).astype(np.float32)
    t = int(rng.integers(0, 1000))
    lp_ref = special.log_softmax(zr.astype(np.float64))
    lp = special.log_softmax(z.astype(np.float64))
    cases.append({"logits": z.tolist(), "ref_logprobs": lp_ref.astype(np.float32).tolist(), "target": t,
                  "kld": float(stats.entropy(np.exp(lp_ref), np.exp(lp))),
                  "nll": float(-lp[t]), "same_top": bool(np.argmax(z) == np.argmax(zr)),
                  "dp": float(np.exp(lp[t]) - np.exp(lp_ref[t]))})
out["kld"] = cases

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "metrics.json"), "w") as fh:
    json.dump(out, fh)
print("wrote", os.path.join(here, "metrics.json"))

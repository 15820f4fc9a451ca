#!/usr/bin/env python3
"""OWL's layer sparsities (Yin et al. 2023, "Outlier Weighed Layerwise Sparsity") in float64
numpy, written from the paper: the independent reference for smelt's `prune::owl`
(tests/prune_vs_numpy.rs, `owl_matches_numpy`).

    python3 owl_reference.py DIR N_LAYERS THRESHOLD SPARSITY LAMBDA OUT.npy

DIR holds, for each layer l < N_LAYERS, the layer's block matrices `l_K_w.npy` (rows x cols)
and the column sums of squares of their inputs `l_K_s.npy` (K numbers the matrices). A layer's
outlier ratio is the fraction of its Wanda scores |W_ij| * sqrt(s_j), over all its matrices
together, above THRESHOLD times their mean. The ratios become sparsities around SPARSITY:
scaled to [0, 2 LAMBDA] by their min and max, shifted so that the densities average 1 - SPARSITY.
Writes [ratios..., sparsities...] (2 N_LAYERS values).
"""
import os
import sys

import numpy as np


def layer_ratio(d, layer, threshold):
    scores = []
    k = 0
    while os.path.exists(os.path.join(d, f"{layer}_{k}_w.npy")):
        w = np.load(os.path.join(d, f"{layer}_{k}_w.npy")).astype(np.float64)
        s = np.load(os.path.join(d, f"{layer}_{k}_s.npy")).astype(np.float64)
        scores.append((np.abs(w) * np.sqrt(np.maximum(s, 0.0))[None, :]).ravel())
        k += 1
    a = np.concatenate(scores)
    return float(np.mean(a > threshold * a.mean()))


def main():
    d, n, threshold, sparsity, lam, out = sys.argv[1:]
    n, threshold, sparsity, lam = int(n), float(threshold), float(sparsity), float(lam)
    ratios = np.array([layer_ratio(d, l, threshold) for l in range(n)])
    spread = ratios.max() - ratios.min()
    if spread > 0:
        r = (ratios - ratios.min()) / spread * 2 * lam
        density = r - r.mean() + (1 - sparsity)
    else:
        density = np.full(n, 1 - sparsity)
    np.save(out, np.concatenate([ratios, 1 - density]))


if __name__ == "__main__":
    main()

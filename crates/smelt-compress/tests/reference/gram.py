#!/usr/bin/env python3
"""The independent side of tests/observer_vs_numpy.rs: for each recorded matrix input X
(rows x cols, float32 .npy written by the test), X^T X and the per-column sums of squares in
float64 with numpy.

    python3 gram.py IN.npy... OUT_DIR     # writes OUT_DIR/<name>.gram.npy and <name>.sum2.npy
"""
import os
import sys

import numpy as np

*inputs, out = sys.argv[1:]
for path in inputs:
    x = np.load(path).astype(np.float64)
    name = os.path.basename(path)[: -len(".npy")]
    np.save(os.path.join(out, name + ".gram.npy"), x.T @ x)
    np.save(os.path.join(out, name + ".sum2.npy"), (x * x).sum(axis=0))

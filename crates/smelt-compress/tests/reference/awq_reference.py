#!/usr/bin/env python3
"""The independent side of tests/awq_vs_numpy.rs: the AWQ scale search (Lin et al. 2023,
Section 3.2) in float64 numpy, for one group of matrices that read one input, quantized into
Q4_0 blocks of 32 columns as ggml's reference quantizer does (float32: d = signed absmax / -8,
levels min(15, trunc(x / d + 8.5)) - 8, d stored as f16).

For alpha = i / G, i = 0..G-1: s_j = max(a_j, 1e-4)^alpha with a_j the RMS of input channel j;
channels that share a row of the matrix the scale folds into (TIE consecutive heads of HEAD_DIM
channels) share the geometric mean of their scales; s is divided by sqrt(max s * min s). The
loss is the group's output error over the calibration inputs, tr(E H E^T) with
E = Q(W diag(s)) diag(s)^-1 - W and H = X^T X.

    python3 awq_reference.py W.npy H.npy A.npy G TIE HEAD_DIM
W: the group's matrices stacked by rows (rows x n), H: n x n, A: the n RMS values.
Prints JSON: {"losses": [...], "best": i}.
"""
import json
import sys

import numpy as np

w = np.load(sys.argv[1]).astype(np.float64)
h = np.load(sys.argv[2]).astype(np.float64)
a = np.load(sys.argv[3]).astype(np.float64)
grid, tie, head_dim = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
rows, n = w.shape


def q4_0(x):
    """ggml's reference Q4_0 in float32: d = absmax-signed / -8, levels min(15, trunc(x / d + 8.5))
    with 1/d unrounded, stored and read back as f16(d)."""
    x = x.astype(np.float32)
    out = np.zeros(x.shape, dtype=np.float64)
    for b in range(0, x.shape[1], 32):
        blk = x[:, b : b + 32]
        idx = np.argmax(np.abs(blk), axis=1)
        d = blk[np.arange(blk.shape[0]), idx] / np.float32(-8.0)
        inv = np.divide(np.float32(1.0), d, out=np.zeros_like(d), where=d != 0)
        q = np.minimum(15, np.trunc(blk * inv[:, None] + np.float32(8.5)))
        out[:, b : b + 32] = (q - 8) * d.astype(np.float16).astype(np.float64)[:, None]
    return out


def scales(alpha):
    log_s = alpha * np.log(np.maximum(a, 1e-4))
    if tie > 1:
        c = np.arange(n)
        row = (c // head_dim // tie) * head_dim + c % head_dim
        mean = np.zeros(row.max() + 1)
        count = np.zeros(row.max() + 1)
        np.add.at(mean, row, log_s)
        np.add.at(count, row, 1)
        log_s = (mean / count)[row]
    log_s = log_s - (log_s.max() + log_s.min()) / 2
    return np.exp(log_s)


losses = []
for i in range(grid):
    s = scales(i / grid).astype(np.float32)
    x = w.astype(np.float32) * s[None, :]
    e = q4_0(x) / s[None, :] - w
    losses.append(float(np.einsum("ri,ij,rj->", e, h, e)))
print(json.dumps({"losses": losses, "best": int(np.argmin(losses))}))

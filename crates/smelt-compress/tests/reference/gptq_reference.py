#!/usr/bin/env python3
"""The independent side of tests/gptq_vs_numpy.rs: GPTQ (Frantar et al. 2022, Algorithm 1,
without lazy batching) in float64 numpy, quantizing into Q4_0 blocks of 32 columns whose scale
is decided, as ggml's reference Q4_0 quantizer does (d = f16(signed absmax / -8)), when the
block's first column is reached; levels round half away from zero into [-8, 7].

    python3 gptq_reference.py W.npy H.npy Q_SMELT.npy DAMP
prints JSON: the share of elements equal in both results, and the layer output error
trace((W - Q) H (W - Q)^T) of numpy's result, smelt's, and round-to-nearest's.
"""
import json
import sys

import numpy as np

w0 = np.load(sys.argv[1]).astype(np.float64)
h = np.load(sys.argv[2]).astype(np.float64)
q_smelt = np.load(sys.argv[3]).astype(np.float64)
damp = float(sys.argv[4])
rows, cols = w0.shape


def round_away(x):
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def q4_0_scale(block):
    # the signed value of largest magnitude (first on ties), then f16
    idx = np.argmax(np.abs(block), axis=1)
    m = block[np.arange(block.shape[0]), idx]
    return (m.astype(np.float32) / np.float32(-8.0)).astype(np.float16).astype(np.float64)


def q4_0_round(x, d):
    safe = np.where(d != 0, d, 1.0)
    q = np.clip(round_away(x / safe), -8, 7)
    return np.where(d != 0, q * d, 0.0)


def err(q):
    e = w0 - q
    return float(np.einsum("ri,ij,rj->", e, h, e))


def rtn():
    q = np.zeros_like(w0)
    for b in range(0, cols, 32):
        d = q4_0_scale(w0[:, b : b + 32])
        q[:, b : b + 32] = q4_0_round(w0[:, b : b + 32], d[:, None])
    return q


hd = h.copy()
dead = np.diag(hd) <= 0
hd[dead, :] = 0
hd[:, dead] = 0
hd[dead, dead] = 1
live = ~dead
lam = damp * np.mean(np.diag(hd)[live])
hd[live, live] += lam
u = np.linalg.cholesky(np.linalg.inv(hd)).T  # upper: inv(H) = U^T U

w = w0.copy()
w[:, dead] = 0
q = np.zeros_like(w)
d = np.zeros(rows)
for j in range(cols):
    if j % 32 == 0:
        d = q4_0_scale(w[:, j : j + 32])
    q[:, j] = q4_0_round(w[:, j], d)
    e = (w[:, j] - q[:, j]) / u[j, j]
    w[:, j + 1 :] -= np.outer(e, u[j, j + 1 :])

agree = float(np.mean(np.abs(q - q_smelt) <= 1e-6 * np.maximum(np.abs(q), 1e-30)))
print(json.dumps({"agree": agree, "err_numpy": err(q), "err_smelt": err(q_smelt), "err_rtn": err(rtn())}))

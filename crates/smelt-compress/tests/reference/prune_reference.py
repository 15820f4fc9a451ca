#!/usr/bin/env python3
"""Magnitude, Wanda and SparseGPT pruning in float64 numpy, written from the papers, the
independent reference for smelt's `prune` module (tests/prune_vs_numpy.rs).

    python3 prune_reference.py W.npy SUM2.npy H.npy METHOD PATTERN SCOPE OUT.npy

W: rows x cols (float32), SUM2: cols (sum of squares of each input column), H: cols x cols
(X^T X). METHOD: magnitude | wanda | sparsegpt. PATTERN: a sparsity such as 0.5, or N:M (N kept
of every M). SCOPE: row | matrix (which entries compete under an unstructured pattern).
Writes the pruned W (float64).

Conventions shared with smelt (stated in its module doc): with sparsity p exactly floor(p n) of
each compared set of n entries go, the lowest scores first, the lower index first among equal
scores (a stable sort); SparseGPT dampens H by 1% of its mean diagonal, treats a column whose
input was always zero as dead (weights zeroed), uses blocks of 128 columns, and is written here
in the paper's lazy form (block-local updates, then one product for the rest of the matrix).
"""
import sys

import numpy as np

BLOCK = 128
DAMP = 0.01


def lowest(scores, k):
    """Boolean mask of the k lowest of a flat array (stable: lower index first among equals)."""
    m = np.zeros(scores.size, dtype=bool)
    m[np.argsort(scores, kind="stable")[:k]] = True
    return m


def select(scores, pattern, scope):
    rows, cols = scores.shape
    if isinstance(pattern, tuple):
        n, m = pattern
        g = scores.reshape(-1, m)
        return np.stack([lowest(r, m - n) for r in g]).reshape(rows, cols)
    if scope == "matrix":
        return lowest(scores.ravel(), int(np.floor(pattern * scores.size))).reshape(rows, cols)
    k = int(np.floor(pattern * cols))
    return np.stack([lowest(r, k) for r in scores])


def magnitude_or_wanda(W, sum2, method, pattern, scope):
    score = np.abs(W)
    if method == "wanda":
        score = score * np.sqrt(np.maximum(sum2, 0.0))[None, :]
    W = W.copy()
    W[select(score, pattern, scope)] = 0.0
    return W


def sparsegpt(W, H, pattern, scope):
    W = W.copy()
    rows, cols = W.shape
    H = H.copy()
    dead = np.diag(H) <= 0
    H[dead, :] = 0
    H[:, dead] = 0
    H[dead, dead] = 1
    W[:, dead] = 0
    live = ~dead
    lam = DAMP * (np.diag(H)[live].mean() if live.any() else 1.0)
    H[np.where(live)[0], np.where(live)[0]] += lam
    Hinv = np.linalg.inv(H)
    U = np.linalg.cholesky(Hinv).T  # Hinv = U^T U, U upper
    step = BLOCK if not isinstance(pattern, tuple) else -(-BLOCK // pattern[1]) * pattern[1]
    for i1 in range(0, cols, step):
        i2 = min(i1 + step, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].copy()
        Q1 = np.zeros_like(W1)
        Err1 = np.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        d1 = np.diag(U1)
        if isinstance(pattern, tuple):
            mask1 = np.zeros_like(W1, dtype=bool)
        else:
            mask1 = select(W1 ** 2 / d1[None, :] ** 2, pattern, scope)
        for i in range(count):
            if isinstance(pattern, tuple) and i % pattern[1] == 0:
                n, m = pattern
                tmp = W1[:, i:i + m] ** 2 / d1[None, i:i + m] ** 2
                mask1[:, i:i + m] = select(tmp, (n, m), "row")
            w = W1[:, i]
            q = w.copy()
            q[mask1[:, i]] = 0.0
            Q1[:, i] = q
            err = (w - q) / d1[i]
            W1[:, i:] -= np.outer(err, U1[i, i:])
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return W


def main():
    w_path, s_path, h_path, method, pattern, scope, out = sys.argv[1:8]
    W = np.load(w_path).astype(np.float64)
    if ":" in pattern:
        n, m = (int(x) for x in pattern.split(":"))
        pattern = (n, m)
    else:
        pattern = float(pattern)
    if method == "sparsegpt":
        res = sparsegpt(W, np.load(h_path).astype(np.float64), pattern, scope)
    else:
        res = magnitude_or_wanda(W, np.load(s_path).astype(np.float64), method, pattern, scope)
    np.save(out, res)


if __name__ == "__main__":
    main()

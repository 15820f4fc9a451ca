#!/usr/bin/env python3
"""Structured pruning of input columns in float64 numpy, the independent reference for smelt's
`prune::columns` (tests/structured_vs_numpy.rs): the Optimal Brain Surgeon step for whole
groups of columns (Hassibi and Stork 1993; the structured form of ZipLM, Kurtic et al. 2023),
greedy, with a bias that absorbs the removed columns' mean.

    python3 structured_reference.py W.npy H.npy SUM.npy ROWS_SEEN GROUP N_REMOVE OUT_W.npy OUT_ORDER.npy

W: rows x cols (float32), H: cols x cols (X^T X), SUM: cols (sum of each input column),
ROWS_SEEN: the number of inputs. Groups are GROUP consecutive columns. Writes the refitted
[W | bias] (rows x (cols + 1), float64; removed columns zero) and the removed groups in order.

Conventions shared with smelt (its module doc): the constant input 1 is appended as a last
column of the inputs, so the Hessian is [[H, s], [s^T, n]] and W gains a zero bias column that is
never removed; H is dampened by 1% of the mean of its diagonal (that column's included); the
cheapest group goes first, the lower index among equal costs.

Two routes, so that each checks the other: the greedy order from the OBS updates of W and of
P = H^-1, and the final weights by solving the least-squares refit of the kept columns directly,
W_K = W H[:, K] H[K, K]^-1 (the script asserts the two agree).
"""
import sys

import numpy as np

DAMP = 0.01


def main(w_path, h_path, s_path, n_seen, group, n_remove, out_w, out_order):
    w0 = np.load(w_path).astype(np.float64)
    h0 = np.load(h_path).astype(np.float64)
    s = np.load(s_path).astype(np.float64)
    rows, cols = w0.shape
    group, n_remove = int(group), int(n_remove)
    h = np.zeros((cols + 1, cols + 1))
    h[:cols, :cols] = h0
    h[:cols, cols] = s
    h[cols, :cols] = s
    h[cols, cols] = float(n_seen)
    h += DAMP * np.mean(np.diag(h)) * np.eye(cols + 1)
    w = np.concatenate([w0, np.zeros((rows, 1))], axis=1)
    p = np.linalg.inv(h)
    alive = list(range(cols // group))
    order = []
    for _ in range(n_remove):
        if group == 1:
            # tr(w_j w_j^T / P_jj), for every column at once.
            costs = np.sum(w[:, :cols] ** 2, axis=0) / np.diag(p)[:cols]
            g = min(alive, key=lambda j: (costs[j], j))
            m = np.array([[1.0 / p[g, g]]])
        else:
            best = None
            for g in alive:
                idx = slice(g * group, (g + 1) * group)
                m = np.linalg.inv(p[idx, idx])
                cost = np.sum((w[:, idx] @ m) * w[:, idx])  # tr(W_G M W_G^T)
                if best is None or cost < best[1]:
                    best = (g, cost, m)
            g, _, m = best
        idx = slice(g * group, (g + 1) * group)
        w = w - w[:, idx] @ m @ p[idx, :]
        p = p - p[:, idx] @ m @ p[idx, :]
        w[:, idx] = 0.0
        alive.remove(g)
        order.append(g)
    # The direct least-squares refit of the columns kept (the bias column among them).
    gone = {j for g in order for j in range(g * group, (g + 1) * group)}
    keep = [j for j in range(cols + 1) if j not in gone]
    direct = np.zeros_like(w)
    w_full = np.concatenate([w0, np.zeros((rows, 1))], axis=1)
    direct[:, keep] = w_full @ h[:, keep] @ np.linalg.inv(h[np.ix_(keep, keep)])
    assert np.abs(direct - w).max() <= 1e-6 * (1 + np.abs(direct).max()), "OBS updates and the direct refit disagree"
    np.save(out_w, direct)
    np.save(out_order, np.array(order, dtype=np.int64))


if __name__ == "__main__":
    main(*sys.argv[1:])

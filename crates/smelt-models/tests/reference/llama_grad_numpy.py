#!/usr/bin/env python3
"""Gradients of a tiny Llama decoder in float64 numpy, forward and backward written by hand from
the Llama paper and llama.cpp's graph (pre-RMSNorm, RoPE on interleaved pairs as GGUF files store
Q and K, causal grouped-query attention, SwiGLU, tied embeddings): the independent reference for
smelt's training pass (`smelt_models::backward::LlamaTrain`).

    python3 llama_grad_numpy.py OUT_DIR

writes OUT_DIR/{case.json, model.safetensors, grads.safetensors}: a random tiny decoder of two
blocks of different widths (4 query / 2 key-value heads and FFN 24, then 2 / 1 and FFN 16, as a
pruned `deci` file has them), tensors named as in GGUF, the sequences and targets of case.json,
and the gradient of

    L = mean_tokens -log softmax(logits)[target] + 0.5 * mean((h_0 - hidden_target)^2)

for every parameter, h_0 being the hidden states after block 0. The fixture `llama_tiny/` beside
this script was made with `python3 llama_grad_numpy.py llama_tiny` (seed 11).
"""
import json
import math
import os
import struct
import sys

import numpy as np

CFG = {"dim": 16, "head_dim": 4, "rope_dim": 4, "vocab": 40, "norm_eps": 1e-5, "rope_theta": 10000.0, "ctx_train": 64,
       "shapes": [[4, 2, 24], [2, 1, 16]]}
SEQS = [[1, 5, 9, 13, 2, 7], [3, 30, 31, 7, 7, 22, 19], [11, 4]]
HIDDEN_LAYER, HIDDEN_WEIGHT = 0, 0.5


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        b = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def rms(x, g, eps):
    inv = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    return x * inv * g, inv


def rms_back(dy, x, g, inv):
    dxh = dy * g
    dx = inv * (dxh - x * inv * inv * (dxh * x).mean(-1, keepdims=True))
    return dx, (dy * x * inv).sum(0)


def rope(x, pos, hd, rd, theta, sign=1.0):
    """Rotates pairs (2i, 2i+1) of each head of every row by pos * theta^(-2i/rd)."""
    y = x.copy()
    for r in range(x.shape[0]):
        for h0 in range(0, x.shape[1], hd):
            for i in range(rd // 2):
                ang = sign * pos[r] * theta ** (-2.0 * i / rd)
                c, s = math.cos(ang), math.sin(ang)
                a, b = x[r, h0 + 2 * i], x[r, h0 + 2 * i + 1]
                y[r, h0 + 2 * i] = a * c - b * s
                y[r, h0 + 2 * i + 1] = a * s + b * c
    return y


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def main(out):
    rng = np.random.default_rng(11)
    d, hd, rd, V, eps, theta = CFG["dim"], CFG["head_dim"], CFG["rope_dim"], CFG["vocab"], CFG["norm_eps"], CFG["rope_theta"]
    r = lambda *s: rng.normal(0, 0.3, s)
    P = {"token_embd.weight": r(V, d)}
    for l, (nh, nkv, f) in enumerate(CFG["shapes"]):
        p = f"blk.{l}."
        P[p + "attn_norm.weight"] = 1 + r(d)
        P[p + "attn_q.weight"], P[p + "attn_k.weight"], P[p + "attn_v.weight"] = r(nh * hd, d), r(nkv * hd, d), r(nkv * hd, d)
        P[p + "attn_output.weight"] = r(d, nh * hd)
        P[p + "ffn_norm.weight"] = 1 + r(d)
        P[p + "ffn_gate.weight"], P[p + "ffn_up.weight"], P[p + "ffn_down.weight"] = r(f, d), r(f, d), r(d, f)
    P["output_norm.weight"] = 1 + r(d)
    P = {k: v.astype(np.float32).astype(np.float64) for k, v in P.items()}
    n_tokens = sum(len(s) for s in SEQS)
    targets = rng.integers(0, V, n_tokens)
    hidden_target = rng.normal(0, 1, (n_tokens, d))
    loss, G = loss_and_grads(P, targets, hidden_target)

    os.makedirs(out, exist_ok=True)
    write_safetensors(os.path.join(out, "model.safetensors"), P)
    write_safetensors(os.path.join(out, "grads.safetensors"), G)
    case = {"config": CFG, "seqs": SEQS, "targets": targets.tolist(), "hidden_layer": HIDDEN_LAYER,
            "hidden_weight": HIDDEN_WEIGHT, "hidden_target": hidden_target.tolist(), "loss": float(loss)}
    with open(os.path.join(out, "case.json"), "w") as fh:
        json.dump(case, fh)


def loss_and_grads(P, targets, hidden_target):
    """The loss of the module docstring for parameters P (float64, GGUF names) and its gradient
    with respect to every tensor of P."""
    d, hd, rd, eps, theta = CFG["dim"], CFG["head_dim"], CFG["rope_dim"], CFG["norm_eps"], CFG["rope_theta"]
    ids = np.array([t for s in SEQS for t in s])
    pos = np.array([i for s in SEQS for i in range(len(s))])
    bounds = np.cumsum([0] + [len(s) for s in SEQS])

    x = P["token_embd.weight"][ids]
    caches, hiddens = [], []
    for l, (nh, nkv, f) in enumerate(CFG["shapes"]):
        p, c = f"blk.{l}.", {"x": x}
        W = lambda n: P[p + n + ".weight"]
        h1, c["inv1"] = rms(x, W("attn_norm"), eps)
        Q = rope(h1 @ W("attn_q").T, pos, hd, rd, theta)
        K = rope(h1 @ W("attn_k").T, pos, hd, rd, theta)
        Vv = h1 @ W("attn_v").T
        A, probs = np.zeros_like(Q), []
        group = nh // nkv
        for s in range(len(SEQS)):
            a, z = bounds[s], bounds[s + 1]
            n = z - a
            for h in range(nh):
                qs, ks = slice(h * hd, (h + 1) * hd), slice((h // group) * hd, (h // group + 1) * hd)
                S = Q[a:z, qs] @ K[a:z, ks].T / math.sqrt(hd)
                S = S + np.triu(np.full((n, n), -np.inf), 1)
                Pm = np.exp(S - S.max(-1, keepdims=True))
                Pm /= Pm.sum(-1, keepdims=True)
                A[a:z, qs] = Pm @ Vv[a:z, ks]
                probs.append(Pm)
        rr = x + A @ W("attn_output").T
        h2, c["inv2"] = rms(rr, W("ffn_norm"), eps)
        ga, u = h2 @ W("ffn_gate").T, h2 @ W("ffn_up").T
        sa = ga * sigmoid(ga) * u
        x = rr + sa @ W("ffn_down").T
        c.update(h1=h1, Q=Q, K=K, V=Vv, probs=probs, A=A, r=rr, h2=h2, a=ga, u=u, s=sa)
        caches.append(c)
        hiddens.append(x)
    hf, inv_f = rms(x, P["output_norm.weight"], eps)
    logits = hf @ P["token_embd.weight"].T

    # Loss: cross-entropy (mean over tokens) plus the hidden-state term.
    m = logits.max(-1, keepdims=True)
    lse = m + np.log(np.exp(logits - m).sum(-1, keepdims=True))
    logp = logits - lse
    t = len(ids)
    loss = -logp[np.arange(t), targets].mean()
    dlogits = np.exp(logp)
    dlogits[np.arange(t), targets] -= 1.0
    dlogits /= t
    diff = hiddens[HIDDEN_LAYER] - hidden_target
    loss += HIDDEN_WEIGHT * (diff ** 2).mean()
    d_hidden = HIDDEN_WEIGHT * 2 * diff / diff.size

    G = {k: np.zeros_like(v) for k, v in P.items()}
    G["token_embd.weight"] += dlogits.T @ hf
    dhf = dlogits @ P["token_embd.weight"]
    dx, G["output_norm.weight"] = rms_back(dhf, x, P["output_norm.weight"], inv_f)
    for l in reversed(range(len(CFG["shapes"]))):
        nh, nkv, f = CFG["shapes"][l]
        p, c = f"blk.{l}.", caches[l]
        W = lambda n: P[p + n + ".weight"]
        if l == HIDDEN_LAYER:
            dx = dx + d_hidden
        G[p + "ffn_down.weight"] = dx.T @ c["s"]
        ds = dx @ W("ffn_down")
        sg = sigmoid(c["a"])
        da = ds * c["u"] * sg * (1 + c["a"] * (1 - sg))
        du = ds * c["a"] * sg
        G[p + "ffn_gate.weight"] = da.T @ c["h2"]
        G[p + "ffn_up.weight"] = du.T @ c["h2"]
        dh2 = da @ W("ffn_gate") + du @ W("ffn_up")
        dr, G[p + "ffn_norm.weight"] = rms_back(dh2, c["r"], W("ffn_norm"), c["inv2"])
        dr = dr + dx
        G[p + "attn_output.weight"] = dr.T @ c["A"]
        dA = dr @ W("attn_output")
        dQ, dK, dV = np.zeros_like(c["Q"]), np.zeros_like(c["K"]), np.zeros_like(c["V"])
        group, k = nh // nkv, 0
        for s in range(len(SEQS)):
            a, z = bounds[s], bounds[s + 1]
            for h in range(nh):
                qs, ks = slice(h * hd, (h + 1) * hd), slice((h // group) * hd, (h // group + 1) * hd)
                Pm = c["probs"][k]
                k += 1
                dV[a:z, ks] += Pm.T @ dA[a:z, qs]
                dP = dA[a:z, qs] @ c["V"][a:z, ks].T
                dS = Pm * (dP - (dP * Pm).sum(-1, keepdims=True)) / math.sqrt(hd)
                dQ[a:z, qs] = dS @ c["K"][a:z, ks]
                dK[a:z, ks] += dS.T @ c["Q"][a:z, qs]
        dQ = rope(dQ, pos, hd, rd, theta, -1.0)
        dK = rope(dK, pos, hd, rd, theta, -1.0)
        dh1 = np.zeros_like(c["x"])
        for m_, dy in (("attn_q", dQ), ("attn_k", dK), ("attn_v", dV)):
            G[p + m_ + ".weight"] = dy.T @ c["h1"]
            dh1 += dy @ W(m_)
        dxn, G[p + "attn_norm.weight"] = rms_back(dh1, c["x"], W("attn_norm"), c["inv1"])
        dx = dxn + dr
    np.add.at(G["token_embd.weight"], ids, dx)
    return loss, G


if __name__ == "__main__":
    main(sys.argv[1])

#!/usr/bin/env python3
"""Gradients of a tiny BERT encoder in float64 numpy, forward and backward written by hand from
the BERT paper and HF `transformers`' BertModel (post-LayerNorm, GELU with erf): the independent
reference for smelt's training pass (`smelt_models::backward::BertTrain`).

    python3 bert_grad_numpy.py OUT_DIR

writes OUT_DIR/{config.json, model.safetensors, case.json, grads.safetensors}: a random tiny
BERT (2 layers, the second with head 2 pruned, as HF's `pruned_heads` says), the token sequences
and targets of case.json, and the gradient of

    L = mean_s (1 - cos(e_s, target_s)) + 0.5 * mean((h_0 - hidden_target)^2)

for every parameter, where e_s is the mean-pooled, L2-normalized last hidden state of sequence s
(sentence-transformers' MiniLM pooling) and h_0 the hidden states after layer 0. The fixture in
`bert_tiny/` beside this script was made with `python3 bert_grad_numpy.py bert_tiny` (seed 7).
"""
import json
import math
import os
import struct
import sys

import numpy as np

CFG = {
    "model_type": "bert", "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
    "intermediate_size": 32, "max_position_embeddings": 24, "type_vocab_size": 2, "vocab_size": 40,
    "hidden_act": "gelu", "layer_norm_eps": 1e-12, "pruned_heads": {"1": [2]},
}
SEQS = [[1, 5, 9, 13, 2], [1, 30, 31, 7, 7, 22, 19, 3, 2], [1, 11, 2]]
HIDDEN_LAYER, HIDDEN_WEIGHT = 0, 0.5
erf = np.vectorize(math.erf)


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


def ln(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    inv = 1.0 / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)
    xh = (x - mu) * inv
    return xh * g + b, (xh, inv)


def ln_back(dy, g, cache):
    xh, inv = cache
    dxh = dy * g
    dx = inv * (dxh - dxh.mean(-1, keepdims=True) - xh * (dxh * xh).mean(-1, keepdims=True))
    return dx, (dy * xh).sum(0), dy.sum(0)


def gelu(x):
    return x * 0.5 * (1 + erf(x / math.sqrt(2)))


def gelu_grad(x):
    return 0.5 * (1 + erf(x / math.sqrt(2))) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def main(out):
    rng = np.random.default_rng(7)
    d, nh, f = CFG["hidden_size"], CFG["num_attention_heads"], CFG["intermediate_size"]
    hd, eps = d // nh, CFG["layer_norm_eps"]
    heads = [nh - len(CFG["pruned_heads"].get(str(l), [])) for l in range(CFG["num_hidden_layers"])]
    r = lambda *s: rng.normal(0, 0.3, s)
    P = {
        "embeddings.word_embeddings.weight": r(CFG["vocab_size"], d),
        "embeddings.position_embeddings.weight": r(CFG["max_position_embeddings"], d),
        "embeddings.token_type_embeddings.weight": r(CFG["type_vocab_size"], d),
        "embeddings.LayerNorm.weight": 1 + r(d), "embeddings.LayerNorm.bias": r(d),
    }
    for l, h in enumerate(heads):
        p, q = f"encoder.layer.{l}.", h * hd
        for m in ("query", "key", "value"):
            P[p + f"attention.self.{m}.weight"], P[p + f"attention.self.{m}.bias"] = r(q, d), r(q)
        P[p + "attention.output.dense.weight"], P[p + "attention.output.dense.bias"] = r(d, q), r(d)
        P[p + "attention.output.LayerNorm.weight"], P[p + "attention.output.LayerNorm.bias"] = 1 + r(d), r(d)
        P[p + "intermediate.dense.weight"], P[p + "intermediate.dense.bias"] = r(f, d), r(f)
        P[p + "output.dense.weight"], P[p + "output.dense.bias"] = r(d, f), r(d)
        P[p + "output.LayerNorm.weight"], P[p + "output.LayerNorm.bias"] = 1 + r(d), r(d)
    # The weights as f32 (what smelt reads), the arithmetic in f64.
    P = {k: v.astype(np.float32).astype(np.float64) for k, v in P.items()}
    targets = rng.normal(0, 1, (len(SEQS), d))
    ids = np.array([t for s in SEQS for t in s])
    pos = np.array([i for s in SEQS for i in range(len(s))])
    bounds = np.cumsum([0] + [len(s) for s in SEQS])
    hidden_target = rng.normal(0, 1, (len(ids), d))

    # Forward, keeping what the backward needs.
    e = P["embeddings.word_embeddings.weight"][ids] + P["embeddings.position_embeddings.weight"][pos] + P["embeddings.token_type_embeddings.weight"][0]
    x, emb_cache = ln(e, P["embeddings.LayerNorm.weight"], P["embeddings.LayerNorm.bias"], eps)
    caches, hiddens = [], []
    for l, h in enumerate(heads):
        p, c = f"encoder.layer.{l}.", {"x": x}
        W = lambda n: P[p + n + ".weight"]
        B = lambda n: P[p + n + ".bias"]
        Q, K, V = (x @ W(f"attention.self.{m}").T + B(f"attention.self.{m}") for m in ("query", "key", "value"))
        A, probs = np.zeros_like(Q), []
        for s in range(len(SEQS)):
            a, z = bounds[s], bounds[s + 1]
            for j in range(h):
                cs = slice(j * hd, (j + 1) * hd)
                S = Q[a:z, cs] @ K[a:z, cs].T / math.sqrt(hd)
                Pm = np.exp(S - S.max(-1, keepdims=True))
                Pm /= Pm.sum(-1, keepdims=True)
                A[a:z, cs] = Pm @ V[a:z, cs]
                probs.append(Pm)
        c.update(Q=Q, K=K, V=V, probs=probs, A=A)
        x1, c["ln1"] = ln(x + A @ W("attention.output.dense").T + B("attention.output.dense"), W("attention.output.LayerNorm"), B("attention.output.LayerNorm"), eps)
        u = x1 @ W("intermediate.dense").T + B("intermediate.dense")
        g = gelu(u)
        x, c["ln2"] = ln(x1 + g @ W("output.dense").T + B("output.dense"), W("output.LayerNorm"), B("output.LayerNorm"), eps)
        c.update(x1=x1, u=u, g=g)
        caches.append(c)
        hiddens.append(x)

    # Loss and its gradient with respect to the last hidden states and to h_0.
    G = {k: np.zeros_like(v) for k, v in P.items()}
    dx = np.zeros_like(x)
    loss = 0.0
    for s in range(len(SEQS)):
        a, z = bounds[s], bounds[s + 1]
        m = x[a:z].mean(0)
        nm = np.linalg.norm(m)
        ev = m / nm
        t = targets[s]
        cos = ev @ t / (np.linalg.norm(ev) * np.linalg.norm(t))
        loss += (1 - cos) / len(SEQS)
        de = -(t / (np.linalg.norm(ev) * np.linalg.norm(t)) - cos * ev / (ev @ ev)) / len(SEQS)
        dm = (de - ev * (ev @ de)) / nm
        dx[a:z] = dm / (z - a)
    diff = hiddens[HIDDEN_LAYER] - hidden_target
    loss += HIDDEN_WEIGHT * (diff ** 2).mean()
    d_hidden = HIDDEN_WEIGHT * 2 * diff / diff.size

    # Backward, layer by layer in reverse.
    for l in reversed(range(len(heads))):
        p, c, h = f"encoder.layer.{l}.", caches[l], heads[l]
        W = lambda n: P[p + n + ".weight"]
        if l == HIDDEN_LAYER:
            dx = dx + d_hidden
        dr2, G[p + "output.LayerNorm.weight"], G[p + "output.LayerNorm.bias"] = ln_back(dx, W("output.LayerNorm"), c["ln2"])
        G[p + "output.dense.weight"] = dr2.T @ c["g"]
        G[p + "output.dense.bias"] = dr2.sum(0)
        du = (dr2 @ W("output.dense")) * gelu_grad(c["u"])
        G[p + "intermediate.dense.weight"] = du.T @ c["x1"]
        G[p + "intermediate.dense.bias"] = du.sum(0)
        dx1 = du @ W("intermediate.dense") + dr2
        dr1, G[p + "attention.output.LayerNorm.weight"], G[p + "attention.output.LayerNorm.bias"] = ln_back(dx1, W("attention.output.LayerNorm"), c["ln1"])
        G[p + "attention.output.dense.weight"] = dr1.T @ c["A"]
        G[p + "attention.output.dense.bias"] = dr1.sum(0)
        dA = dr1 @ W("attention.output.dense")
        dQ, dK, dV = np.zeros_like(c["Q"]), np.zeros_like(c["K"]), np.zeros_like(c["V"])
        k = 0
        for s in range(len(SEQS)):
            a, z = bounds[s], bounds[s + 1]
            for j in range(h):
                cs = slice(j * hd, (j + 1) * hd)
                Pm = c["probs"][k]
                k += 1
                dV[a:z, cs] = Pm.T @ dA[a:z, cs]
                dP = dA[a:z, cs] @ c["V"][a:z, cs].T
                dS = Pm * (dP - (dP * Pm).sum(-1, keepdims=True)) / math.sqrt(hd)
                dQ[a:z, cs] = dS @ c["K"][a:z, cs]
                dK[a:z, cs] = dS.T @ c["Q"][a:z, cs]
        dx = dr1
        for m, dy in (("query", dQ), ("key", dK), ("value", dV)):
            G[p + f"attention.self.{m}.weight"] = dy.T @ c["x"]
            G[p + f"attention.self.{m}.bias"] = dy.sum(0)
            dx = dx + dy @ W(f"attention.self.{m}")
    de, G["embeddings.LayerNorm.weight"], G["embeddings.LayerNorm.bias"] = ln_back(dx, P["embeddings.LayerNorm.weight"], emb_cache)
    np.add.at(G["embeddings.word_embeddings.weight"], ids, de)
    np.add.at(G["embeddings.position_embeddings.weight"], pos, de)
    G["embeddings.token_type_embeddings.weight"][0] = de.sum(0)

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as fh:
        json.dump(CFG, fh, indent=1)
    write_safetensors(os.path.join(out, "model.safetensors"), P)
    write_safetensors(os.path.join(out, "grads.safetensors"), G)
    case = {"seqs": SEQS, "targets": targets.tolist(), "hidden_layer": HIDDEN_LAYER, "hidden_weight": HIDDEN_WEIGHT,
            "hidden_target": hidden_target.tolist(), "loss": loss}
    with open(os.path.join(out, "case.json"), "w") as fh:
        json.dump(case, fh)


if __name__ == "__main__":
    main(sys.argv[1])

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
(sentence-transformers' MiniLM pooling) and h_0 the hidden states after layer 0. It also writes
int8_{case.json, weights.safetensors, grads.safetensors}: the same loss with the matrices of
QUANTIZED fake-quantized as smelt's int8 path runs them (quantization-aware training), their
fake-quantized weights, and the straight-through gradients. The fixture in
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
# (layer, matrix kind, smoothed) fake-quantized in the int8 case; the down matrix of layer 1 stays
# f32. Kinds: 0 Q/K/V stacked, 1 attention output, 2 FFN up, 3 FFN down.
QUANTIZED = [(0, 0, True), (0, 1, True), (0, 2, True), (0, 3, True), (1, 0, True), (1, 1, False), (1, 2, True)]
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


def fake_act(x, smooth):
    """smelt's run-time activation quantizer as a round trip, in float32 as smelt computes it: per
    row, times `smooth`, unsigned 8 bits over [min(0, lo), max(0, hi)] with a zero point, rounded
    half to even, then back: ((a - z) t) / smooth."""
    x32 = x.astype(np.float32)
    out = np.zeros_like(x32)
    for i, row in enumerate(x32):
        xs = row * smooth if smooth is not None else row
        lo, hi = min(np.float32(0), xs.min()), max(np.float32(0), xs.max())
        t = np.float32((hi - lo) / np.float32(255))
        if not (t > 0 and np.isfinite(t)):
            continue
        inv = np.float32(1) / t
        z = int(np.round(-lo * inv))
        a = np.clip(np.round(xs * inv).astype(np.int64) + z, 0, 255)
        v = (a - z).astype(np.float32) * t
        out[i] = v / smooth if smooth is not None else v
    return out.astype(np.float64)


def fake_weight(W, amax):
    """smelt's int8 weights of W (rows x cols) as a round trip, in float32: SmoothQuant factors
    f_c = amax_c^0.45 / max_j |W_jc|^0.55 (clipped to [1e-5, 1e5]; 1 without `amax`), then per row
    s = max |W f| / 64, q = round(W f / s) in [-64, 64]; returns (q s / f, 1 / f or None)."""
    W = W.astype(np.float32)
    smooth = None
    if amax is not None:
        a, alpha = amax.astype(np.float32), np.float32(0.45)
        wmax = np.abs(W).max(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.clip(a ** alpha / wmax ** (np.float32(1) - alpha), np.float32(1e-5), np.float32(1e5)).astype(np.float32)
        f = np.where((a > 0) & (wmax > 0) & np.isfinite(a), f, np.float32(1)).astype(np.float32)
        W = W * f
        smooth = (np.float32(1) / f).astype(np.float32)
    out = np.zeros_like(W)
    for j, row in enumerate(W):
        s = np.float32(np.abs(row).max() / np.float32(64))
        inv = np.float32(1) / s if s > 0 else np.float32(0)
        q = np.clip(np.round(row * inv), -64, 64).astype(np.float32)
        out[j] = q * s
    if smooth is not None:
        out = out * smooth
    return out.astype(np.float64), smooth


def loss_and_grads(P, heads, hd, eps, ids, pos, bounds, targets, hidden_target, fq=None):
    """The loss and every parameter's gradient; with `fq` ({(layer, kind): smooth or None}), the
    inputs of those matrices (kind 0 qkv, 1 attention output, 2 up, 3 down) are fake-quantized
    as smelt's int8 path quantizes them, and their gradients pass straight through."""
    aq = lambda l, kind, x: fake_act(x, fq[(l, kind)]) if fq is not None and (l, kind) in fq else x
    # Forward, keeping what the backward needs.
    e = P["embeddings.word_embeddings.weight"][ids] + P["embeddings.position_embeddings.weight"][pos] + P["embeddings.token_type_embeddings.weight"][0]
    x, emb_cache = ln(e, P["embeddings.LayerNorm.weight"], P["embeddings.LayerNorm.bias"], eps)
    caches, hiddens = [], []
    for l, h in enumerate(heads):
        p, c = f"encoder.layer.{l}.", {"x": x, "xin": aq(l, 0, x)}
        W = lambda n: P[p + n + ".weight"]
        B = lambda n: P[p + n + ".bias"]
        Q, K, V = (c["xin"] @ W(f"attention.self.{m}").T + B(f"attention.self.{m}") for m in ("query", "key", "value"))
        A, probs = np.zeros_like(Q), []
        for s in range(len(bounds) - 1):
            a, z = bounds[s], bounds[s + 1]
            for j in range(h):
                cs = slice(j * hd, (j + 1) * hd)
                S = Q[a:z, cs] @ K[a:z, cs].T / math.sqrt(hd)
                Pm = np.exp(S - S.max(-1, keepdims=True))
                Pm /= Pm.sum(-1, keepdims=True)
                A[a:z, cs] = Pm @ V[a:z, cs]
                probs.append(Pm)
        c.update(Q=Q, K=K, V=V, probs=probs, A=A, Ain=aq(l, 1, A))
        x1, c["ln1"] = ln(x + c["Ain"] @ W("attention.output.dense").T + B("attention.output.dense"), W("attention.output.LayerNorm"), B("attention.output.LayerNorm"), eps)
        x1in = aq(l, 2, x1)
        u = x1in @ W("intermediate.dense").T + B("intermediate.dense")
        g = gelu(u)
        gin = aq(l, 3, g)
        x, c["ln2"] = ln(x1 + gin @ W("output.dense").T + B("output.dense"), W("output.LayerNorm"), B("output.LayerNorm"), eps)
        c.update(x1=x1, u=u, g=g, x1in=x1in, gin=gin)
        caches.append(c)
        hiddens.append(x)

    # Loss and its gradient with respect to the last hidden states and to h_0.
    G = {k: np.zeros_like(v) for k, v in P.items()}
    dx = np.zeros_like(x)
    loss = 0.0
    for s in range(len(bounds) - 1):
        a, z = bounds[s], bounds[s + 1]
        m = x[a:z].mean(0)
        nm = np.linalg.norm(m)
        ev = m / nm
        t = targets[s]
        cos = ev @ t / (np.linalg.norm(ev) * np.linalg.norm(t))
        loss += (1 - cos) / (len(bounds) - 1)
        de = -(t / (np.linalg.norm(ev) * np.linalg.norm(t)) - cos * ev / (ev @ ev)) / (len(bounds) - 1)
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
        G[p + "output.dense.weight"] = dr2.T @ c["gin"]
        G[p + "output.dense.bias"] = dr2.sum(0)
        du = (dr2 @ W("output.dense")) * gelu_grad(c["u"])
        G[p + "intermediate.dense.weight"] = du.T @ c["x1in"]
        G[p + "intermediate.dense.bias"] = du.sum(0)
        dx1 = du @ W("intermediate.dense") + dr2
        dr1, G[p + "attention.output.LayerNorm.weight"], G[p + "attention.output.LayerNorm.bias"] = ln_back(dx1, W("attention.output.LayerNorm"), c["ln1"])
        G[p + "attention.output.dense.weight"] = dr1.T @ c["Ain"]
        G[p + "attention.output.dense.bias"] = dr1.sum(0)
        dA = dr1 @ W("attention.output.dense")
        dQ, dK, dV = np.zeros_like(c["Q"]), np.zeros_like(c["K"]), np.zeros_like(c["V"])
        k = 0
        for s in range(len(bounds) - 1):
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
            G[p + f"attention.self.{m}.weight"] = dy.T @ c["xin"]
            G[p + f"attention.self.{m}.bias"] = dy.sum(0)
            dx = dx + dy @ W(f"attention.self.{m}")
    de, G["embeddings.LayerNorm.weight"], G["embeddings.LayerNorm.bias"] = ln_back(dx, P["embeddings.LayerNorm.weight"], emb_cache)
    np.add.at(G["embeddings.word_embeddings.weight"], ids, de)
    np.add.at(G["embeddings.position_embeddings.weight"], pos, de)
    G["embeddings.token_type_embeddings.weight"][0] = de.sum(0)

    return loss, G


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

    loss, G = loss_and_grads(P, heads, hd, eps, ids, pos, bounds, targets, hidden_target)

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as fh:
        json.dump(CFG, fh, indent=1)
    write_safetensors(os.path.join(out, "model.safetensors"), P)
    write_safetensors(os.path.join(out, "grads.safetensors"), G)
    case = {"seqs": SEQS, "targets": targets.tolist(), "hidden_layer": HIDDEN_LAYER, "hidden_weight": HIDDEN_WEIGHT,
            "hidden_target": hidden_target.tolist(), "loss": loss}
    with open(os.path.join(out, "case.json"), "w") as fh:
        json.dump(case, fh)

    # The int8 case: the same model and loss with the matrices of QUANTIZED fake-quantized as the
    # int8 path runs them (weights per channel, inputs per row, smoothed where calibration maxima
    # are given), gradients straight through the rounding.
    rng = np.random.default_rng(11)
    names = {0: ["attention.self.query", "attention.self.key", "attention.self.value"], 1: ["attention.output.dense"],
             2: ["intermediate.dense"], 3: ["output.dense"]}
    Pq, fq, amax, fake = dict(P), {}, {}, {}
    for l, kind, smoothed in QUANTIZED:
        p = f"encoder.layer.{l}."
        W = np.concatenate([P[p + n + ".weight"] for n in names[kind]])
        a = rng.uniform(0.2, 3.0, W.shape[1]).astype(np.float32) if smoothed else None
        We, smooth = fake_weight(W, a)
        rows = 0
        for n in names[kind]:
            k = P[p + n + ".weight"].shape[0]
            Pq[p + n + ".weight"] = fake[p + n + ".weight"] = We[rows:rows + k]
            rows += k
        fq[(l, kind)] = smooth
        amax[f"{l}.{kind}"] = a.tolist() if a is not None else None
    loss_q, Gq = loss_and_grads(Pq, heads, hd, eps, ids, pos, bounds, targets, hidden_target, fq)
    write_safetensors(os.path.join(out, "int8_weights.safetensors"), fake)
    write_safetensors(os.path.join(out, "int8_grads.safetensors"), Gq)
    with open(os.path.join(out, "int8_case.json"), "w") as fh:
        json.dump({"amax": amax, "loss": loss_q}, fh)


if __name__ == "__main__":
    main(sys.argv[1])

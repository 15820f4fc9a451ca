#!/usr/bin/env python3
"""A BERT encoder's forward pass in float64 numpy, written from the BERT paper and HF
`transformers`' documented BertModel (post-LayerNorm, GELU with erf): the independent reference
for smelt's encoder on pruned models (heads, FFN channels, layers), which
sentence-transformers' recorded embeddings cannot cover.

    python3 bert_numpy.py MODEL_DIR IDS.json OUT.npy

MODEL_DIR: an HF BERT directory (config.json, model.safetensors in F32, F16 or BF16; tensor
names with or without the `bert.` prefix). Each layer's head count is num_attention_heads less
the heads `pruned_heads` lists for it; the widths of Q, K, V, the output projection and the FFN
are read from the weights. IDS.json: a list of token id lists (framed by [CLS] ... [SEP]), run
one sequence at a time. Writes the last layer's hidden states of all tokens, sequences one after
another, as float32 [tokens, hidden].
"""
import json
import math
import struct
import sys

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None}


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        buf = raw[base + a : base + b]
        if t["dtype"] == "BF16":
            v = np.frombuffer(buf, dtype=np.uint16).astype(np.uint32) << 16
            arr = v.view(np.float32)
        else:
            arr = np.frombuffer(buf, dtype=DTYPES[t["dtype"]])
        out[name] = arr.astype(np.float64).reshape(t["shape"])
    return out


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def forward(cfg, w, ids):
    p = "bert." if "bert.embeddings.word_embeddings.weight" in w else ""
    g = lambda name: w[p + name]
    eps = cfg.get("layer_norm_eps", 1e-12)
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    n = len(ids)
    x = g("embeddings.word_embeddings.weight")[ids] + g("embeddings.position_embeddings.weight")[:n] + g("embeddings.token_type_embeddings.weight")[0]
    x = layer_norm(x, g("embeddings.LayerNorm.weight"), g("embeddings.LayerNorm.bias"), eps)
    for l in range(cfg["num_hidden_layers"]):
        L = lambda s: g(f"encoder.layer.{l}.{s}")
        heads = cfg["num_attention_heads"] - len(set(cfg.get("pruned_heads", {}).get(str(l), [])))
        q = x @ L("attention.self.query.weight").T + L("attention.self.query.bias")
        k = x @ L("attention.self.key.weight").T + L("attention.self.key.bias")
        v = x @ L("attention.self.value.weight").T + L("attention.self.value.bias")
        assert q.shape[1] == heads * hd, (l, q.shape, heads)
        mix = np.zeros((n, heads * hd))
        for h in range(heads):
            s = slice(h * hd, (h + 1) * hd)
            scores = q[:, s] @ k[:, s].T / math.sqrt(hd)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            mix[:, s] = scores @ v[:, s]
        a = mix @ L("attention.output.dense.weight").T + L("attention.output.dense.bias")
        x = layer_norm(x + a, L("attention.output.LayerNorm.weight"), L("attention.output.LayerNorm.bias"), eps)
        f = gelu(x @ L("intermediate.dense.weight").T + L("intermediate.dense.bias"))
        f = f @ L("output.dense.weight").T + L("output.dense.bias")
        x = layer_norm(x + f, L("output.LayerNorm.weight"), L("output.LayerNorm.bias"), eps)
    return x


def main():
    d, ids_path, out = sys.argv[1:]
    cfg = json.load(open(f"{d}/config.json"))
    w = read_safetensors(f"{d}/model.safetensors")
    seqs = json.load(open(ids_path))
    np.save(out, np.concatenate([forward(cfg, w, s) for s in seqs]).astype(np.float32))


if __name__ == "__main__":
    main()

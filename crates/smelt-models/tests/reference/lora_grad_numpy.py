#!/usr/bin/env python3
"""Gradients of low-rank adapters (LoRA, Hu et al. 2021) over the frozen tiny decoder of
`llama_tiny/`, in float64 numpy: the independent reference for smelt's LoRA training pass
(`smelt_models::backward::LlamaTrain::lora`).

    python3 lora_grad_numpy.py llama_tiny lora_tiny

Every block matrix W (o x i) gets an adapter A (r x i), B (o x r), both random (B is not zero,
so that every gradient is), and the model runs with W + s B A, s = alpha / r. The loss is the
one of `llama_grad_numpy.py` (cross-entropy plus the hidden-state term); with G = dL/dW' from
its hand-written backward, the chain rule gives

    dL/dA = s B^T G,    dL/dB = s G A^T.

Both are checked here against central finite differences of the float64 loss before they are
written. Writes OUT_DIR/{adapter.safetensors (A and B as `NAME.lora_a`, `NAME.lora_b`),
grads.safetensors, case.json (rank, alpha, loss)}. The fixture `lora_tiny/` beside this script
was made with `python3 lora_grad_numpy.py llama_tiny lora_tiny` (seed 12).
"""
import json
import os
import struct
import sys

import numpy as np

from llama_grad_numpy import CFG, loss_and_grads, write_safetensors

RANK, ALPHA = 2, 3.0
MATS = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype="<f4").reshape(t["shape"]).astype(np.float64)
    return out


def merged(P, lora, s):
    Q = dict(P)
    for name, (A, B) in lora.items():
        Q[name] = P[name] + s * B @ A
    return Q


def main(base_dir, out):
    P = read_safetensors(os.path.join(base_dir, "model.safetensors"))
    with open(os.path.join(base_dir, "case.json")) as fh:
        case = json.load(fh)
    targets, hidden_target = np.array(case["targets"]), np.array(case["hidden_target"])
    rng = np.random.default_rng(12)
    s = ALPHA / RANK
    lora = {}
    for l in range(len(CFG["shapes"])):
        for m in MATS:
            name = f"blk.{l}.{m}.weight"
            o, i = P[name].shape
            A = rng.normal(0, 0.3, (RANK, i)).astype(np.float32).astype(np.float64)
            B = rng.normal(0, 0.3, (o, RANK)).astype(np.float32).astype(np.float64)
            lora[name] = (A, B)
    loss, G = loss_and_grads(merged(P, lora, s), targets, hidden_target)
    grads = {}
    for name, (A, B) in lora.items():
        grads[name + ".lora_a"] = s * B.T @ G[name]
        grads[name + ".lora_b"] = s * G[name] @ A.T

    # Finite differences on a few entries of each tensor.
    h = 1e-6
    for name, (A, B) in lora.items():
        for which, M in (("lora_a", A), ("lora_b", B)):
            for k in rng.choice(M.size, 3, replace=False):
                idx = np.unravel_index(k, M.shape)
                old = M[idx]
                M[idx] = old + h
                up, _ = loss_and_grads(merged(P, lora, s), targets, hidden_target)
                M[idx] = old - h
                down, _ = loss_and_grads(merged(P, lora, s), targets, hidden_target)
                M[idx] = old
                fd, an = (up - down) / (2 * h), grads[f"{name}.{which}"][idx]
                assert abs(fd - an) <= 1e-6 + 1e-5 * abs(an), (name, which, idx, fd, an)

    os.makedirs(out, exist_ok=True)
    adapter = {}
    for name, (A, B) in lora.items():
        adapter[name + ".lora_a"], adapter[name + ".lora_b"] = A, B
    write_safetensors(os.path.join(out, "adapter.safetensors"), adapter)
    write_safetensors(os.path.join(out, "grads.safetensors"), grads)
    with open(os.path.join(out, "case.json"), "w") as fh:
        json.dump({"rank": RANK, "alpha": ALPHA, "loss": float(loss)}, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

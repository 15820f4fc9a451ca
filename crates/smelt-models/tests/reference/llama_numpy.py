#!/usr/bin/env python3
"""A plain numpy (float64) implementation of the Llama forward pass, the independent reference
for smelt's decoder (tests/llama_vs_numpy.rs). Reads the GGUF with the `gguf` package, expands
every weight to float64 (for SmolLM2 that is the shipped Q4_1/Q8_0 file's exact values), and for
each prompt records: the prompt's token ids (HF `tokenizers`, built as in hf_tokenize.py), the
logits at the last prompt position, and 64 greedily generated tokens.

    python3 llama_numpy.py MODEL.gguf OUT_DIR
    python3 llama_numpy.py --logits MODEL.gguf TOKEN_IDS_JSON OUT.npy

The first form writes OUT_DIR/llama_reference.json and OUT_DIR/logits_<i>.npy (float32); it made
the fixtures in this directory with MODEL = the smollm2-135m file (`smelt pull smollm2-135m`).
The second writes the logits at the last of the given tokens (the test of optional biases runs
it on a file it writes). A block's optional biases (`blk.N.attn_q.bias`, ... `ffn_down.bias`, as
llama.cpp's Llama graph reads them) are added after their products. Layers may differ in width
(a pruned model, written as llama.cpp's `deci`): each layer's head counts are read from its own
matrices' shapes, the head size from `attention.key_length` or the width over layer 0's heads.
Needs `pip install gguf numpy tokenizers`.
"""
import json
import os
import sys

import numpy as np
import gguf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PROMPTS = [
    "The capital of France is",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2? Answer briefly.<|im_end|>\n<|im_start|>assistant\n",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife. However little known the feelings or views of such a man may be",
]
N_GEN = 64


def field(r, key):
    f = r.fields[key]
    v = f.parts[f.data[0]]
    return bytes(v).decode() if f.types[0] == gguf.GGUFValueType.STRING else v.tolist()[0]


class Llama:
    def __init__(self, path):
        r = gguf.GGUFReader(path)
        arch = field(r, "general.architecture")
        k = lambda s: field(r, f"{arch}.{s}")
        self.d = k("embedding_length")
        self.n_layers = k("block_count")
        # A per-layer array reads as its first value here: layer 0's head count.
        self.hd = k("attention.key_length") if f"{arch}.attention.key_length" in r.fields else self.d // k("attention.head_count")
        self.eps = k("attention.layer_norm_rms_epsilon")
        self.theta = k("rope.freq_base")
        self.w = {}
        for t in r.tensors:
            shape = tuple(int(x) for x in reversed(t.shape))  # numpy order: [out, in]
            self.w[t.name] = gguf.dequantize(t.data, t.tensor_type).astype(np.float64).reshape(shape)
        self.out = self.w.get("output.weight", self.w["token_embd.weight"])
        self.cache = [([], []) for _ in range(self.n_layers)]

    def lin(self, name, x):
        """`W x (+ b)` for the matrix `name.weight` and its bias `name.bias` if the file has one."""
        y = self.w[name + ".weight"] @ x
        b = self.w.get(name + ".bias")
        return y if b is None else y + b.reshape(-1)

    def rmsnorm(self, x, w):
        return x / np.sqrt(np.mean(x * x) + self.eps) * w

    def rope(self, x, pos):
        # llama.cpp's LLAMA_ROPE_TYPE_NORM: rotate adjacent pairs (2i, 2i+1).
        inv = self.theta ** (-np.arange(0, self.hd, 2, dtype=np.float64) / self.hd)
        c, s = np.cos(pos * inv), np.sin(pos * inv)
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * c - x1 * s
        out[..., 1::2] = x0 * s + x1 * c
        return out

    def step(self, token, pos):
        """One token at position `pos` (the KV cache holds positions 0..pos); returns logits."""
        x = self.w["token_embd.weight"][token].copy()
        for l in range(self.n_layers):
            p = f"blk.{l}."
            n_heads = self.w[p + "attn_q.weight"].shape[0] // self.hd
            n_kv = self.w[p + "attn_k.weight"].shape[0] // self.hd
            group = n_heads // n_kv
            h = self.rmsnorm(x, self.w[p + "attn_norm.weight"])
            q = self.lin(p + "attn_q", h).reshape(n_heads, self.hd)
            kk = self.lin(p + "attn_k", h).reshape(n_kv, self.hd)
            v = self.lin(p + "attn_v", h).reshape(n_kv, self.hd)
            q, kk = self.rope(q, pos), self.rope(kk, pos)
            ks, vs = self.cache[l]
            ks.append(kk)
            vs.append(v)
            K, V = np.stack(ks), np.stack(vs)  # [pos+1, n_kv, hd]
            att = np.empty((n_heads, self.hd))
            for hh in range(n_heads):
                g = hh // group
                sc = K[:, g, :] @ q[hh] / np.sqrt(self.hd)
                pr = np.exp(sc - sc.max())
                pr /= pr.sum()
                att[hh] = pr @ V[:, g, :]
            x = x + self.lin(p + "attn_output", att.reshape(-1))
            h = self.rmsnorm(x, self.w[p + "ffn_norm.weight"])
            gate = self.lin(p + "ffn_gate", h)
            up = self.lin(p + "ffn_up", h)
            x = x + self.lin(p + "ffn_down", gate / (1.0 + np.exp(-gate)) * up)
        x = self.rmsnorm(x, self.w["output_norm.weight"])
        return self.out @ x


def main(path, out_dir):
    from hf_tokenize import build_tokenizer

    tok = build_tokenizer(path)
    model = Llama(path)
    cases = []
    for i, prompt in enumerate(PROMPTS):
        model.cache = [([], []) for _ in range(model.n_layers)]
        ids = tok.encode(prompt, add_special_tokens=False).ids
        for pos, t in enumerate(ids):
            logits = model.step(t, pos)
        np.save(os.path.join(out_dir, f"logits_{i}.npy"), logits.astype(np.float32))
        gen = []
        for _ in range(N_GEN):
            t = int(np.argmax(logits))
            gen.append(t)
            logits = model.step(t, len(ids) + len(gen) - 1)
        cases.append({"prompt": prompt, "prompt_ids": ids, "greedy": gen, "logits": f"logits_{i}.npy",
                      "greedy_text": tok.decode(gen, skip_special_tokens=False)})
        print(f"prompt {i}: {len(ids)} tokens -> {tok.decode(gen)!r}", file=sys.stderr)
    with open(os.path.join(out_dir, "llama_reference.json"), "w") as f:
        json.dump({"model": os.path.basename(path), "cases": cases}, f, indent=1)


def logits_for(path, ids_json, out):
    model = Llama(path)
    ids = json.loads(open(ids_json).read())
    for pos, t in enumerate(ids):
        logits = model.step(t, pos)
    np.save(out, logits.astype(np.float32))


if __name__ == "__main__":
    if sys.argv[1] == "--logits":
        logits_for(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main(sys.argv[1], sys.argv[2])

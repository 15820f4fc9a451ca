#!/usr/bin/env python3
"""Reads a LoRA adapter GGUF written by smelt, its base model and the merged model with the `gguf`
package (llama.cpp's own Python reader), and checks what llama.cpp relies on and what a merge
must be, independently of smelt's reader:

- the adapter's metadata: general.type = "adapter", adapter.type = "lora", adapter.lora.alpha,
  general.architecture equal to the base's;
- for each adapted tensor NAME of the base: NAME.lora_a with ggml dims [in, r] and NAME.lora_b
  with dims [r, out], as llama.cpp's loader checks them;
- the merged tensor (F32) equals dequantize(base) + (alpha / r) B A, computed here in float64;
  every tensor the adapter does not touch is byte-identical to the base's.

    python3 lora_merge_reference.py BASE.gguf ADAPTER.gguf MERGED.gguf

Prints one JSON line: {"pairs": n, "max_rel_err": x}; exits non-zero on any mismatch.
"""
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def field_str(r, key):
    f = r.fields[key]
    return bytes(f.parts[f.data[0]]).decode()


def field_f32(r, key):
    f = r.fields[key]
    return float(f.parts[f.data[0]][0])


def main(base_path, adapter_path, merged_path):
    base, ad, merged = GGUFReader(base_path), GGUFReader(adapter_path), GGUFReader(merged_path)
    assert field_str(ad, "general.type") == "adapter"
    assert field_str(ad, "adapter.type") == "lora"
    assert field_str(ad, "general.architecture") == field_str(base, "general.architecture")
    alpha = field_f32(ad, "adapter.lora.alpha")
    bt = {t.name: t for t in base.tensors}
    mt = {t.name: t for t in merged.tensors}
    at = {t.name: t for t in ad.tensors}
    names = sorted({n.rsplit(".lora_", 1)[0] for n in at})
    assert len(at) == 2 * len(names), "every pair has an A and a B"
    worst = 0.0
    for name in names:
        a, b, w = at[name + ".lora_a"], at[name + ".lora_b"], bt[name]
        n_in, n_out = int(w.shape[0]), int(w.shape[1])
        r = int(a.shape[1])
        assert [int(x) for x in a.shape] == [n_in, r], (name, a.shape)
        assert [int(x) for x in b.shape] == [r, n_out], (name, b.shape)
        A = np.asarray(a.data, dtype=np.float64).reshape(r, n_in)
        B = np.asarray(b.data, dtype=np.float64).reshape(n_out, r)
        W = dequantize(w.data, w.tensor_type).astype(np.float64).reshape(n_out, n_in)
        want = W + (alpha / r if alpha else 1.0) * B @ A
        m = mt[name]
        got = np.asarray(m.data, dtype=np.float64).reshape(n_out, n_in)
        err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)
        worst = max(worst, float(err))
    for name, t in bt.items():
        if name not in names:
            assert mt[name].tensor_type == t.tensor_type and bytes(mt[name].data) == bytes(t.data), name
    assert worst < 1e-6, worst
    print(json.dumps({"pairs": len(names), "max_rel_err": worst}))


if __name__ == "__main__":
    main(*sys.argv[1:4])

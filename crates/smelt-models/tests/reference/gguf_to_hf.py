#!/usr/bin/env python3
"""Writes a GGUF Llama model as an HF model directory: config.json, model.safetensors (F16, HF
tensor names, Q and K rows back in HF's order), tokenizer.json and tokenizer_config.json. There
is no HF-format Llama on the registries here, so tests/llama_hf.rs makes one from SmolLM2 this
way and checks that smelt reads both forms of the same model the same way.

    python3 gguf_to_hf.py MODEL.gguf OUT_DIR

llama.cpp's converter permutes the rows of Q and K (`permute` in convert_hf_to_gguf.py) so that
its adjacent-pair RoPE matches HF's half-split one; this undoes it. Needs gguf, numpy, tokenizers.
"""
import json
import os
import struct
import sys

import numpy as np
import gguf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_tokenize import build_tokenizer  # noqa: E402


def field(r, key):
    f = r.fields[key]
    v = f.parts[f.data[0]]
    return bytes(v).decode() if f.types[0] == gguf.GGUFValueType.STRING else v.tolist()[0]


def unpermute(w, n_head):
    """Inverse of llama.cpp's permute: rows (head, pair, 2) -> (head, 2, pair)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, arr in tensors.items():
        b = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": "F16", "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def main(path, out):
    os.makedirs(out, exist_ok=True)
    r = gguf.GGUFReader(path)
    k = lambda s: field(r, f"llama.{s}")
    n_heads, n_kv = k("attention.head_count"), k("attention.head_count_kv")
    w = {}
    for t in r.tensors:
        shape = tuple(int(x) for x in reversed(t.shape))
        w[t.name] = gguf.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float16)
    hf = {"model.embed_tokens.weight": w["token_embd.weight"], "model.norm.weight": w["output_norm.weight"]}
    for i in range(k("block_count")):
        g, h = f"blk.{i}.", f"model.layers.{i}."
        hf[h + "input_layernorm.weight"] = w[g + "attn_norm.weight"]
        hf[h + "post_attention_layernorm.weight"] = w[g + "ffn_norm.weight"]
        hf[h + "self_attn.q_proj.weight"] = unpermute(w[g + "attn_q.weight"], n_heads)
        hf[h + "self_attn.k_proj.weight"] = unpermute(w[g + "attn_k.weight"], n_kv)
        hf[h + "self_attn.v_proj.weight"] = w[g + "attn_v.weight"]
        hf[h + "self_attn.o_proj.weight"] = w[g + "attn_output.weight"]
        hf[h + "mlp.gate_proj.weight"] = w[g + "ffn_gate.weight"]
        hf[h + "mlp.up_proj.weight"] = w[g + "ffn_up.weight"]
        hf[h + "mlp.down_proj.weight"] = w[g + "ffn_down.weight"]
    if "output.weight" in w:
        hf["lm_head.weight"] = w["output.weight"]
    write_safetensors(os.path.join(out, "model.safetensors"), hf)
    config = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "hidden_size": k("embedding_length"), "intermediate_size": k("feed_forward_length"),
        "num_hidden_layers": k("block_count"), "num_attention_heads": n_heads, "num_key_value_heads": n_kv,
        "rms_norm_eps": k("attention.layer_norm_rms_epsilon"), "rope_theta": k("rope.freq_base"),
        "max_position_embeddings": k("context_length"), "vocab_size": len(r.fields["tokenizer.ggml.tokens"].data),
        "tie_word_embeddings": "output.weight" not in w, "hidden_act": "silu",
    }
    json.dump(config, open(os.path.join(out, "config.json"), "w"), indent=1)
    tok = build_tokenizer(path)
    tok.save(os.path.join(out, "tokenizer.json"))
    tokens = [bytes(r.fields["tokenizer.ggml.tokens"].parts[i]).decode() for i in r.fields["tokenizer.ggml.tokens"].data]
    tc = {"bos_token": tokens[field(r, "tokenizer.ggml.bos_token_id")], "eos_token": tokens[field(r, "tokenizer.ggml.eos_token_id")],
          "add_bos_token": False, "chat_template": field(r, "tokenizer.chat_template")}
    json.dump(tc, open(os.path.join(out, "tokenizer_config.json"), "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

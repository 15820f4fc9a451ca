#!/usr/bin/env python3
"""Writes tiny-deci.gguf beside this script: tiny-llama.gguf as llama.cpp's per-layer `deci`
architecture (layer 0: 4 query heads, 2 KV heads, FFN 64; layer 1: 2, 1, 32), so that the
gguf_model fuzz target starts from the per-layer arrays that pruned models carry.

    pip install gguf==0.19.0 numpy && python3 make_deci_seed.py
"""
import os

import gguf
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PER_LAYER = {"attention.head_count": [4, 2], "attention.head_count_kv": [2, 1], "feed_forward_length": [64, 32]}

r = gguf.GGUFReader(os.path.join(HERE, "tiny-llama.gguf"))
w = gguf.GGUFWriter(os.path.join(HERE, "tiny-deci.gguf"), "deci")
for key, field in r.fields.items():
    if key.startswith("GGUF.") or key == "general.architecture":
        continue
    if key.startswith("llama."):
        key = "deci." + key[len("llama."):]
        short = key[len("deci."):]
        if short in PER_LAYER:
            w.add_array(key, PER_LAYER[short])
            continue
    vtype = field.types[0]
    if vtype == gguf.GGUFValueType.ARRAY:
        w.add_key_value(key, field.contents(), vtype, sub_type=field.types[-1])
    else:
        w.add_key_value(key, field.contents(), vtype)
for t in r.tensors:
    w.add_tensor(t.name, np.array(t.data, dtype=np.float32))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()

#!/usr/bin/env python3
"""Prints what the `gguf` Python package reads from a GGUF file, as JSON: every metadata key with
its value types and value, and every tensor's name, type, dims, the sha256 of its bytes and the
sum of the absolute values of the package's own dequantization of it.
smelt's tests run it on files smelt wrote and compare with what they wrote
(crates/smelt-formats/tests/gguf_interop.rs)."""
import hashlib
import json
import sys

import numpy as np
import gguf
from gguf import GGUFValueType as V


def value(field):
    types = [V(t).name for t in field.types]
    if types[0] == "ARRAY":
        if len(types) == 1:
            return types, []  # the reader records no element type for an empty array
        if types[1] == "ARRAY":
            return types, None  # nested arrays: reported by type only (the reader flattens them)
        if types[1] == "STRING":
            return types, [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return types, [field.parts[i].tolist()[0] for i in field.data]
    if types[0] == "STRING":
        return types, bytes(field.parts[field.data[0]]).decode("utf-8")
    return types, field.parts[field.data[0]].tolist()[0]


def main(path):
    r = gguf.GGUFReader(path)
    kv = {}
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue
        types, v = value(f)
        kv[name] = {"types": types, "value": v}
    tensors = [
        {"name": t.name, "type": t.tensor_type.name, "dims": [int(d) for d in t.shape],
         "sha256": hashlib.sha256(np.ascontiguousarray(t.data).tobytes()).hexdigest(),
         "abs_sum": float(np.abs(gguf.dequantize(t.data, t.tensor_type).astype(np.float64)).sum())}
        for t in r.tensors
    ]
    json.dump({"kv": kv, "tensors": tensors}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])

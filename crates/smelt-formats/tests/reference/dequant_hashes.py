#!/usr/bin/env python3
"""Records, for every tensor of a GGUF file, the sha256 of the `gguf` Python package's numpy
dequantization to little-endian f32 (row-major, ggml element order), plus its type and shape.

Made smollm2_dequant_sha256.json with:
    python3 crates/smelt-formats/tests/reference/dequant_hashes.py \
        ~/.cache/smelt/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf \
        > crates/smelt-formats/tests/reference/smollm2_dequant_sha256.json
(`cargo run -p smelt-cli -- pull smollm2-135m` fetches the model; needs `pip install gguf numpy`.)
"""
import hashlib
import json
import sys

import numpy as np
import gguf
from importlib.metadata import version


def main(path):
    r = gguf.GGUFReader(path)
    out = {"file": path.rsplit("/", 1)[-1], "gguf_package": version("gguf"), "tensors": {}}
    for t in r.tensors:
        x = gguf.dequantize(t.data, t.tensor_type).astype("<f4", copy=False)
        out["tensors"][t.name] = {
            "type": t.tensor_type.name,
            "dims": [int(d) for d in t.shape],
            "sha256": hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest(),
        }
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main(sys.argv[1])

#!/usr/bin/env python3
"""Records what llama.cpp's `llama-quantize --pure` writes for each K-quant type and IQ4_NL (the
types whose quantizers the `gguf` Python package lacks): for every tensor it stored in that type,
the sha256 of the bytes. smelt's reference quantizers must produce the same bytes
(crates/smelt-formats/tests/real_smollm2.rs).

Input: SmolLM2-135M expanded to F32 by smelt (its dequantization is checked bit for bit against
the gguf package), and a llama-quantize binary built outside this repository (see
../shared/PEERS.md). Made llama_quantize_sha256.json with:

    smelt quantize smollm2-135m /tmp/smollm2-f32.gguf --to f32
    python3 crates/smelt-formats/tests/reference/llama_quantize_hashes.py \
        PATH/TO/llama-quantize /tmp/smollm2-f32.gguf "llama.cpp 0c1e57098" \
        > crates/smelt-formats/tests/reference/llama_quantize_sha256.json
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import gguf

TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL"]


def main(quantize, f32_path, label):
    out = {"source": os.path.basename(f32_path), "llama_cpp": label, "types": {}}
    with tempfile.TemporaryDirectory() as d:
        for t in TYPES:
            dst = os.path.join(d, f"{t}.gguf")
            subprocess.run([quantize, "--pure", f32_path, dst, t], check=True, capture_output=True)
            r = gguf.GGUFReader(dst)
            out["types"][t] = {
                x.name: hashlib.sha256(np.ascontiguousarray(x.data).tobytes()).hexdigest()
                for x in r.tensors if x.tensor_type.name == t
            }
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "unknown")

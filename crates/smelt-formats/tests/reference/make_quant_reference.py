#!/usr/bin/env python3
"""Makes quant_reference.gguf: the independent reference for smelt's quantization registry.

For every ggml type the `gguf` Python package can dequantize, the file holds
  q.<TYPE>   blocks of that type (raw), and
  dq.<TYPE>  the package's own numpy dequantization of them (F32),
and, where the package can also quantize, the blocks are its quantization of
  src        an F32 test signal (8 rows x 512: normal, heavy tails, outliers, constant,
             all-zero, tiny and large rows).
Where it cannot quantize (K-quants, IQ4_NL, the lattice IQ types), the blocks are random bytes
with well-formed f16 scales, which exercises arbitrary bit patterns of the quants (and of the
lattice types' grid indices and sign bits).

Rerun (needs `pip install gguf numpy`):
    python3 crates/smelt-formats/tests/reference/make_quant_reference.py
The Rust test `crates/smelt-formats/tests/reference_quant.rs` reads the result.
"""
import os
import numpy as np
import gguf
from importlib.metadata import version
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "quant_reference.gguf")
ROWS, COLS = 8, 512

rng = np.random.default_rng(20261121)


def signal():
    x = np.empty((ROWS, COLS), dtype=np.float32)
    x[0] = rng.normal(0, 0.02, COLS)                       # typical weights
    x[1] = rng.standard_t(3, COLS) * 0.05                  # heavy tails
    x[2] = rng.normal(0, 0.02, COLS); x[2, ::97] = 0.9     # sparse outliers
    x[3] = 0.125                                           # constant (max == min)
    x[4] = 0.0                                             # all zero
    x[5] = rng.normal(0, 1e-6, COLS)                       # tiny
    x[6] = rng.uniform(-60, 60, COLS)                      # large
    x[7] = rng.normal(0.3, 0.1, COLS)                      # positive offset
    return x.astype(np.float32)


# Byte offsets of the f16 scale fields inside each block, to make random blocks well formed.
SCALE_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    T.IQ4_NL: [0],
    T.IQ2_XXS: [0], T.IQ2_XS: [0], T.IQ2_S: [0], T.IQ3_XXS: [0], T.IQ3_S: [0], T.IQ4_XS: [0],
    T.IQ1_S: [0], T.IQ1_M: [],
}
# Made after the others (so that their random bytes stay as they were).
LATTICE = [T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.IQ4_XS, T.IQ1_S, T.IQ1_M]


def random_blocks(qtype):
    block, size = GGML_QUANT_SIZES[qtype]
    nb = ROWS * COLS // block
    b = rng.integers(0, 256, size=(nb, size), dtype=np.uint8)
    for off in SCALE_FIELDS[qtype]:
        scales = (rng.uniform(-1, 1, nb) * 2.0 ** rng.integers(-12, 2, nb)).astype(np.float16)
        b[:, off:off + 2] = scales.view(np.uint8).reshape(nb, 2)
    if qtype == T.IQ1_M:
        # IQ1_M keeps its f16 scale in the top nibbles of the last four u16 (low nibble first).
        d = (rng.uniform(-1, 1, nb) * 2.0 ** rng.integers(-12, 2, nb)).astype(np.float16).view(np.uint16)
        sc = b[:, size - 8:].copy().view(np.uint16) & np.uint16(0x0FFF)
        for i in range(4):
            sc[:, i] |= ((d >> np.uint16(4 * i)) & np.uint16(0xF)) << np.uint16(12)
        b[:, size - 8:] = sc.view(np.uint8)
    return b.reshape(ROWS, -1)


def main():
    w = gguf.GGUFWriter(OUT, arch="smelt-test")
    w.add_string("smelt.reference.generator", f"gguf {version('gguf')} numpy {np.__version__}")
    src = signal()
    w.add_tensor("src", src)
    quantizable = [T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
    random_only = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL]
    # F16 through numpy's own conversion (round to nearest even).
    w.add_tensor("q.F16", src.astype(np.float16))
    w.add_tensor("dq.F16", src.astype(np.float16).astype(np.float32))
    for qt in quantizable:
        q = gguf.quantize(src, qt)
        w.add_tensor(f"q.{qt.name}", q, raw_shape=q.shape, raw_dtype=qt)
        w.add_tensor(f"dq.{qt.name}", gguf.dequantize(q, qt).astype(np.float32))
    for qt in random_only + [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]:
        q = random_blocks(qt)
        w.add_tensor(f"rq.{qt.name}", q, raw_shape=q.shape, raw_dtype=qt)
        w.add_tensor(f"rdq.{qt.name}", gguf.dequantize(q, qt).astype(np.float32))
    for qt in LATTICE:
        q = random_blocks(qt)
        w.add_tensor(f"rq.{qt.name}", q, raw_shape=q.shape, raw_dtype=qt)
        w.add_tensor(f"rdq.{qt.name}", gguf.dequantize(q, qt).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()

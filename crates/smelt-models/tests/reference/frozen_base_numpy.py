"""Reference for backward through a frozen quantized linear: dx = dy W, with W dequantized by the
`gguf` package (llama.cpp's own Python reader) and the product in float64 numpy.

usage: frozen_base_numpy.py W.npy TYPE COLS DY.npy DX.npy ADDED
  W.npy   uint8, (rows, bytes per row): the matrix in ggml type TYPE (e.g. Q4_K), COLS wide
  DY.npy  float32 (t, rows); DX.npy float32 (t, COLS): smelt's result, which had ADDED added to
          every element beforehand (accumulation)
prints JSON: {"max_abs": largest |dx - reference|, "scale": largest |reference|}
"""
import json
import sys

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

w_path, ty, cols, dy_path, dx_path, added = sys.argv[1:]
raw = np.load(w_path)
w = dequantize(raw, GGMLQuantizationType[ty]).astype(np.float64).reshape(raw.shape[0], int(cols))
dy = np.load(dy_path).astype(np.float64)
ref = dy @ w + float(added)
dx = np.load(dx_path).astype(np.float64)
assert dx.shape == ref.shape, (dx.shape, ref.shape)
print(json.dumps({"max_abs": float(np.abs(dx - ref).max()), "scale": float(np.abs(ref).max())}))

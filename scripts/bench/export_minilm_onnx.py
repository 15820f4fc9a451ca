#!/usr/bin/env python3
"""Exports a BERT sentence encoder (an HF / sentence-transformers directory) to ONNX for the
ONNX Runtime baselines of scripts/bench-encoders: the transformer only (inputs input_ids,
attention_mask, token_type_ids; output last_hidden_state), opset 17, dynamic batch and length.
Pooling runs in numpy in the worker, as sentence-transformers' ONNX backend does. Also writes
the dynamic int8 model ONNX Runtime recommends for AVX2 (per-channel, reduce_range), which
PEERS.md measured.

    python3 export_minilm_onnx.py MODEL_DIR OUT_DIR

Needs `pip install torch transformers onnx onnxruntime` (CPU is enough).
"""
import os
import sys

import torch
from transformers import AutoModel


class Encoder(torch.nn.Module):
    """Positional inputs to the model's keyword arguments."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.last_hidden_state


def main(model_dir, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    fp32 = os.path.join(out_dir, "model_fp32.onnx")
    model = Encoder(AutoModel.from_pretrained(model_dir).eval())
    ids = torch.ones((2, 16), dtype=torch.long)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            fp32,
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["last_hidden_state"],
            dynamic_axes={n: {0: "batch", 1: "seq"} for n in ["input_ids", "attention_mask", "token_type_ids", "last_hidden_state"]},
            opset_version=17,
            dynamo=False,
        )
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(fp32, os.path.join(out_dir, "model_int8.onnx"), per_channel=True, reduce_range=True, weight_type=QuantType.QInt8)
    print(out_dir)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

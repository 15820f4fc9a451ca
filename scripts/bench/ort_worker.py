#!/usr/bin/env python3
"""ONNX Runtime baseline for scripts/bench-encoders: embeds every line of TEXTS as
sentence-transformers' ONNX backend would (HF `tokenizers` with truncation to MAX_LEN, texts
sorted by length, batches padded to their longest text, mean pooling over the attention mask and
L2 normalization in numpy), after one warm-up pass. Prints one JSON line per repetition:
{"seconds": ..., "texts": ...}. Tokenization is inside the timed loop.

    python3 ort_worker.py MODEL.onnx TOKENIZER_JSON TEXTS [--batch 32] [--threads 2] [--reps 3]
                          [--save EMBEDDINGS.npy]
"""
import argparse
import json
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("tokenizer")
    ap.add_argument("texts")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--save", help="write the embeddings of the warm-up pass as .npy")
    a = ap.parse_args()
    texts = open(a.texts, encoding="utf-8").read().splitlines()
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    tok = Tokenizer.from_file(a.tokenizer)
    tok.enable_truncation(a.max_len)
    tok.no_padding()

    def embed_all():
        encs = tok.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(encs[i].ids))
        out = np.zeros((len(texts), 0), dtype=np.float32)
        rows = {}
        for s in range(0, len(order), a.batch):
            idx = order[s : s + a.batch]
            n = max(len(encs[i].ids) for i in idx)
            ids = np.zeros((len(idx), n), dtype=np.int64)
            mask = np.zeros((len(idx), n), dtype=np.int64)
            for r, i in enumerate(idx):
                e = encs[i].ids
                ids[r, : len(e)] = e
                mask[r, : len(e)] = 1
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in names:
                feed["token_type_ids"] = np.zeros_like(ids)
            h = sess.run(None, feed)[0]
            m = mask[:, :, None].astype(np.float32)
            v = (h * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
            v /= np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)
            for r, i in enumerate(idx):
                rows[i] = v[r]
        return np.stack([rows[i] for i in range(len(texts))]) if rows else out

    emb = embed_all()  # warm-up
    if a.save:
        np.save(a.save, emb)
    for _ in range(a.reps):
        t = time.perf_counter()
        embed_all()
        print(json.dumps({"seconds": time.perf_counter() - t, "texts": len(texts)}), flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Records the reference sentence embeddings smelt's encoders are compared with
(tests/encoder_vs_reference.rs):

* all-MiniLM-L6-v2 through sentence-transformers (fp32, its own tokenization, truncation to
  `max_seq_length` = 256, mean pooling, L2 normalization);
* paraphrase-MiniLM-L3-v2 through ONNX Runtime running the shipped ONNX graph (fp32, mean
  pooling inside the graph, no normalization), one text per call so no padding is involved,
  token ids from the HF `tokenizers` package with the tokenizer.json's truncation (128).

The texts, in order: the first STS_KEPT sentences of the STS Benchmark dev split (sentence 1
then sentence 2 of each row, read from ../shared/data/stsbenchmark/sts-dev.csv, not copied
here), then the texts of `encoder_texts.jsonl` (Austen paragraphs chosen below, public domain,
and hand-written edge cases). The STS-B dev Spearman is computed over all 1,500 pairs. Writes,
beside this script:

    encoder_texts.jsonl        the non-STS texts, one JSON string per line
    minilm_l6_st.npy           float16 [N, 384], sentence-transformers' embeddings
    minilm_l3_ort.npy          float16 [N, 384], ONNX Runtime's pooled output
    minilm_l6_int8.npy         int8 [QUANT_ROWS, 384]: sentence-transformers' quantize_embeddings
                               of the float16 rows above (as float32), ranges from all N rows
    minilm_l6_ubinary.npy      uint8 [N, 48]: the same with precision "ubinary"
    encoder_reference.json     package versions, file hashes, STS-B dev Spearman of each model

float16 keeps the fixtures small; its rounding moves a cosine by about 1e-7, far below the
1e-4 the tests allow. Rerun (any machine, CPU is enough):

    pip install sentence-transformers onnxruntime tokenizers scipy numpy
    smelt pull all-minilm-l6-v2 && smelt pull paraphrase-minilm-l3-v2
    python3 encoder_reference.py ~/.cache/smelt/models ../../../../../shared/data
"""
import csv
import hashlib
import json
import os
import re
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
STS_KEPT = 1000
QUANT_ROWS = 300

EDGE_CASES = [
    "",
    " ",
    "\t\n  \r\n",
    "a",
    "Hello, world!",
    "HELLO WORLD, shouting in CAPITALS.",
    "Café déjà vu: naïve façades in São Paulo and Zürich.",
    "Ångström, Øresund, Łódź, İstanbul, ǅungla.",
    "東京は日本の首都です。",
    "北京欢迎你，我们一起学习机器学习。",
    "한국어 문장도 토큰화됩니다.",
    "Ελληνικά: η γρήγορη καφέ αλεπού.",
    "Русский текст: быстрая бурая лиса прыгает.",
    "العربية: الثعلب البني السريع",
    "हिन्दी में एक वाक्य।",
    "Emoji 😀🎉👍🏽 and symbols ★ ☂ ♞ ∑ ∞ → ≠.",
    "Control\u0000chars\u0007in\u001bthe\u007fmiddle.",
    "Zero\u200bwidth\u200djoiners\ufeffand BOM.",
    "Combining: e\u0301 a\u0300 n\u0303 o\u0308.",
    "don't won't can't shouldn't y'all'd've",
    "Prices: $1,234.56, €99, ¥10000, 3.14159, 1e-9, 2026-11-21.",
    "https://example.com/path?query=1&x=y#frag and user@example.org",
    "snake_case camelCase PascalCase kebab-case SCREAMING_CASE",
    "fn main() { println!(\"{}\", 1 + 2); } // code",
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "a" * 300,
    "The the the the the the the the the the.",
    "(((nested))) [[brackets]] {{braces}} <<angles>>",
    "Tabs\tand\tnewlines\nin\none\ntext.",
    "ﬁ ligatures ﬂ and fullwidth ＡＢＣ１２３",
    "Mixed 中文 and English words in 一个 sentence.",
    "   leading and trailing spaces   ",
    "?!.,;:",
    "I absolutely loved this movie, it was wonderful!",
    "This was the worst film I have ever seen.",
]


def sts_texts(data_dir):
    """Sentence 1 and sentence 2 of every STS-B dev row, and the gold scores."""
    texts, gold = [], []
    with open(os.path.join(data_dir, "stsbenchmark", "sts-dev.csv"), encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            gold.append(float(row[4]))
            texts += [row[5], row[6]]
    return texts, gold


def austen_texts(data_dir, per_book=60):
    """Every k-th paragraph of each novel (paragraphs split at blank lines, whitespace joined),
    k chosen to give `per_book` paragraphs: short lines, dialogue and long passages that
    exceed the 256-token truncation."""
    out = []
    for book in sorted(os.listdir(os.path.join(data_dir, "austen"))):
        with open(os.path.join(data_dir, "austen", book), encoding="utf-8") as f:
            paras = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", f.read())]
        paras = [p for p in paras if p]
        k = max(1, len(paras) // per_book)
        out += paras[::k][:per_book]
    return out


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def spearman_sts(emb, gold):
    from scipy.stats import spearmanr

    emb = emb[: 2 * len(gold)].astype(np.float64)
    a, b = emb[0::2], emb[1::2]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(spearmanr(cos, gold).statistic)


def main(models_dir, data_dir):
    import onnxruntime
    import sentence_transformers
    import tokenizers
    from sentence_transformers import SentenceTransformer

    sts, gold = sts_texts(data_dir)
    extra = austen_texts(data_dir) + EDGE_CASES
    texts = sts + extra
    with open(os.path.join(HERE, "encoder_texts.jsonl"), "w", encoding="utf-8") as f:
        for t in extra:
            f.write(json.dumps(t, ensure_ascii=False) + "\n")

    l6_dir = os.path.join(models_dir, "all-minilm-l6-v2")
    st = SentenceTransformer(l6_dir, device="cpu")
    l6 = st.encode(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=False)
    kept = list(range(STS_KEPT)) + list(range(len(sts), len(texts)))
    np.save(os.path.join(HERE, "minilm_l6_st.npy"), l6[kept].astype(np.float16))

    from sentence_transformers.util.quantization import quantize_embeddings

    stored = l6[kept].astype(np.float16).astype(np.float32)
    int8 = quantize_embeddings(stored, "int8", calibration_embeddings=stored)
    np.save(os.path.join(HERE, "minilm_l6_int8.npy"), int8[:QUANT_ROWS])
    np.save(os.path.join(HERE, "minilm_l6_ubinary.npy"), quantize_embeddings(stored, "ubinary"))

    l3_dir = os.path.join(models_dir, "paraphrase-minilm-l3-v2")
    onnx_path = os.path.join(l3_dir, "paraphrase-MiniLM-L3-v2.onnx")
    sess = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    tok = tokenizers.Tokenizer.from_file(os.path.join(l3_dir, "tokenizer.json"))
    tok.no_padding()
    l3 = np.zeros((len(texts), 384), np.float32)
    for i, t in enumerate(texts):
        ids = np.array([tok.encode(t).ids], dtype=np.int64)
        out = sess.run(["461"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
        l3[i] = out[0]
    np.save(os.path.join(HERE, "minilm_l3_ort.npy"), l3[kept].astype(np.float16))

    ref = {
        "texts": {"sts_dev_pairs": len(gold), "sts_kept": STS_KEPT, "extra": len(extra), "rows": len(kept)},
        "all-minilm-l6-v2": {
            "reference": f"sentence-transformers {sentence_transformers.__version__}",
            "model.safetensors sha256": sha256(os.path.join(l6_dir, "model.safetensors")),
            "max_seq_length": st.max_seq_length,
            "sts_dev_spearman": spearman_sts(l6, gold),
        },
        "paraphrase-minilm-l3-v2": {
            "reference": f"onnxruntime {onnxruntime.__version__}, tokenizers {tokenizers.__version__}",
            "onnx sha256": sha256(onnx_path),
            "sts_dev_spearman": spearman_sts(l3, gold),
        },
    }
    with open(os.path.join(HERE, "encoder_reference.json"), "w") as f:
        json.dump(ref, f, indent=2)
        f.write("\n")
    print(json.dumps(ref, indent=2))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

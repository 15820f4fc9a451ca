#!/usr/bin/env python3
"""Tokenizes texts with the HF `tokenizers` package, built from a GGUF file's own vocabulary:
the reference smelt's tokenizer is compared with (tests/tokenizer_vs_hf.rs runs this).

    python3 hf_tokenize.py MODEL.gguf CORPUS.jsonl > IDS.jsonl

CORPUS.jsonl holds one JSON string per line; the output holds one JSON list of token ids per line.
The tokenizer: a BPE model with the GGUF's tokens and merges, the pre-tokenizer the GGUF names in
`tokenizer.ggml.pre` (smollm: Digits(individual) then ByteLevel; gpt2: ByteLevel), the byte-level
decoder, and the control / user-defined tokens added as special tokens (matched in the text).
Needs `pip install gguf tokenizers`.
"""
import json
import sys

import gguf
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers


def field_strings(r, key):
    f = r.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def build_tokenizer(model_path):
    """The HF tokenizer for a GGUF file's vocabulary (see the module docs)."""
    r = gguf.GGUFReader(model_path)
    tokens = field_strings(r, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in field_strings(r, "tokenizer.ggml.merges")]
    f = r.fields["tokenizer.ggml.token_type"]
    types = [int(f.parts[i][0]) for i in f.data]
    pre = bytes(r.fields["tokenizer.ggml.pre"].parts[r.fields["tokenizer.ggml.pre"].data[0]]).decode()
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in ("default", "gpt2"):
        tok.pre_tokenizer = byte_level
    else:
        raise SystemExit(f"no reference pre-tokenizer for {pre!r}")
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t in (3, 4)]
    tok.add_special_tokens(specials)
    return tok


def main(model_path, corpus_path):
    tok = build_tokenizer(model_path)
    with open(corpus_path, encoding="utf-8") as corpus:
        texts = [json.loads(line) for line in corpus]
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        print(json.dumps(enc.ids))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

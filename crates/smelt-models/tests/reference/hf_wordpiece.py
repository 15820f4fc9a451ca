#!/usr/bin/env python3
"""Tokenizes texts with the HF `tokenizers` package from a model's own tokenizer.json, with
padding and truncation switched off: the reference for smelt's WordPiece tokenizer
(tests/wordpiece_vs_hf.rs runs this).

    python3 hf_wordpiece.py TOKENIZER.json CORPUS.jsonl > IDS.jsonl

CORPUS.jsonl holds one JSON string per line; the output holds one JSON list of token ids per
line, `[CLS] ... [SEP]` included (the tokenizer.json's post-processor). Needs `pip install
tokenizers`.
"""
import json
import sys

from tokenizers import Tokenizer


def main(tokenizer_path, corpus_path):
    tok = Tokenizer.from_file(tokenizer_path)
    tok.no_padding()
    tok.no_truncation()
    with open(corpus_path, encoding="utf-8") as corpus:
        for line in corpus:
            print(json.dumps(tok.encode(json.loads(line)).ids))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

#!/usr/bin/env python3
"""Writes the two text sets of scripts/bench-encoders (one text per line), built from
../shared/data so that nothing from it is copied into the repository:

- `sts.txt`: the 3,000 sentences of STS-B dev (both columns, in file order);
- `long.txt`: 256 Austen sentences of 23-101 tokens ([CLS] and [SEP] included, by the model's
  tokenizer.json), drawn with a fixed seed from Pride and Prejudice, as PEERS.md describes the
  set the peers were measured on.

    python3 make_sentences.py DATA_DIR TOKENIZER_JSON OUT_DIR

Needs `tokenizers`.
"""
import csv
import os
import random
import re
import sys

from tokenizers import Tokenizer


def sts(data):
    out = []
    with open(os.path.join(data, "stsbenchmark", "sts-dev.csv"), encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 7:
                out += [row[5], row[6]]
    return out


def long_sentences(data, tokenizer_json):
    tok = Tokenizer.from_file(tokenizer_json)
    tok.no_truncation()
    tok.no_padding()
    text = open(os.path.join(data, "austen", "prideprejudice.txt"), encoding="utf-8").read()
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    sentences = []
    for p in paragraphs:
        sentences += [s.strip() for s in re.split(r"(?<!Mr\.)(?<!Mrs\.)(?<!Dr\.)(?<!St\.)(?<=[.!?])\s+(?=[A-Z\"'])", p) if s.strip()]
    seen, keep = set(), []
    for s in sentences:
        n = len(tok.encode(s).ids)
        if 23 <= n <= 101 and s not in seen:
            seen.add(s)
            keep.append(s)
    return random.Random(20261121).sample(keep, 256)


def main(data, tokenizer_json, out):
    os.makedirs(out, exist_ok=True)
    for name, lines in (("sts.txt", sts(data)), ("long.txt", long_sentences(data, tokenizer_json))):
        assert all("\n" not in l for l in lines)
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        print(os.path.join(out, name), len(lines))


if __name__ == "__main__":
    main(*sys.argv[1:4])

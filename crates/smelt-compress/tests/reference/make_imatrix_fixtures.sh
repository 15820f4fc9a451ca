#!/usr/bin/env bash
# Makes the llama.cpp side of tests/imatrix_vs_llama.rs: llama-imatrix (llama.cpp commit
# 0c1e57098, built as ../shared/PEERS.md says) on SmolLM2-135M-Instruct (the catalog's Q4_1 file)
# over the first 20,000 bytes of Sense and Sensibility, 2 chunks of 256 tokens, in both of its
# file forms; then filter_imatrix.py keeps layers 0, 14 and 29 so the fixtures stay small.
#
#   LLAMA_BIN=~/peers/.../build/bin crates/smelt-compress/tests/reference/make_imatrix_fixtures.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../../../.."
model="${SMELT_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/smelt}/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"
python="${SMELT_PYTHON:-python3}"
tmp="$(mktemp -d)"
head -c 20000 "$root/../shared/data/austen/sensesensibility.txt" > "$tmp/calib.txt"
for form in gguf dat; do
  "$LLAMA_BIN/llama-imatrix" -m "$model" -f "$tmp/calib.txt" -o "$tmp/full.$form" --output-format "$form" \
    -c 256 --chunks 2 -t 2 --no-ppl > /dev/null 2>&1
  "$python" "$here/filter_imatrix.py" "$tmp/full.$form" "$here/llama_imatrix_smollm2.$form" blk.0. blk.14. blk.29.
done
rm -rf "$tmp"

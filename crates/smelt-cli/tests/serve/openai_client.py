"""`smelt serve` used through the real `openai` Python client, as users use it.

Run by crates/smelt-cli/tests/serve.rs against a running server:
    python openai_client.py http://127.0.0.1:PORT/v1 DECODER_ID ENCODER_ID
Every check is an assert; the script prints "ok" at the end.
"""
import base64
import json
import struct
import sys
import urllib.error
import urllib.request

import openai

base, lm, enc = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=120)

# Models.
ids = [m.id for m in client.models.list().data]
assert ids == [lm, enc], ids

# Chat, whole.
r = client.chat.completions.create(model=lm, messages=[{"role": "user", "content": "What is 2 + 2?"}], max_tokens=16, temperature=0)
assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
assert r.choices[0].finish_reason in ("stop", "length")
assert isinstance(r.choices[0].message.content, str) and r.choices[0].message.content
assert r.usage.completion_tokens <= 16 and r.usage.prompt_tokens > 5
assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

# Chat, streamed, with usage: the pieces join to a text; the last chunk carries usage.
pieces, usage, finish = [], None, None
for chunk in client.chat.completions.create(model=lm, messages=[{"role": "user", "content": "Count to five."}], max_tokens=20,
                                            temperature=0, stream=True, stream_options={"include_usage": True}):
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            pieces.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
assert pieces and finish in ("stop", "length"), (pieces, finish)
assert usage is not None and usage.completion_tokens <= 20

# Chat with log-probabilities.
r = client.chat.completions.create(model=lm, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)
lp = r.choices[0].logprobs.content
assert len(lp) == r.usage.completion_tokens and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in lp)

# Legacy completions, whole and streamed, greedy: the same text.
r = client.completions.create(model=lm, prompt="The capital of France is", max_tokens=8, temperature=0)
whole = r.choices[0].text
assert r.object == "text_completion" and whole, r
streamed = "".join(c.choices[0].text for c in client.completions.create(model=lm, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True) if c.choices)
assert streamed == whole, (streamed, whole)

# Embeddings: float and base64 are the same vectors, unit length (the model normalizes).
e = client.embeddings.create(model=enc, input=["A cat sits on the mat.", "Stocks fell sharply today."])
assert [d.index for d in e.data] == [0, 1] and len(e.data[0].embedding) == 384
norm = sum(x * x for x in e.data[0].embedding) ** 0.5
assert abs(norm - 1) < 1e-3, norm
raw = urllib.request.urlopen(urllib.request.Request(base + "/embeddings", json.dumps({"model": enc, "input": "A cat sits on the mat.", "encoding_format": "base64"}).encode(),
                                                    {"content-type": "application/json"})).read()
b = base64.b64decode(json.loads(raw)["data"][0]["embedding"])
v = struct.unpack("<384f", b)
assert max(abs(x - y) for x, y in zip(v, e.data[0].embedding)) < 1e-6

# Errors, as the client's exception types.
try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as err:
    assert err.body["code"] == "model_not_found", err.body
try:
    client.chat.completions.create(model=lm, messages=[{"role": "user", "content": "x"}], max_tokens=0)
    raise AssertionError("max_tokens 0 was accepted")
except openai.BadRequestError as err:
    assert err.body["type"] == "invalid_request_error", err.body
try:
    client.chat.completions.create(model=lm, messages=[{"role": "user", "content": "x" * (5 << 20)}])
    raise AssertionError("an oversized request was accepted")
except openai.APIStatusError as err:
    assert err.status_code == 413, err.status_code
try:
    client.embeddings.create(model=enc, input="x", dimensions=64)
    raise AssertionError("dimensions was accepted")
except openai.BadRequestError as err:
    assert "dimensions" in err.message
# Bad JSON, sent raw: an OpenAI error object.
try:
    urllib.request.urlopen(urllib.request.Request(base + "/chat/completions", b"{oops", {"content-type": "application/json"}))
    raise AssertionError("bad JSON was accepted")
except urllib.error.HTTPError as err:
    assert err.code == 400 and json.loads(err.read())["error"]["type"] == "invalid_request_error"

print("ok")

"""The official `openai` Python SDK against the gateway's Chat Completions,
for an Anthropic model: only `base_url` and `api_key` change. Driven by
tests/tests/gateway.rs. Env: APP, KEY, MODEL. Prints one JSON object per line.
"""

import json
import os

import openai

client = openai.OpenAI(base_url=os.environ["APP"] + "/v1", api_key=os.environ["KEY"], max_retries=0)
model = os.environ["MODEL"]
ask = [{"role": "system", "content": "Answer briefly."},
       {"role": "user", "content": "How much does a gateway call cost?"}]


def out(**kv):
    print(json.dumps(kv), flush=True)


raw = client.chat.completions.with_raw_response.create(model=model, messages=ask, max_tokens=128)
done = raw.parse()
out(kind="plain", text=done.choices[0].message.content, finish=done.choices[0].finish_reason,
    usage=done.usage.model_dump(), cost_nanos=raw.headers.get("x-billing-cost-nanos"),
    call_id=raw.headers.get("x-billing-call-id"))

pieces, usage, finish = [], None, None
stream = client.chat.completions.create(model=model, messages=ask, max_tokens=128, stream=True,
                                        stream_options={"include_usage": True})
for chunk in stream:
    if chunk.choices:
        if chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage:
        usage = chunk.usage.model_dump()
out(kind="stream", pieces=len(pieces), text="".join(pieces), finish=finish, usage=usage,
    call_id=stream.response.headers.get("x-billing-call-id"))

try:
    client.chat.completions.create(model="no-such-model", messages=ask)
    out(kind="unknown-model", error=None)
except openai.NotFoundError as e:
    out(kind="unknown-model", error=type(e).__name__, status=e.status_code)

# Streamed without include_usage: the client sees no usage chunk (and no chunk with empty choices).
usage_seen, empty_choices, pieces = False, 0, []
stream = client.chat.completions.create(model=model, messages=ask, max_tokens=128, stream=True)
for chunk in stream:
    usage_seen = usage_seen or chunk.usage is not None
    if not chunk.choices:
        empty_choices += 1
    elif chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
out(kind="stream-no-usage", usage_seen=usage_seen, empty_choices=empty_choices, text="".join(pieces),
    call_id=stream.response.headers.get("x-billing-call-id"))

# A stream the provider breaks off (llm-sim's cut-stream): the SDK raises instead of ending as if complete.
seen = []
stream = client.chat.completions.create(model=model, messages=ask, max_tokens=128, stream=True,
                                        extra_headers={"x-sim-fail": "cut-stream"})
call_id = stream.response.headers.get("x-billing-call-id")
try:
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            seen.append(chunk.choices[0].delta.content)
    out(kind="cut", error=None, seen=seen, call_id=call_id)
except openai.APIError as e:
    out(kind="cut", error=type(e).__name__, seen=seen, call_id=call_id)

# A long system prompt sent twice: the second call reads it from the provider's prompt cache.
long_system = "You are a careful billing assistant. " + " ".join(f"Rule {i}: quote every price in nano-USD." for i in range(200))
cached = []
for _ in range(2):
    raw = client.chat.completions.with_raw_response.create(
        model=model, max_tokens=64,
        messages=[{"role": "system", "content": long_system}, {"role": "user", "content": "And the cache?"}])
    done = raw.parse()
    cached.append(dict(usage=done.usage.model_dump(), call_id=raw.headers.get("x-billing-call-id"),
                       cost_nanos=raw.headers.get("x-billing-cost-nanos")))
out(kind="cache", calls=cached)

# The models the gateway bills, read by the SDK.
out(kind="models", ids=[m.id for m in client.models.list()])

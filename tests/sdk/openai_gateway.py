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

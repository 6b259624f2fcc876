"""The official `anthropic` Python SDK against the gateway, as a team uses it:
only `base_url` and `api_key` change. Driven by tests/tests/gateway.rs.

Env: APP (the app's URL), KEY (one of our API keys), MODEL. Prints one JSON
object per line: what the SDK saw of each call (plain, streamed, refused).
"""

import json
import os

import anthropic

client = anthropic.Anthropic(base_url=os.environ["APP"], api_key=os.environ["KEY"], max_retries=0)
model = os.environ["MODEL"]
ask = [{"role": "user", "content": "How much does a gateway call cost?"}]


def out(**kv):
    print(json.dumps(kv), flush=True)


# Plain: the SDK's own types; the cost in a header the raw response shows.
raw = client.messages.with_raw_response.create(model=model, max_tokens=256, messages=ask)
msg = raw.parse()
out(kind="plain", id=msg.id, text=msg.content[0].text, usage=msg.usage.model_dump(),
    cost_nanos=raw.headers.get("x-billing-cost-nanos"), call_id=raw.headers.get("x-billing-call-id"))

# Streamed: text as it arrives, the final message's usage.
pieces = []
with client.messages.stream(model=model, max_tokens=256, messages=ask) as stream:
    for text in stream.text_stream:
        pieces.append(text)
    final = stream.get_final_message()
    call_id = stream.response.headers.get("x-billing-call-id")
out(kind="stream", id=final.id, pieces=len(pieces), text="".join(pieces), usage=final.usage.model_dump(), call_id=call_id)

# A provider that sends its events 250 ms apart: the text reaches the SDK as it is generated, not when it ends.
import time
started = time.monotonic()
first = None
with client.messages.stream(model=model, max_tokens=256, messages=ask,
                            extra_headers={"x-sim-stream-delay-ms": "250"}) as stream:
    for text in stream.text_stream:
        if first is None:
            first = time.monotonic() - started
    stream.get_final_message()
out(kind="paced", first_text_s=first, last_s=time.monotonic() - started)

# Refused before any provider call, in the SDK's exception types.
try:
    client.messages.create(model="no-such-model", max_tokens=16, messages=ask)
    out(kind="unknown-model", error=None)
except anthropic.NotFoundError as e:
    out(kind="unknown-model", error=type(e).__name__, status=e.status_code, message=str(e))
try:
    anthropic.Anthropic(base_url=os.environ["APP"], api_key="lcb_not_a_key", max_retries=0).messages.create(
        model=model, max_tokens=16, messages=ask)
    out(kind="bad-key", error=None)
except anthropic.AuthenticationError as e:
    out(kind="bad-key", error=type(e).__name__, status=e.status_code)

# Counting (not billed) and the models the gateway bills.
count = client.messages.count_tokens(model=model, messages=ask)
out(kind="count", input_tokens=count.input_tokens)
out(kind="models", ids=[m.id for m in client.models.list()])

# A service (admin) key bills the end user it names; a user's key may not name one.
service = anthropic.Anthropic(base_url=os.environ["APP"], api_key=os.environ["ADMIN_KEY"], max_retries=0)
raw = service.messages.with_raw_response.create(model=model, max_tokens=64, messages=ask,
                                                extra_headers={"x-billing-user": os.environ["USER_ID"]})
out(kind="service", call_id=raw.headers.get("x-billing-call-id"), cost_nanos=raw.headers.get("x-billing-cost-nanos"))
try:
    client.messages.create(model=model, max_tokens=16, messages=ask, extra_headers={"x-billing-user": "1"})
    out(kind="user-names-user", error=None)
except anthropic.PermissionDeniedError as e:
    out(kind="user-names-user", error=type(e).__name__, status=e.status_code)

# The server web-search tool: its search is billed as a fee beside the tokens.
raw = client.messages.with_raw_response.create(
    model=model, max_tokens=128, messages=ask,
    tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 1}])
msg = raw.parse()
out(kind="web-search", usage=msg.usage.model_dump(), cost_nanos=raw.headers.get("x-billing-cost-nanos"),
    call_id=raw.headers.get("x-billing-call-id"))
# Streamed, the search is reported only by the final message_delta (late usage).
with client.messages.stream(model=model, max_tokens=128, messages=ask,
                            tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 1}]) as stream:
    final = stream.get_final_message()
    call_id = stream.response.headers.get("x-billing-call-id")
out(kind="web-search-stream", usage=final.usage.model_dump(), call_id=call_id)

# A stream cut after its first text: billed for what the provider reported, marked partial.
seen = []
try:
    with client.messages.stream(model=model, max_tokens=256, messages=ask,
                                extra_headers={"x-sim-fail": "cut-stream"}) as stream:
        call_id = stream.response.headers.get("x-billing-call-id")
        for text in stream.text_stream:
            seen.append(text)
except Exception as e:  # the SDK may or may not raise on a stream that ends early
    seen.append(f"<{type(e).__name__}>")
out(kind="cut", call_id=call_id, seen=seen)

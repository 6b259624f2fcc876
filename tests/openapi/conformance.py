"""Checks live responses against openapi.yaml.

Drives every operation the document describes (as admin, as a user, with
no key, with bad input) against a running stack, and checks each answer:
its status is one the operation documents, and its body validates against
the documented schema for that status and content type. Every operation
must have been exercised. Run by scripts/test-web.sh with APP, ADMIN_KEY,
USER_KEY and USER_ID set.
"""
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request

import jsonschema
import yaml

APP, ADMIN, USER, USER_ID = os.environ["APP"], os.environ["ADMIN_KEY"], os.environ["USER_KEY"], int(os.environ["USER_ID"])
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
doc = yaml.safe_load(open(os.path.join(ROOT, "openapi.yaml")))
ops = {(m.upper(), p): op for p, item in doc["paths"].items() for m, op in item.items()}
seen, failures = set(), []
RUN = str(time.time_ns())  # fresh names each run


def resolve(node):
    while isinstance(node, dict) and "$ref" in node and len(node) == 1:
        ref = node["$ref"].lstrip("#/").split("/")
        node = doc
        for part in ref:
            node = node[part]
    return node


def template(path):
    """The document's path for a concrete path: itself, or the templated one it matches."""
    if path in doc["paths"]:
        return path
    for p in doc["paths"]:
        if "{" in p and re.match("^" + re.sub(r"\{[^}]+\}", r"[^/]+", p) + "$", path):
            return p
    return None


def call(method, path, key=None, body=None, content_type="application/json"):
    url = APP + path
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method)
    if key:
        req.add_header("authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("content-type", content_type)
    try:
        with urllib.request.urlopen(req) as r:
            status, ctype, raw = r.status, r.headers.get("content-type", ""), r.read()
    except urllib.error.HTTPError as e:
        status, ctype, raw = e.code, e.headers.get("content-type", ""), e.read()
    check(method, path.split("?")[0], status, ctype, raw)
    return status, (json.loads(raw) if raw and "json" in ctype else raw)


def check(method, path, status, ctype, raw):
    tpl = template(path)
    op = ops.get((method, tpl))
    where = f"{method} {path} → {status}"
    if op is None:
        failures.append(f"{where}: not in openapi.yaml")
        return
    seen.add((method, tpl))
    response = resolve(op["responses"].get(str(status)))
    if response is None:
        failures.append(f"{where}: status not documented")
        return
    content = response.get("content")
    if not content:
        if raw:
            failures.append(f"{where}: documented without a body, got {raw[:80]!r}")
        return
    mime = ctype.split(";")[0].strip()
    if mime not in content:
        failures.append(f"{where}: content type {mime} not documented ({list(content)})")
        return
    schema = content[mime].get("schema")
    if schema is None or "json" not in mime:
        return
    try:
        jsonschema.validate(json.loads(raw), {**schema, "components": doc["components"]})
    except jsonschema.ValidationError as e:
        failures.append(f"{where}: {e.message} at {list(e.absolute_path)}")


# Accounts.
call("GET", "/api/users/me", ADMIN)
call("GET", "/api/users/me")
call("GET", "/api/users", ADMIN)
call("GET", "/api/users", USER)
_, u = call("POST", "/api/users", ADMIN, {"name": "Conformance", "email": f"conformance-{RUN}@example.com"})
call("POST", "/api/users", ADMIN, {"name": "", "email": "nope"})
call("POST", f"/api/users/{u['user_id']}/disable", ADMIN)
call("POST", "/api/users/999999/disable", ADMIN)
call("GET", "/api/keys", USER)
call("GET", f"/api/keys?user_id={USER_ID}", ADMIN)
_, k = call("POST", "/api/keys", USER, {"label": "conformance"})
call("POST", "/api/keys", USER, {"label": 5})
call("DELETE", f"/api/keys/{k['key_id']}", USER)
call("DELETE", "/api/keys/999999", USER)
# Threads and chat.
_, t = call("POST", "/api/threads", USER, {"title": "Conformance"})
call("POST", "/api/threads", USER, {"model": "no-such-model"})
call("GET", "/api/threads", USER)
call("GET", f"/api/threads/{t['thread_id']}", USER)
call("GET", "/api/threads/999999", USER)
call("PATCH", f"/api/threads/{t['thread_id']}", USER, {"title": "Renamed"})
call("PATCH", f"/api/threads/{t['thread_id']}", USER, {"title": ""})
call("POST", f"/api/threads/{t['thread_id']}/messages", USER, {"content": "hello"})
call("POST", f"/api/threads/{t['thread_id']}/messages", USER, {"content": ""})
call("POST", f"/api/threads/{t['thread_id']}/messages", ADMIN, {"content": "not mine"})
call("GET", f"/api/threads/{t['thread_id']}/messages", USER)
call("POST", "/api/tokens/count", USER, {"model": "claude-haiku-4-5-20251001", "text": "count these words"})
call("POST", "/api/tokens/count", USER, {"model": "claude-haiku-4-5-20251001"})
# Pricing.
call("GET", "/api/models", USER)
call("GET", "/api/pricing", USER)
call("GET", "/api/pricing?at=yesterday", USER)
call("POST", "/api/pricing", ADMIN, {"model": "claude-haiku-4-5-20251001", "effective_from": "2098-01-01T00:00:00Z", "prices": {"input": 1, "output": 2, "cache_write_5m": 3, "cache_write_1h": 4, "cache_read": 5}})
call("POST", "/api/pricing", ADMIN, {"model": "claude-haiku-4-5-20251001", "effective_from": "2098-01-01T00:00:00Z", "prices": {"input": -1, "output": 2, "cache_write_5m": 3, "cache_write_1h": 4, "cache_read": 5}})
call("POST", "/api/pricing", USER, {})
call("POST", "/api/price/quote", USER, {"model": "claude-haiku-4-5-20251001", "usage": {"input": 1000, "cache_read": 5000}})
call("POST", "/api/price/quote", USER, {"model": "claude-haiku-4-5-20251001", "usage": {"input": -3}})
# The catalogue: a model with its first version, an alias, a retirement and back.
NEW_MODEL = f"claude-conformance-{RUN}"
PRICES = {"input": 1, "output": 2, "cache_write_5m": 3, "cache_write_1h": 4, "cache_read": 5}
call("POST", "/api/models", ADMIN, {"model": NEW_MODEL, "display_name": "Conformance", "provider": "anthropic", "family": "test",
                                    "context_window": 1000, "max_output_tokens": 100, "effective_from": "2026-01-01T00:00:00Z", "prices": PRICES})
call("POST", "/api/models", ADMIN, {"model": NEW_MODEL, "display_name": "Again", "provider": "acme", "family": "test",
                                    "context_window": 1000, "max_output_tokens": 2000, "effective_from": "2026-01-01T00:00:00Z", "prices": PRICES})
call("POST", "/api/models", USER, {})
call("PATCH", f"/api/models/{NEW_MODEL}", ADMIN, {"active": False})
call("PATCH", f"/api/models/{NEW_MODEL}", ADMIN, {"active": True})
call("PATCH", "/api/models/no-such-model", ADMIN, {"active": False})
call("POST", "/api/models/aliases", ADMIN, {"alias": f"{NEW_MODEL}-latest", "model": NEW_MODEL})
call("POST", "/api/models/aliases", ADMIN, {"alias": NEW_MODEL, "model": NEW_MODEL})
call("GET", "/api/models/aliases", USER)
call("DELETE", f"/api/models/aliases/{NEW_MODEL}-latest", ADMIN)
call("DELETE", f"/api/models/aliases/{NEW_MODEL}-latest", ADMIN)
call("GET", "/api/resource-pricing", USER)
call("POST", "/api/resource-pricing", ADMIN, {"resource": "compute_time", "unit": "ms", "unit_price": 2, "effective_from": "2098-01-01T00:00:00Z"})
call("POST", "/api/resource-pricing", ADMIN, {"resource": "compute_time", "unit": "ms", "unit_price": -2, "effective_from": "2098-01-02T00:00:00Z"})
# Collector.
event = {"specversion": "1.0", "id": f"conformance-{RUN}", "source": "/conformance", "type": "llm-billing.inference", "time": "2026-01-01T00:00:00Z",
         "data": {"user_id": USER_ID, "model": "claude-haiku-4-5-20251001", "request_id": "r", "status": "succeeded", "latency_ms": 5, "usage": {"input_tokens": 3, "output_tokens": 4}}}
call("POST", "/api/events", USER, event, "application/cloudevents+json")
call("POST", "/api/events", USER, [event, {"id": "broken"}], "application/cloudevents-batch+json")
call("POST", "/api/events", USER, b"x", "text/plain")
# Invoices.
_, inv = call("POST", "/api/invoices", ADMIN, {"user_id": USER_ID, "period_start": "2025-01-01T00:00:00Z", "period_end": "2026-02-01T00:00:00Z"})
call("POST", "/api/invoices", ADMIN, {"user_id": USER_ID, "period_start": "2026-02-01T00:00:00Z", "period_end": "2025-01-01T00:00:00Z"})
call("GET", "/api/invoices", USER)
call("GET", f"/api/invoices/{inv['invoice_id']}", USER)
call("GET", f"/api/invoices/{inv['invoice_id']}.json", USER)
call("GET", f"/api/invoices/{inv['invoice_id']}.csv", USER)
call("GET", "/api/invoices/999999", USER)
call("POST", f"/api/invoices/{inv['invoice_id']}/finalize", ADMIN)
call("POST", f"/api/invoices/{inv['invoice_id']}/finalize", USER)
call("DELETE", f"/api/invoices/{inv['invoice_id']}", ADMIN)
_, draft = call("POST", "/api/invoices", ADMIN, {"user_id": USER_ID, "period_start": "2026-02-01T00:00:00Z", "period_end": "2026-03-01T00:00:00Z"})
call("DELETE", f"/api/invoices/{draft['invoice_id']}", ADMIN)
# Metrics.
call("GET", "/api/metrics/summary", USER)
call("GET", "/api/metrics/summary?model=claude-haiku-4-5-20251001", ADMIN)
call("GET", "/api/metrics/summary?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", USER)
call("GET", "/api/metrics/summary?user=1", USER)
call("GET", "/api/metrics/timeseries?bucket=hour&by=model", ADMIN)
call("GET", "/api/metrics/timeseries?bucket=week", USER)
call("GET", "/api/metrics/top-users", ADMIN)
call("GET", "/api/metrics/top-users", USER)
call("GET", "/api/metrics/threads", USER)

missing = sorted(set(ops) - seen)
for m, p in missing:
    failures.append(f"{m} {p}: never exercised")
print(f"openapi conformance: {len(seen)} of {len(ops)} operations exercised, {len(failures)} problems")
for f in failures:
    print("  " + f)
sys.exit(1 if failures else 0)

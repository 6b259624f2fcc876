"""Schemathesis hooks and a check: a request answered with an error changed nothing.

Loaded with SCHEMATHESIS_HOOKS=no_change_on_error (tests/openapi on
PYTHONPATH) and BILLING_DB naming the system's SQLite file. Requests are
serialised by a lock held from before the call until the check ran, and the
check compares what the API writes before and after an error answer: every
row of the tables only the components write, the outbox's last id (the
bridge deletes relayed rows, never adds), and which line items are on which
invoice (the bridge adds line items, unclaimed).
"""

import os
import sqlite3
import threading

import schemathesis

API_TABLES = [
    "dim_users", "api_keys", "dim_models", "dim_token_pricing", "dim_resource_pricing",
    "user_threads", "user_thread_messages", "message_tokens", "user_invoices",
    "collected_events", "idempotent_turns", "idempotency_claims", "dim_model_aliases",
]

_lock = threading.Lock()
_local = threading.local()
_conn = sqlite3.connect(f"file:{os.environ['BILLING_DB']}?mode=ro", uri=True, check_same_thread=False, timeout=30)


def digest():
    out = []
    for t in API_TABLES:
        out.append((t, _conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()))
    out.append(("outbox", _conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchall()))
    for t in ("user_invoice_line_item", "resource_invoice_line_item"):
        out.append((t, _conn.execute(f"SELECT line_item_id, invoice_id FROM {t} WHERE invoice_id IS NOT NULL ORDER BY 1").fetchall()))
    return out


@schemathesis.hook
def before_call(context, case, kwargs):
    if getattr(_local, "held", False):  # the previous call of this thread raised
        _lock.release()
    _local.held = _lock.acquire(timeout=60)
    _local.before = digest() if _local.held else None


@schemathesis.hook
def after_call(context, case, response):
    _local.after = digest() if _local.held else None


@schemathesis.check
def error_changes_nothing(ctx, response, case):
    try:
        before, after = getattr(_local, "before", None), getattr(_local, "after", None)
        if response.status_code >= 400 and before is not None and after is not None and before != after:
            changed = [b[0] for b, a in zip(before, after) if b != a]
            raise AssertionError(f"{case.method} {case.path} answered {response.status_code} and changed {changed}")
    finally:
        _local.before = _local.after = None
        if getattr(_local, "held", False):
            _local.held = False
            _lock.release()

-- The whole schema of LLM chat billing.
--
-- Conventions:
-- * Timestamps are TEXT in one canonical form, UTC with milliseconds:
--   2026-11-27T22:30:01.123Z (billing-core's Timestamp, SQLite's
--   strftime('%Y-%m-%dT%H:%M:%fZ')). That form sorts like the instants, so
--   range queries compare text. Columns that drive pricing and invoicing
--   enforce the form with a CHECK.
-- * Money is INTEGER: prices in micro-USD per million units, costs in
--   nano-USD, invoice totals in cents. Never REAL.
-- * Event identity is (source, event_id), CloudEvents' own; consumer writes
--   are idempotent on it through UNIQUE constraints.

-- Models a thread can use. provider picks the client in `messages`.
CREATE TABLE dim_models (
    model_id          INTEGER PRIMARY KEY,
    model_name        TEXT    NOT NULL UNIQUE,          -- the provider's id, e.g. claude-sonnet-4-5-20250929
    display_name      TEXT    NOT NULL,
    provider          TEXT    NOT NULL CHECK (provider IN ('anthropic', 'openai-compatible')),
    family            TEXT    NOT NULL,                 -- opus, sonnet, haiku, …
    context_window    INTEGER NOT NULL CHECK (context_window > 0),
    max_output_tokens INTEGER NOT NULL CHECK (max_output_tokens > 0),
    is_active         INTEGER NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    released_at       TEXT,
    retired_at        TEXT,
    created_at        TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE dim_users (
    user_id          INTEGER PRIMARY KEY,
    name             TEXT    NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    email            TEXT    NOT NULL UNIQUE COLLATE NOCASE CHECK (length(email) BETWEEN 3 AND 320 AND email LIKE '%_@_%'),
    role             TEXT    NOT NULL CHECK (role IN ('admin', 'user')),
    default_model_id INTEGER REFERENCES dim_models (model_id),
    disabled_at      TEXT,
    created_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- API keys, stored as SHA-256 of the key; the key itself is shown once.
CREATE TABLE api_keys (
    key_id       INTEGER PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES dim_users (user_id),
    key_prefix   TEXT    NOT NULL,                      -- the first characters, to recognise a key in lists
    key_hash     TEXT    NOT NULL UNIQUE CHECK (length(key_hash) = 64),
    label        TEXT    NOT NULL DEFAULT '',
    created_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_used_at TEXT,
    revoked_at   TEXT
);
CREATE INDEX api_keys_user ON api_keys (user_id);

-- CloudEvents types and the topic each goes to.
CREATE TABLE dim_event_types (
    event_type_id  INTEGER PRIMARY KEY,
    event_type     TEXT    NOT NULL UNIQUE,             -- CloudEvents `type`
    topic          TEXT    NOT NULL,
    schema_version INTEGER NOT NULL CHECK (schema_version > 0),
    description    TEXT    NOT NULL
);

-- Token prices, effective-dated: a version holds from effective_from until
-- the next version of the same model starts. Prices are micro-USD per
-- million tokens, one column per token class.
CREATE TABLE dim_token_pricing (
    pricing_id           INTEGER PRIMARY KEY,
    model_id             INTEGER NOT NULL REFERENCES dim_models (model_id),
    effective_from       TEXT    NOT NULL CHECK (effective_from GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9].[0-9][0-9][0-9]Z'),
    input_price          INTEGER NOT NULL CHECK (typeof(input_price) = 'integer' AND input_price >= 0),
    output_price         INTEGER NOT NULL CHECK (typeof(output_price) = 'integer' AND output_price >= 0),
    cache_write_5m_price INTEGER NOT NULL CHECK (typeof(cache_write_5m_price) = 'integer' AND cache_write_5m_price >= 0),
    cache_write_1h_price INTEGER NOT NULL CHECK (typeof(cache_write_1h_price) = 'integer' AND cache_write_1h_price >= 0),
    cache_read_price     INTEGER NOT NULL CHECK (typeof(cache_read_price) = 'integer' AND cache_read_price >= 0),
    currency             TEXT    NOT NULL DEFAULT 'USD' CHECK (currency = 'USD'),
    created_by           INTEGER REFERENCES dim_users (user_id),
    created_at           TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (model_id, effective_from)
);

-- Prices of non-token resources (per request, per millisecond of compute),
-- effective-dated like token prices, in micro-USD per million units.
CREATE TABLE dim_resource_pricing (
    resource_pricing_id INTEGER PRIMARY KEY,
    resource            TEXT    NOT NULL,               -- inference_request, compute_time, …
    unit                TEXT    NOT NULL,               -- request, millisecond, …
    description         TEXT    NOT NULL DEFAULT '',
    effective_from      TEXT    NOT NULL CHECK (effective_from GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9].[0-9][0-9][0-9]Z'),
    unit_price          INTEGER NOT NULL CHECK (typeof(unit_price) = 'integer' AND unit_price >= 0),
    currency            TEXT    NOT NULL DEFAULT 'USD' CHECK (currency = 'USD'),
    created_by          INTEGER REFERENCES dim_users (user_id),
    created_at          TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (resource, effective_from)
);

CREATE TABLE user_threads (
    thread_id   INTEGER PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES dim_users (user_id),
    title       TEXT    NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    model_id    INTEGER NOT NULL REFERENCES dim_models (model_id),
    created_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    archived_at TEXT
);
-- Thread lists: a user's threads, newest first, optionally without archived ones.
CREATE INDEX user_threads_user ON user_threads (user_id, archived_at, updated_at DESC);

CREATE TABLE user_thread_messages (
    message_id          INTEGER PRIMARY KEY,
    thread_id           INTEGER NOT NULL REFERENCES user_threads (thread_id),
    user_id             INTEGER NOT NULL REFERENCES dim_users (user_id),
    role                TEXT    NOT NULL CHECK (role IN ('user', 'assistant')),
    content             TEXT    NOT NULL,
    model_id            INTEGER REFERENCES dim_models (model_id),
    status              TEXT    NOT NULL DEFAULT 'ok' CHECK (status IN ('ok', 'failed')),
    error               TEXT,
    reply_to_message_id INTEGER REFERENCES user_thread_messages (message_id),
    provider_message_id TEXT,
    stop_reason         TEXT,
    latency_ms          INTEGER CHECK (latency_ms IS NULL OR (typeof(latency_ms) = 'integer' AND latency_ms >= 0)),
    created_at          TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
-- History of a thread in order.
CREATE INDEX user_thread_messages_thread ON user_thread_messages (thread_id, message_id);

-- The tokens of one assistant message (one provider call), every class,
-- and what the call cost when it was answered (priced with pricing_id).
CREATE TABLE message_tokens (
    message_id                  INTEGER PRIMARY KEY REFERENCES user_thread_messages (message_id),
    thread_id                   INTEGER NOT NULL REFERENCES user_threads (thread_id),
    user_id                     INTEGER NOT NULL REFERENCES dim_users (user_id),
    model_id                    INTEGER NOT NULL REFERENCES dim_models (model_id),
    pricing_id                  INTEGER NOT NULL REFERENCES dim_token_pricing (pricing_id),
    input_tokens                INTEGER NOT NULL CHECK (typeof(input_tokens) = 'integer' AND input_tokens >= 0),
    output_tokens               INTEGER NOT NULL CHECK (typeof(output_tokens) = 'integer' AND output_tokens >= 0),
    cache_creation_input_tokens INTEGER NOT NULL CHECK (typeof(cache_creation_input_tokens) = 'integer' AND cache_creation_input_tokens >= 0),
    cache_write_5m_tokens       INTEGER NOT NULL CHECK (typeof(cache_write_5m_tokens) = 'integer' AND cache_write_5m_tokens >= 0),
    cache_write_1h_tokens       INTEGER NOT NULL CHECK (typeof(cache_write_1h_tokens) = 'integer' AND cache_write_1h_tokens >= 0),
    cache_read_input_tokens     INTEGER NOT NULL CHECK (typeof(cache_read_input_tokens) = 'integer' AND cache_read_input_tokens >= 0),
    cost_nanos                  INTEGER NOT NULL CHECK (typeof(cost_nanos) = 'integer' AND cost_nanos >= 0),
    occurred_at                 TEXT    NOT NULL,
    CHECK (cache_write_5m_tokens + cache_write_1h_tokens = cache_creation_input_tokens)
);
CREATE INDEX message_tokens_thread ON message_tokens (thread_id);
CREATE INDEX message_tokens_user_time ON message_tokens (user_id, occurred_at);

CREATE TABLE user_invoices (
    invoice_id     INTEGER PRIMARY KEY,
    user_id        INTEGER NOT NULL REFERENCES dim_users (user_id),
    period_start   TEXT    NOT NULL,                    -- inclusive
    period_end     TEXT    NOT NULL,                    -- exclusive
    status         TEXT    NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'final')),
    invoice_number INTEGER UNIQUE,                      -- given at finalisation, without gaps
    total_nanos    INTEGER NOT NULL DEFAULT 0,          -- exact sum of the lines
    total_cents    INTEGER,                             -- total_nanos rounded half-to-even, at finalisation
    rounding_nanos INTEGER,                             -- total_cents*10^7 - total_nanos
    currency       TEXT    NOT NULL DEFAULT 'USD' CHECK (currency = 'USD'),
    created_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finalized_at   TEXT,
    CHECK (period_start < period_end),
    CHECK ((status = 'final') = (invoice_number IS NOT NULL AND total_cents IS NOT NULL AND rounding_nanos IS NOT NULL AND finalized_at IS NOT NULL))
);
CREATE INDEX user_invoices_user ON user_invoices (user_id, period_start);

-- Token line items: one per (event, token class) with tokens. The bridge's
-- token-metrics consumer writes them; (source, event_id, token_class) makes
-- a redelivered event a no-op. invoice_id is the one invoice the line is on.
CREATE TABLE user_invoice_line_item (
    line_item_id INTEGER PRIMARY KEY,
    source       TEXT    NOT NULL,
    event_id     TEXT    NOT NULL,
    user_id      INTEGER NOT NULL REFERENCES dim_users (user_id),
    thread_id    INTEGER REFERENCES user_threads (thread_id),
    message_id   INTEGER REFERENCES user_thread_messages (message_id),
    model_id     INTEGER NOT NULL REFERENCES dim_models (model_id),
    pricing_id   INTEGER NOT NULL REFERENCES dim_token_pricing (pricing_id),
    token_class  TEXT    NOT NULL CHECK (token_class IN ('input', 'output', 'cache_write_5m', 'cache_write_1h', 'cache_read')),
    tokens       INTEGER NOT NULL CHECK (typeof(tokens) = 'integer' AND tokens >= 0),
    unit_price   INTEGER NOT NULL CHECK (typeof(unit_price) = 'integer' AND unit_price >= 0),
    cost_nanos   INTEGER NOT NULL CHECK (typeof(cost_nanos) = 'integer' AND cost_nanos >= 0),
    occurred_at  TEXT    NOT NULL CHECK (occurred_at GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9].[0-9][0-9][0-9]Z'),
    invoice_id   INTEGER REFERENCES user_invoices (invoice_id),
    created_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (source, event_id, token_class)
);
-- Drafting an invoice (a user's not-yet-invoiced lines before a date) and
-- reading one (a user's lines on an invoice). No index on invoice_id alone:
-- claiming a million lines would rewrite it too.
CREATE INDEX user_invoice_line_item_billing ON user_invoice_line_item (user_id, invoice_id, occurred_at);
CREATE INDEX user_invoice_line_item_time ON user_invoice_line_item (occurred_at);
CREATE INDEX user_invoice_line_item_thread ON user_invoice_line_item (thread_id);

-- Inference API calls collected by the `collector` component, as consumed
-- from inference-events.
CREATE TABLE api_events (
    api_event_id                INTEGER PRIMARY KEY,
    source                      TEXT    NOT NULL,
    event_id                    TEXT    NOT NULL,
    event_type_id               INTEGER NOT NULL REFERENCES dim_event_types (event_type_id),
    user_id                     INTEGER NOT NULL REFERENCES dim_users (user_id),
    model_id                    INTEGER NOT NULL REFERENCES dim_models (model_id),
    request_id                  TEXT    NOT NULL,
    status                      TEXT    NOT NULL CHECK (status IN ('succeeded', 'failed')),
    http_status                 INTEGER,
    latency_ms                  INTEGER NOT NULL CHECK (typeof(latency_ms) = 'integer' AND latency_ms >= 0),
    compute_ms                  INTEGER NOT NULL CHECK (typeof(compute_ms) = 'integer' AND compute_ms >= 0),
    input_tokens                INTEGER NOT NULL CHECK (typeof(input_tokens) = 'integer' AND input_tokens >= 0),
    output_tokens               INTEGER NOT NULL CHECK (typeof(output_tokens) = 'integer' AND output_tokens >= 0),
    cache_creation_input_tokens INTEGER NOT NULL CHECK (typeof(cache_creation_input_tokens) = 'integer' AND cache_creation_input_tokens >= 0),
    cache_write_5m_tokens       INTEGER NOT NULL CHECK (typeof(cache_write_5m_tokens) = 'integer' AND cache_write_5m_tokens >= 0),
    cache_write_1h_tokens       INTEGER NOT NULL CHECK (typeof(cache_write_1h_tokens) = 'integer' AND cache_write_1h_tokens >= 0),
    cache_read_input_tokens     INTEGER NOT NULL CHECK (typeof(cache_read_input_tokens) = 'integer' AND cache_read_input_tokens >= 0),
    occurred_at                 TEXT    NOT NULL,
    received_at                 TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (source, event_id)
);
CREATE INDEX api_events_user_time ON api_events (user_id, occurred_at);

-- Resource line items of inference events: one per (event, resource).
CREATE TABLE resource_invoice_line_item (
    line_item_id        INTEGER PRIMARY KEY,
    source              TEXT    NOT NULL,
    event_id            TEXT    NOT NULL,
    user_id             INTEGER NOT NULL REFERENCES dim_users (user_id),
    api_event_id        INTEGER REFERENCES api_events (api_event_id),
    resource_pricing_id INTEGER NOT NULL REFERENCES dim_resource_pricing (resource_pricing_id),
    resource            TEXT    NOT NULL,
    quantity            INTEGER NOT NULL CHECK (typeof(quantity) = 'integer' AND quantity >= 0),
    unit_price          INTEGER NOT NULL CHECK (typeof(unit_price) = 'integer' AND unit_price >= 0),
    cost_nanos          INTEGER NOT NULL CHECK (typeof(cost_nanos) = 'integer' AND cost_nanos >= 0),
    occurred_at         TEXT    NOT NULL CHECK (occurred_at GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9].[0-9][0-9][0-9]Z'),
    invoice_id          INTEGER REFERENCES user_invoices (invoice_id),
    created_at          TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (source, event_id, resource)
);
CREATE INDEX resource_invoice_line_item_billing ON resource_invoice_line_item (user_id, invoice_id, occurred_at);
CREATE INDEX resource_invoice_line_item_time ON resource_invoice_line_item (occurred_at);

-- Transactional outbox: written in the same transaction as the domain rows,
-- produced to Kafka in outbox_id order by the bridge, deleted only after the
-- broker acknowledged it.
CREATE TABLE outbox (
    outbox_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    topic      TEXT    NOT NULL,
    event_key  TEXT    NOT NULL,                        -- Kafka key: the user id
    source     TEXT    NOT NULL,
    event_id   TEXT    NOT NULL,
    payload    TEXT    NOT NULL,                        -- the CloudEvent, JSON
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    UNIQUE (source, event_id)
);

-- Events the collector has accepted, so a client's retry of the same
-- (source, id) is counted as a duplicate and not billed again.
CREATE TABLE collected_events (
    source      TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    accepted_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (source, event_id)
) WITHOUT ROWID;

-- Idempotency ledger of the consumers: an event a consumer has fully
-- handled, written in the same transaction as its effects.
CREATE TABLE processed_events (
    consumer     TEXT    NOT NULL,                      -- e.g. token-metrics
    source       TEXT    NOT NULL,
    event_id     TEXT    NOT NULL,
    topic        TEXT    NOT NULL,
    partition    INTEGER NOT NULL,
    kafka_offset INTEGER NOT NULL,
    processed_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (consumer, source, event_id)
) WITHOUT ROWID;

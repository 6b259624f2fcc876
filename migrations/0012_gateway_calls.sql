-- Every call through the LLM gateway (`/v1/messages`), written in the same
-- transaction as its billing event (an `llm-billing.inference` CloudEvent
-- with source /functions/gateway and this call_id as its id, on
-- inference-events): a call is recorded and billed together or not at
-- all. A call the provider refused is recorded with its status and no
-- event; one it answered that could not be billed (after retries) is
-- recorded with `billing_error` and no event. `partial` = 1: a stream that ended before `message_stop`, billed
-- for what the provider reported until then.
CREATE TABLE gateway_calls (
    call_id             TEXT    PRIMARY KEY,                 -- ours; the event id and the x-billing-call-id header
    user_id             INTEGER NOT NULL REFERENCES dim_users (user_id),   -- who is billed
    key_id              INTEGER REFERENCES api_keys (key_id),              -- the key used (none: the bootstrap admin key)
    model_id            INTEGER REFERENCES dim_models (model_id),
    requested_model     TEXT    NOT NULL,                    -- as the client named it (an alias, say)
    provider_message_id TEXT,
    http_status         INTEGER NOT NULL,
    streamed            INTEGER NOT NULL CHECK (streamed IN (0, 1)),
    partial             INTEGER NOT NULL DEFAULT 0 CHECK (partial IN (0, 1)),
    latency_ms          INTEGER NOT NULL CHECK (typeof(latency_ms) = 'integer' AND latency_ms >= 0),
    input_tokens        INTEGER NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
    output_tokens       INTEGER NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
    cache_write_5m_tokens INTEGER NOT NULL DEFAULT 0 CHECK (cache_write_5m_tokens >= 0),
    cache_write_1h_tokens INTEGER NOT NULL DEFAULT 0 CHECK (cache_write_1h_tokens >= 0),
    cache_read_tokens   INTEGER NOT NULL DEFAULT 0 CHECK (cache_read_tokens >= 0),
    web_search_requests INTEGER NOT NULL DEFAULT 0 CHECK (web_search_requests >= 0),
    cost_nanos          INTEGER NOT NULL DEFAULT 0 CHECK (typeof(cost_nanos) = 'integer' AND cost_nanos >= 0),
    occurred_at         TEXT    NOT NULL,
    billing_error       TEXT                                 -- answered but not billed, and why: for an admin to reconcile
) WITHOUT ROWID;
CREATE INDEX gateway_calls_user_time ON gateway_calls (user_id, occurred_at);

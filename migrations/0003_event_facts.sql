-- The facts of every processed event, kept in its ledger row: what the
-- dashboard aggregates count. The bridge writes them in the same
-- transaction as the event's line items; a redelivered event reads them
-- back to finish its Redis aggregates, and `billing-bridge rebuild-redis`
-- rebuilds every aggregate from them. The metrics component falls back to
-- them when Redis lacks an aggregate.
ALTER TABLE processed_events ADD COLUMN user_id INTEGER NOT NULL DEFAULT 0;
ALTER TABLE processed_events ADD COLUMN model TEXT NOT NULL DEFAULT '';
ALTER TABLE processed_events ADD COLUMN thread_id INTEGER;
ALTER TABLE processed_events ADD COLUMN occurred_at TEXT NOT NULL DEFAULT '';
ALTER TABLE processed_events ADD COLUMN latency_ms INTEGER NOT NULL DEFAULT 0 CHECK (latency_ms >= 0);
ALTER TABLE processed_events ADD COLUMN cost_nanos INTEGER NOT NULL DEFAULT 0 CHECK (cost_nanos >= 0);
ALTER TABLE processed_events ADD COLUMN input_tokens INTEGER NOT NULL DEFAULT 0 CHECK (input_tokens >= 0);
ALTER TABLE processed_events ADD COLUMN output_tokens INTEGER NOT NULL DEFAULT 0 CHECK (output_tokens >= 0);
ALTER TABLE processed_events ADD COLUMN cache_write_5m_tokens INTEGER NOT NULL DEFAULT 0 CHECK (cache_write_5m_tokens >= 0);
ALTER TABLE processed_events ADD COLUMN cache_write_1h_tokens INTEGER NOT NULL DEFAULT 0 CHECK (cache_write_1h_tokens >= 0);
ALTER TABLE processed_events ADD COLUMN cache_read_tokens INTEGER NOT NULL DEFAULT 0 CHECK (cache_read_tokens >= 0);

-- Dashboard fallback queries: a time range, optionally one user.
CREATE INDEX processed_events_time ON processed_events (occurred_at);
CREATE INDEX processed_events_user_time ON processed_events (user_id, occurred_at);

-- One relay at a time: the bridge process holding this lease relays the
-- outbox (in order); the others stand by and take over when it expires.
CREATE TABLE relay_lease (
    lease_id   INTEGER PRIMARY KEY CHECK (lease_id = 1),
    holder     TEXT    NOT NULL,
    expires_ms INTEGER NOT NULL
);
INSERT INTO relay_lease (lease_id, holder, expires_ms) VALUES (1, '', 0);

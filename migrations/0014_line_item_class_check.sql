-- The token-class CHECK of `user_invoice_line_item` as comparisons instead
-- of `IN (...)`: SQLite codes a constant IN list in a CHECK as a temporary
-- b-tree built for every row inserted (OpenEphemeral and five IdxInserts
-- in the insert's program), which was about a fifth of the bridge's
-- line-item insert (perf of `billing-bench bridge`, 2026-12-01; the same
-- rows insert in 15 instead of 23 µs an event, measured against SQLite
-- 3.50 as bundled by rusqlite). Same rule, same columns, same rows and ids;
-- SQLite cannot change a CHECK in place, so the table is rebuilt (the
-- procedure of https://www.sqlite.org/lang_altertable.html#otheralter;
-- nothing references this table, and it has no views or triggers).
CREATE TABLE user_invoice_line_item_new (
    line_item_id INTEGER PRIMARY KEY,
    source       TEXT    NOT NULL,
    event_id     TEXT    NOT NULL,
    user_id      INTEGER NOT NULL REFERENCES dim_users (user_id),
    thread_id    INTEGER REFERENCES user_threads (thread_id),
    message_id   INTEGER REFERENCES user_thread_messages (message_id),
    model_id     INTEGER NOT NULL REFERENCES dim_models (model_id),
    pricing_id   INTEGER NOT NULL REFERENCES dim_token_pricing (pricing_id),
    token_class  TEXT    NOT NULL CHECK (token_class = 'input' OR token_class = 'output' OR token_class = 'cache_write_5m' OR token_class = 'cache_write_1h' OR token_class = 'cache_read'),
    tokens       INTEGER NOT NULL CHECK (typeof(tokens) = 'integer' AND tokens >= 0),
    unit_price   INTEGER NOT NULL CHECK (typeof(unit_price) = 'integer' AND unit_price >= 0),
    cost_nanos   INTEGER NOT NULL CHECK (typeof(cost_nanos) = 'integer' AND cost_nanos >= 0),
    occurred_at  TEXT    NOT NULL CHECK (occurred_at GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9].[0-9][0-9][0-9]Z'),
    invoice_id   INTEGER REFERENCES user_invoices (invoice_id),
    created_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (source, event_id, token_class)
);
INSERT INTO user_invoice_line_item_new
    (line_item_id, source, event_id, user_id, thread_id, message_id, model_id, pricing_id,
     token_class, tokens, unit_price, cost_nanos, occurred_at, invoice_id, created_at)
SELECT line_item_id, source, event_id, user_id, thread_id, message_id, model_id, pricing_id,
       token_class, tokens, unit_price, cost_nanos, occurred_at, invoice_id, created_at
FROM user_invoice_line_item;
DROP TABLE user_invoice_line_item;
ALTER TABLE user_invoice_line_item_new RENAME TO user_invoice_line_item;
CREATE INDEX user_invoice_line_item_billing ON user_invoice_line_item (user_id, invoice_id, occurred_at);

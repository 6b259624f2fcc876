-- The outbox loses its UNIQUE (source, event_id) index. Every writer
-- already makes its events unique before they reach the outbox — the
-- collector by `collected_events` (which outlives the outbox rows), a chat
-- turn by its message's own ids — and the consumers are idempotent on the
-- event identity, so the index only made each insert, and the relay's
-- delete, write a second B-tree. Rows and the id sequence are kept, so ids
-- keep growing across the change.
CREATE TABLE outbox_new (
    outbox_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    topic      TEXT    NOT NULL,
    event_key  TEXT    NOT NULL,                        -- Kafka key: the user id
    source     TEXT    NOT NULL,
    event_id   TEXT    NOT NULL,
    payload    TEXT    NOT NULL,                        -- the CloudEvent, JSON
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
INSERT INTO outbox_new SELECT outbox_id, topic, event_key, source, event_id, payload, created_at, attempts, last_error FROM outbox;
-- The old sequence is at least every id copied, so it replaces the new one.
DELETE FROM sqlite_sequence WHERE name = 'outbox_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'outbox_new', seq FROM sqlite_sequence WHERE name = 'outbox';
DROP TABLE outbox;
ALTER TABLE outbox_new RENAME TO outbox;

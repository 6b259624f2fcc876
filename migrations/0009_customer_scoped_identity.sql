-- Event identity scoped to the customer (issue: a second customer who
-- reused another's (source, id) was counted as a duplicate and never
-- billed).
--
-- 1. `collected_events` is keyed by (user_id, source, event_id) and keeps
--    the SHA-256 of the event as accepted, so the collector can tell a
--    retry (same content: a duplicate) from a reuse of the id for another
--    event (409 naming the first). Rows from before this migration get
--    their user from the ledger or the outbox and no hash (they count as
--    duplicates, as before).
CREATE TABLE collected_events_new (
    user_id        INTEGER NOT NULL,
    source         TEXT    NOT NULL,
    event_id       TEXT    NOT NULL,
    payload_sha256 TEXT    CHECK (payload_sha256 IS NULL OR length(payload_sha256) = 64),
    accepted_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (user_id, source, event_id)
) WITHOUT ROWID;
INSERT OR IGNORE INTO collected_events_new (user_id, source, event_id, accepted_at)
SELECT coalesce(
           (SELECT a.user_id FROM api_events a WHERE a.source = c.source AND a.event_id = c.event_id),
           (SELECT json_extract(o.payload, '$.data.user_id') FROM outbox o WHERE o.source = c.source AND o.event_id = c.event_id LIMIT 1),
           0),
       c.source, c.event_id, c.accepted_at
FROM collected_events c;
DROP TABLE collected_events;
ALTER TABLE collected_events_new RENAME TO collected_events;

-- 2. The ledger's identity of a collected (inference) event is its
--    customer-scoped source `/users/{user_id}:{source}` (billing-core
--    `events::customer_source`) with its id; the system's own events
--    (sources under /functions/, which clients may not use) keep theirs.
--    Ledger rows written before are renamed the same way, so a late
--    redelivery of an old event is still recognised (rows from before 0003
--    have user 0 and take their user from api_events). Line items on a
--    final invoice keep their text: a final invoice never changes, and the
--    ledger, not the line items, recognises a redelivery.
UPDATE processed_events SET source = '/users/' ||
    CASE WHEN user_id = 0
         THEN coalesce((SELECT a.user_id FROM api_events a WHERE a.source = processed_events.source AND a.event_id = processed_events.event_id), 0)
         ELSE user_id END
    || ':' || source
WHERE consumer = 'inference-events';
UPDATE user_invoice_line_item SET source = '/users/' || user_id || ':' || source
WHERE source NOT LIKE '/functions/%' AND invoice_id IS NULL;
UPDATE resource_invoice_line_item SET source = '/users/' || user_id || ':' || source
WHERE source NOT LIKE '/functions/%' AND invoice_id IS NULL;
UPDATE api_events SET source = '/users/' || user_id || ':' || source;

-- 3. How far each partition's facts are known to be in the Redis
--    aggregates: the bridge raises a partition's offset once a batch's
--    aggregates and processed-events records are done. A redelivered event
--    first handled at or below it is not applied again, whatever its age —
--    the dashboard's protection no longer ends with the marks' TTL. Events
--    billed more than an hour before this migration were applied by the
--    bridge that billed them; later ones may have been cut short between
--    SQLite and Redis, and their marks (kept at least an hour) still guard
--    them.
CREATE TABLE aggregated_offsets (
    topic        TEXT    NOT NULL,
    partition    INTEGER NOT NULL,
    kafka_offset INTEGER NOT NULL CHECK (kafka_offset >= 0),
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
INSERT INTO aggregated_offsets (topic, partition, kafka_offset)
SELECT topic, partition, max(kafka_offset) FROM processed_events
WHERE kafka_offset >= 0 AND processed_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 hour')
GROUP BY topic, partition;

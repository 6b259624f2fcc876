-- An index that no query reads, written on every inference event the
-- bridge bills, inside the consumer's transaction (which holds SQLite's one
-- write lock): api_events by (user_id, occurred_at). Nothing reads
-- api_events by user; per-user figures come from processed_events (its
-- user-and-time index) and the line items. Inference rows are found by
-- their identity, UNIQUE (source, event_id).
DROP INDEX api_events_user_time;

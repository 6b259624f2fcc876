-- A chat turn sent with an Idempotency-Key header is stored with its
-- answer: a retry with the same key (after a timeout, a lost connection or
-- a crash of the server) gets the same answer back and is not billed again.
-- The row is written in the same transaction as the turn, its line items'
-- outbox events and its message_tokens row, so a key is either absent
-- (nothing was billed: the retry calls the model) or present with the
-- turn it billed.
CREATE TABLE idempotent_turns (
    user_id         INTEGER NOT NULL REFERENCES dim_users (user_id),
    idempotency_key TEXT    NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    thread_id       INTEGER NOT NULL REFERENCES user_threads (thread_id),
    request_hash    TEXT    NOT NULL,                -- what was asked, to refuse a key reused for another request
    response        TEXT    NOT NULL,                -- the 201 body that was sent
    created_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (user_id, idempotency_key)
) WITHOUT ROWID;

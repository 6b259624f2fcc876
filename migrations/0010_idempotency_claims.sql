-- An Idempotency-Key is claimed before the model is called (issue: one key
-- sent twice at once reached the model twice: two paid provider calls).
-- The claim and the check for a stored answer are one transaction; the
-- turn's own transaction stores the answer in `idempotent_turns` and
-- removes the claim; a failed call removes it too (nothing was billed, a
-- retry calls the model). A request that finds a live claim gets 409 with
-- `retry-after`. A claim whose holder died expires at `expires_ms` (Unix
-- ms) and may then be taken by a retry.
CREATE TABLE idempotency_claims (
    user_id         INTEGER NOT NULL REFERENCES dim_users (user_id),
    idempotency_key TEXT    NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_hash    TEXT    NOT NULL,
    expires_ms      INTEGER NOT NULL CHECK (typeof(expires_ms) = 'integer'),
    claimed_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (user_id, idempotency_key)
) WITHOUT ROWID;

-- An alias is retired, not deleted: events the collector accepted under it
-- before an admin removed it are still in the outbox or on the broker, and
-- the bridge bills them as the model the alias named. Retired aliases no
-- longer resolve for new requests (chat, collector, quote), and their names
-- are never given to another model.
ALTER TABLE dim_model_aliases ADD COLUMN retired_at TEXT;

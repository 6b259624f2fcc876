-- A gateway call whose billing is not done yet keeps the usage to bill in
-- `open_usage` (billing-core `Usage` as JSON): a stream's row is written
-- open as soon as the provider's message_start tells its input (the
-- provider charges from then on), and a call whose billing write failed
-- is kept open with its whole usage. Billing the call clears it, in the
-- transaction that writes its event. The bridge bills a row still open
-- after `--open-gateway-calls-after-s` (its gateway instance ended: the
-- process killed, or stopped at its time limit) with that usage, marked
-- partial; both writers clear `open_usage` only on a row that still has
-- it, and the event id is the call id, so a call is billed once whoever
-- gets there first.
ALTER TABLE gateway_calls ADD COLUMN open_usage TEXT;
CREATE INDEX gateway_calls_open ON gateway_calls (occurred_at) WHERE open_usage IS NOT NULL;

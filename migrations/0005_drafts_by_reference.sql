-- A draft invoice holds its lines by reference instead of writing its id
-- into each of them: the user's line items that are on no invoice, occurred
-- before the period's end and existed when the draft was made (line ids up
-- to these two marks; line ids only grow, line items are never deleted).
-- Finalizing writes the invoice id into exactly those lines. A user has at
-- most one draft at a time, so two drafts never hold the same line. Drafts
-- made before this migration (both marks NULL) hold their lines by
-- invoice_id, as before.
ALTER TABLE user_invoices ADD COLUMN through_token_line_id INTEGER;
ALTER TABLE user_invoices ADD COLUMN through_resource_line_id INTEGER;
CREATE INDEX user_invoices_drafts ON user_invoices (user_id) WHERE status = 'draft';

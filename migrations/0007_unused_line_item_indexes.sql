-- Three indexes that no query reads, each written on every line item the
-- bridge inserts: line items by time alone and by thread (invoices read
-- them through user_invoice_line_item_billing; threads are never deleted,
-- so no foreign-key check needs the thread index), and resource lines by
-- time alone (resource_invoice_line_item_billing serves the invoices).
DROP INDEX user_invoice_line_item_time;
DROP INDEX user_invoice_line_item_thread;
DROP INDEX resource_invoice_line_item_time;

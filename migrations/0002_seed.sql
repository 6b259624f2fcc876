-- Seed data: Anthropic's models with their public list prices (USD per
-- million tokens, shown here in micro-USD: $3 = 3000000), each effective
-- from the model's release date; the event types; resource prices; an admin
-- and two demo users. API keys are not seeded: the bootstrap admin key comes
-- from the `admin_api_key` application variable, demo keys are issued
-- through the API by `make up`.
--
-- Cache writes: 5-minute writes cost 1.25x input, 1-hour writes 2x input,
-- cache reads 0.1x input, as Anthropic lists them.

INSERT INTO dim_models (model_id, model_name, display_name, provider, family, context_window, max_output_tokens, is_active, released_at, retired_at) VALUES
    (1, 'claude-opus-4-5-20251101',   'Claude Opus 4.5',   'anthropic', 'opus',   200000, 64000, 1, '2025-11-24T00:00:00.000Z', NULL),
    (2, 'claude-opus-4-1-20250805',   'Claude Opus 4.1',   'anthropic', 'opus',   200000, 32000, 1, '2025-08-05T00:00:00.000Z', NULL),
    (3, 'claude-sonnet-4-5-20250929', 'Claude Sonnet 4.5', 'anthropic', 'sonnet', 200000, 64000, 1, '2025-09-29T00:00:00.000Z', NULL),
    (4, 'claude-sonnet-4-20250514',   'Claude Sonnet 4',   'anthropic', 'sonnet', 200000, 64000, 1, '2025-05-22T00:00:00.000Z', NULL),
    (5, 'claude-haiku-4-5-20251001',  'Claude Haiku 4.5',  'anthropic', 'haiku',  200000, 64000, 1, '2025-10-15T00:00:00.000Z', NULL),
    (6, 'claude-3-5-haiku-20241022',  'Claude Haiku 3.5',  'anthropic', 'haiku',  200000,  8192, 1, '2024-11-04T00:00:00.000Z', NULL),
    (7, 'claude-3-opus-20240229',     'Claude Opus 3',     'anthropic', 'opus',   200000,  4096, 0, '2024-03-04T00:00:00.000Z', '2026-01-05T00:00:00.000Z');

INSERT INTO dim_token_pricing (pricing_id, model_id, effective_from, input_price, output_price, cache_write_5m_price, cache_write_1h_price, cache_read_price) VALUES
    (1, 1, '2025-11-24T00:00:00.000Z',  5000000, 25000000,  6250000, 10000000,  500000),
    (2, 2, '2025-08-05T00:00:00.000Z', 15000000, 75000000, 18750000, 30000000, 1500000),
    (3, 3, '2025-09-29T00:00:00.000Z',  3000000, 15000000,  3750000,  6000000,  300000),
    (4, 4, '2025-05-22T00:00:00.000Z',  3000000, 15000000,  3750000,  6000000,  300000),
    (5, 5, '2025-10-15T00:00:00.000Z',  1000000,  5000000,  1250000,  2000000,  100000),
    (6, 6, '2024-11-04T00:00:00.000Z',   800000,  4000000,  1000000,  1600000,   80000),
    (7, 7, '2024-03-04T00:00:00.000Z', 15000000, 75000000, 18750000, 30000000, 1500000);

INSERT INTO dim_event_types (event_type_id, event_type, topic, schema_version, description) VALUES
    (1, 'llm-billing.message.sent',  'raw-messages',     1, 'A user message as sent to a thread'),
    (2, 'llm-billing.llm.response',  'llm-responses',    1, 'The model''s answer to a message, with latency and usage'),
    (3, 'llm-billing.token.metrics', 'token-metrics',    1, 'The tokens of one chat turn per class: what is billed'),
    (4, 'llm-billing.inference',     'inference-events', 1, 'An inference API call reported to the collector'),
    (5, 'llm-billing.processed',     'processed-events', 1, 'What a consumer billed for an event');

-- Resource prices for collected inference events, micro-USD per million units:
-- $0.10 per thousand requests, $1 per million milliseconds ($3.60 per hour) of compute.
INSERT INTO dim_resource_pricing (resource_pricing_id, resource, unit, description, effective_from, unit_price) VALUES
    (1, 'inference_request', 'request',     'Each inference API call, succeeded or failed', '2025-01-01T00:00:00.000Z', 100000000),
    (2, 'compute_time',      'millisecond', 'Compute time reported by the inference API',    '2025-01-01T00:00:00.000Z',   1000000);

INSERT INTO dim_users (user_id, name, email, role, default_model_id) VALUES
    (1, 'Administrator', 'admin@example.com', 'admin', 5),
    (2, 'Ada Lovelace',  'ada@example.com',   'user',  5),
    (3, 'Grace Hopper',  'grace@example.com', 'user',  3);

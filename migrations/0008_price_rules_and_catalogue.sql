-- Prices as providers bill them, and the catalogue brought up to today.
--
-- 1. dim_token_pricing.rules: a version's prompt-length tiers and
--    modifiers, JSON read by billing-core (pricing::PriceRules): {"tiers":
--    [{"above_prompt_tokens": N, "prices": {input, output, cache_write_5m,
--    cache_write_1h, cache_read}}], "modifiers": [{"attribute":
--    "service_tier"|"inference_geo"|"speed", "value": "...", "multiplier":
--    "0.5"}]}. '{}' is base rates only. A new dimension of this kind is a new
--    field there, not a new column.
-- 2. dim_model_aliases: other names of a model (undated ids, cloud-provider
--    ids); they resolve to the model and its prices, never to a price of 0.
-- 3. The seed corrected and extended. Source: the genai-prices catalogue
--    (pydantic/genai-prices, PyPI genai-prices 0.2.3, provider "anthropic"),
--    which cites https://platform.claude.com/docs/en/about-claude/pricing;
--    data residency (inference_geo "us", 1.1x on models released from Opus 4.6 on) from
--    https://platform.claude.com/docs/en/build-with-claude/data-residency.
--    * Batch (service_tier "batch") is 50% of every token class on every
--      Anthropic model, cache included (batch-processing#pricing).
--    * Sonnet 4.5's long-context tier: a prompt above 200,000 tokens pays
--      $6/$22.50 for every token; its context window is the 1M beta's.
--    * Models released since November 2025, under their undated ids (the
--      source gives no dated ids). The source gives no release dates either:
--      Opus 4.6 (2026-02-05) and Sonnet 4.6 (2026-02-17) use Anthropic's
--      announcements; the others start 2026-10-14, the date the source's
--      price table was taken. Output limits are Anthropic's per family
--      (128k Opus/Fable/Mythos, 64k Sonnet/Haiku); the source has none.
--    * Effective-dated changes: Opus 4.6 and Sonnet 4.6 dropped their
--      200k tier on 2026-03-13; Opus 4.8 loses fast mode on 2026-11-30.
--    Seed versions 1..7 get rules in place: the seed stated list prices
--    without their modifiers; line items already billed keep their stored
--    prices and costs.
-- 4. A per-call fee for server-tool web searches: $10 per 1,000.

ALTER TABLE dim_token_pricing ADD COLUMN rules TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(rules) AND json_type(rules) = 'object');

CREATE TABLE dim_model_aliases (
    alias      TEXT    PRIMARY KEY,
    model_id   INTEGER NOT NULL REFERENCES dim_models (model_id),
    created_by INTEGER REFERENCES dim_users (user_id),
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) WITHOUT ROWID;
CREATE INDEX dim_model_aliases_model ON dim_model_aliases (model_id);

-- Batch on every seeded Anthropic version; Sonnet 4.5's long-context tier.
UPDATE dim_token_pricing SET rules = '{"modifiers":[{"attribute":"service_tier","value":"batch","multiplier":"0.5"}]}' WHERE pricing_id IN (1, 2, 4, 5, 6, 7);
UPDATE dim_token_pricing SET rules = '{"tiers":[{"above_prompt_tokens":200000,"prices":{"input":6000000,"output":22500000,"cache_write_5m":7500000,"cache_write_1h":12000000,"cache_read":600000}}],"modifiers":[{"attribute":"service_tier","value":"batch","multiplier":"0.5"}]}' WHERE pricing_id = 3;
UPDATE dim_models SET context_window = 1000000 WHERE model_id = 3;

INSERT INTO dim_models (model_id, model_name, display_name, provider, family, context_window, max_output_tokens, is_active, released_at) VALUES
    ( 8, 'claude-opus-4-6'     , 'Claude Opus 4.6'    , 'anthropic', 'opus'  , 1000000, 128000, 1, '2026-02-05T00:00:00.000Z'),
    ( 9, 'claude-sonnet-4-6'   , 'Claude Sonnet 4.6'  , 'anthropic', 'sonnet', 1000000,  64000, 1, '2026-02-17T00:00:00.000Z'),
    (10, 'claude-opus-4-7'     , 'Claude Opus 4.7'    , 'anthropic', 'opus'  , 1000000, 128000, 1, '2026-10-14T00:00:00.000Z'),
    (11, 'claude-opus-4-8'     , 'Claude Opus 4.8'    , 'anthropic', 'opus'  , 1000000, 128000, 1, '2026-10-14T00:00:00.000Z'),
    (12, 'claude-opus-5'       , 'Claude Opus 5'      , 'anthropic', 'opus'  , 1000000, 128000, 1, '2026-10-14T00:00:00.000Z'),
    (13, 'claude-sonnet-5'     , 'Claude Sonnet 5'    , 'anthropic', 'sonnet', 1000000,  64000, 1, '2026-10-14T00:00:00.000Z'),
    (14, 'claude-fable-5'      , 'Claude Fable 5'     , 'anthropic', 'fable' , 1000000, 128000, 1, '2026-10-14T00:00:00.000Z'),
    (15, 'claude-fable-5-1'    , 'Claude Fable 5.1'   , 'anthropic', 'fable' , 1000000, 128000, 1, '2026-10-14T00:00:00.000Z'),
    (16, 'claude-fable-5-2'    , 'Claude Fable 5.2'   , 'anthropic', 'fable' , 1000000, 128000, 1, '2026-10-14T00:00:00.000Z'),
    (17, 'claude-mythos-5-2'   , 'Claude Mythos 5.2'  , 'anthropic', 'mythos', 1000000, 128000, 1, '2026-10-14T00:00:00.000Z'),
    (18, 'claude-opus-5-5'     , 'Claude Opus 5.5'    , 'anthropic', 'opus'  , 1000000, 128000, 1, '2026-10-14T00:00:00.000Z'),
    (19, 'claude-sonnet-5-5'   , 'Claude Sonnet 5.5'  , 'anthropic', 'sonnet', 1000000,  64000, 1, '2026-10-14T00:00:00.000Z'),
    (20, 'claude-haiku-5-5'    , 'Claude Haiku 5.5'   , 'anthropic', 'haiku' , 1000000,  64000, 1, '2026-10-14T00:00:00.000Z');

INSERT INTO dim_token_pricing (pricing_id, model_id, effective_from, input_price, output_price, cache_write_5m_price, cache_write_1h_price, cache_read_price, rules) VALUES
    ( 8,  8, '2026-02-05T00:00:00.000Z',   5000000,  25000000,   6250000,  10000000,   500000, '{"tiers":[{"above_prompt_tokens":200000,"prices":{"input":10000000,"output":37500000,"cache_write_5m":12500000,"cache_write_1h":20000000,"cache_read":1000000}}],"modifiers":[{"attribute":"service_tier","value":"batch","multiplier":"0.5"},{"attribute":"inference_geo","value":"us","multiplier":"1.1"}]}'),
    ( 9,  8, '2026-03-13T00:00:00.000Z',   5000000,  25000000,   6250000,  10000000,   500000, '{"modifiers":[{"attribute":"service_tier","value":"batch","multiplier":"0.5"},{"attribute":"inference_geo","value":"us","multiplier":"1.1"}]}'),
    (10,  9, '2026-02-17T00:00:00.000Z',   3000000,  15000000,   3750000,   6000000,   300000, '{"tiers":[{"above_prompt_tokens":200000,"prices":{"input":6000000,"output":22500000,"cache_write_5m":7500000,"cache_write_1h":12000000,"cache_read":600000}}],"modifiers":[{"attribute":"service_tier","value":"batch","multiplier":"0.5"},{"attribute":"inference_geo","value":"us","multiplier":"1.1"}]}'),
    (11,  9, '2026-03-13T00:00:00.000Z',   3000000,  15000000,   3750000,   6000000,   300000, '{"modifiers":[{"attribute":"service_tier","value":"batch","multiplier":"0.5"},{"attribute":"inference_geo","value":"us","multiplier":"1.1"}]}'),
    (12, 10, '2026-10-14T00:00:00.000Z',   5000000,  25000000,   6250000,  10000000,   500000, '{"modifiers":[{"attribute":"service_tier","value":"batch","multiplier":"0.5"},{"attribute":"inference_geo","value":"us","multiplier":"1.1"}]}'),
    (13, 11, '2026-10-14T00:00:00.000Z',   5000000,  25000000,   6250000,  10000000,   500000, '{"modifiers":[{"attribute":"service_tier","value":"batch","multiplier":"0.5"},{"attribute":"inference_geo","value":"us","multiplier":"1.1"},{"attribute":"speed","value":"fast","multiplier":"2"}]}'),
    (14, 11, '2026-11-30T00:00:00.000Z',   5000000,  25000000,   6250000,  10000000,   500000, '{"modifiers":[{"attribute":"service_tier","value":"batch","multiplier":"0.5"},{"attribute":"inference_geo","value":"us","multiplier":"1.1"}]}'),
    (15, 12, '2026-10-14T00:00:00.000Z',   5000000,  25000000,   6250000,  10000000,   500000, '{"modifiers":[{"attribute":"service_tier","value":"batch","multiplier":"0.5"},{"attribute":"inference_geo","value":"us","multiplier":"1.1"},{"attribute":"speed","value":"fast","multiplier":"2"}]}'),
    (16, 13, '2026-10-14T00:00:00.000Z',   2000000,  10000000,   2500000,   4000000,   200000, '{"modifiers":[{"attribute":"service_tier","value":"batch","multiplier":"0.5"},{"attribute":"inference_geo","value":"us","multiplier":"1.1"}]}'),
    (17, 14, '2026-10-14T00:00:00.000Z',  10000000,  50000000,  12500000,  20000000,  1000000, '{"modifiers":[{"attribute":"service_tier","value":"batch","multiplier":"0.5"},{"attribute":"inference_geo","value":"us","multiplier":"1.1"}]}'),
    (18, 15, '2026-10-14T00:00:00.000Z',  10000000,  50000000,  12500000,  20000000,   250000, '{"modifiers":[{"attribute":"service_tier","value":"batch","multiplier":"0.5"},{"attribute":"inference_geo","value":"us","multiplier":"1.1"}]}'),
    (19, 16, '2026-10-14T00:00:00.000Z',   8000000,  40000000,  10000000,  16000000,   200000, '{"modifiers":[{"attribute":"service_tier","value":"batch","multiplier":"0.5"},{"attribute":"inference_geo","value":"us","multiplier":"1.1"},{"attribute":"speed","value":"fast","multiplier":"2"}]}'),
    (20, 17, '2026-10-14T00:00:00.000Z',   8000000,  40000000,  10000000,  16000000,   200000, '{"modifiers":[{"attribute":"service_tier","value":"batch","multiplier":"0.5"},{"attribute":"inference_geo","value":"us","multiplier":"1.1"},{"attribute":"speed","value":"fast","multiplier":"2"}]}'),
    (21, 18, '2026-10-14T00:00:00.000Z',   4000000,  20000000,   5000000,   8000000,   200000, '{"modifiers":[{"attribute":"service_tier","value":"batch","multiplier":"0.5"},{"attribute":"inference_geo","value":"us","multiplier":"1.1"},{"attribute":"speed","value":"fast","multiplier":"2"}]}'),
    (22, 19, '2026-10-14T00:00:00.000Z',   2000000,  10000000,   2500000,   4000000,   100000, '{"modifiers":[{"attribute":"service_tier","value":"batch","multiplier":"0.5"},{"attribute":"inference_geo","value":"us","multiplier":"1.1"}]}'),
    (23, 20, '2026-10-14T00:00:00.000Z',    100000,    500000,    125000,    200000,    10000, '{"tiers":[{"above_prompt_tokens":100000,"prices":{"input":500000,"output":2500000,"cache_write_5m":625000,"cache_write_1h":1000000,"cache_read":50000}}],"modifiers":[{"attribute":"service_tier","value":"batch","multiplier":"0.5"},{"attribute":"inference_geo","value":"us","multiplier":"1.1"}]}');

-- Undated ids and cloud-provider ids (Amazon Bedrock, Google Vertex AI) of the dated seed models.
INSERT INTO dim_model_aliases (alias, model_id) VALUES
    ('claude-opus-4-5',                              1),
    ('anthropic.claude-opus-4-5-20251101-v1:0',      1),
    ('claude-opus-4-5@20251101',                     1),
    ('claude-opus-4-1',                              2),
    ('anthropic.claude-opus-4-1-20250805-v1:0',      2),
    ('claude-opus-4-1@20250805',                     2),
    ('claude-sonnet-4-5',                            3),
    ('anthropic.claude-sonnet-4-5-20250929-v1:0',    3),
    ('claude-sonnet-4-5@20250929',                   3),
    ('claude-sonnet-4-0',                            4),
    ('anthropic.claude-sonnet-4-20250514-v1:0',      4),
    ('claude-sonnet-4@20250514',                     4),
    ('claude-haiku-4-5',                             5),
    ('anthropic.claude-haiku-4-5-20251001-v1:0',     5),
    ('claude-haiku-4-5@20251001',                    5),
    ('claude-3-5-haiku-latest',                      6),
    ('claude-3-opus-latest',                         7);

INSERT INTO dim_resource_pricing (resource_pricing_id, resource, unit, description, effective_from, unit_price) VALUES
    (3, 'web_search_request', 'request', 'A server-tool web search (usage.server_tool_use.web_search_requests), $10 per 1,000', '2025-01-01T00:00:00.000Z', 10000000000);

-- agw config store, schema 10: limits and budgets (docs/limits.md).
--
-- limits: the bundle's limits family, one row per limit (same shape as every family table).
-- limit_counters: the in-process limit backend's counters, saved so that a restart keeps what a
-- window has used: one row per (limit, subject); window is the limit's window spec when the
-- row was counted ("1d", "month", "lifetime"; a row whose limit now has another window starts
-- over), window_start the start of the counted window in unix ms (0 for lifetime).
-- limit_id / limit_action on every usage table: the limit that acted on the call and what it
-- did (refused, clamped, cut, exceeded, shadow); NULL on the calls no limit acted on, and on
-- rows older than this schema. The partial indexes serve the metrics API's limit_id and
-- limit_action filters (docs/observability.md).

CREATE TABLE limits (
    id TEXT PRIMARY KEY NOT NULL,
    tag TEXT NOT NULL DEFAULT '',
    config TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE limit_counters (
    limit_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    window TEXT NOT NULL,
    window_start INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (limit_id, subject)
) WITHOUT ROWID;

ALTER TABLE llm_usage_events ADD COLUMN limit_id TEXT;
ALTER TABLE llm_usage_events ADD COLUMN limit_action TEXT;
ALTER TABLE mcp_usage_events ADD COLUMN limit_id TEXT;
ALTER TABLE mcp_usage_events ADD COLUMN limit_action TEXT;
ALTER TABLE acp_usage_events ADD COLUMN limit_id TEXT;
ALTER TABLE acp_usage_events ADD COLUMN limit_action TEXT;

CREATE INDEX idx_llm_usage_limit ON llm_usage_events (limit_id, started_at)
    WHERE limit_id IS NOT NULL;
CREATE INDEX idx_llm_usage_limit_action ON llm_usage_events (limit_action, started_at)
    WHERE limit_action IS NOT NULL;
CREATE INDEX idx_mcp_usage_limit ON mcp_usage_events (limit_id, started_at)
    WHERE limit_id IS NOT NULL;
CREATE INDEX idx_mcp_usage_limit_action ON mcp_usage_events (limit_action, started_at)
    WHERE limit_action IS NOT NULL;
CREATE INDEX idx_acp_usage_limit ON acp_usage_events (limit_id, started_at)
    WHERE limit_id IS NOT NULL;
CREATE INDEX idx_acp_usage_limit_action ON acp_usage_events (limit_action, started_at)
    WHERE limit_action IS NOT NULL;

-- agw config store, schema 5: identity (issue 14).
--
-- jwt_providers: identity providers whose signed JWTs admit callers (docs/security.md).
-- user_id / org_id on every usage table: who called, as the identity step named them (a JWT's
-- user and org claims; empty for a virtual key without a JWT).

CREATE TABLE jwt_providers (
    id TEXT PRIMARY KEY NOT NULL,
    tag TEXT NOT NULL DEFAULT '',
    config TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

ALTER TABLE llm_usage_events ADD COLUMN user_id TEXT;
ALTER TABLE llm_usage_events ADD COLUMN org_id TEXT;
ALTER TABLE mcp_usage_events ADD COLUMN user_id TEXT;
ALTER TABLE mcp_usage_events ADD COLUMN org_id TEXT;
ALTER TABLE acp_usage_events ADD COLUMN user_id TEXT;
ALTER TABLE acp_usage_events ADD COLUMN org_id TEXT;

CREATE INDEX idx_llm_usage_user ON llm_usage_events (user_id, started_at)
    WHERE user_id IS NOT NULL;
CREATE INDEX idx_llm_usage_org ON llm_usage_events (org_id, started_at)
    WHERE org_id IS NOT NULL;
CREATE INDEX idx_mcp_usage_user ON mcp_usage_events (user_id, started_at)
    WHERE user_id IS NOT NULL;
CREATE INDEX idx_acp_usage_user ON acp_usage_events (user_id, started_at)
    WHERE user_id IS NOT NULL;

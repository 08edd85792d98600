-- agw config store, schema 4: one session id across LLM, MCP and ACP, and the indexes the
-- metrics API filters on.
--
-- session_id is now the agent session a call belongs to, on every usage table: the ACP session
-- of a gateway-run agent, else the agent's own session header (agent-session-id,
-- goose-session-id, x-claude-code-session-id, x-session-id, session-id), else an MCP request's
-- params._meta["agent-session-id"]. The MCP table's old session_id (the gateway's masked
-- Mcp-Session-Id of the downstream session) keeps its values under the name mcp_session_id.

ALTER TABLE mcp_usage_events RENAME COLUMN session_id TO mcp_session_id;
ALTER TABLE mcp_usage_events ADD COLUMN session_id TEXT;
UPDATE mcp_usage_events SET session_id = acp_session_id WHERE acp_session_id IS NOT NULL;

CREATE INDEX idx_llm_usage_session ON llm_usage_events (session_id, started_at)
    WHERE session_id IS NOT NULL;
CREATE INDEX idx_mcp_usage_session ON mcp_usage_events (session_id, started_at)
    WHERE session_id IS NOT NULL;
CREATE INDEX idx_acp_usage_session ON acp_usage_events (session_id, started_at)
    WHERE session_id IS NOT NULL;
CREATE INDEX idx_llm_usage_provider ON llm_usage_events (provider_id, started_at);
CREATE INDEX idx_llm_usage_model ON llm_usage_events (upstream_model, started_at);
CREATE INDEX idx_mcp_usage_service ON mcp_usage_events (service_id, started_at);
CREATE INDEX idx_mcp_usage_tool ON mcp_usage_events (tool_name, started_at)
    WHERE tool_name IS NOT NULL;
CREATE INDEX idx_acp_usage_service ON acp_usage_events (service_id, started_at);

-- agw config store, schema 3: which ACP session caused an LLM or MCP request. When the gateway
-- is an agent's only origin (acpServices[].gateway_origin), the agent's LLM and tool calls come
-- back through the gateway and their usage rows name the ACP session of the turn. MCP rows also
-- get the client's own session id (the gateway's Mcp-Session-Id of the downstream session).

ALTER TABLE llm_usage_events ADD COLUMN acp_session_id TEXT;
ALTER TABLE mcp_usage_events ADD COLUMN acp_session_id TEXT;
ALTER TABLE mcp_usage_events ADD COLUMN session_id TEXT;

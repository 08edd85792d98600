-- agw config store, schema 9: what an MCP tool call cost (docs/limits.md, "Prices and cost").
--
-- cost_usd: the service's price_per_call (or its tool_prices entry for the upstream tool) of a
-- tools/call the service answered (a result, including a tool's own isError result); NULL for
-- other methods, for calls refused or failed before an answer, and for unpriced services.

ALTER TABLE mcp_usage_events ADD COLUMN cost_usd REAL;

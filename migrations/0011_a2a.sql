-- agw config store, schema 11: the A2A gateway (docs/a2a.md).
--
-- a2a_services: the bundle's a2aServices family (same shape as every family table).
-- routes: its kind may now be 'a2a' (a2aRoutes). SQLite cannot change a CHECK constraint in
-- place, so the table is rebuilt with its rows and index; no other table refers to it.
-- a2a_usage_events: one row per request to an A2A route. The shared columns first (as on the
-- other usage tables), then the request's own: service_id; method (the JSON-RPC method, or for
-- the HTTP+JSON binding the JSON-RPC name of the same operation, in the request's version; the
-- card's own 'agent-card'); request_id (the JSON-RPC id); protocol_version ('1.0' or '0.3');
-- binding ('jsonrpc', 'http_json', or 'card'); stream (0/1); task_id, context_id and task_state
-- (the last state the answer named: submitted, working, input-required, auth-required,
-- completed, canceled, failed, rejected, unknown); event_count (the events a stream relayed);
-- session_id (the A2A contextId, else the agent session the request's headers name); user_id,
-- org_id, limit_id, limit_action as on every usage table.

CREATE TABLE a2a_services (
    id TEXT PRIMARY KEY NOT NULL,
    tag TEXT NOT NULL DEFAULT '',
    config TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE routes_0011 (
    id TEXT PRIMARY KEY NOT NULL,
    tag TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL CHECK (kind IN ('llm', 'mcp', 'acp', 'a2a')),
    config TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
INSERT INTO routes_0011 (id, tag, kind, config, created_at, updated_at)
    SELECT id, tag, kind, config, created_at, updated_at FROM routes;
DROP TABLE routes;
ALTER TABLE routes_0011 RENAME TO routes;
CREATE INDEX idx_routes_kind ON routes (kind);

CREATE TABLE a2a_usage_events (
    event_id TEXT PRIMARY KEY NOT NULL,
    trace_id TEXT,
    span_id TEXT NOT NULL,
    parent_span_id TEXT,
    agent_depth INTEGER NOT NULL DEFAULT 0,
    started_at INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    route_id TEXT,
    route_kind TEXT NOT NULL DEFAULT 'a2a',
    route_protocol TEXT,
    virtual_key_id TEXT,
    success INTEGER NOT NULL DEFAULT 0,
    status_code INTEGER,
    error_type TEXT,
    latency_ms INTEGER,
    agent_id TEXT,
    service_id TEXT,
    method TEXT,
    request_id TEXT,
    protocol_version TEXT,
    binding TEXT,
    stream INTEGER NOT NULL DEFAULT 0,
    task_id TEXT,
    context_id TEXT,
    task_state TEXT,
    event_count INTEGER NOT NULL DEFAULT 0,
    session_id TEXT,
    user_id TEXT,
    org_id TEXT,
    limit_id TEXT,
    limit_action TEXT
);
CREATE INDEX idx_a2a_usage_started ON a2a_usage_events (started_at);
CREATE INDEX idx_a2a_usage_route ON a2a_usage_events (route_id, started_at);
CREATE INDEX idx_a2a_usage_vk ON a2a_usage_events (virtual_key_id, started_at);
CREATE INDEX idx_a2a_usage_trace ON a2a_usage_events (trace_id, started_at)
    WHERE trace_id IS NOT NULL;
CREATE INDEX idx_a2a_usage_agent ON a2a_usage_events (agent_id, started_at)
    WHERE agent_id IS NOT NULL;
CREATE INDEX idx_a2a_usage_session ON a2a_usage_events (session_id, started_at)
    WHERE session_id IS NOT NULL;
CREATE INDEX idx_a2a_usage_service ON a2a_usage_events (service_id, started_at);
CREATE INDEX idx_a2a_usage_task ON a2a_usage_events (task_id, started_at)
    WHERE task_id IS NOT NULL;
CREATE INDEX idx_a2a_usage_user ON a2a_usage_events (user_id, started_at)
    WHERE user_id IS NOT NULL;

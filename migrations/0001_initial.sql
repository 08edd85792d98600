-- agw config store, schema 1: the configuration tables of reference §6 and the usage tables of
-- §7.2. Timestamps are unix milliseconds. Each configuration row keeps its object as JSON in
-- `config` (or `data`), with the columns the store filters on beside it.

CREATE TABLE providers (
    id TEXT PRIMARY KEY NOT NULL,
    tag TEXT NOT NULL DEFAULT '',
    config TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE cliauth_credentials (
    id TEXT PRIMARY KEY NOT NULL,
    tag TEXT NOT NULL DEFAULT '',
    data TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE routes (
    id TEXT PRIMARY KEY NOT NULL,
    tag TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL CHECK (kind IN ('llm', 'mcp', 'acp')),
    config TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX idx_routes_kind ON routes (kind);

CREATE TABLE virtual_keys (
    id TEXT PRIMARY KEY NOT NULL,
    tag TEXT NOT NULL DEFAULT '',
    key TEXT NOT NULL,
    config TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX idx_virtual_keys_key ON virtual_keys (key);

CREATE TABLE model_configs (
    provider_id TEXT NOT NULL,
    upstream_model TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (provider_id, upstream_model)
);

CREATE TABLE mcp_services (
    id TEXT PRIMARY KEY NOT NULL,
    tag TEXT NOT NULL DEFAULT '',
    config TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE acp_services (
    id TEXT PRIMARY KEY NOT NULL,
    tag TEXT NOT NULL DEFAULT '',
    config TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE agents (
    id TEXT PRIMARY KEY NOT NULL,
    tag TEXT NOT NULL DEFAULT '',
    config TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE llm_usage_events (
    event_id TEXT PRIMARY KEY NOT NULL,
    trace_id TEXT,
    span_id TEXT NOT NULL,
    parent_span_id TEXT,
    agent_depth INTEGER NOT NULL DEFAULT 0,
    started_at INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    route_id TEXT,
    route_kind TEXT NOT NULL DEFAULT 'llm',
    route_protocol TEXT,
    virtual_key_id TEXT,
    success INTEGER NOT NULL DEFAULT 0,
    status_code INTEGER,
    error_type TEXT,
    latency_ms INTEGER,
    agent_id TEXT,
    llm_api TEXT,
    api_operation TEXT,
    provider_id TEXT,
    provider_type TEXT,
    logical_model TEXT,
    upstream_model TEXT,
    credential_source TEXT,
    credential_id TEXT,
    stream INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    usage_finalized INTEGER NOT NULL DEFAULT 1,
    request_tool_count INTEGER NOT NULL DEFAULT 0,
    request_tool_names TEXT,
    tool_call_count INTEGER NOT NULL DEFAULT 0,
    tool_names TEXT
);
CREATE INDEX idx_llm_usage_started ON llm_usage_events (started_at);
CREATE INDEX idx_llm_usage_route ON llm_usage_events (route_id, started_at);
CREATE INDEX idx_llm_usage_vk ON llm_usage_events (virtual_key_id, started_at);
CREATE INDEX idx_llm_usage_trace ON llm_usage_events (trace_id, started_at)
    WHERE trace_id IS NOT NULL;
CREATE INDEX idx_llm_usage_tools ON llm_usage_events (started_at) WHERE tool_call_count > 0;
CREATE INDEX idx_llm_usage_agent ON llm_usage_events (agent_id, started_at)
    WHERE agent_id IS NOT NULL;

CREATE TABLE mcp_usage_events (
    event_id TEXT PRIMARY KEY NOT NULL,
    trace_id TEXT,
    span_id TEXT NOT NULL,
    parent_span_id TEXT,
    agent_depth INTEGER NOT NULL DEFAULT 0,
    started_at INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    route_id TEXT,
    route_kind TEXT NOT NULL DEFAULT 'mcp',
    route_protocol TEXT,
    virtual_key_id TEXT,
    success INTEGER NOT NULL DEFAULT 0,
    status_code INTEGER,
    error_type TEXT,
    latency_ms INTEGER,
    agent_id TEXT,
    request_id TEXT,
    service_id TEXT,
    method TEXT,
    tool_name TEXT,
    presented_tool_name TEXT,
    executed_tool_name TEXT,
    execution_mode TEXT,
    policy_action TEXT,
    resource_uri TEXT,
    prompt_name TEXT,
    completion_ref_type TEXT,
    completion_argument TEXT,
    arg_count INTEGER,
    result_status TEXT,
    cancelled INTEGER NOT NULL DEFAULT 0,
    tool_args_json TEXT
);
CREATE INDEX idx_mcp_usage_started ON mcp_usage_events (started_at);
CREATE INDEX idx_mcp_usage_route ON mcp_usage_events (route_id, started_at);
CREATE INDEX idx_mcp_usage_vk ON mcp_usage_events (virtual_key_id, started_at);
CREATE INDEX idx_mcp_usage_trace ON mcp_usage_events (trace_id, started_at)
    WHERE trace_id IS NOT NULL;
CREATE INDEX idx_mcp_usage_agent ON mcp_usage_events (agent_id, started_at)
    WHERE agent_id IS NOT NULL;

CREATE TABLE acp_usage_events (
    event_id TEXT PRIMARY KEY NOT NULL,
    trace_id TEXT,
    span_id TEXT NOT NULL,
    parent_span_id TEXT,
    agent_depth INTEGER NOT NULL DEFAULT 0,
    started_at INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    route_id TEXT,
    route_kind TEXT NOT NULL DEFAULT 'acp',
    route_protocol TEXT,
    virtual_key_id TEXT,
    success INTEGER NOT NULL DEFAULT 0,
    status_code INTEGER,
    error_type TEXT,
    latency_ms INTEGER,
    agent_id TEXT,
    service_id TEXT,
    agent_type TEXT,
    operation TEXT,
    thread_id TEXT,
    session_id TEXT,
    permission_request_id TEXT,
    fresh_session INTEGER,
    event_counts_json TEXT,
    usage_json TEXT,
    result_status TEXT
);
CREATE INDEX idx_acp_usage_started ON acp_usage_events (started_at);
CREATE INDEX idx_acp_usage_route ON acp_usage_events (route_id, started_at);
CREATE INDEX idx_acp_usage_vk ON acp_usage_events (virtual_key_id, started_at);
CREATE INDEX idx_acp_usage_trace ON acp_usage_events (trace_id, started_at)
    WHERE trace_id IS NOT NULL;
CREATE INDEX idx_acp_usage_agent ON acp_usage_events (agent_id, started_at)
    WHERE agent_id IS NOT NULL;

-- agw config store, schema 2: finer LLM usage. Where the token counts came from
-- (`usage_source`: provider | estimated | missing), the cache and reasoning parts of the counts
-- the providers report, and the client's session id when it sends one.

ALTER TABLE llm_usage_events ADD COLUMN usage_source TEXT;
ALTER TABLE llm_usage_events ADD COLUMN cached_input_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE llm_usage_events ADD COLUMN cache_creation_input_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE llm_usage_events ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE llm_usage_events ADD COLUMN session_id TEXT;

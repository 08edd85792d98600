"""The ACP plane: agents (opencode, codex-acp, any ACP agent) run by the gateway over stdio,
pooled per thread and session, their turns streamed to HTTP clients as SSE."""

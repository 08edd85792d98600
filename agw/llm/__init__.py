"""L4: the LLM plane: surfaces (openai, anthropic, cc), providers, passthrough and translation."""

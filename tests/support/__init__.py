"""Scaffolding the tests share: agwd processes, admin and agwctl clients, MCP sessions,
metrics datasets and usage-row readers."""

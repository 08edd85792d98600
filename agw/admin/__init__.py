"""L4: the admin API (Quart)."""

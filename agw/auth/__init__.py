"""L3: admin basic auth (virtual keys come with the data plane)."""

"""L1: GatewayBundle models, loading, validation."""

"""L3: configuration state, compiled snapshots, the config manager, apply planning."""

"""L2: the SQLite store, every SQL statement of agw: ``db`` (connection, migrations),
``config_repo`` (configuration rows), ``secrets`` (their secrets sealed at rest), ``usage_sql``
and ``usage_repo`` (usage rows: insert, the metrics API's reads, retention). The usage layer
passes typed arguments and gets rows back, the seam a PostgreSQL store plugs into."""

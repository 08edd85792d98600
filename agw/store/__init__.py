"""L2: the SQLite store (connection, migrations, configuration rows)."""

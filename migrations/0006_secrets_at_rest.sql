-- agw config store, schema 6: secrets at rest (docs/security.md, "Secrets at rest").
--
-- store_secret_key: one row naming the key this store's secrets are sealed with (key_id, a
-- one-way id) and a value sealed with it, so a store opened with another key is refused at start.
-- virtual_keys.key_secret: the bearer, sealed; `key` keeps its unique index and now holds a
-- keyed hash of the bearer (hmac:v1:...).
--
-- Python finishes this migration in the same transaction (agw/store/secrets.py,
-- seal_plaintext_rows): it seals the secrets already stored in clear, moves each bearer, and
-- writes the store_secret_key row.

CREATE TABLE store_secret_key (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    key_id TEXT NOT NULL,
    check_value TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

ALTER TABLE virtual_keys ADD COLUMN key_secret TEXT NOT NULL DEFAULT '';

-- agw config store, schema 7: gateway-wide authorization rules (authorizationPolicies), held
-- by every route of their kinds beside the route's own (docs/security.md).

CREATE TABLE authorization_policies (
    id TEXT PRIMARY KEY NOT NULL,
    tag TEXT NOT NULL DEFAULT '',
    config TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- agw config store, schema 12: limit leases (docs/scale-out.md, "Shared limits").
--
-- Without a Redis, the processes that share a store (--workers N, replicas on one PostgreSQL)
-- share each limit's caps through it: limit_counters keeps what every process has used in the
-- window (each adds what it used, at most a second late), and limit_leases what each process
-- holds of a cap for the requests it admits locally. A process takes a lease in chunks, in one
-- transaction that checks it against the cap, what was used and the other processes' leases,
-- renews it while it is in use and returns what it did not use; a lease whose holder stopped
-- renewing it (expires_at, unix ms) counts no more. holder: a random id per process.

CREATE TABLE limit_leases (
    limit_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    holder TEXT NOT NULL,
    window TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    cost_usd REAL NOT NULL DEFAULT 0,
    total_tokens REAL NOT NULL DEFAULT 0,
    input_tokens REAL NOT NULL DEFAULT 0,
    output_tokens REAL NOT NULL DEFAULT 0,
    requests REAL NOT NULL DEFAULT 0,
    concurrent REAL NOT NULL DEFAULT 0,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (limit_id, subject, holder)
) WITHOUT ROWID;

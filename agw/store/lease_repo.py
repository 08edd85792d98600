"""The leased limit backend's tables (agw/policy/limit_lease.py, migration 0012).

``limit_counters`` (migration 0010) keeps, per (limit, subject), what every process sharing the
store used in the counted window: each adds its own use (:func:`add_used`), which also locks the
row until the transaction ends, so the processes that lease one counter take turns.
``limit_leases`` keeps what each process (``holder``) holds of a cap, until ``expires_at``.
Amounts are per meter, in the backend's order: dollars, total, input and output tokens,
requests (and, for leases, requests in flight). Every function but :func:`stored_counters`
runs in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

from agw.store.engine import Conn, Store

__all__ = [
    "add_used",
    "drop_expired_leases",
    "drop_lease",
    "forget_limits",
    "other_leases",
    "put_lease",
    "stored_counters",
    "zero_used",
]

_USED = ("cost_usd", "total_tokens", "input_tokens", "output_tokens", "requests")
_LEASED = (*_USED, "concurrent")

_ADD_USED = (
    "INSERT INTO limit_counters (limit_id, subject, window, window_start, "
    f"{', '.join(_USED)}, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (limit_id, subject) DO UPDATE SET "
    + ", ".join(
        f"{c} = CASE WHEN limit_counters.window = excluded.window "
        f"AND limit_counters.window_start = excluded.window_start "
        f"THEN limit_counters.{c} + excluded.{c} ELSE excluded.{c} END"
        for c in _USED
    )
    + ", window = excluded.window, window_start = excluded.window_start, "
    "updated_at = excluded.updated_at "
    # what an older window used is not added to a newer one
    "WHERE limit_counters.window <> excluded.window "
    "OR limit_counters.window_start <= excluded.window_start"
)
_READ_USED = (
    f"SELECT window, window_start, {', '.join(_USED)} FROM limit_counters "
    "WHERE limit_id = ? AND subject = ?"
)
_OTHERS = (
    "SELECT "
    + ", ".join(f"COALESCE(SUM({c}), 0)" for c in _LEASED)
    + " FROM limit_leases WHERE limit_id = ? AND subject = ? AND holder <> ? "
    "AND window = ? AND window_start = ? AND expires_at > ?"
)
_PUT_LEASE = (
    "INSERT INTO limit_leases (limit_id, subject, holder, window, window_start, "
    f"{', '.join(_LEASED)}, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (limit_id, subject, holder) DO UPDATE SET window = excluded.window, "
    "window_start = excluded.window_start, "
    + ", ".join(f"{c} = excluded.{c}" for c in _LEASED)
    + ", expires_at = excluded.expires_at"
)
_DROP_LEASE = "DELETE FROM limit_leases WHERE limit_id = ? AND subject = ? AND holder = ?"
_DROP_EXPIRED = "DELETE FROM limit_leases WHERE expires_at < ?"
_STORED = f"SELECT limit_id, subject, window, window_start, {', '.join(_USED)} FROM limit_counters"
_ZEROS = ", ".join(f"{c} = 0" for c in _USED)


async def add_used(
    conn: Conn,
    limit_id: str,
    subject: str,
    window: str,
    window_start: int,
    used: Sequence[float],
    now_ms: int,
) -> list[float] | None:
    """``used`` (five meters) added to the counter's row for the window starting at
    ``window_start`` (a row of an older window, or of another window spec, starts over; a
    newer window's row is left alone), locking the row; what the row then counts in that
    window, or None when it holds a newer one."""
    values = [float(used[0]), *(round(x) for x in used[1:5])]
    await conn.execute(_ADD_USED, (limit_id, subject, window, window_start, *values, now_ms))
    cur = await conn.execute(_READ_USED, (limit_id, subject))
    row = await cur.fetchone()
    if row is None or str(row[0]) != window or int(row[1]) != window_start:
        return None
    return [float(x) for x in row[2:7]]


async def other_leases(
    conn: Conn,
    limit_id: str,
    subject: str,
    holder: str,
    window: str,
    window_start: int,
    now_ms: int,
) -> list[float]:
    """What the holders other than ``holder`` hold of the counter in that window (six
    meters), counting only leases that have not expired."""
    cur = await conn.execute(_OTHERS, (limit_id, subject, holder, window, window_start, now_ms))
    row = await cur.fetchone()
    return [float(x) for x in row] if row is not None else [0.0] * 6


async def put_lease(
    conn: Conn,
    limit_id: str,
    subject: str,
    holder: str,
    window: str,
    window_start: int,
    lease: Sequence[float],
    expires_ms: int,
) -> None:
    """``holder``'s lease of the counter (six meters), replacing the one it had."""
    await conn.execute(
        _PUT_LEASE, (limit_id, subject, holder, window, window_start, *lease, expires_ms)
    )


async def drop_lease(conn: Conn, limit_id: str, subject: str, holder: str) -> None:
    await conn.execute(_DROP_LEASE, (limit_id, subject, holder))


async def drop_expired_leases(conn: Conn, before_ms: int) -> None:
    await conn.execute(_DROP_EXPIRED, (before_ms,))


async def stored_counters(
    db: Store, limit_id: str | None = None
) -> list[tuple[str, str, str, int, list[float]]]:
    """Every counter row (of one limit): (limit id, subject, window, window start, what was
    used: five meters), by limit and subject."""
    sql, args = _STORED, tuple[str, ...]()
    if limit_id is not None:
        sql, args = sql + " WHERE limit_id = ?", (limit_id,)
    conn = await db.reader()
    cur = await conn.execute(sql + " ORDER BY limit_id, subject", args)
    return [
        (str(r[0]), str(r[1]), str(r[2]), int(r[3]), [float(x) for x in r[4:9]])
        for r in await cur.fetchall()
    ]


async def zero_used(db: Store, limit_id: str, subject: str | None = None) -> int:
    """What the counters of ``limit_id`` (of ``subject`` alone) used set to nothing; how
    many."""
    where = "limit_id = ?" + (" AND subject = ?" if subject is not None else "")
    args = (limit_id,) if subject is None else (limit_id, subject)
    async with db.transaction() as conn:
        cur = await conn.execute(f"UPDATE limit_counters SET {_ZEROS} WHERE {where}", args)
        return max(int(cur.rowcount), 0)


async def forget_limits(db: Store, limit_ids: Sequence[str]) -> None:
    """The rows and leases of limits that no longer exist, deleted."""
    async with db.transaction() as conn:
        for limit_id in limit_ids:
            await conn.execute("DELETE FROM limit_leases WHERE limit_id = ?", (limit_id,))
            await conn.execute("DELETE FROM limit_counters WHERE limit_id = ?", (limit_id,))

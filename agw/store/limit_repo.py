"""The limit backend's saved counters: the ``limit_counters`` table (migration 0010).

The in-process limit backend counts in memory and saves its counters here from time to time, so
that a restart keeps what each window has used (docs/limits.md). One row per (limit, subject):
what the subject has used of the limit in the window that started at ``window_start``. The
backend reads them back once, at start-up (:func:`load_counters`), and writes what changed since
its last save in one transaction (:func:`save_counters`).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, fields

from agw.store.engine import Store

__all__ = ["CounterRow", "delete_limit_counters", "load_counters", "save_counters"]


@dataclass(frozen=True, slots=True)
class CounterRow:
    """One subject's use of one limit in one window."""

    limit_id: str
    subject: str
    window: str
    """The limit's window spec when counted (``"1d"``, ``"month"``, ``"lifetime"``): a row whose
    limit now has another window is stale."""
    window_start: int
    """The start of the counted window, unix ms; 0 for ``lifetime``."""
    cost_usd: float
    total_tokens: int
    input_tokens: int
    output_tokens: int
    requests: int
    updated_at: int
    """Unix ms of the last change."""


_COLUMNS = tuple(f.name for f in fields(CounterRow))
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM limit_counters ORDER BY limit_id, subject"
_UPSERT = (
    f"INSERT INTO limit_counters ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)}) "
    "ON CONFLICT (limit_id, subject) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[2:])
)
_values = operator.attrgetter(*_COLUMNS)
_DELETE = "DELETE FROM limit_counters WHERE limit_id = ? AND subject = ?"


async def load_counters(db: Store) -> list[CounterRow]:
    """Every saved counter, by limit and subject."""
    async with db.conn.execute(_SELECT) as cur:
        found = await cur.fetchall()
    return [
        CounterRow(
            limit_id=str(r[0]),
            subject=str(r[1]),
            window=str(r[2]),
            window_start=int(r[3]),
            cost_usd=float(r[4]),
            total_tokens=int(r[5]),
            input_tokens=int(r[6]),
            output_tokens=int(r[7]),
            requests=int(r[8]),
            updated_at=int(r[9]),
        )
        for r in found
    ]


async def save_counters(
    db: Store, rows: Sequence[CounterRow], deleted: Sequence[tuple[str, str]] = ()
) -> None:
    """In one transaction: delete the (limit_id, subject) counters of ``deleted``, then insert
    ``rows``, each replacing the saved row of its (limit_id, subject). A pair in both ends up
    saved (a counter reset, then counted again before the save). Nothing to do: no transaction.
    """
    if not rows and not deleted:
        return
    async with db.transaction() as conn:
        if deleted:
            await conn.executemany(_DELETE, [(limit_id, subject) for limit_id, subject in deleted])
        if rows:
            await conn.executemany(_UPSERT, [_values(row) for row in rows])


async def delete_limit_counters(db: Store, limit_id: str, subject: str | None = None) -> None:
    """Forget the counters of limit ``limit_id``: every subject's, or ``subject``'s alone."""
    async with db.transaction() as conn:
        if subject is None:
            await conn.execute("DELETE FROM limit_counters WHERE limit_id = ?", (limit_id,))
        else:
            await conn.execute(_DELETE, (limit_id, subject))

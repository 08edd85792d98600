"""A tally's admission and settle as straight-line Python (agw/policy/limit_tally.py): the
code of one shape of charges (which meters each counter caps, which counters count requests
apart, which remaining amounts the route announces) is generated and compiled once per process,
and bound to a tally's counters by a closure. A cached list of charges then checks its tally is
current, reserves, finds its ``RateLimit`` values, makes its grant and later settles it in one
call each, without a loop, a tuple unpacked per meter, or a second read of what it just
computed; the generic loops in limit_backend.py stay for everything else (a stale tally, a
counter that cannot pay, an answer that used more than it held).

The generated source holds only integers (meters, bits, counter and slot indexes) written by
this module; every limit's figures (caps, warning levels, window ends, scales) and every list
reach it as closure values, never as text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from agw.policy.limit_types import REQUESTS

# the number of counters; per check (a capped meter of a counter): its meter, its counter's
# index, whether it has a warning level; the counters that count requests apart; per
# announced slot, (check index, the index of the counter whose window's end it tells, or -1)
Shape = tuple[
    int,
    tuple[int, ...],
    tuple[int, ...],
    tuple[bool, ...],
    tuple[int, ...],
    tuple[tuple[int, int], ...],
]
# admit(backend, fixed, per_output, want) -> a Grant, or None: stale, or a counter cannot pay
Admit = Callable[[Any, Sequence[float], Sequence[float], int], Any]
# quick(grant, cost_usd, input_tokens, output_tokens) -> whether it settled the grant
Quick = Callable[[Any, float, int, int], bool]
Factory = Callable[..., tuple[Admit, Quick]]

_FACTORIES: dict[Shape, Factory] = {}
SHAPES_KEPT = 512  # shapes compiled and kept (a config has a few; many configs over time: more)


def compiled(
    shape: Shape,
    used: Sequence[list[float]],
    held: Sequence[list[float]],
    caps: Sequence[float],
    levels: Sequence[float],
    ends: Sequence[float],
    scales: Sequence[float],
    bound: tuple[Any, ...],
) -> tuple[Admit, Quick]:
    """``admit`` and ``quick`` for counters with these ``used`` and ``held`` lists; ``caps``,
    ``levels`` per check, ``ends`` per counter, ``scales`` per slot; ``bound``: the tally's
    ``(generation, end, clock, charges, counters, tally, grant class, head template)`` (the
    template: the route's ``Announce.head``, when the slots are its own, else None).

    ``admit(backend, fixed, per_output, want)`` holds ``fixed + want * per_output`` on every
    counter and returns the :class:`~agw.policy.limit_grant.Grant` (with the warning bits, the
    announced values and, when nothing warned, their head lines), or None, holding nothing,
    when the tally is stale (another generation of ``backend``, or a window ended) or a
    counter cannot pay. ``quick(grant,
    cost_usd, input_tokens, output_tokens)`` settles a grant it made and returns True, or
    returns False, changing nothing, where the careful path must (the tally stale, the grant
    settled or marked by a limit, or the answer used more than it held on a capped meter)."""
    factory = _FACTORIES.get(shape)
    if factory is None:
        if len(_FACTORIES) >= SHAPES_KEPT:
            _FACTORIES.clear()
        factory = _FACTORIES[shape] = _factory(shape)
    return factory(
        tuple(used), tuple(held), tuple(caps), tuple(levels), tuple(ends), tuple(scales), *bound
    )


# what an answer used of each meter, in quick's names (in flight: nothing, it is held only)
_USED = ("cost", "t", "tin", "tout", "1.0", None)


def _factory(shape: Shape) -> Factory:
    counters, meters, owners, warns, apart, slots = shape
    lines = ["def make(U, H, C, L, E, S, GEN, END, clock, CH, CO, T, Grant, HEAD):"]
    for name, n in (("u", counters), ("h", counters), ("e", counters)):
        if n:
            lines.append(f"    {', '.join(f'{name}{i}' for i in range(n))}, = {name.upper()}")
    if meters:
        lines.append(f"    {', '.join(f'c{j}' for j in range(len(meters)))}, = C")
        lines.append(f"    {', '.join(f'l{j}' for j in range(len(meters)))}, = L")
    if slots:
        lines.append(f"    {', '.join(f's{k}' for k in range(len(slots)))}, = S")
    lines.append("    def admit(backend, fixed, per, want):")
    lines.append("        if backend.generation != GEN:")
    lines.append("            return None")
    lines.append("        now = clock()")
    lines.append("        if now >= END:")
    lines.append("            return None")
    hold = ", ".join(f"fixed[{m}] + want * per[{m}]" for m in range(6))
    lines.append(f"        hold = [{hold}]")
    for j, (m, i) in enumerate(zip(meters, owners, strict=True)):
        lines.append(f"        x{j} = hold[{m}]")
        lines.append(f"        a{j} = u{i}[{m}] + h{i}[{m}] + x{j}")
        lines.append(f"        if a{j} > c{j}:")
        for k in range(j):  # give back what was held before this one
            lines.append(f"            h{owners[k]}[{meters[k]}] -= x{k}")
        lines.append("            return None")
        lines.append(f"        h{i}[{m}] += x{j}")
    lines.append("        w = 0")
    for j, (i, warn) in enumerate(zip(owners, warns, strict=True)):
        if warn:
            lines.append(f"        if a{j} >= l{j}:")
            lines.append(f"            w |= {1 << i}")
    values = []
    for k, (j, timed) in enumerate(slots):
        i, m = owners[j], meters[j]  # what is left after this hold, as announced() says it
        left = f"int((c{j} - u{i}[{m}] - h{i}[{m}]) * s{k})"
        values.append(f"(v{k} if (v{k} := {left}) > 0 else 0)")
        if timed >= 0:
            values.append(f"ceil(e{timed} - now)")  # the tally is valid: its windows go on
    lines.append(f"        shown = ({''.join(v + ', ' for v in values)})")
    lines.append("        return Grant(")
    lines.append("            CH, CO, hold, want, None, None, now, w, False, T, backend,")
    lines.append("            fixed, per, None, None, shown, quick,")
    lines.append("            HEAD % shown if HEAD and not w else b'',")
    lines.append("        )")
    lines.append("    def quick(grant, cost, tin, tout):")
    lines.append("        backend = grant.backend")
    lines.append(
        "        if grant.settled or grant.action is not None or backend.generation != GEN:"
    )
    lines.append("            return False")
    lines.append("        if clock() >= END:")
    lines.append("            return False")
    lines.append("        hold = grant.held")
    if 1 in meters:
        lines.append("        t = tin + tout")
    for m in sorted({m for m in meters if m < 4}):  # used more than held: the careful path
        lines.append(f"        if {_USED[m]} > hold[{m}]:")
        lines.append("            return False")
    lines.append("        grant.settled = True")
    for m, i in zip(meters, owners, strict=True):
        lines.append(f"        h{i}[{m}] -= hold[{m}]")
        if _USED[m] is not None:
            lines.append(f"        u{i}[{m}] += {_USED[m]}")
    for i in apart:
        lines.append(f"        u{i}[{REQUESTS}] += 1.0")
    lines.append("        backend.dirty.update(CO)")
    lines.append("        return True")
    lines.append("    return admit, quick")
    namespace: dict[str, object] = {"ceil": math.ceil}
    exec(compile("\n".join(lines), f"<limits {shape!r}>", "exec"), namespace)
    factory = namespace["make"]
    assert callable(factory)
    return factory

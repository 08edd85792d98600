"""A tally's reserve and settle as straight-line Python (agw/policy/limit_tally.py): the code
of one shape of charges (which meters each counter caps, which counters count requests apart,
which remaining amounts the route announces) is generated and compiled once per process, and
bound to a tally's counters by a closure. A cached list of charges then reserves, finds its
``RateLimit`` values and settles without a loop, a tuple unpacked per meter, or a second read
of what it just computed; the generic loops in limit_backend.py stay for everything else.

The generated source holds only integers (meters, bits, counter and slot indexes) written by
this module; every limit's figures (caps, warning levels, window ends, scales) and every list
reach it as closure values, never as text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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
Reserve = Callable[[Sequence[float], float], "tuple[int, tuple[int, ...]] | None"]
Settle = Callable[[Sequence[float], Sequence[float]], None]
Factory = Callable[..., tuple[Reserve, Settle]]

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
) -> tuple[Reserve, Settle]:
    """``reserve(hold, now)`` and ``settle(hold, actual)`` for counters with these ``used`` and
    ``held`` lists; ``caps``, ``levels`` per check, ``ends`` per counter, ``scales`` per slot.

    ``reserve`` holds ``hold`` on every counter and returns (the warning bits, the announced
    values), or gives back what it held and returns None when a counter cannot pay."""
    factory = _FACTORIES.get(shape)
    if factory is None:
        if len(_FACTORIES) >= SHAPES_KEPT:
            _FACTORIES.clear()
        factory = _FACTORIES[shape] = _factory(shape)
    return factory(tuple(used), tuple(held), tuple(caps), tuple(levels), tuple(ends), tuple(scales))


def _factory(shape: Shape) -> Factory:
    counters, meters, owners, warns, apart, slots = shape
    lines = ["def make(U, H, C, L, E, S):"]
    for name, n in (("u", counters), ("h", counters), ("e", counters)):
        if n:
            lines.append(f"    {', '.join(f'{name}{i}' for i in range(n))}, = {name.upper()}")
    if meters:
        lines.append(f"    {', '.join(f'c{j}' for j in range(len(meters)))}, = C")
        lines.append(f"    {', '.join(f'l{j}' for j in range(len(meters)))}, = L")
    if slots:
        lines.append(f"    {', '.join(f's{k}' for k in range(len(slots)))}, = S")
    lines.append("    def reserve(hold, now):")
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
    lines.append(f"        return w, ({''.join(v + ', ' for v in values)})")
    lines.append("    def settle(hold, actual):")
    for m, i in zip(meters, owners, strict=True):
        lines.append(f"        h{i}[{m}] -= hold[{m}]")
        lines.append(f"        u{i}[{m}] += actual[{m}]")
    for i in apart:
        lines.append(f"        u{i}[{REQUESTS}] += actual[{REQUESTS}]")
    lines.append("        pass")
    lines.append("    return reserve, settle")
    namespace: dict[str, object] = {"ceil": math.ceil}
    exec(compile("\n".join(lines), f"<limits {shape!r}>", "exec"), namespace)
    factory = namespace["make"]
    assert callable(factory)
    return factory

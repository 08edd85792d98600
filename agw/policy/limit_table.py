"""The ``limits`` family compiled once per config for admission (agw/policy/limits.py): under
each route, the limits that may apply to its requests (a :class:`RouteLimits`), what is known of
them before a request (what it reserves, whether matching needs more than the subjects), and how
they are announced (the ``RateLimit-Policy`` value and the shape of ``RateLimit``)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from agw.config import families as f
from agw.config.limits import Limit, window_seconds
from agw.errors import Problem
from agw.head import lines
from agw.policy.limit_types import (
    CONCURRENT,
    COST,
    INPUT,
    METERS,
    NO_CAP,
    OUTPUT,
    REQUESTS,
    TOKENS,
    Charge,
    LimitSpec,
)
from agw.policy.limit_types import spec as limit_spec
from agw.policy.rules import RuleError, RuleSet, compile_rules

if TYPE_CHECKING:
    from agw.runtime.state import ConfigState

# how a meter is named to clients: RateLimit-Policy's quota unit and the error body
UNITS = (
    "usd-micros",
    "tokens",
    "input-tokens",
    "output-tokens",
    "requests",
    "concurrent-requests",
)
SCALE = (1_000_000, 1, 1, 1, 1, 1)  # quotas are integers: dollars in millionths


@dataclass(frozen=True, slots=True)
class CompiledLimit:
    spec: LimitSpec
    subject: str
    key_ids: frozenset[str]
    key_tags: frozenset[str]
    models: frozenset[str]
    provider_ids: frozenset[str]
    users: frozenset[str]
    orgs: frozenset[str]
    when: RuleSet | None
    plain: bool = False  # no match filter and no when: it applies when its subject has a value
    subject_ix: int = 0  # its subject's place in SUBJECTS


# what a limit may count per: the order of the subject values matching() builds
SUBJECTS = ("key", "user", "org", "route", "model", "session", "global")
KEYED = frozenset({"key", "route", "global"})  # of these, only the key's id varies on a route


@dataclass(frozen=True, slots=True)
class Announce:
    """A route's ``RateLimit-Policy`` value and the shape of its ``RateLimit`` value, for a
    request that every one of the route's limits charges (compiled once per config): per
    enforced limit and capped meter, a slot ``(charge index, meter, cap, scale, timed)`` whose
    remaining amount (and seconds to the reset, when timed) fill ``state``'s ``%d``s."""

    count: int  # the route's limits
    policy: tuple[bytes, bytes]  # the RateLimit-Policy header
    state: bytes  # the RateLimit value, a %d per slot value
    slots: tuple[tuple[int, int, float, int, bool], ...]
    head: bytes  # both fields as checked head lines (agw/head.py), the same %d's


@dataclass(frozen=True, slots=True)
class RouteLimits:
    """The limits that may apply to one route's requests, and what is known of them before a
    request: what a request that all of them charge reserves and announces."""

    limits: tuple[CompiledLimit, ...]
    when: bool  # some limit has a ``when``: matching needs the plane's CEL variable
    sessions: bool  # some limit counts per session
    sized: bool  # some limit caps dollars or tokens
    dollars: bool  # some limit caps dollars: the request's price is needed
    default_output: int  # the largest default_output_tokens of the sized limits
    announce: Announce
    plain: bool = False  # every limit is plain: which apply depends on the subjects' values only
    # plain, and counted per key, route or globally: the key's id is the only value that varies
    keyed: bool = False
    # routes without a when: the charges of each set of subject values seen, under that tuple
    # (the key's id alone on a keyed route; with the models and provider where a limit has a
    # match list: limits.matching); shared: never changed
    charges: dict[Hashable, list[Charge]] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class LimitTable:
    by_route: Mapping[str, RouteLimits]
    specs: Mapping[str, LimitSpec]


EMPTY_TABLE = LimitTable({}, {})


def spec_of(lim: Limit) -> LimitSpec:
    caps = [NO_CAP] * 6
    if lim.cost_usd is not None:
        caps[COST] = lim.cost_usd
    if lim.tokens is not None:
        for m, value in ((TOKENS, lim.tokens.total), (INPUT, lim.tokens.input)):
            if value is not None:
                caps[m] = float(value)
        if lim.tokens.output is not None:
            caps[OUTPUT] = float(lim.tokens.output)
    if lim.requests is not None:
        caps[REQUESTS] = float(lim.requests)
    if lim.concurrent is not None:
        caps[CONCURRENT] = float(lim.concurrent)
    spec = limit_spec(
        lim.id,
        tuple(caps),
        lim.window,
        window_seconds(lim.window),
        lim.enforce,
        lim.on_exceed,
        lim.min_output_tokens,
        lim.warn_at,
    )
    return replace(
        spec,
        policy=", ".join(policy_item(spec, m) for m in spec.capped),
        states=tuple(
            (m, f"{item_name(spec, m)};r=", SCALE[m], m != CONCURRENT) for m in spec.capped
        ),
        unpriced=lim.unpriced or "deny",
        default_output_tokens=lim.default_output_tokens,
        on_failure=lim.on_backend_failure or ("closed" if lim.cost_usd is not None else "open"),
    )


def compile_limits(state: ConfigState, problems: list[Problem]) -> LimitTable:
    """Each enabled limit, compiled, under each route it may apply to."""
    routes: list[tuple[str, str]] = []
    for family in (f.LLM_ROUTE, f.MCP_ROUTE, f.ACP_ROUTE, f.A2A_ROUTE):
        routes += [(rid, family.route_kind or "") for rid, _ in state.records(family)]
    by_route: dict[str, list[CompiledLimit]] = {}
    specs: dict[str, LimitSpec] = {}
    for lid, rec in state.records(f.LIMIT):
        lim: Limit = rec.obj
        if lim.disabled:
            continue
        when: RuleSet | None = None
        if lim.when:
            try:
                when = compile_rules([lim.when], [])
            except RuleError as exc:
                problems.append(Problem(f'{f.LIMIT.name} "{lid}".when', exc.message))
                continue
        spec = spec_of(lim)
        specs[lid] = spec
        m = lim.match
        compiled = CompiledLimit(
            spec,
            lim.subject,
            frozenset(m.key_ids),
            frozenset(m.key_tags),
            frozenset(m.models),
            frozenset(m.provider_ids),
            frozenset(m.users),
            frozenset(m.orgs),
            when,
            plain=not (
                m.key_ids or m.key_tags or m.models or m.provider_ids or m.users or m.orgs or when
            ),
            subject_ix=SUBJECTS.index(lim.subject),
        )
        kinds = set(m.route_kinds or ("llm", "mcp", "acp", "a2a"))
        if lim.subject == "model" or m.models or m.provider_ids:
            kinds &= {"llm"}  # only an LLM request has a model or a provider
            if not kinds:
                problems.append(
                    Problem(
                        f'{f.LIMIT.name} "{lid}".match',
                        "subject model, match.models and match.provider_ids apply to LLM "
                        "routes only, and match.route_kinds names none",
                    )
                )
                continue
        for rid, kind in routes:
            if m.route_ids and rid not in m.route_ids:
                continue
            if kinds and kind not in kinds:
                continue
            by_route.setdefault(rid, []).append(compiled)
    return LimitTable({rid: route_limits(tuple(v)) for rid, v in by_route.items()}, specs)


def route_limits(limits: tuple[CompiledLimit, ...]) -> RouteLimits:
    sized, dollars, default_output = sizes([lim.spec for lim in limits])
    return RouteLimits(
        limits,
        when=any(lim.when is not None for lim in limits),
        sessions=any(lim.subject == "session" for lim in limits),
        sized=sized,
        dollars=dollars,
        default_output=default_output,
        announce=announce_of([lim.spec for lim in limits]),
        plain=all(lim.plain for lim in limits),
        keyed=all(lim.plain and lim.subject in KEYED for lim in limits),
    )


def sizes(specs: list[LimitSpec]) -> tuple[bool, bool, int]:
    """What a request charged by ``specs`` reserves beyond one request: whether any caps
    dollars or tokens, whether any caps dollars (the model's price is needed), and the
    largest ``default_output_tokens`` of those (for a request without ``max_tokens``)."""
    sized = [spec for spec in specs if spec.sized]
    return (
        bool(sized),
        any(spec.caps[COST] != NO_CAP for spec in sized),
        max((spec.default_output_tokens for spec in sized), default=0),
    )


def announce_of(specs: list[LimitSpec]) -> Announce:
    policies: list[str] = []
    states: list[str] = []
    slots: list[tuple[int, int, float, int, bool]] = []
    for i, spec in enumerate(specs):
        if not spec.enforce:
            continue
        policies.append(spec.policy)
        resets = spec.window_s is not None or spec.window == "month"
        for m in spec.capped:
            timed = resets and m != CONCURRENT
            name = item_name(spec, m).replace("%", "%%")
            states.append(f"{name};r=%d;t=%d" if timed else f"{name};r=%d")
            slots.append((i, m, spec.caps[m], SCALE[m], timed))
    policy = (b"ratelimit-policy", ", ".join(policies).encode())
    state = ", ".join(states).encode()
    # item_name keeps the names printable ASCII, so the lines pass; the %d's stay as they are
    # (only digits fill them)
    head = lines([policy]).replace(b"%", b"%%") + lines([(b"ratelimit", state)])
    return Announce(len(specs), policy, state, tuple(slots), head)


def item_name(spec: LimitSpec, meter: int) -> str:
    """The limit's (and meter's) name as a structured-field string of the RateLimit fields
    (RFC 8941: printable ASCII): what such a string cannot hold (a backslash, a quote, a
    control character, a character past ASCII) left out."""
    name = spec.id if len(spec.capped) == 1 else f"{spec.id}/{METERS[meter]}"
    name = name.replace("\\", "").replace('"', "")
    if not (name.isascii() and name.isprintable()):
        name = "".join(ch for ch in name if " " <= ch <= "~")
    return '"' + name + '"'


def policy_item(spec: LimitSpec, meter: int) -> str:
    item = f"{item_name(spec, meter)};q={int(spec.caps[meter] * SCALE[meter])}"
    item += f';qu="{UNITS[meter]}"'
    if spec.window_s is not None:
        item += f";w={spec.window_s}"
    return item

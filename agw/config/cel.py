"""The CEL dialect of a route's ``authorization`` rules: the variables a rule may name, and how
one compiles (syntax and types).

The bundle models check every rule with :func:`check_rule` (so ``agw validate``, a bundle apply
and the admin API name ``llmRoutes[0].authorization.allow[0]``), and agw/policy/rules.py compiles
them with :func:`compile_rule` when the snapshot is built: one environment, one message for one
mistake. The engine is Google's C++ CEL (``cel-expr-python``), picked by measurement
(docs/performance.md, "CEL authorization (issue 14)"); the rules' reference is docs/security.md,
"Authorization rules (CEL)".

Every variable is a map of string keys to dynamic values: a rule is type-checked as far as that
allows (``1 + "a"``, an unknown variable, a result that cannot be a boolean are compile errors); a
missing key or a wrong type in the data is an evaluation error, which denies.
"""

from __future__ import annotations

from functools import cache, lru_cache
from typing import Any

# The variables of every evaluation (agw/policy/authz.py builds them)
VARIABLES = ("request", "jwt", "principal", "key", "session", "llm", "mcp", "acp", "a2a")
MAX_RULE_CHARS = 4096


class CelSyntaxError(ValueError):
    """A rule that does not compile: its text is not CEL, or not a boolean expression over the
    declared variables."""


@cache
def cel() -> Any:
    """The engine's module, imported on first use: a gateway without rules never loads it
    (about 7 MiB)."""
    from cel_expr_python import cel as module

    return module


@cache
def environment() -> Any:
    """The one CEL environment: the variables above, the standard library and the strings
    extension (``lowerAscii``, ``split``, ``replace``, ...). Built once, on first use."""
    from cel_expr_python.ext import ext_strings

    engine = cel()
    dyn_map = engine.Type.Map(engine.Type.STRING, engine.Type.DYN)
    return engine.NewEnv(
        variables=dict.fromkeys(VARIABLES, dyn_map), extensions=[ext_strings.ExtStrings()]
    )


def _message(exc: Exception) -> str:
    """The checker's message without its status prefix and the echo of the whole rule:
    ``ERROR: <input>:1:3: found no matching overload for '_+_' ...``."""
    text = str(exc).strip()
    for prefix in ("INVALID_ARGUMENT: ", "INVALID_ARGUMENT:"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    text = text.removesuffix("[INVALID_ARGUMENT]").strip().replace(" (in container '')", "")
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith(" |")]
    return " ".join(line.strip().removeprefix("ERROR: ").removeprefix("<input>:") for line in lines)


@lru_cache(maxsize=4096)
def compile_rule(text: str) -> Any:
    """``text`` compiled (a ``cel.Expression``: immutable, shared by every route and snapshot
    that has the same rule), or :class:`CelSyntaxError` saying why not."""
    if len(text) > MAX_RULE_CHARS:
        raise CelSyntaxError(f"a rule is at most {MAX_RULE_CHARS} characters")
    env = environment()
    try:
        expr = env.compile(text)
    except RuntimeError as exc:
        raise CelSyntaxError(f"invalid CEL: {_message(exc)}") from None
    result = expr.return_type()
    types = cel().Type
    if result != types.BOOL and result != types.DYN:
        raise CelSyntaxError(f"a rule must be a boolean expression (this one is {result.name()})")
    return expr


def check_rule(text: str) -> str:
    """``text`` stripped, when it compiles (the bundle models' validator)."""
    text = text.strip()
    if not text:
        raise ValueError("a rule must not be empty")
    compile_rule(text)
    return text

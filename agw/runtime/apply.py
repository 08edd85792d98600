"""Plan a bundle apply: per object create, update, skip or error, and with prune, delete.

The plan is a new :class:`ConfigState`; the manager compiles and commits it in one transaction,
so an apply is all or nothing, and an apply that changes nothing writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agw.config import families as f
from agw.config.bundle import Bundle
from agw.errors import ConfigInvalid
from agw.runtime.state import ConfigState, Record, dump, new_virtual_key, touched


@dataclass
class Action:
    kind: str
    id: str
    action: str  # create | update | skip | delete | error
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "id": self.id, "action": self.action}
        if self.error:
            out["error"] = self.error
        return out


def prepare(family: f.Family, obj: Any, current: Record | None) -> tuple[Any, list[str]]:
    """The object to store: stored secrets kept where it says ``<redacted>``, server-controlled
    fields kept. Returns the object and the secret paths that could not be restored."""
    data = dump(obj)
    missing = f.restore_redacted(family, data, dump(current.obj) if current else None)
    if family is f.AGENT:
        data["owns_service"] = bool(current and current.obj.owns_service)
    return family.model.model_validate(data), missing


def plan(state: ConfigState, bundle: Bundle, *, prune: bool) -> tuple[ConfigState, list[Action]]:
    actions: list[Action] = []
    new = state
    wanted: dict[str, set[str]] = {}
    for family in f.BUNDLE_FAMILIES:
        assert family.bundle_key is not None
        wanted[family.name] = set()
        for obj in getattr(bundle, family.bundle_key):
            oid = family.id_of(obj)
            wanted[family.name].add(oid)
            current = new.get(family, oid)
            obj, missing = prepare(family, obj, current)
            if missing:
                what = ", ".join(missing)
                actions.append(
                    Action(family.name, oid, "error", f"{what}: <redacted> but nothing stored")
                )
            elif current is None:
                key = new_virtual_key() if family is f.VIRTUAL_KEY else ""
                new = new.put(family, touched(None, obj, key=key))
                actions.append(Action(family.name, oid, "create"))
            elif current.same_config(obj):
                actions.append(Action(family.name, oid, "skip"))
            elif current.static:
                actions.append(
                    Action(family.name, oid, "error", "is read-only (defined in the static config)")
                )
            else:
                new = new.put(family, touched(current, obj))
                actions.append(Action(family.name, oid, "update"))
    if prune:
        present = bundle.model_fields_set
        for family in reversed(f.BUNDLE_FAMILIES):
            if family.bundle_key not in present:
                continue
            for oid, rec in state.records(family):
                if not rec.static and oid not in wanted[family.name]:
                    new = new.delete(family, oid)
                    actions.append(Action(family.name, oid, "delete"))
    return new, actions


def attach_problems(actions: list[Action], exc: ConfigInvalid) -> None:
    """Turn the problems a compile found into per-object error actions."""
    by_label = {f'{a.kind} "{a.id}"': a for a in actions}
    for problem in exc.problems:
        label = next((lb for lb in by_label if problem.path.startswith(lb)), None)
        detail = problem.path[len(label) :].lstrip(".") if label else problem.path
        message = f"{detail}: {problem.message}" if detail else problem.message
        if label is not None:
            action = by_label[label]
            action.error = f"{action.error}; {message}" if action.error else message
            action.action = "error"
        else:
            kind, _, rest = problem.path.partition(" ")
            oid = rest.split('"')[1] if rest.count('"') >= 2 else rest
            actions.append(Action(kind or "bundle", oid, "error", message))


def counts(actions: list[Action]) -> dict[str, int]:
    out = {"create": 0, "update": 0, "skip": 0, "delete": 0, "error": 0}
    for a in actions:
        out[a.action] += 1
    return out

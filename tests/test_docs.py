"""The reference pages tell the truth: every admin route, error code and bundle field is there."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from agw import errors
from agw.admin.app import create_admin_app
from agw.config import bundle as models
from agw.runtime.manager import ConfigManager

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"


def _normalise(path: str) -> str:
    return re.sub(r"<[^>]+>|\{[^}]+\}", "{}", path).rstrip("/")


def admin_routes() -> set[tuple[str, str]]:
    app = create_admin_app(ConfigManager(db=None), auth=None)  # type: ignore[arg-type]
    out = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                out.add((method, _normalise(rule.rule)))
    return out


def test_every_admin_route_is_documented() -> None:
    text = (DOCS / "reference" / "admin-api.md").read_text()
    documented = {
        (m, _normalise(p)) for m, p in re.findall(r"`(GET|POST|PUT|DELETE) (/admin[^`?\s]*)", text)
    }
    missing = sorted(admin_routes() - documented)
    assert not missing, f"admin routes missing from docs/reference/admin-api.md: {missing}"


def test_every_error_code_is_documented() -> None:
    text = (DOCS / "reference" / "admin-api.md").read_text()
    codes = {
        cls.code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.AgwError)
    }
    missing = sorted(c for c in codes if f"`{c}`" not in text)
    assert not missing, f"error codes missing from docs/reference/admin-api.md: {missing}"


def _fields(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[str]:
    if model in seen:
        return set()
    seen.add(model)
    names = set(model.model_fields)
    for field in model.model_fields.values():
        for arg in _types(field.annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                names |= _fields(arg, seen)
    return names


def _types(tp: object) -> list[object]:
    import typing

    args = typing.get_args(tp)
    return [tp] + [t for a in args for t in _types(a)] if args else [tp]


def test_every_bundle_field_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text()
    fields = _fields(models.Bundle, set()) - {"created_at", "updated_at"}
    missing = sorted(f for f in fields if f"`{f}`" not in text)
    assert not missing, f"bundle fields missing from docs/configuration.md: {missing}"

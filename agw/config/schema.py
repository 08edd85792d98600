"""The JSON Schema of a GatewayBundle, generated from the models.

Written to docs/reference/bundle.schema.json by scripts/gen-schema; a test keeps it fresh.
"""

from __future__ import annotations

import json
from typing import Any

from agw.config.bundle import Bundle


def bundle_schema() -> dict[str, Any]:
    schema = Bundle.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def bundle_schema_text() -> str:
    return json.dumps(bundle_schema(), indent=2, sort_keys=True) + "\n"

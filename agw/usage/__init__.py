"""L3: usage events, the non-blocking recorder that writes them, and their retention."""

from agw.usage.events import (
    AcpUsageEvent,
    LlmUsageEvent,
    McpUsageEvent,
    UsageEvent,
    new_event_id,
)
from agw.usage.recorder import UsageRecorder
from agw.usage.retention import RetentionJanitor, purge_older_than

__all__ = [
    "AcpUsageEvent",
    "LlmUsageEvent",
    "McpUsageEvent",
    "RetentionJanitor",
    "UsageEvent",
    "UsageRecorder",
    "new_event_id",
    "purge_older_than",
]

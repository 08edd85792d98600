"""L3: usage, what each request cost: recorded off the request path, then read back.

- ``events``: one value per request (the request's usage head plus the plane's own fields);
- ``recorder``: the non-blocking pipeline that bounds them, hands them to the taps and writes
  them (through ``agw.store.usage_repo``); ``retention`` deletes the old ones;
- ``accesslog``, ``prometheus``, ``taxonomy``: the taps and the error classes they share;
- ``measures``: the metric catalog; ``query``: the metrics API's parameters as typed queries;
  ``answers``: its answers (:class:`~agw.usage.answers.MetricsQuery`).

The package exports nothing itself (no ``__all__``): ``agwctl`` reads the catalog, and an
import here would load the event classes, or the store, into every CLI call. Import each noun
from its module (``from agw.usage.events import LlmUsageEvent``).
"""

"""The terminal charts of ``agwctl gateway metrics timeseries`` and ``agent usage``.

Plain text that reads the same without colour and fits the terminal's width: without a group,
one horizontal bar per bucket; with one, one sparkline row per group (every row on the same
scale). Empty buckets are gaps; buckets that do not fit are merged (sums added, averages
weighted by request count). Where stdout cannot print block characters, ASCII is drawn.
"""

import math
import shutil
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import typer

from agw.clock import now_ms
from agw.usage.measures import is_average
from agw.usage.query import parse_bucket
from agwctl import render

_MAX_SLOTS = 10_000  # a longer timeline is drawn from the buckets present only
MAX_BAR_ROWS = 48
MAX_GROUPS = 12


def bucket_width_ms(bucket: object) -> int | None:
    """The width of a bucket spelled as the admin API accepts it (``hour``, ``5m``, ``1.5d``:
    the gateway's own parser), or given in milliseconds; None when unknown."""
    if isinstance(bucket, int) and not isinstance(bucket, bool) and bucket > 0:
        return bucket
    if not isinstance(bucket, str):
        return None
    return parse_bucket(bucket.strip().lower())


@dataclass(frozen=True)
class Glyphs:
    full: str
    parts: str  # index i: a bar end i/8 of a cell wide (index 0 unused)
    levels: str  # sparkline heights, lowest first
    zero: str
    ellipsis: str
    arrow: str


UNICODE = Glyphs("█", " ▏▎▍▌▋▊▉", "▁▂▃▄▅▆▇█", "·", "…", "→")
ASCII = Glyphs("#", "        ", ":-=+*#%@", ".", "~", "->")


def glyphs() -> Glyphs:
    """Block characters when stdout can encode them, ASCII otherwise."""
    try:
        "█▁·…→".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return ASCII
    return UNICODE


def chart_width() -> int:
    return max(40, min(160, shutil.get_terminal_size((100, 24)).columns))


def number(value: float | None) -> str:
    """A chart figure: thousands separated, averages to one decimal, missing as ``-``."""
    if value is None:
        return "-"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.1f}"


def _label(value: object, limit: int, g: Glyphs) -> str:
    text = render.cell(value)
    return text if len(text) <= limit else text[: limit - len(g.ellipsis)] + g.ellipsis


def _time_label(ms: int, width_ms: int | None) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    if width_ms and width_ms % 86_400_000 == 0:
        return moment.strftime("%Y-%m-%d")
    if width_ms and width_ms % 60_000 == 0:
        return moment.strftime("%Y-%m-%d %H:%M")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _value(item: Mapping[str, Any], measure: str) -> float | None:
    value = item.get(measure)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _weight(item: Mapping[str, Any]) -> float:
    value = item.get("request_count")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 1.0


Cell = tuple[float | None, float]  # (value, weight for averages)


def _combine(cells: Sequence[Cell], average: bool) -> Cell:
    present = [(v, w) for v, w in cells if v is not None]
    if not present:
        return None, 0.0
    weight = sum(w for _, w in present)
    if not average:
        return sum(v for v, _ in present), weight
    if weight > 0:
        return sum(v * w for v, w in present) / weight, weight
    return sum(v for v, _ in present) / len(present), 0.0


def timeline(
    buckets: Sequence[int], width_ms: int | None, start_ms: int | None, end_ms: int | None
) -> list[int]:
    """Every bucket from the first to the last (or from ``start_ms`` to ``end_ms`` when the
    query gave them), so that quiet hours show as gaps; the buckets present when the width is
    unknown or the timeline would be too long."""
    present = sorted(set(buckets))
    if not width_ms:
        return present
    lo = [b for b in (*present[:1], start_ms) if b is not None]
    hi = [b for b in (*present[-1:], end_ms) if b is not None]
    if not lo or not hi:
        return present
    first_slot = min(lo) // width_ms * width_ms
    last_slot = max(hi) // width_ms * width_ms
    count = (last_slot - first_slot) // width_ms + 1
    if count > _MAX_SLOTS or count < 1:
        return present
    slots = [first_slot + i * width_ms for i in range(count)]
    if any((b - first_slot) % width_ms for b in present):  # the gateway's grid differs
        return present
    return slots


@dataclass(frozen=True)
class _Frame:
    """What every row of one chart shares."""

    slots: Sequence[int]
    measure: str
    bucket: str
    width_ms: int | None
    width: int
    average: bool
    g: Glyphs

    def title(self, by: str, merged: str, figures: str) -> list[str]:
        """The chart's heading, wrapped to the chart's width."""
        by = f" by {by}" if by else ""
        text = f"{self.measure} per {self.bucket}{by} (UTC){merged}: {figures}"
        return textwrap.wrap(text, self.width, break_on_hyphens=False)

    def span(self) -> tuple[str, str]:
        return _time_label(self.slots[0], self.width_ms), _time_label(self.slots[-1], self.width_ms)


def chart(
    items: Sequence[Mapping[str, Any]],
    measure: str,
    *,
    bucket: str,
    group_by: str | None = None,
    width_ms: int | None = None,
    start_ms: int | None = None,
    end_ms: int | None = None,
    width: int | None = None,
    g: Glyphs | None = None,
) -> list[str]:
    """The chart of timeseries ``items`` (the admin API's rows) as lines of text at most
    ``width`` characters wide. Missing buckets count as zero; when there are more buckets than
    fit, neighbours are merged (summed; averages weighted by request count)."""
    rows: dict[str, dict[int, Cell]] = {}
    labels: dict[str, object] = {}
    stamps: list[int] = []
    for item in items:
        ms = item.get("bucket_ms")
        if not isinstance(ms, int) or isinstance(ms, bool):
            continue
        key = render.cell(item.get("group_value")) if group_by else ""
        labels.setdefault(key, item.get("group_value"))
        rows.setdefault(key, {})[ms] = (_value(item, measure), _weight(item))
        stamps.append(ms)
    if not stamps:
        return [f"(no {measure} to chart in this window)"]
    frame = _Frame(
        slots=timeline(stamps, width_ms, start_ms, end_ms),
        measure=measure,
        bucket=bucket,
        width_ms=width_ms,
        width=width or chart_width(),
        average=is_average(measure),
        g=g or glyphs(),
    )
    if group_by:
        return _sparklines(frame, rows, labels, group_by)
    return _bars(frame, rows[""])


def _merge(
    values: Mapping[int, Cell], slots: Sequence[int], per: int, average: bool
) -> list[tuple[int, float | None]]:
    out = []
    for i in range(0, len(slots), per):
        chunk = slots[i : i + per]
        out.append((chunk[0], _combine([values.get(s, (None, 0.0)) for s in chunk], average)[0]))
    return out


def _bar(value: float | None, top: float | None, cells: int, g: Glyphs) -> str:
    if not value or value <= 0 or not top or top <= 0:
        return ""
    eighths = max(1, round(value / top * cells * 8))
    if g is ASCII:
        return g.full * max(1, round(eighths / 8))
    full, part = divmod(eighths, 8)
    return g.full * full + (g.parts[part] if part else "")


def _bars(frame: _Frame, values: Mapping[int, Cell]) -> list[str]:
    per = math.ceil(len(frame.slots) / MAX_BAR_ROWS)
    merged = _merge(values, frame.slots, per, frame.average)
    figures = [number(v if v is not None or frame.average else 0.0) for _, v in merged]
    present = [v for _, v in merged if v is not None]
    top = max(present, default=None)
    labels = [_time_label(ms, frame.width_ms) for ms, _ in merged]
    label_w = max(len(s) for s in labels)
    figure_w = max(len(s) for s in figures)
    cells = max(10, frame.width - label_w - figure_w - 4)
    merged_text = f" (each row {per} buckets)" if per > 1 else ""
    figures_text = f"max {number(top)}"
    if not frame.average:
        figures_text += f", total {number(sum(present))}"
    lines = frame.title("", merged_text, figures_text)
    for label, figure, (_, value) in zip(labels, figures, merged, strict=True):
        bar = _bar(value, top, cells, frame.g)
        lines.append(f"{label:<{label_w}}  {bar:<{cells}}  {figure:>{figure_w}}".rstrip())
    return lines


def _sparklines(
    frame: _Frame,
    rows: Mapping[str, Mapping[int, Cell]],
    labels: Mapping[str, object],
    group_by: str,
) -> list[str]:
    g = frame.g
    summaries = {
        key: _combine(list(cells.values()), frame.average)[0] for key, cells in rows.items()
    }
    order = sorted(rows, key=lambda k: (-(summaries[k] or 0.0), k))
    shown, hidden = order[:MAX_GROUPS], order[MAX_GROUPS:]
    names = {k: _label(labels[k], max(6, min(24, frame.width // 4)), g) for k in shown}
    label_w = max(len(n) for n in names.values())
    word = "avg" if frame.average else "total"
    figures = {k: f"{word} {number(summaries[k])}" for k in shown}
    figure_w = max(len(s) for s in figures.values())
    cols = max(10, frame.width - label_w - figure_w - 4)
    per = math.ceil(len(frame.slots) / cols)
    # few buckets: each one several characters wide (at most 4), so the row reads as a shape
    stretch = max(1, min(4, cols // len(frame.slots))) if per == 1 else 1
    merged = {k: _merge(rows[k], frame.slots, per, frame.average) for k in shown}
    top = max((v for k in shown for _, v in merged[k] if v is not None), default=None)
    merged_text = f" (each column {per} buckets)" if per > 1 else ""
    figures_text = f"max {number(top)} per " + ("column" if per > 1 else "bucket")
    lines = frame.title(group_by, merged_text, figures_text)
    spark_w = 0
    for key in shown:
        spark = "".join(_level(v, top, g) * stretch for _, v in merged[key])
        spark_w = len(spark)
        lines.append(
            f"{names[key]:<{label_w}}  {spark:<{cols}}  {figures[key]:>{figure_w}}".rstrip()
        )
    # an axis under the rows: the first bucket's time at the left, the last one's at the right
    first_, last = frame.span()
    if spark_w >= len(first_) + len(last) + 2:
        gap = " " * (spark_w - len(first_) - len(last))
        lines.append(f"{'':<{label_w}}  {first_}{gap}{last}")
    else:
        axis = f"{first_} {g.arrow} {last}"
        indent = label_w + 2 if label_w + 2 + len(axis) <= frame.width else 0
        lines.append(" " * indent + axis)
    if hidden:
        lines.append(f"(+{len(hidden)} more groups; narrow the query with --filter)")
    return lines


def _level(value: float | None, top: float | None, g: Glyphs) -> str:
    if not value or value <= 0 or not top or top <= 0:
        return g.zero
    index = math.ceil(value / top * len(g.levels)) - 1
    return g.levels[max(0, min(len(g.levels) - 1, index))]


def ms_of(rfc: str | None) -> int | None:
    if rfc is None:
        return None
    return int(datetime.fromisoformat(rfc).timestamp() * 1000)


def print_chart(
    data: Mapping[str, Any],
    items: Sequence[dict[str, Any]],
    measure: str,
    *,
    requested_bucket: str | None,
    group_by: str | None,
    params: Mapping[str, str],
) -> None:
    bucket = data.get("bucket") or requested_bucket or "hour"
    width_ms = bucket_width_ms(bucket) or bucket_width_ms(requested_bucket or "hour")
    start = ms_of(params.get("from"))
    end = ms_of(params.get("to"))
    if start is not None and end is None:
        end = now_ms()
    bucket_text = bucket if isinstance(bucket, str) else f"{bucket} ms"
    typer.echo("")
    lines = chart(
        items,
        measure,
        bucket=bucket_text,
        group_by=group_by,
        width_ms=width_ms,
        start_ms=start,
        end_ms=end,
    )
    typer.echo("\n".join(lines))

"""Stacked bar charts as plain geometry; the templates draw them as inline SVG (no JavaScript)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

__all__ = ["Chart", "format_money", "stacked_bars"]

#: Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")
OTHER_COLOUR = "#999999"
MAX_SERIES = len(PALETTE)


def format_money(value: float) -> str:
    """USD with enough decimals to show small per-request costs: $0.000414, $1.25, $1,234."""
    if value == 0:
        return "$0"
    if abs(value) >= 1000:
        return f"${value:,.0f}"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    decimals = min(8, max(2, 1 - math.floor(math.log10(abs(value))) + 1))
    text = f"{value:.{decimals}f}".rstrip("0")
    if len(text.split(".")[1]) < 2:
        text = f"{value:.2f}"
    return f"${text}"


def format_count(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,.2f}"


def _nice_ticks(maximum: float, integer: bool) -> list[float]:
    """0 up to a round number at or above `maximum`, in 3 to 6 round steps."""
    if maximum <= 0:
        return [0.0, 1.0]
    raw = maximum / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1.0, math.ceil(step))
    top = step * math.ceil(maximum / step - 1e-9)
    count = round(top / step)
    return [i * step for i in range(count + 1)]


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str


@dataclass
class Chart:
    title: str
    width: int
    height: int
    left: int
    top: int
    plot_width: float
    plot_height: float
    bars: list[Bar] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    x_labels: list[tuple[float, str]] = field(default_factory=list)
    legend: list[tuple[str, str, str]] = field(default_factory=list)  # name, colour, total
    total: str = ""
    empty: bool = True

    @property
    def baseline(self) -> float:
        return self.top + self.plot_height

    @property
    def right(self) -> float:
        return self.left + self.plot_width


def _group(series: dict[str, list[float]]) -> list[tuple[str, list[float], str]]:
    """The largest series by total, each with a colour; the rest summed into 'other'."""
    ranked = sorted(series.items(), key=lambda item: (-sum(item[1]), item[0]))
    ranked = [(name, values) for name, values in ranked if sum(values) > 0]
    if len(ranked) <= MAX_SERIES:
        return [(name, values, PALETTE[i]) for i, (name, values) in enumerate(ranked)]
    shown = ranked[: MAX_SERIES - 1]
    rest = ranked[MAX_SERIES - 1:]
    other = [sum(values[i] for _, values in rest) for i in range(len(rest[0][1]))]
    grouped = [(name, values, PALETTE[i]) for i, (name, values) in enumerate(shown)]
    return [*grouped, (f"{len(rest)} others", other, OTHER_COLOUR)]


def stacked_bars(
    title: str,
    bucket_starts: list[float],
    series: dict[str, list[float]],
    *,
    money: bool,
    bucket_format: str,
    label_every: int = 1,
    width: int = 520,
    height: int = 210,
) -> Chart:
    """One bar per bucket, stacked by series. `bucket_format` is a strftime format (UTC)."""
    left, top, bottom, right_margin = 64, 10, 26, 8
    chart = Chart(title, width, height, left, top, width - left - right_margin, height - top - bottom)
    fmt = format_money if money else format_count
    groups = _group(series)
    buckets = len(bucket_starts)
    stacks = [sum(values[i] for _, values, _ in groups) for i in range(buckets)]
    ticks = _nice_ticks(max(stacks, default=0.0), integer=not money)
    scale = chart.plot_height / ticks[-1]
    chart.y_ticks = [(chart.baseline - t * scale, fmt(t)) for t in ticks]
    slot = chart.plot_width / max(1, buckets)
    labels = [time.strftime(bucket_format, time.gmtime(start)) for start in bucket_starts]
    full = [time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(start)) for start in bucket_starts]
    for i in range(buckets):
        x = left + i * slot
        if i % label_every == 0:
            chart.x_labels.append((x + slot / 2, labels[i]))
        y = chart.baseline
        for name, values, colour in groups:
            value = values[i]
            if value <= 0:
                continue
            h = value * scale
            y -= h
            chart.bars.append(Bar(x + slot * 0.15, y, slot * 0.7, h, colour, f"{full[i]}: {name}: {fmt(value)}"))
    chart.legend = [(name, colour, fmt(sum(values))) for name, values, colour in groups]
    grand = sum(stacks)
    chart.total = fmt(grand)
    chart.empty = grand <= 0
    return chart

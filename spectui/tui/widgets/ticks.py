"""Axis ticks that read at a glance, for every plot: whole numbers for ranks, steps and counts; at
most three significant figures elsewhere; log axes fitted to the data with 1-2-5 marks. Horizontal
labels are spaced so that they never touch, whatever the width (a terminal, or a browser through
`--serve`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

_NICE = (1.0, 2.0, 2.5, 5.0)
_NICE_INTEGER = (1.0, 2.0, 5.0)


@dataclass(frozen=True)
class Axis:
    """Limits to give the plot and the ticks to draw, in the plot's coordinates (log10 of the
    value on a log axis), with their labels."""

    low: float
    high: float
    ticks: tuple[float, ...]
    labels: tuple[str, ...]


def label(value: float, step: float | None = None, integer: bool = False) -> str:
    """A tick's text: a whole number, or at most three significant figures, with no more
    decimals than the step between ticks needs."""
    whole = value == round(value) and abs(value) < 1e6
    if integer or (whole and (step is None or step >= 1)):
        return str(int(round(value)))
    if step is not None and (value == 0 or 1e-3 <= abs(value) < 1e4) and step >= 1e-3:
        decimals = max(0, -math.floor(math.log10(step) + 1e-9))
        if abs(step * 10**decimals - round(step * 10**decimals)) > 1e-6:
            decimals += 1  # 2.5, 0.25: one digit more
        if value:
            digits = max(1, math.floor(math.log10(abs(value))) + 1)
            decimals = min(decimals, max(0, 3 - digits))
        elif decimals > 3:  # zero among steps too fine for decimals: the others are written 5e-11
            return "0"
        return f"{value:.{decimals}f}"
    text = f"{value:.3g}"
    return text.replace("e-0", "e-").replace("e+0", "e").replace("e+", "e")


def _nice_steps(raw: float, integer: bool):
    """Nice steps from the first at least `raw`, growing."""
    raw = max(raw, 1.0 if integer else 1e-300)
    exponent = math.floor(math.log10(raw))
    while True:
        for mantissa in (_NICE_INTEGER if integer else _NICE):
            step = mantissa * 10**exponent
            if step >= raw * (1 - 1e-9) and (not integer or step >= 1):
                yield step
        exponent += 1


def _fits(ticks: list[float], labels: list[str], low: float, high: float, cells: int, horizontal: bool) -> bool:
    """Whether neighbouring labels keep apart: a space between horizontal ones, a row between
    vertical ones."""
    if len(ticks) < 2:
        return True
    per_unit = cells / (high - low) if high > low else 0
    gap = (ticks[1] - ticks[0]) * per_unit
    if horizontal:
        return gap >= max(len(text) for text in labels) + 2
    return gap >= 2


def linear_axis(low: float, high: float, cells: int, *, integer: bool = False, horizontal: bool = True,
                limits: tuple[float, float] | None = None) -> Axis:
    """Ticks between `low` and `high` (the data's range) for an axis `cells` long. `integer` keeps
    every tick a whole number. The limits are the data's range unless given."""
    if not (math.isfinite(low) and math.isfinite(high)):
        low, high = 0.0, 1.0
    if high < low:
        low, high = high, low
    if high == low:
        pad = 1.0 if integer or low == 0 else abs(low) * 0.1
        low, high = (max(0.0, low - pad) if low >= 0 else low - pad), high + pad
    lo, hi = limits or (low, high)
    cells = max(cells, 4)
    target = max(2, cells // 6 if horizontal else min(cells // 3, 8))
    for step in _nice_steps((high - low) / target, integer):
        first = math.ceil(low / step - 1e-9) * step
        ticks = []
        value = first
        while value <= high + step * 1e-9:
            ticks.append(0.0 if abs(value) < step * 1e-9 else value)
            value = first + len(ticks) * step
        labels = [label(t, step, integer) for t in ticks]
        if _fits(ticks, labels, lo, hi, cells, horizontal) or len(ticks) <= 2:
            if len(ticks) == 2 and not _fits(ticks, labels, lo, hi, cells, horizontal):
                ticks, labels = ticks[:1], labels[:1]
            return Axis(lo, hi, tuple(ticks), tuple(labels))
    raise AssertionError("unreachable")  # pragma: no cover


def log_axis(low: float, high: float, cells: int, *, horizontal: bool = False) -> Axis:
    """Ticks for positive values from `low` to `high` on a log scale, in log10 coordinates (plot
    log10 of the data): 1-2-5 marks within decades when there is room, every n-th decade when there
    is not, plain steps when the data spans less than a decade. The limits hug the data."""
    low, high = max(low, 1e-300), max(high, 1e-300)
    if high < low:
        low, high = high, low
    if high == low:
        low, high = low / 2, high * 2
    lo, hi = math.log10(low), math.log10(high)
    pad = min((hi - lo) * 0.03, 0.1)  # at most a factor 1.26 beyond the data
    lo, hi = lo - pad, hi + pad
    cells = max(cells, 4)
    target = max(2, cells // 6 if horizontal else min(cells // 3, 8))
    candidates = []
    for mantissas in ((1, 2, 5), (1, 3), (1,)):
        candidates.append([m * 10.0**e for e in range(math.floor(lo) - 1, math.ceil(hi) + 2) for m in mantissas])
    for every in (2, 3, 5, 10, 20, 50):
        candidates.append([10.0**e for e in range(math.floor(lo) - 1, math.ceil(hi) + 2) if e % every == 0])
    best = None
    for values in candidates:
        inside = [v for v in values if lo - 1e-9 <= math.log10(v) <= hi + 1e-9]
        labels = [label(v) for v in inside]
        positions = [math.log10(v) for v in inside]
        if len(inside) > target or not _fits_all(positions, labels, lo, hi, cells, horizontal):
            continue
        if len(inside) >= 2:
            return Axis(lo, hi, tuple(positions), tuple(labels))
        best = best or (positions, labels)
    # less than a decade (or nothing fitted): plain steps of the values, placed on the log scale
    linear = linear_axis(low, high, cells, horizontal=horizontal)
    inside = [v for v in linear.ticks if v > 0]
    if len(inside) >= 2 or best is None:
        positions = [math.log10(v) for v in inside]
        labels = [text for v, text in zip(linear.ticks, linear.labels) if v > 0]
        if _fits_all(positions, labels, lo, hi, cells, horizontal):
            return Axis(lo, hi, tuple(positions), tuple(labels))
        return Axis(lo, hi, tuple(positions[::2]), tuple(labels[::2]))
    return Axis(lo, hi, tuple(best[0]), tuple(best[1]))


def _fits_all(positions: list[float], labels: list[str], low: float, high: float, cells: int,
              horizontal: bool) -> bool:
    """Like `_fits`, for unevenly spaced ticks (a log axis): every neighbouring pair keeps apart."""
    per_unit = cells / (high - low) if high > low else 0
    for (a, text_a), (b, text_b) in zip(zip(positions, labels), zip(positions[1:], labels[1:])):
        gap = (b - a) * per_unit
        need = (len(text_a) + len(text_b)) / 2 + 2 if horizontal else 2
        if gap < need:
            return False
    return True

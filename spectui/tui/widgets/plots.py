"""Plots drawn with plotext: the intruders-vs-ε curve (paper Fig. 4) and singular value spectra."""

from __future__ import annotations

import math

from rich.text import Text
from textual_plotext import PlotextPlot

SERIES_COLORS = ("cyan", "magenta", "green", "yellow", "blue", "white")
TOO_SMALL = Text("(enlarge the terminal to see the plot)", style="dim")


class Plot(PlotextPlot):
    """A plotext plot redrawn from its data on every render: plotext rescales (log axes) in place
    while building, so a figure built twice would be wrong. Subclasses implement `draw(plt, ...)`;
    `show(...)` stores its arguments. plotext raises when its canvas is smaller than its legend and
    axes: a note is shown instead."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._data: tuple[tuple, dict] | None = None

    def show(self, *args, **kwargs) -> None:
        self._data = (args, kwargs)
        self.refresh()

    def render(self):
        if self._data is None:
            return Text("")
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        args, kwargs = self._data
        self.draw(plt, *args, **kwargs)
        try:
            return super().render()
        except (IndexError, ValueError, ZeroDivisionError, OverflowError):
            return TOO_SMALL


class CurvePlot(Plot):
    """Totals of several tuned models against one threshold (ε: paper Fig. 4; k: Fig. 15)."""

    def draw(self, plt, xs: list[float], curves: list[tuple[str, list[int]]], title: str, xlabel: str,
             mark: float | None = None) -> None:
        plt.title(title)
        plt.xlabel(xlabel)
        for (label, totals), color in zip(curves, SERIES_COLORS):
            plt.plot(xs, totals, label=label, color=color, marker="braille")
        if mark is not None:
            plt.vline(mark, color="red")


class SpectrumPlot(Plot):
    """Base and tuned singular values on one log scale, intruders marked at their rank; `extra`
    series (the spectrum after mitigation, other tuned models) drawn on the same axes."""

    def draw(self, plt, sigma_base, sigma_tuned, intruder_ranks: list[int], title: str,
             extra: list[tuple[str, object]] = ()) -> None:
        plt.title(title)
        plt.xlabel("rank")
        plt.yscale("log")
        series = [("base σ", sigma_base), ("tuned σ", sigma_tuned), *extra]
        top = max(max(float(sigma[0]) for _, sigma in series), 1e-30)
        floor = top * 1e-12
        bottom = max(min(float(sigma[-1]) for _, sigma in series), floor)
        low, high = math.log10(bottom / 1.5), math.log10(top * 1.5)  # plotext takes log limits in log10
        plt.ylim(low, high + self._legend_headroom(high - low, len(series) + bool(intruder_ranks)))
        for (label, sigma), color in zip(series, ("cyan", "magenta", "green", "yellow", "blue", "white")):
            plt.plot([max(float(s), floor) for s in sigma], label=label, color=color, marker="braille")
        if intruder_ranks:
            # plotext x positions start at 1 for plot(y); ranks are 0-based
            plt.scatter([r + 1 for r in intruder_ranks], [float(sigma_tuned[r]) for r in intruder_ranks],
                        label="intruder", color="red", marker="x")


    # rows plotext spends outside the canvas: title, x ticks, x label and the frame
    _MARGIN_ROWS = 5

    def _legend_headroom(self, decades: float, legend_rows: int) -> float:
        """Decades added above the data so that the legend (top left, one row per series) sits
        above the largest σ at any height of the widget."""
        canvas = max(self.size.height - self._MARGIN_ROWS, 1)
        share = min((legend_rows + 0.5) / canvas, 0.75)
        return decades * share / (1 - share)


class TradeoffPlot(Plot):
    """Reference (forgetting) and task loss against λ: the paper's Fig. 8 trade-off."""

    def draw(self, plt, lambdas: list[float], reference: list[float], task: list[float] | None) -> None:
        plt.title("loss vs λ")
        plt.xlabel("λ")
        plt.plot(lambdas, reference, label="reference (forgetting)", color="cyan", marker="braille")
        if task:
            plt.plot(lambdas, task, label="task", color="magenta", marker="braille")

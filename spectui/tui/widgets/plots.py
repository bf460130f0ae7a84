"""Plots drawn with plotext: the intruders-vs-ε and -k curves (paper Fig. 4, 15), singular value
spectra, the λ trade-off (Fig. 8).

Every plot is a `Figure` (series, axes, a marked threshold) drawn by `Plot`, so that all of them
read the same way: each series has its own marker as well as its own colour (the legend shows
both), so they stay apart in 16-colour terminals and with NO_COLOR, where every series takes the
terminal's own foreground; intruders are red crosses and the chosen threshold (ε, k, λ) a
vertical line in a colour no series has. Ticks come from `ticks.py`. The legend is a line of text
above the canvas, so it never covers data and never needs room made for it on the axes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from rich.text import Text
from textual_plotext import PlotextPlot

from spectui.tui.widgets.ticks import Axis, linear_axis, log_axis

TOO_SMALL = Text("(enlarge the terminal to see the plot)", style="dim")


@dataclass(frozen=True)
class Look:
    """How one series is drawn: a plotext marker and an RGB colour, and its legend sample."""

    marker: str
    color: tuple[int, int, int]
    sample: str


# Distinct glyphs first, colours second: each colour falls on a different one of the 16 standard
# colours (cyan, yellow, green, blue, magenta), none of them red (intruders) or white (the mark).
SERIES = (
    Look("braille", (0, 200, 230), "⠒⠒"),
    Look("•", (230, 200, 0), "••"),
    Look("+", (60, 200, 60), "++"),
    Look("o", (70, 110, 255), "oo"),
    Look("*", (220, 60, 220), "**"),
    Look("=", (0, 200, 230), "=="),
)
INTRUDER = Look("x", (255, 50, 50), "×")
MARK = Look("│", (235, 235, 235), "│")
MIN_CANVAS_ROWS = 3


@dataclass
class Series:
    label: str | None
    xs: Sequence[float]
    ys: Sequence[float]
    look: Look
    scatter: bool = False
    z: int = 0  # drawing order (higher: on top), else legend order; one below shows where it differs


@dataclass
class Figure:
    """What a plot shows; `Plot` turns it into plotext calls."""

    title: str
    xlabel: str
    series: list[Series] = field(default_factory=list)
    x_integer: bool = False  # ranks, k, steps: whole-number ticks
    y_integer: bool = False  # counts
    y_log: bool = False  # ys are positive and drawn on a log scale
    y_from_zero: bool = False
    mark: tuple[str, float] | None = None  # (legend text, x) of the chosen threshold
    categories: tuple[str, ...] = ()  # x names its points (ranks r1 … full, stages): xs are 0, 1, …

    def add(self, label: str | None, xs: Sequence[float], ys: Sequence[float], *, scatter: bool = False,
            look: Look | None = None, z: int = 0) -> None:
        plain = [s for s in self.series if s.look not in (INTRUDER, MARK)]
        self.series.append(Series(label, list(xs), list(ys), look or SERIES[len(plain) % len(SERIES)], scatter, z))


class Plot(PlotextPlot):
    """A plotext plot redrawn from its data on every render. Subclasses implement
    `figure(...) -> Figure`; `show(...)` stores its arguments. plotext raises when its canvas is
    smaller than its axes: a note is shown instead."""

    EMPTY = ""  # what the plot says before it has data
    figure: Callable[..., Figure]  # each kind of plot draws its own

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._data: tuple[tuple, dict] | None = None

    def show(self, *args, **kwargs) -> None:
        self._data = (args, kwargs)
        self.refresh()

    @property
    def current(self) -> Figure | None:
        """The figure as it is drawn now (for tests and the legend)."""
        if self._data is None:
            return None
        args, kwargs = self._data
        return self.figure(*args, **kwargs)

    def render(self):
        figure = self.current
        if figure is None:
            return Text(self.EMPTY, style="dim")
        width, height = self.size
        legend = self.legend(figure, width)
        rows = height - len(legend)
        if rows < MIN_CANVAS_ROWS + 5 or width < 16:
            return TOO_SMALL
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.plotsize(width, rows)
        plt._set_size(width, rows)  # see textual_plotext's render: both are needed
        plt.theme(self._get_plotext_theme_name(self.app.theme))
        try:
            self._draw(plt, figure, width, rows)
            canvas = Text.from_ansi(plt.build())
        except (IndexError, ValueError, ZeroDivisionError, OverflowError):
            return TOO_SMALL
        return Text("\n").join([*legend, canvas])

    # -- drawing ------------------------------------------------------------------------------
    def _color(self, look: Look):
        return "default" if self.app.no_color else look.color

    def _draw(self, plt, figure: Figure, width: int, rows: int) -> None:
        drawn = [s for s in figure.series if len(s.xs)]
        xs = [float(x) for s in drawn for x in s.xs]
        ys = [float(y) for s in drawn for y in s.ys]
        if figure.mark is not None:
            xs.append(float(figure.mark[1]))
        if figure.categories:  # every named point on the axis, measured or not yet
            xs += [0.0, len(figure.categories) - 1.0]
        if not xs:
            xs, ys = [0.0, 1.0], [0.0, 1.0]
        canvas_rows = rows - 2 - bool(figure.title) - 1 - bool(figure.xlabel)
        if figure.y_log:
            positive = [y for y in ys if y > 0] or [1.0]
            floor = max(positive) * 1e-12
            y_axis = log_axis(max(min(positive), floor), max(positive), canvas_rows)
        else:
            low = min(ys + [0.0]) if figure.y_from_zero else min(ys, default=0.0)
            y_axis = linear_axis(low, max(ys, default=1.0), canvas_rows, integer=figure.y_integer,
                                 horizontal=False)
        label_width = max((len(text) for text in y_axis.labels), default=1)
        x_axis = linear_axis(min(xs), max(xs), width - label_width - 3, integer=figure.x_integer)
        if figure.categories:
            x_axis = replace(x_axis, ticks=tuple(map(float, range(len(figure.categories)))),
                             labels=figure.categories)

        if figure.title:
            plt.title(figure.title)
        if figure.xlabel:
            plt.xlabel(figure.xlabel)
        for series in sorted(drawn, key=lambda s: s.z):  # stable: otherwise in legend order
            values = [self._y(float(y), figure, y_axis) for y in series.ys]
            if series.scatter:
                plt.scatter(list(series.xs), values, marker=series.look.marker, color=self._color(series.look))
            else:
                plt.plot(list(series.xs), values, marker=series.look.marker, color=self._color(series.look))
        if figure.mark is not None:
            plt.vline(figure.mark[1], color=self._color(MARK))
        _limits(plt, x_axis, y_axis)

    @staticmethod
    def _y(value: float, figure: Figure, axis: Axis) -> float:
        if not figure.y_log:
            return value
        return max(math.log10(value), axis.low) if value > 0 else axis.low

    def legend(self, figure: Figure, width: int) -> list[Text]:
        """One line (more when narrow) naming each series with its marker and colour."""
        entries = []
        for series in figure.series:
            if series.label:
                entries.append(self._entry(series.look, series.label))
        if figure.mark is not None:
            entries.append(self._entry(MARK, figure.mark[0]))
        lines: list[Text] = []
        line = Text()
        for entry in entries:
            if line.cell_len and line.cell_len + 2 + entry.cell_len > width:
                lines.append(line)
                line = Text()
            if line.cell_len:
                line.append("  ")
            line.append_text(entry)
        if line.cell_len:
            lines.append(line)
        for text in lines:
            text.truncate(width, overflow="ellipsis")
        return lines

    def _entry(self, look: Look, label: str) -> Text:
        style = "" if self.app.no_color else f"bold rgb({look.color[0]},{look.color[1]},{look.color[2]})"
        return Text.assemble((look.sample, style), " ", label)


def _limits(plt, x: Axis, y: Axis) -> None:
    plt.xlim(x.low, x.high)
    plt.ylim(y.low, y.high)
    plt.xticks(list(x.ticks), list(x.labels))
    plt.yticks(list(y.ticks), list(y.labels))


class CurvePlot(Plot):
    """Totals of several tuned models against one threshold (ε: paper Fig. 4; k: Fig. 15), the
    threshold in use marked."""

    def figure(self, xs: list[float], curves: list[tuple[str, list[int]]], title: str, xlabel: str,
               mark: float | None = None, integer_x: bool = False) -> Figure:
        fig = Figure(title, xlabel, x_integer=integer_x, y_integer=True, y_from_zero=True)
        for label, totals in curves:
            fig.add(label, xs, totals)
        if mark is not None:
            fig.mark = (f"{xlabel}={mark:g}" if integer_x else f"{xlabel}={mark:.2f}", mark)
        return fig


class SpectrumPlot(Plot):
    """Base and tuned singular values on one log scale against their rank (from 0), intruders
    crossed at their rank; `extra` series (the spectrum after mitigation, other tuned models) on
    the same axes."""

    def figure(self, sigma_base, sigma_tuned, intruder_ranks: list[int], title: str,
               extra: list[tuple[str, object]] = ()) -> Figure:
        fig = Figure(title, "rank (from 0)", x_integer=True, y_log=True)
        # drawn base, then the extras (mitigated σ, other models), then tuned on top: an extra shows
        # where it differs from the tuned spectrum, the base where it differs from both
        fig.add("base σ", range(len(sigma_base)), [float(s) for s in sigma_base], z=0)
        fig.add("tuned σ", range(len(sigma_tuned)), [float(s) for s in sigma_tuned], z=2)
        for label, sigma in extra:
            fig.add(label, range(len(sigma)), [float(s) for s in sigma], z=1)
        if intruder_ranks:
            fig.add("intruder", list(intruder_ranks), [float(sigma_tuned[r]) for r in intruder_ranks],
                    scatter=True, look=INTRUDER, z=3)
        return fig


class TradeoffPlot(Plot):
    """Reference (forgetting) and task loss against λ: the paper's Fig. 8 trade-off, the λ chosen
    for export marked."""

    EMPTY = ("w sweeps λ over the grid above with the forgetting probe: base, tuned, then each λ, scored "
             "on the reference text (forgetting) and the task file; the trade-off is plotted here")

    def figure(self, lambdas: list[float], reference: list[float], task: list[float] | None,
               chosen: float | None = None) -> Figure:
        fig = Figure("loss vs λ", "λ")
        fig.add("reference (forgetting)", lambdas, reference)
        if task:
            fig.add("task", lambdas, task)
        if chosen is not None:
            fig.mark = (f"chosen λ={chosen:g}", chosen)
        return fig

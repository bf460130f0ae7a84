"""A study's views as plots: curves over named points, ranks (r1, r8, full) or stages (base, 1, 2, …),
one marker per series (the ε of intruders vs rank, or the lines of a sequence)."""

from __future__ import annotations

from rich.text import Text

from spectui.study_results import Series as Curve
from spectui.tui.widgets.plots import Figure, Plot


class CategoryPlot(Plot):
    """study_results' curves on one plot; a point not measured yet is left out, its name stays on
    the axis."""

    EMPTY = "no member measured yet"

    def render(self):
        """Its title and a note until a first point is measured (empty axes say nothing)."""
        figure = self.current
        if figure is not None and not any(len(series.xs) for series in figure.series):
            return Text(f"{figure.title}: {self.EMPTY}", style="dim")
        return super().render()

    def figure(self, curves: list[Curve], title: str, xlabel: str, counts: bool = False) -> Figure:
        """`counts`: whole numbers from 0 (intruders)."""
        points = tuple(dict.fromkeys(x for curve in curves for x in curve.x))
        fig = Figure(title, xlabel, x_integer=True, y_integer=counts, y_from_zero=counts, categories=points)
        for curve in curves:
            measured = [(points.index(x), y) for x, y in zip(curve.x, curve.y) if y is not None]
            fig.add(curve.label, [x for x, _ in measured], [y for _, y in measured], scatter=len(measured) == 1)
        return fig

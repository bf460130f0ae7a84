"""A run's curves against the optimizer step: loss, and intruders per checkpoint (paper Fig. 5)."""

from __future__ import annotations

from typing import Any

from spectui.defaults import TOP_VECTORS
from spectui.run_intruders import CheckpointIntruders
from spectui.tui.widgets.plots import SERIES, Figure, Plot


class LossCurve(Plot):
    """Training loss at each metrics line (a line), evaluation loss where the run evaluated (points:
    a few evaluations, each visible over the training curve)."""

    def figure(self, rows: list[dict[str, Any]]) -> Figure:
        fig = Figure("loss", "step", x_integer=True)
        train = [(row["step"], row["loss"]) for row in rows]
        evaluated = [(row["step"], row["eval_loss"]) for row in rows if row.get("eval_loss") is not None]
        if train:
            fig.add("train", *zip(*train))
        if evaluated:
            fig.add("eval", *zip(*evaluated), scatter=True, look=SERIES[1])
        return fig


class IntruderCurve(Plot):
    """Total intruders of each scanned checkpoint at the app's (k, ε), k capped at what is stored."""

    def figure(self, points: list[CheckpointIntruders], saved: int, k: int, epsilon: float) -> Figure:
        """`saved`: checkpoints there are, of which `points` are scanned so far."""
        k = min(k, TOP_VECTORS)
        fig = Figure(f"intruders k={k} ε={epsilon:.2f} · {len(points)}/{saved} scanned", "step",
                     x_integer=True, y_integer=True, y_from_zero=True)
        if points:
            steps = [point.step for point in points]
            fig.add("intruders per checkpoint", steps, [point.total(k, epsilon) for point in points],
                    scatter=len(points) == 1, look=SERIES[1])
        return fig

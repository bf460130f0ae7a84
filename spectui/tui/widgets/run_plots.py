"""A run's curves against the optimizer step: loss, and intruders per checkpoint (paper Fig. 5)."""

from __future__ import annotations

from typing import Any

from spectui.defaults import TOP_VECTORS
from spectui.run_intruders import CheckpointIntruders
from spectui.tui.widgets.plots import Plot


class LossCurve(Plot):
    """Training loss at each metrics line, evaluation loss where the run evaluated."""

    def draw(self, plt, rows: list[dict[str, Any]]) -> None:
        plt.title("loss")
        plt.xlabel("step")
        train = [(row["step"], row["loss"]) for row in rows]
        evaluated = [(row["step"], row["eval_loss"]) for row in rows if row.get("eval_loss") is not None]
        if train:
            plt.plot(*zip(*train), label="train", color="cyan", marker="braille")
        if evaluated:  # a few evaluations only: marked, so that a single one shows
            plt.plot(*zip(*evaluated), label="eval", color="magenta", marker="braille")
            plt.scatter(*zip(*evaluated), color="magenta", marker="●")


class IntruderCurve(Plot):
    """Total intruders of each scanned checkpoint at the app's (k, ε), k capped at what is stored."""

    def draw(self, plt, points: list[CheckpointIntruders], saved: int, k: int, epsilon: float) -> None:
        """`saved`: checkpoints there are, of which `points` are scanned so far."""
        k = min(k, TOP_VECTORS)
        plt.title(f"intruders k={k} ε={epsilon:.2f} · {len(points)}/{saved} scanned")
        plt.xlabel("step")
        if points:
            steps = [point.step for point in points]
            totals = [point.total(k, epsilon) for point in points]
            plt.plot(steps, totals, color="red", marker="braille")
            plt.scatter(steps, totals, color="red", marker="●")
            plt.ylim(0, max(totals) + 1)

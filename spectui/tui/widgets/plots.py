"""Plots drawn with plotext: the intruders-vs-ε curve (paper Fig. 4) and singular value spectra."""

from __future__ import annotations

import math

from rich.text import Text
from textual_plotext import PlotextPlot

SERIES_COLORS = ("cyan", "magenta", "green", "yellow", "blue", "white")
TOO_SMALL = Text("(enlarge the terminal to see the plot)", style="dim")


class Plot(PlotextPlot):
    """plotext raises when its canvas is smaller than its legend and axes: show a note instead."""

    def render(self):
        try:
            return super().render()
        except (IndexError, ValueError, ZeroDivisionError, OverflowError):
            return TOO_SMALL


class EpsilonCurve(Plot):
    """Total intruders of each tuned model against ε at the current k, ε marked."""

    def show(self, epsilons: list[float], curves: list[tuple[str, list[int]]], k: int, epsilon: float) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(f"intruders vs ε  (k={k})")
        plt.xlabel("ε")
        for (label, totals), color in zip(curves, SERIES_COLORS):
            plt.plot(epsilons, totals, label=label, color=color, marker="braille")
        plt.vline(epsilon, color="red")
        plt.xlim(0, 1)
        self.refresh()


class SpectrumPlot(Plot):
    """Base and tuned singular values on one log scale; intruders marked at their rank; optionally
    the tuned spectrum after mitigation (the Mitigate view's preview)."""

    def show(self, sigma_base, sigma_tuned, intruder_ranks: list[int], title: str, sigma_after=None) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(title)
        plt.xlabel("rank")
        plt.yscale("log")
        top = max(float(sigma_tuned[0]), float(sigma_base[0]), 1e-30)
        floor = top * 1e-12
        bottom = max(min(float(sigma_base[-1]), float(sigma_tuned[-1])), floor)
        # headroom on the log axis keeps the legend off the top σ; plotext takes log limits in log10
        plt.ylim(math.log10(bottom / 1.5), math.log10(top * 10))
        series = [(sigma_base, "base σ", "cyan"), (sigma_tuned, "tuned σ", "magenta")]
        if sigma_after is not None:
            series.append((sigma_after, "mitigated σ", "green"))
        for sigma, label, color in series:
            plt.plot([max(float(s), floor) for s in sigma], label=label, color=color, marker="braille")
        if intruder_ranks:
            # plotext x positions start at 1 for plot(y); ranks are 0-based
            plt.scatter([r + 1 for r in intruder_ranks], [float(sigma_tuned[r]) for r in intruder_ranks],
                        label="intruder", color="red", marker="x")
        self.refresh()


class TradeoffPlot(Plot):
    """Reference (forgetting) and task loss against λ: the paper's Fig. 8 trade-off."""

    def show(self, lambdas: list[float], reference: list[float], task: list[float] | None) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title("loss vs λ")
        plt.xlabel("λ")
        plt.plot(lambdas, reference, label="reference (forgetting)", color="cyan", marker="braille")
        if task:
            plt.plot(lambdas, task, label="task", color="magenta", marker="braille")
        self.refresh()

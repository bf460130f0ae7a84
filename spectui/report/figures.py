"""The report's figures, drawn with matplotlib as SVG text to inline in the HTML.

Figures are made with `matplotlib.figure.Figure` (no pyplot, so no global state or GUI backend) and are
byte-for-byte reproducible: no date in the metadata, and ids hashed with a salt per figure, which also
keeps the ids of several SVGs inlined in one page apart (matplotlib's numbered group ids, which nothing
refers to, get the figure's name as a prefix). Text stays text (`svg.fonttype: none`).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator, StrMethodFormatter

from spectui.spectral import MatrixResult
from spectui.study_results import Series

STYLE = {
    "svg.fonttype": "none",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
}
BASE_COLOUR = "0.55"
HEATMAP_MIN = 10  # the paper's Fig. 3 shows the top 10 × top 10
MARKERS = ("o", "s", "^", "D", "v", "P")  # one per series, so curves stay apart without colour


def model_colour(index: int) -> str:
    """The colour of a tuned model in every figure and in the summary table."""
    return to_hex(f"C{index % 10}")


def count_colour(count: int, k: int) -> tuple[str, str]:
    """Background and text colour of a grid cell with `count` intruders out of at most k."""
    share = min(1.0, count / k)
    return to_hex(matplotlib.colormaps["Reds"](0.85 * share)), "#ffffff" if share > 0.5 else "#000000"


def epsilon_curves(labels: Sequence[str], sweeps: Sequence[dict[str, int]], k: int, epsilon: float) -> str:
    """Total intruders vs ε, one line per tuned model (paper Fig. 4)."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(4.6, 3.0), layout="constrained")
        ax = fig.add_subplot()
        for i, (label, sweep) in enumerate(zip(labels, sweeps)):
            ax.plot([float(e) for e in sweep], list(sweep.values()), marker="o", ms=3,
                    color=model_colour(i), label=label)
        ax.axvline(epsilon, color=BASE_COLOUR, ls=":", lw=1)
        ax.set(xlabel="ε (intruder iff max |cos| < ε)", ylabel=f"intruders in the top {k}",
               title="Intruders vs ε")
        ax.set_ylim(bottom=0)
        ax.legend()
        return _svg(fig, "epsilon")


def k_curves(labels: Sequence[str], ks: Sequence[int], totals: Sequence[Sequence[int]], k: int,
             epsilon: float) -> str:
    """Total intruders vs k at the report's ε, one line per tuned model (paper Fig. 15)."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(4.6, 3.0), layout="constrained")
        ax = fig.add_subplot()
        for i, (label, counts) in enumerate(zip(labels, totals)):
            ax.plot(ks, counts, marker="o", ms=3, color=model_colour(i), label=label)
        ax.axvline(k, color=BASE_COLOUR, ls=":", lw=1)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
        ax.set(xlabel="k (top singular vectors tested)", ylabel=f"intruders at ε = {epsilon}",
               title="Intruders vs k")
        ax.set_ylim(bottom=0)
        ax.legend()
        return _svg(fig, "k")


def matrix_figure(name: str, panels: Sequence[tuple[int, str, MatrixResult]], k: int, epsilon: float) -> str:
    """One matrix: base and tuned spectra overlaid (intruders crossed), then per tuned model (index, label,
    result) the similarity |U[:, :n]ᵀ U0[:, :n]| with the intruder columns outlined (paper Fig. 3)."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(4.4 + 2.5 * len(panels), 2.9), layout="constrained")
        axes = fig.subplots(1, 1 + len(panels), width_ratios=[1.7] + [1.0] * len(panels), squeeze=False)[0]
        _spectra(axes[0], panels, k, epsilon)
        for ax, (index, label, result) in zip(axes[1:], panels):
            image = _similarity(ax, result, k, epsilon)
            count = result.intruders(k, epsilon)
            ax.set_title(f"{label}: {count} intruder{'' if count == 1 else 's'}", color=model_colour(index))
        fig.colorbar(image, ax=list(axes[1:]), shrink=0.85, label="|cos|")
        return _svg(fig, name)


def _spectra(ax, panels: Sequence[tuple[int, str, MatrixResult]], k: int, epsilon: float) -> None:
    sigma_base = panels[0][2].sigma_base
    # ranks from 0, as in the tables, the JSON and the TUI
    ax.semilogy(np.arange(len(sigma_base)), sigma_base, color=BASE_COLOUR, lw=1.6, label="base")
    for index, label, result in panels:
        ranks = np.array(result.intruder_ranks(k, epsilon), dtype=int)
        ax.semilogy(np.arange(len(result.sigma_tuned)), result.sigma_tuned, color=model_colour(index),
                    lw=0.9, label=label)
        ax.scatter(ranks, result.sigma_tuned[ranks], marker="x", s=28, color=model_colour(index), zorder=3)
    ax.axvline(k - 0.5, color=BASE_COLOUR, ls=":", lw=1)
    ax.set_xscale("symlog", linthresh=1)  # the top k, where intruders are, gets as much room as the long tail
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
    ax.set(xlabel="rank, from 0 (× intruder; dotted: k)", ylabel="singular value", title="Spectra")
    ax.legend()


def _similarity(ax, result: MatrixResult, k: int, epsilon: float):
    size = min(max(k, HEATMAP_MIN), *result.similarity.shape)
    block = result.similarity[:size, :size].T  # rows: base vectors i, columns: tuned vectors j
    # A size × size PNG inside the SVG, drawn pixelated: far smaller than one vector square per cell.
    # Neither it nor the outlines need clipping, and the SVG writer names clip paths by object id(), which
    # would make the output differ from run to run.
    image = ax.imshow(block, vmin=0.0, vmax=1.0, cmap="viridis", interpolation="none", clip_on=False)
    for j in result.intruder_ranks(k, epsilon):
        if j < size:
            ax.add_patch(Rectangle((j - 0.5, -0.5), 1, size, fill=False, edgecolor="#e4002b", lw=1.6, clip_on=False))
    ticks = np.arange(0, size, max(1, size // 5))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set(xlabel="tuned vector j", ylabel="base vector i")
    return image


def study_curves(series: Sequence[Series], title: str, xlabel: str, ylabel: str, salt: str,
                 counts: bool = False) -> str:
    """A study's view: curves over labelled points (ranks r1 … full, or stages base, 1, 2, …), each series
    its own colour and marker; a gap where a point was not measured. `counts`: whole-number axis from 0."""
    points = list(dict.fromkeys(x for curve in series for x in curve.x))
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(4.6, 3.0), layout="constrained")
        ax = fig.add_subplot()
        for i, curve in enumerate(series):
            ax.plot([points.index(x) for x in curve.x], [np.nan if y is None else y for y in curve.y],
                    marker=MARKERS[i % len(MARKERS)], ms=4, color=model_colour(i), label=curve.label)
        ax.set_xticks(range(len(points)), points)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        if counts:  # whole numbers from 0, and room for 1 when every count is 0
            top = max((y for curve in series for y in curve.y if y is not None), default=0)
            ax.set_ylim(0, max(1.0, top * 1.05))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if len(series) > 1:
            ax.legend()
        return _svg(fig, salt)


def _svg(fig: Figure, salt: str) -> str:
    """The figure as an <svg> element (no XML prolog), reproducible, ids unique to this figure."""
    out = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": f"spectui-{salt}"}):
        fig.savefig(out, format="svg", metadata={"Date": None})
    text = out.getvalue()
    prefix = re.sub(r"[^\w-]", "-", salt)
    return _GROUP_ID.sub(rf'id="{prefix}-\1"', text[text.index("<svg"):])


_GROUP_ID = re.compile(r'id="([A-Za-z][\w.]*_\d+)"')  # figure_1, axes_1, PathCollection_2, ...

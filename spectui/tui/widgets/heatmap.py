"""|U[:, :K]ᵀ U0[:, :K]| as shaded cells (paper Fig. 3): columns are tuned vectors, rows base ones.

Shade characters carry the value as well as colour, so it reads in 16-colour terminals and with
NO_COLOR; intruder columns get a ▼ above them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.widget import Widget

if TYPE_CHECKING:
    import numpy as np

SHADES = " ░▒▓█"
# A perceptual ramp (viridis-like): low similarity dark blue, high yellow.
RAMP = ("#440154", "#3b528b", "#21918c", "#5ec962", "#fde725")


def cell(value: float) -> tuple[str, str]:
    level = min(int(value * len(SHADES)), len(SHADES) - 1)
    return SHADES[level] * 2, RAMP[min(int(value * len(RAMP)), len(RAMP) - 1)]


class Heatmap(Widget):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.similarity: np.ndarray | None = None
        self.intruders: set[int] = set()

    def show(self, similarity: np.ndarray, size: int, intruders: list[int]) -> None:
        self.similarity = similarity[:size, :size]
        self.intruders = set(intruders)
        self.refresh()

    def render(self) -> Text:
        if self.similarity is None:
            return Text("waiting for results…", style="dim")
        sim = self.similarity
        fit = max(1, min(sim.shape[0], (self.size.width - 4) // 2, self.size.height - 4))
        text = Text()
        text.append("    ")
        for j in range(fit):
            text.append("▼ " if j in self.intruders else "  ", style="bold red")
        text.append("\n    ")
        for j in range(fit):
            text.append(f"{j:<2}" if j % 5 == 0 else "  ", style="dim")
        text.append("\n")
        for i in range(fit):  # row i: base vector u0_i; column j: tuned vector u_j
            text.append(f"{i:>3} ", style="dim")
            for j in range(fit):
                chars, color = cell(float(sim[j, i]))
                style = f"{color} on grey11" if j not in self.intruders else f"{color} on #3a0000"
                text.append(chars, style=style)
            text.append("\n")
        text.append("cols: tuned u_j · rows: base u0_i · ▼ intruder", style="dim")
        return text

"""The top tuned singular vectors: σ, max|cos| against every base vector, best match, verdict.
Ranks count from 0, as everywhere in spectui (the JSON's intruder_ranks too)."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable

from spectui.tui.widgets.formats import cosine, sigma


class VectorTable(DataTable):
    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
    ]

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.add_column("rank", key="rank")
        for label in ("σ tuned", "max|cos|", "best base", "σ base there"):
            self.add_column(Text(label, justify="right"), key=label)
        self.add_column("intruder", key="intruder")

    def show(self, result, k: int, epsilon: float) -> None:
        self.clear()
        rows = min(len(result.max_cos), max(k, 10) + 5, 64)
        for j in range(rows):
            cos = float(result.max_cos[j])
            best = int(result.best_base[j])
            within_k = j < k
            flagged = within_k and cos < epsilon
            verdict = Text("yes", style="bold red") if flagged else Text("no" if within_k else "beyond k", style="dim")
            style = "" if within_k else "dim"
            self.add_row(
                Text(str(j), style=style, justify="right"),
                Text(sigma(float(result.sigma_tuned[j])), style=style, justify="right"),
                Text(cosine(cos), style="bold red" if flagged else style, justify="right"),
                Text(str(best), style=style, justify="right"),
                Text(sigma(float(result.sigma_base[best])), style=style, justify="right"), verdict,
            )

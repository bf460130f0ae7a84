"""Modal dialogs: the key help, and typing k and ε directly."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

NAVIGATION_KEYS = (
    ("↑ ↓ / j k", "move in lists and tables"),
    ("Enter", "open the highlighted matrix"),
    ("Escape", "back / close"),
    ("Tab", "next pane"),
    ("/", "filter matrices by name"),
    ("n / p", "next / previous matrix with intruders"),
    ("ctrl+p", "command palette"),
)


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def __init__(self, bindings: list[tuple[str, str]]) -> None:
        super().__init__()
        self.bindings = bindings

    def compose(self) -> ComposeResult:
        rows = list(NAVIGATION_KEYS) + self.bindings
        width = max(len(key) for key, _ in rows) + 2
        lines = "\n".join(f"[b]{key:<{width}}[/]{text}" for key, text in rows)
        with Vertical(id="help-box"):
            yield Label("[b]Keys[/]")
            yield Static(lines)
            yield Label("[dim]Escape closes[/]")


class ThresholdsScreen(ModalScreen[tuple[int, float] | None]):
    """k and ε typed in; invalid values are explained inline and nothing changes."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, k: int, epsilon: float, k_max: int) -> None:
        super().__init__()
        self.k, self.epsilon, self.k_max = k, epsilon, k_max

    def compose(self) -> ComposeResult:
        with Vertical(id="thresholds-box"):
            yield Label(f"[b]Thresholds[/] — top k (1…{self.k_max}) and ε (0…1); Enter applies")
            yield Input(str(self.k), id="k-input", type="integer")
            yield Input(f"{self.epsilon:.2f}", id="eps-input", type="number")
            yield Static("", id="thresholds-error")

    def on_input_submitted(self, _: Input.Submitted) -> None:
        try:
            k = int(self.query_one("#k-input", Input).value)
            eps = float(self.query_one("#eps-input", Input).value)
        except ValueError:
            self._error("k must be a whole number and ε a number")
            return
        if not 1 <= k <= self.k_max:
            self._error(f"k must be between 1 and {self.k_max}")
        elif not 0 < eps <= 1:
            self._error("ε must be above 0 and at most 1")
        else:
            self.dismiss((k, eps))

    def _error(self, text: str) -> None:
        self.query_one("#thresholds-error", Static).update(f"[red]{text}[/]")

    def action_cancel(self) -> None:
        self.dismiss(None)

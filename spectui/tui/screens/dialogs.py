"""Modal dialogs: the key help, and typing k and ε directly."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Input, Label, Static

from spectui.tui.widgets.field import Field

NAVIGATION_KEYS = (
    ("↑ ↓  j k", "move in lists and tables"),
    ("PgUp PgDn", "a page at a time"),
    ("Enter", "open what is highlighted"),
    ("Tab  shift+Tab", "next / previous pane (the focused one is marked ▌ on its left)"),
    ("Esc", "back, close"),
)
_NAMES = {"escape": "Esc", "enter": "Enter", "tab": "Tab", "space": "Space", "slash": "/"}


def key_label(binding: Binding) -> str:
    """A binding's keys as the help screen writes them: Esc, ctrl+r, /, [."""
    if binding.key_display:
        return binding.key_display
    keys = [_NAMES.get(key, key.replace("_", " ")) for key in binding.key.split(",")]
    return " ".join(keys)


def help_groups(screen: Screen) -> list[tuple[str, list[tuple[str, str]]]]:
    """The keys that work now, grouped: the screen's own, moving around, everywhere."""
    from spectui.tui.keys import GLOBAL, PALETTE_KEY

    globals_ = {f"app.{k.action}" for k in GLOBAL}
    own = [(key_label(b), b.tooltip or b.description) for b in screen.BINDINGS
           if isinstance(b, Binding) and b.action not in globals_]
    everywhere = [(k.shown_key, k.help) for k in GLOBAL]
    everywhere.append(PALETTE_KEY)
    name = getattr(screen, "HELP_TITLE", type(screen).__name__.removesuffix("Screen"))
    groups = [(f"{name}", own)] if own else []
    return [*groups, ("Moving around", list(NAVIGATION_KEYS)), ("Everywhere", everywhere)]


class HelpScreen(ModalScreen):
    """Every key of the screen it was opened on and the global ones, grouped, in two columns;
    it scrolls when the terminal is short."""

    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def __init__(self, groups: list[tuple[str, list[tuple[str, str]]]]) -> None:
        super().__init__()
        self.groups = groups

    def compose(self) -> ComposeResult:
        width = max(len(key) for _, rows in self.groups for key, _ in rows) + 2
        with Vertical(id="help-box"):
            yield Label(Text(f"Keys · {self.groups[0][0]}", style="bold"), id="help-title")
            with VerticalScroll(id="help-scroll"):
                for title, rows in self.groups:
                    table = Table.grid(padding=(0, 1), expand=True)
                    table.add_column(width=width, no_wrap=True)
                    table.add_column(ratio=1)
                    for key, text in rows:
                        table.add_row(Text(key, style="bold"), Text(text))
                    yield Label(Text(title, style="bold underline"), classes="help-group")
                    yield Static(table, classes="help-keys")
            yield Label(Text("↑ ↓ PgUp PgDn scroll · Esc closes · ctrl+p finds any action", style="dim"),
                        id="help-hint")

    def on_mount(self) -> None:
        self.query_one("#help-scroll").focus()

    def rows(self) -> list[tuple[str, str]]:
        return [row for _, rows in self.groups for row in rows]


class ThresholdsScreen(ModalScreen[tuple[int, float] | None]):
    """k and ε typed in; invalid values are explained inline and nothing changes."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, k: int, epsilon: float, k_max: int) -> None:
        super().__init__()
        self.k, self.epsilon, self.k_max = k, epsilon, k_max

    def compose(self) -> ComposeResult:
        with Vertical(id="thresholds-box"):
            yield Label(f"[b]Thresholds[/] — top k (1…{self.k_max}) and ε (0…1); Enter applies")
            yield Field(str(self.k), id="k-input", type="integer")
            yield Field(f"{self.epsilon:.2f}", id="eps-input", type="number")
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

"""How counts and states look, shared by the list and the grid (text carries it too, for NO_COLOR)."""

from __future__ import annotations

from rich.text import Text

from spectui.tui.inspector import RowView


def count_text(view: RowView) -> Text:
    """pending …, error !, skipped ·, else the intruder count; ~ marks a random-looking base."""
    if view.status == "pending":
        return Text("…", style="dim")
    if view.status == "error":
        return Text("!", style="bold red")
    if view.status == "skipped":
        return Text("·", style="dim")
    mark = "~" if view.random_like else ""
    style = count_style(view.count)
    return Text(f"{view.count}{mark}", style=style)


def count_style(count: int) -> str:
    if count == 0:
        return "green"
    if count == 1:
        return "bold yellow"
    if count <= 3:
        return "bold dark_orange"
    return "bold red"

"""The runs list: one row per run with its state and latest figures; the row key is its directory."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.widgets import DataTable

from spectui.finetune.runs import Run, RunSummary
from spectui.run_intruders import read_intruders
from spectui.tui.widgets.run_view import STATE_STYLES

COLUMNS = ("run", "state", "step", "loss", "eval loss", "intruders", "note")


@dataclass(frozen=True)
class RunRow:
    """A run as the list shows it; built off the UI thread (it reads the run's files)."""

    key: str
    cells: tuple[str | Text, ...]

    @classmethod
    def of(cls, run: Run, k: int, epsilon: float) -> RunRow:
        summary = run.summary()  # never raises: a damaged run's note says what is wrong
        points = read_intruders(run)
        last = f"{points[-1].total(k, epsilon)} @ {points[-1].step}" if points else "-"
        return cls(str(run.path), _cells(summary, last))


def _cells(summary: RunSummary, intruders: str) -> tuple[str | Text, ...]:
    note = Text(summary.note, style="magenta" if summary.problem else "")
    return (Text(summary.name), Text(summary.state.value, style=STATE_STYLES[summary.state]),
            f"{summary.step}/{summary.max_steps or '?'}", _number(summary.loss),
            _number(summary.eval_loss), intruders, note)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


class RunTable(DataTable):
    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", **kwargs)
        self._shown: list[RunRow] = []

    def on_mount(self) -> None:
        self.add_columns(*COLUMNS)

    def show(self, rows: list[RunRow]) -> None:
        """Replace the rows (when they changed), keeping the cursor on the same run."""
        if rows == self._shown:
            return
        self._shown = rows
        selected = self.highlighted()
        self.clear()
        for row in rows:
            self.add_row(*row.cells, key=row.key)
        keys = [row.key for row in rows]
        if selected in keys:
            self.move_cursor(row=keys.index(selected))

    def highlighted(self) -> str | None:
        """The directory of the run under the cursor (the row key)."""
        return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value if self.row_count else None

"""The runs list: one row per run with its method, state, start, time and latest figures; the row
key is its directory."""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.text import Text
from textual.widgets import DataTable

from spectui.errors import InputError
from spectui.finetune.runs import LIVE, Run, RunSummary
from spectui.run_intruders import read_intruders
from spectui.tui.widgets.formats import loss
from spectui.tui.widgets.run_view import STATE_STYLES
from spectui.tui.widgets.scan_status import duration

COLUMNS = ("run", "method", "state", "started", "step", "time", "loss", "eval loss", "intruders", "note")


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
        return cls(str(run.path), _cells(summary, last, _method(run), _started(run), _time(run, summary)))


def _method(run: Run) -> str:
    try:
        spec = run.spec()
    except InputError:
        return "?"
    return spec.method if spec.method == "full" else f"{spec.method} r={spec.rank}"


def _started(run: Run) -> str:
    """When the run was created (its spec written): the time today, else the date too."""
    try:
        created = (run.path / "spec.json").stat().st_mtime
    except OSError:
        return "?"
    today = time.strftime("%Y-%m-%d") == time.strftime("%Y-%m-%d", time.localtime(created))
    return time.strftime("%H:%M" if today else "%m-%d %H:%M", time.localtime(created))


def _time(run: Run, summary: RunSummary) -> str:
    """Time trained so far, and the ETA while it trains."""
    rows = run.metrics()
    last = rows[-1] if rows else {}
    elapsed = last.get("elapsed_s")
    if elapsed is None:
        return "-"
    text = duration(elapsed)
    total, step = summary.max_steps, summary.step
    if summary.state in LIVE and step and total and step < total:
        text += f" · ETA {duration(elapsed / step * (total - step))}"
    return text


def _cells(summary: RunSummary, intruders: str, method: str, started: str, spent: str) -> tuple[str | Text, ...]:
    note = Text(summary.note, style="magenta" if summary.problem else "")
    return (Text(summary.name), method, Text(summary.state.value, style=STATE_STYLES[summary.state]), started,
            f"{summary.step}/{summary.max_steps or '?'}", spent, _number(summary.loss),
            _number(summary.eval_loss), intruders, note)


def _number(value: float | None) -> str:
    return "-" if value is None else loss(value)


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

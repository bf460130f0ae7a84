"""The list of matrices: filterable, keyboard first; highlighting one moves it up the scan queue."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Input, Static

from spectui.tui.inspector import Entry, Inspector
from spectui.tui.messages import MatrixHighlighted, OpenMatrix
from spectui.tui.widgets.styles import count_text


class MatrixTable(DataTable):
    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
    ]


class MatrixList(Vertical):
    """Filter box, table of matrices, and a line on the highlighted one (reason, error, warning)."""

    def __init__(self, inspector: Inspector, **kwargs) -> None:
        super().__init__(**kwargs)
        self.inspector = inspector
        self.model, self.k, self.epsilon = 0, 10, 0.5
        self._entries: dict[str, Entry] = {}
        self._shown: dict[str, tuple] = {}

    def compose(self) -> ComposeResult:
        yield Input(placeholder="/ filter by name", id="filter")
        table = MatrixTable(cursor_type="row", id="matrices")
        table.add_column("matrix", key="matrix")
        table.add_column("intr", key="count")
        table.add_column("ΔW/W0", key="delta")
        yield table
        yield Static("", id="row-note")

    @property
    def table(self) -> MatrixTable:
        return self.query_one(MatrixTable)

    def show(self, model: int, k: int, epsilon: float) -> None:
        """Re-read every row at (model, k, ε); only cells that changed are redrawn."""
        if model != self.model or not self._entries:
            self.model = model
            self._rebuild()
        self.k, self.epsilon = k, epsilon
        for name in self._entries:
            self._update_row(name)
        self._update_note()

    def _rebuild(self) -> None:
        needle = self.query_one("#filter", Input).value.strip().lower()
        table = self.table
        selected = self.highlighted
        table.clear()
        self._shown.clear()
        self._entries = {e.name: e for e in self.inspector.entries(self.model) if needle in e.short.lower()}
        for entry in self._entries.values():
            style = "dim" if entry.skip_reason else ""
            table.add_row(f"[{style}]{entry.short}[/]" if style else entry.short, "", "", key=entry.name)
        if selected in self._entries:
            self.select(selected)

    def _update_row(self, name: str) -> None:
        view = self.inspector.row(self.model, name, self.k, self.epsilon)
        if self._shown.get(name) == view:
            return
        self._shown[name] = view
        delta = "" if view.delta_rel_norm is None else f"{view.delta_rel_norm:#.3g}"
        self.table.update_cell(name, "count", count_text(view))
        self.table.update_cell(name, "delta", delta)

    @property
    def highlighted(self) -> str | None:
        table = self.table
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def names(self) -> list[str]:
        return list(self._entries)

    def select(self, name: str) -> None:
        if name in self._entries:
            self.table.move_cursor(row=self.table.get_row_index(name))

    def _update_note(self) -> None:
        name = self.highlighted
        note = ""
        if name is not None:
            entry = self._entries[name]
            view = self._shown.get(name)
            if entry.skip_reason:
                note = f"skipped: {entry.skip_reason}"
            elif error := self.inspector.error(name):
                note = f"[red]error:[/] {error}"
            elif view is not None and view.random_like:
                note = "[yellow]~ base looks random (Marchenko–Pastur): intruders here mean little[/]"
        skipped_1d = self.inspector.one_d_skipped(self.model)
        tail = f"[dim]{len(self._entries)} shown · {skipped_1d} 1-D tensors not listed[/]"
        self.query_one("#row-note", Static).update(f"{note}\n{tail}" if note else tail)

    # -- events -------------------------------------------------------------------------------
    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self._rebuild()
        self.show(self.model, self.k, self.epsilon)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.table.focus()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        if event.row_key is not None and event.row_key.value in self._entries:
            self._update_note()
            self.post_message(MatrixHighlighted(event.row_key.value))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value in self._entries and not self._entries[event.row_key.value].skip_reason:
            self.post_message(OpenMatrix(event.row_key.value))

    def focus_filter(self) -> None:
        self.query_one("#filter", Input).focus()

"""The list of matrices: filterable, sortable, keyboard first; highlighting one moves it up the scan
queue."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Input, Static

from spectui.tui.inspector import Entry, Inspector, RowView
from spectui.tui.messages import MatrixHighlighted, OpenMatrix
from spectui.tui.widgets.field import Field
from spectui.tui.widgets.formats import ratio
from spectui.tui.widgets.styles import count_text

# The orders `o` cycles through: (key, words for the note, column marked)
SORTS = (("model", "model order", None), ("intruders", "most intruders first", "count"),
         ("delta", "largest ΔW/W0 first", "delta"), ("name", "by name", "matrix"))
HEADERS = {"matrix": "matrix", "count": "intr", "delta": "ΔW/W0"}


def _label(entry: Entry) -> str:
    """The matrix column's text: dim for a matrix left out (the reason is in the note)."""
    return f"[dim]{entry.short}[/]" if entry.skip_reason else entry.short


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
        self.sort = 0  # index into SORTS
        self._entries: dict[str, Entry] = {}
        self._shown: dict[str, RowView] = {}

    def compose(self) -> ComposeResult:
        yield Field(placeholder="/ filter by name", id="filter", compact=True)
        table = MatrixTable(cursor_type="row", id="matrices")
        for key, header in HEADERS.items():
            table.add_column(header, key=key)
        yield table
        yield Static("", id="row-note")

    @property
    def table(self) -> MatrixTable:
        return self.query_one(MatrixTable)

    @property
    def sort_name(self) -> str:
        return SORTS[self.sort][1]

    def show(self, model: int, k: int, epsilon: float) -> None:
        """Re-read every row at (model, k, ε); only cells that changed are redrawn, and a sort by
        count or ΔW/W0 moves rows without re-creating them (600+ rows stay quick)."""
        if model != self.model or not self._entries:
            self.model = model
            self._rebuild()
        self.k, self.epsilon = k, epsilon
        for name in self._entries:
            self._update_row(name)
        if SORTS[self.sort][0] in ("intruders", "delta"):
            self._reorder()
        self._update_note()

    def cycle_sort(self) -> str:
        """The next order (model, intruders, ΔW/W0, name); the cursor stays on its matrix."""
        self.sort = (self.sort + 1) % len(SORTS)
        marked = SORTS[self.sort][2]
        for key, header in HEADERS.items():
            self.table.columns[key].label = f"{header}▼" if key == marked and key != "matrix" else (
                f"{header}▲" if key == marked else header)
        self._reorder()
        self._update_note()
        self.table.refresh()
        return self.sort_name

    def _order(self) -> list[str]:
        """The listed names in the current order."""
        names = list(self._entries)
        how = SORTS[self.sort][0]
        if how == "name":
            return sorted(names, key=lambda n: self._entries[n].short)
        if how == "model":
            return [e.name for e in self.inspector.entries(self.model) if e.name in self._entries]

        def key(name: str):
            view = self.inspector.row(self.model, name, self.k, self.epsilon)
            delta = view.delta_rel_norm if view.delta_rel_norm is not None else -1.0
            return (view.status != "done", -(view.count if how == "intruders" else delta),
                    -delta if how == "intruders" else 0)

        return sorted(names, key=key)

    def _rebuild(self) -> None:
        needle = self.query_one("#filter", Input).value.strip().lower()
        table = self.table
        selected = self.highlighted
        table.clear()
        self._shown.clear()
        self._entries = {e.name: e for e in self.inspector.entries(self.model) if needle in e.short.lower()}
        self._entries = {name: self._entries[name] for name in self._order()}
        for entry in self._entries.values():
            table.add_row(_label(entry), "", "", key=entry.name)
        for name in self._entries:
            self._update_row(name)
        if selected in self._entries:
            self.select(selected)

    def _reorder(self) -> None:
        """The listed rows put in the current order where they are (none re-created); the cursor
        stays on its matrix."""
        order = self._order()
        if order == list(self._entries):
            return
        selected = self.highlighted
        self._entries = {name: self._entries[name] for name in order}
        rank = {_label(entry): i for i, entry in enumerate(self._entries.values())}
        self.table.sort("matrix", key=rank.__getitem__)
        if selected is not None:
            self.select(selected)

    def _update_row(self, name: str) -> None:
        view = self.inspector.row(self.model, name, self.k, self.epsilon)
        if self._shown.get(name) == view:
            return
        self._shown[name] = view
        delta = "" if view.delta_rel_norm is None else ratio(view.delta_rel_norm)
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
        tuned = self.inspector.comparison.tuned[self.model]
        scanned, skipped = len(tuned.pairing.matrices), len(tuned.pairing.skipped)
        entries = self.inspector.entries(self.model)
        unlisted = skipped - sum(1 for e in entries if e.skip_reason)
        listed = len(self._entries)
        total_listed = len(entries)
        head = f"{listed} of {total_listed} match · " if listed != total_listed else ""
        sort = "" if self.sort == 0 else f" · {self.sort_name} (o)"
        hidden = f" ({unlisted} not listed: 1-D and the like)" if unlisted else ""
        tail = f"[dim]{head}{scanned} scanned · {skipped} skipped{hidden}{sort}[/]"
        self.query_one("#row-note", Static).update(f"{note}\n{tail}" if note else tail)

    # -- events -------------------------------------------------------------------------------
    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self._rebuild()
        self.show(self.model, self.k, self.epsilon)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.screen.set_focus(self.table)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        if event.row_key is not None and event.row_key.value in self._entries:
            self._update_note()
            if self.has_focus_within:  # not an echo of following the grid (`OverviewGrid`)
                self.post_message(MatrixHighlighted(event.row_key.value))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value in self._entries and not self._entries[event.row_key.value].skip_reason:
            self.post_message(OpenMatrix(event.row_key.value))

    def focus_filter(self) -> None:
        """Focus the filter now, not after the queued keys: what is typed right after `/` is the
        filter's (Widget.focus() waits for the message queue, where those keys already are)."""
        self.screen.set_focus(self.query_one("#filter", Input))

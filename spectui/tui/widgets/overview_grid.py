"""Layers × module types, each cell a matrix coloured by its intruder count (Enter opens it)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from spectui.tui.inspector import Inspector
from spectui.tui.messages import MatrixHighlighted, OpenMatrix
from spectui.tui.widgets.styles import count_text


def column_labels(modules: list[str]) -> dict[str, str]:
    """The shortest unambiguous tail of each module path: q_proj, or output.dense vs intermediate.dense."""
    depth = 1
    while True:
        labels = {m: ".".join(m.split(".")[-depth:]) for m in modules}
        if len(set(labels.values())) == len(labels) or depth > 4:
            return labels
        depth += 1


class OverviewGrid(DataTable):
    """A DataTable in cell mode: arrow keys move between matrices, Enter (or a click) opens one."""

    def __init__(self, inspector: Inspector, **kwargs) -> None:
        super().__init__(cursor_type="cell", **kwargs)
        self.inspector = inspector
        self.model = -1
        self._cells: dict[tuple[str, str], str] = {}  # (row key, column key) → matrix name
        self._shown: dict[tuple[str, str], object] = {}

    def show(self, model: int, k: int, epsilon: float) -> None:
        if model != self.model:
            self.model = model
            self._layout()
        for (row, column), name in self._cells.items():
            view = self.inspector.row(model, name, k, epsilon)
            if self._shown.get((row, column)) != view:  # untouched cells are not redrawn
                self._shown[(row, column)] = view
                self.update_cell(row, column, count_text(view))

    def _layout(self) -> None:
        """Rows are layers (then one row for matrices outside layers); columns are module types."""
        entries = self.inspector.entries(self.model)
        in_layers = [e for e in entries if e.layer is not None]
        present = {e.module for e in in_layers}
        modules = [m for m in self.inspector.module_order() if m in present]
        labels = column_labels(modules)
        self.clear(columns=True)
        self._cells.clear()
        self._shown.clear()
        self.add_column("layer", key="layer")
        for module in modules:
            self.add_column(labels[module], key=module)
        layers = sorted({e.layer for e in in_layers})
        by_place = {(e.layer, e.module): e.name for e in in_layers}
        for layer in layers:
            self.add_row(Text(str(layer), style="dim"), *([""] * len(modules)), key=str(layer))
            for module in modules:
                if (layer, module) in by_place:
                    self._cells[(str(layer), module)] = by_place[(layer, module)]
        others = [e for e in entries if e.layer is None and e.spec is not None]
        for entry in others:  # a scanned pooler, lm_head, embedding: one row each, first column
            self.add_row(Text(entry.short, style="dim"), *([""] * len(modules)), key=entry.name)
            if modules:
                self._cells[(entry.name, modules[0])] = entry.name

    def _name_at_cursor(self) -> str | None:
        if not self.row_count or not self.columns:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate)
        return self._cells.get((key.row_key.value, key.column_key.value))

    def on_data_table_cell_highlighted(self, event: DataTable.CellHighlighted) -> None:
        event.stop()
        if (name := self._name_at_cursor()) is not None:
            self.post_message(MatrixHighlighted(name))

    def on_data_table_cell_selected(self, event: DataTable.CellSelected) -> None:
        event.stop()
        name = self._name_at_cursor()
        if name is not None and self.inspector.comparison.tuned[self.model].spec(name) is not None:
            self.post_message(OpenMatrix(name))


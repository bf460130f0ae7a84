"""Layers × module types, each cell a matrix coloured by its intruder count (Enter opens it).

Columns are abbreviated (q k v o g u d for a Llama-like model) so that every module type fits at
80 columns; the cell under the cursor is named in full below the grid."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from spectui.tui.inspector import Inspector
from spectui.tui.messages import MatrixHighlighted, OpenMatrix
from spectui.tui.widgets.styles import count_text

# The usual projections' one- or two-letter names (attention, then MLP), longest tails first.
_ABBREVIATIONS = (
    ("attention.output.dense", "ao"), ("intermediate.dense", "i"), ("output.dense", "out"),
    ("attn.c_attn", "qkv"), ("attn.c_proj", "ap"), ("mlp.c_fc", "fc"), ("mlp.c_proj", "mp"),
    ("qkv_proj", "qkv"), ("gate_up_proj", "gu"), ("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"),
    ("o_proj", "o"), ("out_proj", "o"), ("gate_proj", "g"), ("up_proj", "u"), ("down_proj", "d"),
    ("query", "q"), ("key", "k"), ("value", "v"), ("w1", "w1"), ("w2", "w2"), ("w3", "w3"),
    ("fc1", "fc1"), ("fc2", "fc2"),
)


def column_labels(modules: list[str]) -> dict[str, str]:
    """The shortest unambiguous tail of each module path: q_proj, or output.dense vs intermediate.dense."""
    depth = 1
    while True:
        labels = {m: ".".join(m.split(".")[-depth:]) for m in modules}
        if len(set(labels.values())) == len(labels) or depth > 4:
            return labels
        depth += 1


def abbreviations(modules: list[str]) -> dict[str, str]:
    """A short column label per module type (q k v o g u d for q_proj … down_proj); where two
    would collide, or a module is unusual, its shortest unambiguous tail without `_proj`."""
    tails = column_labels(modules)
    short = {}
    for module in modules:
        known = next((abbr for tail, abbr in _ABBREVIATIONS if module == tail or module.endswith("." + tail)), None)
        short[module] = known or tails[module].removesuffix("_proj")
    if len(set(short.values())) < len(short):
        return {m: tails[m].removesuffix("_proj") for m in modules}
    return short


class OverviewGrid(DataTable):
    """A DataTable in cell mode: arrow keys move between matrices, Enter (or a click) opens one."""

    def __init__(self, inspector: Inspector, **kwargs) -> None:
        super().__init__(cursor_type="cell", **kwargs)
        self.inspector = inspector
        self.model = -1
        self.modules: dict[str, str] = {}  # column key (module) → its label
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
        self.modules = abbreviations(modules)
        self.clear(columns=True)
        self._cells.clear()
        self._shown.clear()
        self.add_column("layer", key="layer")
        for module in modules:
            self.add_column(self.modules[module], key=module)
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

    @property
    def highlighted(self) -> str | None:
        """The matrix under the cursor, if the cell holds one."""
        if not self.row_count or not self.columns:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate)
        return self._cells.get((key.row_key.value, key.column_key.value))

    def select(self, name: str) -> None:
        """Put the cursor on this matrix's cell, if it has one."""
        for (row, column), cell_name in self._cells.items():
            if cell_name == name:
                self.move_cursor(row=self.get_row_index(row), column=self.get_column_index(column))
                return

    def on_data_table_cell_highlighted(self, event: DataTable.CellHighlighted) -> None:
        event.stop()
        if (name := self.highlighted) is not None:
            self.post_message(MatrixHighlighted(name))

    def on_data_table_cell_selected(self, event: DataTable.CellSelected) -> None:
        event.stop()
        name = self.highlighted
        if name is not None and self.inspector.comparison.tuned[self.model].spec(name) is not None:
            self.post_message(OpenMatrix(name))

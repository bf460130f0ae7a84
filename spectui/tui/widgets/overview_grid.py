"""Layers × module types, each cell a matrix coloured by its intruder count (Enter opens it), with
a totals column (per layer) and a totals row (per module type, pinned above the layers).

Columns are abbreviated (q k v o g u d for a Llama-like model) so that every module type fits at
80 columns; the cell under the cursor is named in full below the grid. A mixture-of-experts layer
has one cell per expert module (eg eu ed: the sum over its experts), collapsed so that deep MoE
models stay one row a layer; Enter on it (or `e` anywhere in the layer) adds a row per expert
under the layer, with each expert's own matrices and its total."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rich.text import Text
from textual.widgets import DataTable

from spectui.checkpoint.experts import expert_of
from spectui.checkpoint.names import short_name
from spectui.tui.inspector import Entry, Inspector, RowView
from spectui.tui.messages import MatrixHighlighted, OpenMatrix
from spectui.tui.widgets.styles import count_style, count_text

# The usual projections' one- or two-letter names (attention, then MLP), longest tails first.
_ABBREVIATIONS = (
    ("attention.output.dense", "ao"), ("intermediate.dense", "i"), ("output.dense", "out"),
    ("attn.c_attn", "qkv"), ("attn.c_proj", "ap"), ("mlp.c_fc", "fc"), ("mlp.c_proj", "mp"),
    ("shared_expert_gate", "sg"), ("block_sparse_moe.gate", "rt"), ("mlp.gate", "rt"), ("router", "rt"),
    ("qkv_proj", "qkv"), ("gate_up_proj", "gu"), ("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"),
    ("o_proj", "o"), ("out_proj", "o"), ("gate_proj", "g"), ("up_proj", "u"), ("down_proj", "d"),
    ("query", "q"), ("key", "k"), ("value", "v"), ("w1", "w1"), ("w2", "w2"), ("w3", "w3"),
    ("fc1", "fc1"), ("fc2", "fc2"),
)
TOTAL = "total"  # the key of the totals row and of the totals column
LAYER = "layer"  # the key of the first column


def column_labels(modules: list[str]) -> dict[str, str]:
    """The shortest unambiguous tail of each module path: q_proj, or output.dense vs intermediate.dense."""
    depth = 1
    while True:
        labels = {m: ".".join(m.split(".")[-depth:]) for m in modules}
        if len(set(labels.values())) == len(labels) or depth > 4:
            return labels
        depth += 1


def abbreviations(modules: list[str], experts: Iterable[str] = ()) -> dict[str, str]:
    """A short column label per module type (q k v o g u d for q_proj … down_proj; eg for the
    experts' gate_proj); where two would collide, or a module is unusual, its shortest unambiguous
    tail without `_proj`."""
    tails = column_labels(modules)
    experts = set(experts)
    short = {}
    for module in modules:
        known = next((abbr for tail, abbr in _ABBREVIATIONS if module == tail or module.endswith("." + tail)), None)
        short[module] = ("e" if module in experts else "") + (known or tails[module].removesuffix("_proj"))
    if len(set(short.values())) < len(short):
        return {m: tails[m].removesuffix("_proj") for m in modules}
    return short


@dataclass(frozen=True)
class Cell:
    """What one grid cell shows: a matrix (Enter opens it), a layer's experts of one module type
    (their sum; Enter expands the layer), or a total (of a layer, an expert, a module type, all)."""

    kind: str  # matrix | experts | total
    names: tuple[str, ...]
    title: str  # how the note under the grid names it
    layer: int | None = None  # an experts cell's layer

    @property
    def matrix(self) -> str | None:
        return self.names[0] if self.kind == "matrix" else None


def sum_text(views: list[RowView]) -> Text:
    """Several matrices as one figure: the intruders of those landed, dim while others are to come
    (the scan's status line says how many); … before any has landed; ! when every one failed; ·
    when none is scanned."""
    landed = [v for v in views if v.status == "done"]
    pending = any(v.status == "pending" for v in views)
    if not landed:
        if pending:
            return Text("…", style="dim")
        failed = any(v.status == "error" for v in views)
        return Text("!", style="bold red") if failed else Text("·", style="dim")
    total = sum(v.count for v in landed)
    return Text(str(total), style="dim" if pending else count_style(total))


class OverviewGrid(DataTable):
    """A DataTable in cell mode: arrow keys move between matrices, Enter (or a click) opens one or
    expands a layer's experts. The totals row stays in view while the layers scroll."""

    def __init__(self, inspector: Inspector, **kwargs) -> None:
        super().__init__(cursor_type="cell", fixed_rows=1, fixed_columns=1, cell_padding=0, **kwargs)
        self.inspector = inspector
        self.model, self.k, self.epsilon = -1, 10, 0.5
        self.modules: dict[str, str] = {}  # column key (module) → its label
        self.expanded: set[int] = set()  # layers whose experts have a row each
        self._places: dict[tuple[int, str], list[Entry]] = {}  # (layer, module) → its matrices (experts in order)
        self._others: list[Entry] = []  # matrices outside layers: a row each
        self._cells: dict[tuple[str, str], Cell] = {}  # (row key, column key) → what it shows
        self._row_layers: dict[str, int] = {}  # row key of a layer or of one of its experts → the layer
        self._shown: dict[tuple[str, str], Text] = {}

    def show(self, model: int, k: int, epsilon: float) -> None:
        """Redraw every cell at (model, k, ε); cells whose text is unchanged are left alone."""
        self.k, self.epsilon = k, epsilon
        if model != self.model:
            self.model = model
            self.expanded.clear()
            self._layout()
        views: dict[str, RowView] = {}
        for key, cell in self._cells.items():
            for name in cell.names:
                if name not in views:
                    views[name] = self.inspector.row(model, name, k, epsilon)
            text = self._text(cell, [views[n] for n in cell.names])
            shown = self._shown.get(key)
            if shown is None or (shown.plain, shown.style) != (text.plain, text.style):
                self._draw(key, text)

    @staticmethod
    def _text(cell: Cell, views: list[RowView]) -> Text:
        return count_text(views[0]) if cell.kind == "matrix" else sum_text(views)

    def _draw(self, key: tuple[str, str], text: Text) -> None:
        """Right-aligned after one space: columns one space apart (not the table's two) fit the
        usual seven module types, the layer and Σ in the grid's width at 80 columns."""
        self._shown[key] = text
        self.update_cell(*key, Text.assemble(" ", text, justify="right"), update_width=True)

    def _layout(self) -> None:
        """Columns: layer, the model's module types, Σ. Which matrices sit in which place."""
        entries = self.inspector.entries(self.model)
        in_layers = [e for e in entries if e.layer is not None]
        modules = self.inspector.module_order(self.model)
        self.modules = abbreviations(modules, {e.module for e in in_layers if e.expert is not None})
        self._places = {}
        for entry in in_layers:  # in model order: a layer's experts one after the other
            self._places.setdefault((entry.layer, entry.module), []).append(entry)
        self._others = [e for e in entries if e.layer is None and e.spec is not None]
        self.clear(columns=True)
        self.add_column(LAYER, key=LAYER)
        for label, key in [*((self.modules[m], m) for m in modules), ("Σ", TOTAL)]:
            self.add_column(Text(f" {label}", justify="right"), key=key)  # a space apart, as the cells
        self._rows()

    def _rows(self) -> None:
        """The totals row, then each layer (and its experts' rows if expanded), then the matrices
        outside layers; the cursor stays on its cell, or the one its row folded into."""
        here, layers = self._cursor_key(), dict(self._row_layers)
        self.clear()
        self._cells.clear()
        self._shown.clear()
        self._row_layers.clear()
        self._add_row(TOTAL, Text("Σ", style="bold dim"), self._totals_row())
        for layer in sorted({layer for layer, _ in self._places}):
            experts = self._experts(layer)
            mark = "" if not experts else (" ▾" if layer in self.expanded else " ▸")
            self._add_row(str(layer), Text(f"{layer}{mark}", style="dim"), self._layer_row(layer))
            self._row_layers[str(layer)] = layer
            for expert in experts if layer in self.expanded else ():
                self._add_row(f"{layer}/{expert}", Text(f" e{expert}", style="dim"), self._expert_row(layer, expert))
                self._row_layers[f"{layer}/{expert}"] = layer
        first = next(iter(self.modules), TOTAL)
        for entry in self._others:  # a scanned pooler, lm_head, embedding: one row each, first module column
            cell = Cell("matrix", (entry.name,), entry.short)
            self._add_row(entry.name, Text(entry.short, style="dim"), {first: cell})
        if here is not None:
            row, column = here
            row = row if row in self.rows else str(layers.get(row))
            if row in self.rows:
                self.move_cursor(row=self.get_row_index(row), column=self.get_column_index(column))

    def _add_row(self, key: str, label: Text, cells: dict[str, Cell]) -> None:
        self.add_row(label, *([""] * (len(self.columns) - 1)), key=key)
        for column, cell in cells.items():
            self._cells[(key, column)] = cell

    def _totals_row(self) -> dict[str, Cell]:
        layers = len({layer for layer, _ in self._places})
        cells = {}
        for module in self.modules:
            names = tuple(e.name for (_, m), place in self._places.items() if m == module for e in place)
            cells[module] = Cell("total", names, f"{module} over {layers} layers")
        every = tuple(e.name for place in self._places.values() for e in place)
        cells[TOTAL] = Cell("total", every, f"all {layers} layers")
        return cells

    def _layer_row(self, layer: int) -> dict[str, Cell]:
        cells = {}
        for module in self.modules:
            place = self._places.get((layer, module), [])
            if len(place) == 1 and place[0].expert is None:
                cells[module] = Cell("matrix", (place[0].name,), place[0].short)
            elif place:
                title = f"{short_name(expert_of(place[0].name)[1])} ×{len(place)}"
                cells[module] = Cell("experts", tuple(e.name for e in place), title, layer)
        names = tuple(e.name for (at, _), place in self._places.items() if at == layer for e in place)
        cells[TOTAL] = Cell("total", names, f"layer {layer}")
        return cells

    def _expert_row(self, layer: int, expert: int) -> dict[str, Cell]:
        cells = {}
        for module in self.modules:
            for entry in self._places.get((layer, module), []):
                if entry.expert == expert:
                    cells[module] = Cell("matrix", (entry.name,), entry.short)
        mine = tuple(cell.names[0] for cell in cells.values())
        cells[TOTAL] = Cell("total", mine, f"layer {layer} expert {expert}")
        return cells

    def _experts(self, layer: int) -> list[int]:
        """The layer's experts, in order (none for a dense layer)."""
        found = {e.expert for (at, _), place in self._places.items() if at == layer for e in place}
        return sorted(found - {None})

    def _cursor_key(self) -> tuple[str, str] | None:
        if not self.row_count or not self.columns:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate)
        return key.row_key.value, key.column_key.value

    @property
    def cell(self) -> Cell | None:
        """What the cell under the cursor shows, if anything."""
        here = self._cursor_key()
        return None if here is None else self._cells.get(here)

    @property
    def highlighted(self) -> str | None:
        """The matrix under the cursor, if the cell holds one."""
        cell = self.cell
        return None if cell is None else cell.matrix

    def note(self) -> Text:
        """The cell under the cursor named in full, with its count: the line under the grid."""
        cell = self.cell
        if cell is None:
            return Text("")
        views = [self.inspector.row(self.model, name, self.k, self.epsilon) for name in cell.names]
        if cell.kind == "matrix" and views[0].status != "done":
            return Text.assemble((cell.title, "bold"), f": {views[0].status}")
        count = self._text(cell, views)
        word = " intruder" if count.plain.removesuffix("~") == "1" else " intruders"
        text = Text.assemble((cell.title, "bold"), ": ", count, word)
        if cell.kind == "experts":
            text.append(" · e: " + ("fold" if cell.layer in self.expanded else "per expert"), style="dim")
        return text

    def select(self, name: str) -> None:
        """Put the cursor on this matrix's cell, or on its experts' cell if their layer is folded."""
        for kind in ("matrix", "experts"):
            for (row, column), cell in self._cells.items():
                if cell.kind == kind and name in cell.names:
                    self.move_cursor(row=self.get_row_index(row), column=self.get_column_index(column))
                    return

    def toggle_experts(self) -> bool:
        """Expand (or fold) the experts of the layer under the cursor; False if it has none."""
        here = self._cursor_key()
        layer = None if here is None else self._row_layers.get(here[0])
        if layer is None or not self._experts(layer):
            return False
        self.expanded ^= {layer}
        self._rows()
        self.show(self.model, self.k, self.epsilon)
        return True

    def on_resize(self) -> None:
        """A shorter pane (the terminal shrank, an expanded layer) still shows the cursor."""
        self.move_cursor(row=self.cursor_row, column=self.cursor_column)

    def on_data_table_cell_highlighted(self, event: DataTable.CellHighlighted) -> None:
        """A matrix the user moved to is said to the list (which follows); the event goes on to the
        screen, which names the cell under the grid. Not when the grid was the one following: its
        echo, arriving after the list moved on, would pull both back and forth for ever."""
        if self.has_focus and (name := self.highlighted) is not None:
            self.post_message(MatrixHighlighted(name))

    def on_data_table_cell_selected(self, event: DataTable.CellSelected) -> None:
        event.stop()
        cell = self.cell
        if cell is None:
            return
        if cell.kind == "experts":
            self.toggle_experts()
        elif cell.matrix is not None and self.inspector.comparison.tuned[self.model].spec(cell.matrix) is not None:
            self.post_message(OpenMatrix(cell.matrix))

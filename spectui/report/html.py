"""A scan as one self-contained HTML page: inline CSS and inline SVG figures, no scripts, nothing fetched,
so it can be mailed, attached to an issue or opened offline."""

from __future__ import annotations

from html import escape

import numpy as np

from spectui import __version__
from spectui.report import figures
from spectui.report.records import MEDIAN_COLUMNS, cosine_text, median_cells, model_records
from spectui.report.summary import (
    MATRIX_LEGEND,
    SUMMARY_COLUMNS,
    MatrixRow,
    cell,
    failures,
    matrix_rows,
    rows_with_intruders,
    summary_cells,
)
from spectui.results import ModelSummary, ScanResults

MAX_MATRIX_FIGURES = 12
K_POINTS = 16  # points of the intruders-vs-k curve, spaced evenly on a log scale

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; color: #1b1b1b; margin: 0; background: #fafafa; }
main { max-width: 1280px; margin: 0 auto; padding: 1.5em 2em 3em; background: #fff; }
h1 { font-size: 1.6em; margin: 0 0 .2em; }
h2 { font-size: 1.2em; margin: 1.8em 0 .5em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
.meta, .note { color: #555; }
.warn { color: #8a4b00; }
code { font: 12px ui-monospace, monospace; overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: .4em 0; }
th, td { padding: .25em .6em; border-bottom: 1px solid #e5e5e5; text-align: left; vertical-align: top; }
th { background: #f3f3f3; font-weight: 600; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: .8em; height: .8em; border-radius: 2px; margin-right: .4em; }
.figs { display: flex; flex-wrap: wrap; gap: 1em; }
svg { max-width: 100%; height: auto; }
figure { margin: 1em 0 1.6em; }
figcaption { font-weight: 600; margin-bottom: .3em; }
table.grid td { text-align: center; min-width: 2.4em; border: 1px solid #fff; }
table.grid td.none { background: #f0f0f0; color: #999; }
table.grid { margin-bottom: 1.2em; }
table.grid th { font-size: 12px; }
table.grid caption { text-align: left; font-weight: 600; }
details summary { cursor: pointer; color: #333; }
"""


def scan_html(scan: ScanResults, k: int, epsilon: float) -> str:
    comparison = scan.comparison
    records = model_records(scan, k, epsilon)
    summaries = scan.summaries(k, epsilon)
    rows = matrix_rows(comparison, records)
    labels = [s.label for s in summaries]
    title = f"spectui: {comparison.base.label} → {', '.join(labels)}"
    tuned = ", ".join(f"<code>{escape(str(m.path))}</code>" for m in comparison.tuned)
    parts = [
        f"<h1>Intruder dimensions</h1><p class=meta>Base <code>{escape(str(comparison.base.path))}</code>; "
        f"tuned {tuned}. k = {k}, ε = {epsilon}: a tuned singular vector among the top {k} is an intruder "
        f"when its largest |cosine| with any base singular vector is below {epsilon}. spectui {__version__}.</p>",
        *(f"<p class=warn>⚠ {escape(w)}</p>" for w in [*comparison.warnings, *failures(scan.errors)]),
        "<h2>Summary</h2>", _summary_table(summaries),
        _followup(scan, records, k, epsilon),
        "<h2>Intruders vs ε and vs k</h2><div class=figs>",
        figures.epsilon_curves(labels, [s.by_epsilon for s in summaries], k, epsilon),
        _k_figure(scan, labels, k, epsilon), "</div>",
        f"<h2>Per layer</h2><p class=note>Intruders per matrix at k = {k}, ε = {epsilon}; grey: not changed "
        "by that model. Hover a cell for the matrix name and the intruders' ranks.</p>",
        *_layer_grids(summaries, rows, k),
        _matrix_figures(rows, labels, scan, k, epsilon),
        "<h2>All matrices</h2>", _matrix_table(rows, labels),
    ]
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head>\n<body><main>\n" + "\n".join(parts) + "\n</main></body></html>\n")


def _summary_table(summaries: list[ModelSummary]) -> str:
    rows = []
    for i, s in enumerate(summaries):
        cells = [escape(text) for text in summary_cells(s)]
        cells[0] = _swatch(i) + cells[0]
        cells[2] = f"<strong>{cells[2]}</strong>"
        rows.append(cells)
    return _table(SUMMARY_COLUMNS, rows, right_from=2)


def _followup(scan: ScanResults, records: list[dict], k: int, epsilon: float) -> str:
    """The follow-up literature's metrics: medians per model, and with several tuned
    models the cosines of their updates."""
    rows = []
    for i, record in enumerate(records):
        cells = [escape(text) for text in median_cells(record)]
        rows.append([_swatch(i) + cells[0], *cells[1:]])
    parts = [f"<h2>How the update sits in the spectrum</h2><p class=note>Medians over matrices, r = k = {k}. "
             "Principal angles between the top-k left singular subspaces of W0 and W (how far the dominant "
             "subspace turned); the share of ‖ΔW‖²<sub>F</sub> inside the base's top-k left singular subspace and "
             f"along the intruders (ε = {epsilon}); the relative change of the top-k singular values at matched "
             "ranks.</p>", _table(MEDIAN_COLUMNS, rows, right_from=1)]
    similarity = scan.update_similarity()
    if similarity is not None:
        head = ["", *similarity.labels]
        body = [[_swatch(i) + escape(label), *map(cosine_text, row)]
                for i, (label, row) in enumerate(zip(similarity.labels, similarity.cosine))]
        parts += ["<h3>Update similarity</h3><p class=note>Cosine of the updates, ⟨ΔW<sub>a</sub>, ΔW<sub>b</sub>⟩"
                  "<sub>F</sub> / (‖ΔW<sub>a</sub>‖ ‖ΔW<sub>b</sub>‖), over every matrix: near 1 where two "
                  "fine-tunes changed the same directions, near 0 where they are unrelated.</p>",
                  _table(head, body, right_from=1)]
    return "\n".join(parts)


def _swatch(index: int) -> str:
    """The model's colour in the figures, beside its name."""
    return f"<span class=swatch style='background:{figures.model_colour(index)}'></span>"


def _table(header, rows: list[list[str]], right_from: int) -> str:
    """Rows of cells that are already HTML; columns from `right_from` on are numbers, right-aligned."""
    def tr(cells, tag):
        return "<tr>" + "".join(f"<{tag}{' class=n' if i >= right_from else ''}>{c}</{tag}>"
                                for i, c in enumerate(cells)) + "</tr>"
    body = "".join(tr(cells, "td") for cells in rows)
    return f"<table>{tr(map(escape, header), 'th')}{body}</table>"


def _k_figure(scan: ScanResults, labels: list[str], k: int, epsilon: float) -> str:
    """k from 1 to the largest k stored (TOP_VECTORS, or the rank of smaller matrices): no new SVD."""
    ks = sorted({int(v) for v in np.unique(np.geomspace(1, max(scan.largest_k, k), K_POINTS).round())} | {k})
    totals = [scan.k_curve(i, epsilon, ks) for i in range(len(labels))]
    return figures.k_curves(labels, ks, totals, k, epsilon)


def _layer_grids(summaries: list[ModelSummary], rows: list[MatrixRow], k: int) -> list[str]:
    """Per tuned model, layers down and module types across (the same for every model, so the grids line
    up); cells coloured by intruder count, k (the most possible) being darkest."""
    places = [(c["layer"], c["module"]) for row in rows for c in row.cells if c]
    modules = list(dict.fromkeys(module for _, module in places))
    layers = sorted(set(layer for layer, _ in places), key=lambda layer: (layer is None, layer or 0))
    head = "<tr><th>layer</th>" + "".join(f"<th>{escape(m)}</th>" for m in modules) + "</tr>"
    grids = []
    for index, summary in enumerate(summaries):
        by_place = {(c["layer"], c["module"]): c for row in rows if (c := row.cells[index])}
        body = "".join(
            f"<tr><th>{'other' if layer is None else layer}</th>"
            + "".join(_grid_cell(by_place.get((layer, module)), k) for module in modules) + "</tr>"
            for layer in layers
        )
        grids.append(f"<table class=grid><caption>{_swatch(index)}{escape(summary.label)}</caption>"
                     f"{head}{body}</table>")
    return grids


def _grid_cell(m: dict | None, k: int) -> str:
    if m is None:
        return "<td class=none>·</td>"
    background, colour = figures.count_colour(m["intruders"], k)
    tip = f"{m['name']}: ranks {m['intruder_ranks']}" if m["intruders"] else m["name"]
    return f"<td style='background:{background};color:{colour}' title='{escape(tip)}'>{m['intruders']}</td>"


def _matrix_figures(rows: list[MatrixRow], labels: list[str], scan: ScanResults, k: int, epsilon: float) -> str:
    shown, left_out = rows_with_intruders(rows, MAX_MATRIX_FIGURES)
    if not shown:
        return f"<h2>Matrices with intruders</h2><p class=note>None at k = {k}, ε = {epsilon}.</p>"
    which = f"The {len(shown)} with the most intruders ({left_out} more not drawn; see the table below)" \
        if left_out else f"All {len(shown)}"
    parts = [f"<h2>Matrices with intruders</h2><p class=note>{which}. "
             "Left: singular values of the base and of each tuned model (× marks an intruder). Then, per tuned "
             "model, |cosine| between its top singular vectors and the base's (numbered from 0, as in the tables), "
             "intruder columns outlined.</p>"]
    for row in shown:
        panels = [(i, labels[i], scan.result(i, row.name)) for i, cell in enumerate(row.cells) if cell is not None]
        shape = "×".join(map(str, row.shape))
        random_note = " — the base matrix looks random: its intruders mean little" if row.random_like else ""
        parts.append(f"<figure><figcaption><code>{escape(row.short)}</code> {shape}{random_note}</figcaption>"
                     f"{figures.matrix_figure(row.name, panels, k, epsilon)}</figure>")
    return "\n".join(parts)


def _matrix_table(rows: list[MatrixRow], labels: list[str]) -> str:
    cells = [[f"<code>{escape(row.short)}</code>" + (" †" if row.random_like else ""), row.size,
              *(cell(c, lambda count: f"<strong>{count}</strong>") for c in row.cells)] for row in rows]  # numbers only
    return (f"<details><summary>{len(rows)} matrices. Each cell: {escape(MATRIX_LEGEND)}. Ranks count from 0, "
            "as in the JSON.</summary>"
            f"{_table(['matrix', 'shape', *labels], cells, right_from=2)}</details>")

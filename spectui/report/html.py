"""A scan, or a study's results, as one self-contained HTML page: inline CSS and inline SVG figures, no
scripts, nothing fetched, so it can be mailed, attached to an issue or opened offline."""

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
from spectui.study_results import (
    StudyResults,
    cell_text,
    effective_rank_vs_rank,
    forgetting_matrix,
    forgetting_vs_rank,
    intruders_vs_rank,
    intruders_vs_stage,
    matched,
    rank_grid,
    reference_vs_stage,
    results_table,
    table_cells,
)

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
td.n { white-space: nowrap; }
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
    return _page(title, parts)


def _page(title: str, parts: list[str]) -> str:
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


def _table(header, rows: list[list[str]], right_from: int, left: tuple[int, ...] = ()) -> str:
    """Rows of cells that are already HTML; columns from `right_from` on are numbers, right-aligned,
    but those in `left` (text among the numbers)."""
    def tr(cells, tag):
        return "<tr>" + "".join(f"<{tag}{' class=n' if i >= right_from and i not in left else ''}>{c}</{tag}>"
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


# -- a study ------------------------------------------------------------------------------------------------


def study_html(results: StudyResults, state: str = "", message: str = "") -> str:
    """A study's page: what was trained and measured, the results table, then the paper's views of its kind
    (a rank study: intruders, forgetting and the effective rank of ΔW against rank at matched task loss; a
    sequence: the forgetting matrix of each line side by side, and intruders and reference loss per stage).
    `state` and `message`: how the study's process stands, said when it is not done."""
    sequence = results.kind == "sequence"
    what = "Sequence" if sequence else "Study"
    tasks = "".join(f"<li>{escape(task.name)}: <code>{escape(task.data)}</code> (measured on its held-out "
                    f"examples, <code>{escape(task.heldout)}</code>)</li>" for task in results.tasks)
    parts = [
        f"<h1>{what} {escape(results.name)}</h1><p class=meta>Base <code>{escape(results.base)}</code>; "
        f"forgetting is the loss on the reference text <code>{escape(results.reference)}</code>; the task "
        f"metric is the LM loss (nats per token) on each task's held-out examples; intruders at k = {results.k}, "
        f"counted against the original base. spectui {__version__}.</p><p class=meta>Trained on:</p>"
        f"<ul class=meta>{tasks}</ul>",
        *([f"<p class=warn>⚠ the study is {escape(state)}{': ' + escape(message) if message else ''}</p>"]
          if state and state != "done" else []),
        *(f"<p class=warn>⚠ {escape(m.name)} {escape(m.state)}{': ' + escape(m.message) if m.message else ''}</p>"
          for m in results.members if m.state not in ("done", "queued", "running")),
        "<h2>Results</h2>", _study_table(results),
        *(_sequence_views(results) if sequence else _rank_views(results)),
    ]
    return _page(f"spectui: {what.lower()} {results.name}", parts)


def _study_table(results: StudyResults) -> str:
    table = results_table(results)
    keys = [column.key for column in table.columns]
    rows = [[escape(text) for text in cells] for cells in table_cells(table)]
    base = ""
    if results.base_scores:
        scores = results.base_scores
        base = (f"<p class=note>The base before fine-tuning: reference loss {cell_text(scores.reference_loss)}; "
                "task loss " + ", ".join(f"{escape(task.name)} {cell_text(loss)}"
                                         for task, loss in zip(results.tasks, scores.task_loss)) + ".</p>")
    left = tuple(keys.index(key) for key in ("task", "state") if key in keys)
    return _table([column.title for column in table.columns], rows, right_from=1, left=left) + base


def _rank_views(results: StudyResults) -> list[str]:
    chosen = matched(results)
    if not chosen.members:
        return ["<p class=note>No member has been measured yet.</p>"]
    which = (f"the member whose task loss is nearest {chosen.target:.4f}, the best task loss every rank reached"
             if rank_grid(results) else "its member")
    names = ", ".join(f"<code>{escape(m.name)}</code>" for m in chosen.members)
    k = results.k
    return [
        f"<h2>Ranks compared</h2><p class=note>Per LoRA rank, and full fine-tuning, {which} ({names}): as in the "
        "paper, forgetting is compared at matched task performance.</p><div class=figs>",
        figures.study_curves(intruders_vs_rank(results), "Intruders vs rank", "LoRA rank",
                             f"intruders in the top {k}", "study-intruders", counts=True),
        figures.study_curves(forgetting_vs_rank(results), "Forgetting vs rank", "LoRA rank",
                             "loss (nats per token)", "study-forgetting"),
        figures.study_curves([effective_rank_vs_rank(results)], "Effective rank of ΔW vs rank", "LoRA rank",
                             "median effective rank of ΔW", "study-effective-rank"),
        "</div>",
    ]


def _sequence_views(results: StudyResults) -> list[str]:
    return [
        "<h2>Forgetting across stages</h2><p class=note>Per line, the loss on each task's held-out examples "
        "after each stage (the base before any); forgetting is a task's loss after the last stage minus its loss "
        "right after its own stage. Below: the reference loss and the intruders (k = "
        f"{results.k}, ε = 0.5) of each stage's model against the original base.</p><div class=figs>",
        *(_forgetting_grid(results, line) for line in results.lines),
        "</div><h2>Intruders and reference loss per stage</h2><div class=figs>",
        figures.study_curves(intruders_vs_stage(results), "Intruders vs stage (ε = 0.5)", "stage",
                             f"intruders in the top {results.k}", "sequence-intruders", counts=True),
        figures.study_curves(reference_vs_stage(results), "Reference loss vs stage", "stage",
                             "reference loss (forgetting)", "sequence-reference"),
        "</div>",
    ]


def _forgetting_grid(results: StudyResults, line: str) -> str:
    """One line's task × stage losses, with the reference loss and intruders per stage under them."""
    matrix = forgetting_matrix(results, line)
    intruders = next(curve for curve in intruders_vs_stage(results) if curve.label == line)
    reference = next(curve for curve in reference_vs_stage(results) if curve.label == line)
    header = ["task", *("base" if stage == "base" else f"stage {stage}" for stage in matrix.stages), "forgetting"]
    rows = [[escape(task), *map(cell_text, row), cell_text(forgot, signed=True)]
            for task, row, forgot in zip(matrix.tasks, matrix.loss, matrix.forgetting())]
    rows += [["<em>reference</em>", *map(cell_text, reference.y), ""],
             ["<em>intruders</em>", *map(cell_text, intruders.y), ""]]
    return f"<div><p><strong>{escape(line)}</strong></p>{_table(header, rows, right_from=1)}</div>"

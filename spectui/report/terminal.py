"""A scan, or a study's results, as terminal tables (`spectui scan` without --json / --csv, `spectui
study`, and the inspector's study view)."""

from __future__ import annotations

from rich.table import Table

from spectui.report.records import model_records
from spectui.report.summary import MATRIX_LEGEND, cell, matrix_rows
from spectui.results import ScanResults
from spectui.study_results import (
    StudyResults,
    cell_text,
    forgetting_matrix,
    intruders_vs_stage,
    matched,
    rank_grid,
    reference_vs_stage,
    results_table,
    table_cells,
)


def scan_tables(scan: ScanResults, k: int, epsilon: float) -> list[Table]:
    """A summary per model, then one row per matrix with a column per model."""
    if scan.counts_only:
        return counts_tables(scan, k, epsilon)
    summary = Table(title=f"Intruder dimensions in {scan.comparison.base.path} → tuned (k={k}, ε={epsilon})")
    for column, justify in (("tuned model", "left"), ("kind", "left"), ("intruders", "right"),
                            ("matrices with", "right"), ("by ε=.1….9", "left"), ("skipped", "right")):
        summary.add_column(column, justify=justify)
    for s in scan.summaries(k, epsilon):
        summary.add_row(s.label, s.description, str(s.total), f"{s.with_intruders}/{s.scanned}",
                        " ".join(str(v) for v in s.by_epsilon.values()), str(s.skipped))
    detail = Table(title="Per matrix: intruders (ranks) · ‖ΔW‖/‖W0‖ · effective rank of ΔW",
                   caption=f"Each cell: {MATRIX_LEGEND}.")
    detail.add_column("matrix", overflow="fold")
    detail.add_column("shape")
    for label in (m.label for m in scan.comparison.tuned):
        detail.add_column(label, justify="right")
    for row in matrix_rows(scan.comparison, model_records(scan, k, epsilon)):
        cells = [cell(c, lambda count: f"[bold red]{count}[/]") for c in row.cells]
        detail.add_row(row.short + (" †" if row.random_like else ""), row.size, *cells)
    return [summary, detail]


def counts_tables(scan: ScanResults, k: int, epsilon: float) -> list[Table]:
    """A counts-only scan: the totals per model and how they were decided, then the intruder ranks
    of each matrix that has any."""
    records = model_records(scan, k, epsilon)
    summary = Table(title=f"Intruder dimensions in {scan.comparison.base.path} → tuned (k={k}, ε={epsilon}; "
                          "counts only)")
    for column in ("tuned model", "kind", "intruders", "matrices with",
                   "decided by compact / bounds / reduction / exact / cache", "skipped"):
        summary.add_column(column, justify="left" if column in ("tuned model", "kind") else "right")
    for r in records:
        how = r["decided_by"]
        summary.add_row(r["label"], r["description"], str(r["total_intruders"]),
                        f"{sum(1 for m in r['matrices'] if m['intruders'])}/{len(r['matrices'])}",
                        f"{how['compact']} / {how['bounds']} / {how['reduction']} / {how['exact']} / {how['cache']}",
                        str(len(r["skipped"])))
    detail = Table(title="Matrices with intruders (ranks in the tuned spectrum)")
    detail.add_column("tuned model")
    detail.add_column("matrix", overflow="fold")
    detail.add_column("intruders", justify="right")
    detail.add_column("ranks")
    for r in records:
        for m in r["matrices"]:
            if m["intruders"]:
                detail.add_row(r["label"], m["name"], str(m["intruders"]), " ".join(map(str, m["intruder_ranks"])))
    return [summary, detail]


def study_tables(results: StudyResults) -> list:
    """Rich tables: the results table, then the study's views (matched task loss; or per line of
    a sequence, the forgetting matrix with intruders and reference loss per stage)."""
    data = results_table(results)
    table = Table(title=f"Study {results.name}: task loss on held-out examples, reference loss "
                        f"(forgetting), intruders at k={results.k} for each ε, median effective "
                        "rank of ΔW", title_justify="left")
    for column in data.columns:
        title = column.title.replace("intruders ", "").replace("eff. rank ΔW", "eff. rank")
        left = column.key in ("member", "task", "state")
        table.add_column(title, justify="left" if left else "right", no_wrap=left)
    for cells in table_cells(data):
        table.add_row(*cells)
    tables = [table]
    if results.base_scores:
        base = results.base_scores
        tables.append(f"base: reference loss {base.reference_loss:.4f}, task loss "
                      + ", ".join(f"{task.name} {loss:.4f}"
                                  for task, loss in zip(results.tasks, base.task_loss)))
    if results.kind == "study":
        chosen = matched(results)
        if chosen.target is not None and rank_grid(results):
            tables.append(f"at matched task loss (≈ {chosen.target:.4f}, the best every rank "
                          "reached): " + "; ".join(
                              f"{m.rank_label} lr {m.lr:g}: task {m.own_task_loss:.4f}, reference "
                              f"{m.reference_loss:.4f}, intruders {m.intruders_at(0.5)}"
                              for m in chosen.members))
        return tables
    return tables + [forgetting_table(results, line) for line in results.lines]


def forgetting_table(results: StudyResults, line: str) -> Table:
    """One line of a sequence as a rich table: the task loss after each stage (rows: tasks, and
    how much later stages undid each), then the reference loss and intruders (ε=0.5) per stage."""
    matrix = forgetting_matrix(results, line)
    intruders = next(curve for curve in intruders_vs_stage(results) if curve.label == line)
    reference = next(curve for curve in reference_vs_stage(results) if curve.label == line)
    grid = Table(title=f"{line}: task loss after each stage (rows: tasks), reference loss and "
                       f"intruders (ε=0.5) against the original base", title_justify="left")
    grid.add_column("")
    for stage in matrix.stages:
        grid.add_column("base" if stage == "base" else f"stage {stage}", justify="right")
    grid.add_column("forgetting", justify="right")
    for task, row, forgot in zip(matrix.tasks, matrix.loss, matrix.forgetting()):
        grid.add_row(task, *(cell_text(value) for value in row), cell_text(forgot, signed=True))
    grid.add_row("reference", *(cell_text(value) for value in reference.y), "")
    grid.add_row("intruders", *(cell_text(value) for value in intruders.y), "")
    return grid

"""A scan as terminal tables (`spectui scan` without --json / --csv)."""

from __future__ import annotations

from rich.table import Table

from spectui.report.records import model_records
from spectui.report.summary import MATRIX_LEGEND, cell, matrix_rows
from spectui.results import ScanResults


def scan_tables(scan: ScanResults, k: int, epsilon: float) -> list[Table]:
    """A summary per model, then one row per matrix with a column per model."""
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

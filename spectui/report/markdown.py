"""A scan as GitHub-flavoured Markdown: tables to paste into an issue or a paper draft."""

from __future__ import annotations

from spectui.report.records import model_records
from spectui.report.summary import MATRIX_LEGEND, SUMMARY_COLUMNS, cell, failures, matrix_rows, summary_cells
from spectui.results import ScanResults


def scan_markdown(scan: ScanResults, k: int, epsilon: float) -> str:
    comparison = scan.comparison
    records = model_records(scan, k, epsilon)
    summaries = scan.summaries(k, epsilon)
    sweep = list(summaries[0].by_epsilon) if summaries else []
    lines = [
        f"## Intruder dimensions (k = {k}, ε = {epsilon})",
        "",
        f"Base: `{comparison.base.path}`. A tuned singular vector among the top {k} is an intruder when its "
        f"largest |cosine| with any base singular vector is below {epsilon}.",
        "",
        *(f"> ⚠ {warning}\n" for warning in [*comparison.warnings, *failures(scan.errors)]),
        *_table(SUMMARY_COLUMNS, [summary_cells(s) for s in summaries], right_from=2),
        "",
        f"### Intruders vs ε (k = {k})",
        "",
        *_table(["tuned model", *(f"ε={eps}" for eps in sweep)],
                [[s.label, *(str(s.by_epsilon[eps]) for eps in sweep)] for s in summaries], right_from=1),
        "",
        "### Per matrix",
        "",
        f"Each cell: {MATRIX_LEGEND}.",
        "",
        *_table(["matrix", "shape", *(s.label for s in summaries)],
                [[f"`{row.short}`" + (" †" if row.random_like else ""), row.size,
                  *(cell(c, lambda count: f"**{count}**") for c in row.cells)]
                 for row in matrix_rows(comparison, records)], right_from=2),
    ]
    return "\n".join(lines) + "\n"


def _table(header, rows: list[list[str]], right_from: int) -> list[str]:
    """A pipe table whose columns from `right_from` on are right-aligned (numbers)."""
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    return [_row(header), _row(align), *(_row(r) for r in rows)]


def _row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

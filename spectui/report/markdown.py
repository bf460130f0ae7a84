"""A scan as GitHub-flavoured Markdown: tables to paste into an issue or a paper draft."""

from __future__ import annotations

from spectui.report.records import MEDIAN_COLUMNS, cosine_text, median_cells, model_records
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
        *_followup(scan, records, k, epsilon),
        "### Per matrix",
        "",
        f"Each cell: {MATRIX_LEGEND}. Ranks count from 0, as in the JSON.",
        "",
        *_table(["matrix", "shape", *(s.label for s in summaries)],
                [[f"`{row.short}`" + (" †" if row.random_like else ""), row.size,
                  *(cell(c, lambda count: f"**{count}**") for c in row.cells)]
                 for row in matrix_rows(comparison, records)], right_from=2),
    ]
    return "\n".join(lines) + "\n"


def _followup(scan: ScanResults, records: list[dict], k: int, epsilon: float) -> list[str]:
    """The follow-up literature's metrics: medians per model, and with several tuned
    models the cosines of their updates."""
    lines = [
        f"### How the update sits in the spectrum (medians over matrices, r = k = {k})",
        "",
        "Principal angles between the top-k left singular subspaces of W0 and W; the share of ‖ΔW‖²_F inside "
        f"the base's top-k left singular subspace and along the intruders (ε = {epsilon}); the relative change "
        "of the top-k singular values at matched ranks.",
        "",
        *_table(MEDIAN_COLUMNS, [median_cells(r) for r in records], right_from=1),
        "",
    ]
    similarity = scan.update_similarity()
    if similarity is not None:
        lines += [
            "### Update similarity",
            "",
            "Cosine of the updates, ⟨ΔW_a, ΔW_b⟩_F / (‖ΔW_a‖ ‖ΔW_b‖), over every matrix: near 1 where two fine-tunes "
            "changed the same directions, near 0 where they are unrelated.",
            "",
            *_table(["", *similarity.labels],
                    [[label, *map(cosine_text, row)] for label, row in zip(similarity.labels, similarity.cosine)],
                    right_from=1),
            "",
        ]
    return lines


def _table(header, rows: list[list[str]], right_from: int) -> list[str]:
    """A pipe table whose columns from `right_from` on are right-aligned (numbers)."""
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    return [_row(header), _row(align), *(_row(r) for r in rows)]


def _row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

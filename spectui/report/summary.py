"""What every report format shows, derived from `spectui.report.records` and `ScanResults` so that the
tables, the HTML, the Markdown and the CSV carry exactly the numbers of `spectui scan --json`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from spectui.checkpoint.comparison import Comparison
from spectui.checkpoint.names import short_name
from spectui.results import ModelSummary

SUMMARY_COLUMNS = ("tuned model", "kind", "intruders", "matrices with intruders", "median ‖ΔW‖/‖W0‖",
                   "median effective rank of ΔW", "skipped")
MATRIX_LEGEND = ("intruders (their ranks) · ‖ΔW‖/‖W0‖ · effective rank of ΔW; – where the model leaves the "
                 "matrix unchanged; † the base matrix looks random, so its intruders mean little")


@dataclass(frozen=True)
class MatrixRow:
    """One base matrix across the tuned models; a cell is None where that model leaves it unchanged."""

    name: str
    shape: tuple[int, int]
    random_like: bool
    cells: list[dict | None]

    @property
    def short(self) -> str:
        return short_name(self.name)

    @property
    def size(self) -> str:
        return "×".join(map(str, self.shape))


def matrix_rows(comparison: Comparison, records: list[dict]) -> list[MatrixRow]:
    """Every scanned base matrix in checkpoint order, with one cell (a matrix record) per tuned model."""
    by_model = [{m["name"]: m for m in r["matrices"]} for r in records]
    rows = []
    for name in comparison.matrix_names():
        cells = [matrices.get(name) for matrices in by_model]
        first = next((c for c in cells if c is not None), None)
        if first is not None:
            rows.append(MatrixRow(name, tuple(first["shape"]), first["base_random_like"], cells))
    return rows


def rows_with_intruders(rows: list[MatrixRow], limit: int) -> tuple[list[MatrixRow], int]:
    """The matrices worth a figure: most intruders (in any model) first, then checkpoint order; at most
    `limit` of them, and how many more there were."""
    hit = [row for row in rows if any(c and c["intruders"] for c in row.cells)]
    hit.sort(key=lambda row: -max(c["intruders"] for c in row.cells if c))
    return hit[:limit], max(0, len(hit) - limit)


def summary_cells(s: ModelSummary) -> list[str]:
    """A summary row as text, in the order of SUMMARY_COLUMNS."""
    return [s.label, s.description, str(s.total), f"{s.with_intruders}/{s.scanned}", ratio(s.median_rel_norm),
            rank(s.median_effective_rank), str(s.skipped)]


def cell(m: dict | None, emphasis: Callable[[str], str] = str) -> str:
    """A matrix record as `intruders (ranks) · ‖ΔW‖/‖W0‖ · effective rank`; `emphasis` marks a non-zero count."""
    if m is None:
        return "–"
    count = f"{emphasis(str(m['intruders']))} ({','.join(map(str, m['intruder_ranks']))})" if m["intruders"] else "0"
    return f"{count} · {ratio(m['delta_rel_norm'])} · {rank(m['delta_effective_rank'])}"


def failures(errors: dict) -> list[str]:
    """Matrices the scan could not compute: the report must not pass their absence off as zero intruders."""
    return [f"not scanned: {e.message}" for e in errors.values()]


def ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:#.3g}"


def rank(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"

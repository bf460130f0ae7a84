"""Scan results as the stable JSON / CSV interface and as a terminal table."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING

import numpy as np
from rich.table import Table

from spectui.checkpoint.comparison import Comparison
from spectui.checkpoint.pairing import short_name
from spectui.defaults import EPSILON_SWEEP

if TYPE_CHECKING:
    from spectui.spectral import MatrixResult


def matrix_record(name: str, result: MatrixResult, k: int, epsilon: float, layer, module) -> dict:
    return {
        "name": name,
        "shape": list(result.shape),
        "layer": layer,
        "module": module,
        "intruders": result.intruders(k, epsilon),
        "intruder_ranks": result.intruder_ranks(k, epsilon),
        "max_cos": _floats(result.max_cos[:k]),
        "best_base_index": [int(i) for i in result.best_base[:k]],
        "sigma_base": _floats(result.sigma_base),
        "sigma_tuned": _floats(result.sigma_tuned),
        "delta_rel_norm": float(result.delta_rel_norm),
        "delta_effective_rank": result.delta_effective_rank,
        "stable_rank_base": result.stable_rank_base,
        "stable_rank_tuned": result.stable_rank_tuned,
        "base_random_like": result.base_random_like,
    }


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]


def model_record(comparison: Comparison, results: dict, errors: dict, index: int, k: int, epsilon: float) -> dict:
    """One tuned model's scan: the schema of `spectui scan --json` for a single model."""
    model = comparison.tuned[index]
    matrices = []
    for spec in model.pairing.matrices:
        result = results.get((index, spec.name))
        if result is not None:
            matrices.append(matrix_record(spec.name, result, k, epsilon, spec.layer, spec.module))
    return {
        "base": str(comparison.base.path),
        "tuned": str(model.path),
        "label": model.label,
        "description": model.description,
        "k": k,
        "epsilon": epsilon,
        "total_intruders": sum(m["intruders"] for m in matrices),
        "intruders_vs_epsilon": {
            str(eps): total_intruders(results, index, k, eps) for eps in EPSILON_SWEEP
        },
        "skipped": [{"name": s.name, "reason": s.reason} for s in model.pairing.skipped],
        "errors": [{"name": e.name, "message": e.message} for e in errors.values()
                   if model.spec(e.name) is not None],
        "warnings": comparison.warnings,
        "matrices": matrices,
    }


def total_intruders(results: dict, index: int, k: int, epsilon: float) -> int:
    return sum(r.intruders(k, epsilon) for (i, _), r in results.items() if i == index)


def scan_json(comparison: Comparison, results: dict, errors: dict, k: int, epsilon: float) -> dict:
    """A single tuned model gives its record; several give {"models": [record, ...]}."""
    records = [model_record(comparison, results, errors, i, k, epsilon) for i in range(len(comparison.tuned))]
    if len(records) == 1:
        return records[0]
    return {"base": str(comparison.base.path), "k": k, "epsilon": epsilon, "models": records}


CSV_COLUMNS = (
    "model", "name", "layer", "module", "rows", "cols", "intruders", "intruder_ranks",
    "delta_rel_norm", "delta_effective_rank", "stable_rank_base", "stable_rank_tuned", "base_random_like",
)


def scan_csv(comparison: Comparison, results: dict, errors: dict, k: int, epsilon: float) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for i in range(len(comparison.tuned)):
        record = model_record(comparison, results, errors, i, k, epsilon)
        for m in record["matrices"]:
            writer.writerow([
                record["label"], m["name"], "" if m["layer"] is None else m["layer"], m["module"],
                m["shape"][0], m["shape"][1], m["intruders"], " ".join(map(str, m["intruder_ranks"])),
                f"{m['delta_rel_norm']:.6g}", f"{m['delta_effective_rank']:.6g}",
                f"{m['stable_rank_base']:.6g}", f"{m['stable_rank_tuned']:.6g}", m["base_random_like"],
            ])
    return out.getvalue()


def scan_tables(comparison: Comparison, results: dict, errors: dict, k: int, epsilon: float) -> list[Table]:
    """A summary per model, then one row per matrix with a column group per model."""
    records = [model_record(comparison, results, errors, i, k, epsilon) for i in range(len(comparison.tuned))]
    summary = Table(title=f"Intruder dimensions in {comparison.base.path} → tuned (k={k}, ε={epsilon})")
    summary.add_column("tuned model")
    summary.add_column("kind")
    summary.add_column("intruders", justify="right")
    summary.add_column("matrices with", justify="right")
    summary.add_column("by ε=.1….9", justify="left")
    summary.add_column("skipped", justify="right")
    for r in records:
        with_any = sum(1 for m in r["matrices"] if m["intruders"])
        summary.add_row(r["label"], r["description"], str(r["total_intruders"]),
                        f"{with_any}/{len(r['matrices'])}",
                        " ".join(str(v) for v in r["intruders_vs_epsilon"].values()), str(len(r["skipped"])))
    detail = Table(title="Per matrix: intruders (ranks) · ‖ΔW‖/‖W0‖ · effective rank of ΔW",
                   caption="† the base matrix looks random (Marchenko–Pastur): its intruders mean little")
    detail.add_column("matrix", overflow="fold")
    detail.add_column("shape")
    for r in records:
        detail.add_column(r["label"], justify="right")
    by_model = [{m["name"]: m for m in r["matrices"]} for r in records]
    for name in comparison.matrix_names():
        first = next((m[name] for m in by_model if name in m), None)
        if first is None:
            continue
        mark = " †" if first["base_random_like"] else ""
        cells = [_cell(m.get(name)) for m in by_model]
        detail.add_row(short_name(name) + mark, "×".join(map(str, first["shape"])), *cells)
    return [summary, detail]


def _cell(m: dict | None) -> str:
    if m is None:
        return "[dim]–[/]"
    ranks = ",".join(map(str, m["intruder_ranks"]))
    count = f"[bold red]{m['intruders']}[/] ({ranks})" if m["intruders"] else "0"
    return f"{count} · {m['delta_rel_norm']:#.3g} · {m['delta_effective_rank']:.1f}"

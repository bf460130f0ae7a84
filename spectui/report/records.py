"""Scan results as the stable JSON and CSV interface (`spectui scan --json / --csv`)."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING

import numpy as np

from spectui.checkpoint.names import short_name

if TYPE_CHECKING:
    from spectui.results import ScanResults
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


def model_record(scan: ScanResults, index: int, k: int, epsilon: float) -> dict:
    """One tuned model's scan: the schema of `spectui scan --json` for a single model."""
    comparison = scan.comparison
    model = comparison.tuned[index]
    matrices = [matrix_record(spec.name, result, k, epsilon, spec.layer, spec.module)
                for spec, result in scan.matrices(index)]
    unchanged = scan.unchanged(index)
    record = {
        "base": str(comparison.base.path),
        "tuned": str(model.path),
        "label": model.label,
        "description": model.description,
        "k": k,
        "epsilon": epsilon,
        "total_intruders": sum(m["intruders"] for m in matrices),
        "intruders_vs_epsilon": scan.epsilon_curve(index, k),
        "skipped": [{"name": s.name, "reason": s.reason} for s in model.pairing.skipped],
        "errors": [{"name": e.name, "message": e.message} for e in scan.failures(index)],
        "warnings": comparison.warnings,
        "unchanged_matrices": {"count": len(unchanged), "names": unchanged},
        "identical_to_base": scan.identical_to_base(index),
        "matrices": matrices,
    }
    if model.source.is_adapter:  # an adapter module whose merged ΔW is exactly zero (B never trained)
        record["zero_delta_modules"] = [short_name(name) for name in unchanged]
    return record


def model_records(scan: ScanResults, k: int, epsilon: float) -> list[dict]:
    return [model_record(scan, i, k, epsilon) for i in range(len(scan.comparison.tuned))]


def scan_json(scan: ScanResults, k: int, epsilon: float) -> dict:
    """A single tuned model gives its record; several give {"models": [record, ...]}."""
    records = model_records(scan, k, epsilon)
    if len(records) == 1:
        return records[0]
    return {"base": str(scan.comparison.base.path), "k": k, "epsilon": epsilon, "models": records}


CSV_COLUMNS = (
    "model", "name", "layer", "module", "rows", "cols", "intruders", "intruder_ranks",
    "delta_rel_norm", "delta_effective_rank", "stable_rank_base", "stable_rank_tuned", "base_random_like",
)


def scan_csv(scan: ScanResults, k: int, epsilon: float) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for record in model_records(scan, k, epsilon):
        for m in record["matrices"]:
            writer.writerow([
                record["label"], m["name"], "" if m["layer"] is None else m["layer"], m["module"],
                m["shape"][0], m["shape"][1], m["intruders"], " ".join(map(str, m["intruder_ranks"])),
                f"{m['delta_rel_norm']:.6g}", f"{m['delta_effective_rank']:.6g}",
                f"{m['stable_rank_base']:.6g}", f"{m['stable_rank_tuned']:.6g}", m["base_random_like"],
            ])
    return out.getvalue()

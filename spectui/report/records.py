"""Scan results as the stable JSON and CSV interface (`spectui scan --json / --csv`)."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING

import numpy as np

from spectui.checkpoint.names import short_name

if TYPE_CHECKING:
    from spectui.checkpoint.names import MatrixSpec
    from spectui.intruders import MatrixCounts
    from spectui.results import ScanResults
    from spectui.spectral import MatrixResult


def _flags(spec: MatrixSpec, result: MatrixResult | MatrixCounts, k: int, epsilon: float) -> dict:
    """Which matrix, and its intruders at (k, ε): what every matrix record starts with."""
    return {
        "name": spec.name,
        "shape": list(result.shape),
        "layer": spec.layer,
        "module": spec.module,
        "expert": spec.expert,  # a mixture-of-experts matrix's expert (its module: e.g. mlp.experts.gate_proj)
        "intruders": result.intruders(k, epsilon),
        "intruder_ranks": result.intruder_ranks(k, epsilon),
    }


def matrix_record(spec: MatrixSpec, result: MatrixResult, k: int, epsilon: float) -> dict:
    return {
        **_flags(spec, result, k, epsilon),
        "max_cos": _floats(result.max_cos[:k]),
        "best_base_index": [int(i) for i in result.best_base[:k]],
        "sigma_base": _floats(result.sigma_base),
        "sigma_tuned": _floats(result.sigma_tuned),
        "delta_rel_norm": float(result.delta_rel_norm),
        "delta_effective_rank": result.delta_effective_rank,
        "stable_rank_base": result.stable_rank_base,
        "stable_rank_tuned": result.stable_rank_tuned,
        "base_random_like": result.base_random_like,
        "base_mp_distance": _finite(result.base_mp_distance),
        "base_spikes": result.base_spikes,
        # the follow-up literature's metrics (spectral.MatrixResult), at r = k
        "principal_angles_deg": _floats(result.principal_angles(k)),
        "max_principal_angle_deg": result.max_principal_angle(k),
        "subspace_rotation": result.subspace_rotation(k),
        "delta_share_base_top_k": result.base_subspace_share(k),
        "delta_share_intruders": result.intruder_share(k, epsilon),
        "spectral_drift": [_finite(v) for v in result.spectral_drift(k)],
        "mean_abs_drift": result.mean_abs_drift(k),
    }


def counts_record(spec: MatrixSpec, counts: MatrixCounts, k: int, epsilon: float) -> dict:
    """A matrix of a counts-only scan: its flags, and how they were decided."""
    return {
        **_flags(spec, counts, k, epsilon),
        "max_cos_bounds": [[float(lo), float(hi)] for lo, hi in zip(counts.lower[:k], counts.upper[:k])],
        "decided_by": counts.decided_by,
    }


DECIDED_BY = ("compact", "bounds", "reduction", "exact", "cache", "unchanged")


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]


def _finite(value) -> float | None:
    """A float for JSON: None for NaN or infinity, which strict JSON cannot hold."""
    return float(value) if value is not None and np.isfinite(value) else None


# the per-model medians of the follow-up metrics: JSON key → ModelSummary / followup_medians key
MEDIANS = {"max_principal_angle_deg": "median_max_angle", "subspace_rotation": "median_rotation",
           "delta_share_base_top_k": "median_base_share", "delta_share_intruders": "median_intruder_share",
           "mean_abs_drift": "median_drift"}
MEDIAN_COLUMNS = ("tuned model", "largest principal angle", "mean sin² of the angles", "‖ΔW‖² in base top-k",
                  "‖ΔW‖² along intruders", "mean |drift| of top-k σ")


def median_cells(record: dict) -> list[str]:
    """A model record's follow-up medians as text, in the order of MEDIAN_COLUMNS (– where none)."""
    m = record["medians"]

    def shown(value, fmt):
        return "–" if value is None else fmt.format(value)

    return [record["label"], shown(m["max_principal_angle_deg"], "{:.1f}°"), shown(m["subspace_rotation"], "{:.3g}"),
            shown(m["delta_share_base_top_k"], "{:.3f}"), shown(m["delta_share_intruders"], "{:.3f}"),
            shown(m["mean_abs_drift"], "{:.3g}")]


def cosine_text(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"


def model_record(scan: ScanResults, index: int, k: int, epsilon: float) -> dict:
    """One tuned model's scan: the schema of `spectui scan --json` for a single model."""
    comparison = scan.comparison
    model = comparison.tuned[index]
    unchanged = scan.unchanged(index)
    if scan.counts_only:
        matrices = [counts_record(spec, result, k, epsilon) for spec, result in scan.matrices(index)]
        return {
            "base": str(comparison.base.path), "tuned": str(model.path), "label": model.label,
            "description": model.description, "k": k, "epsilon": epsilon,
            "filled": ["counts"],  # no spectra, ε curve or follow-up metrics: scan without --counts-only
            "total_intruders": sum(m["intruders"] for m in matrices),
            "decided_by": {how: sum(m["decided_by"] == how for m in matrices) for how in DECIDED_BY},
            "skipped": [{"name": s.name, "reason": s.reason} for s in model.pairing.skipped],
            "errors": [{"name": e.name, "message": e.message} for e in scan.failures(index)],
            "warnings": comparison.warnings,
            "unchanged_matrices": {"count": len(unchanged), "names": unchanged},
            "identical_to_base": scan.identical_to_base(index),
            "matrices": matrices,
        }
    matrices = [matrix_record(spec, result, k, epsilon) for spec, result in scan.matrices(index)]
    medians = scan.followup_medians(index, k, epsilon)
    record = {
        "base": str(comparison.base.path),
        "tuned": str(model.path),
        "label": model.label,
        "description": model.description,
        "k": k,
        "epsilon": epsilon,
        "filled": ["counts", "spectra"],
        "total_intruders": sum(m["intruders"] for m in matrices),
        "intruders_vs_epsilon": scan.epsilon_curve(index, k),
        "skipped": [{"name": s.name, "reason": s.reason} for s in model.pairing.skipped],
        "errors": [{"name": e.name, "message": e.message} for e in scan.failures(index)],
        "warnings": comparison.warnings,
        "unchanged_matrices": {"count": len(unchanged), "names": unchanged},
        "identical_to_base": scan.identical_to_base(index),
        "medians": {key: medians[field] for key, field in MEDIANS.items()},
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
    return {"base": str(scan.comparison.base.path), "k": k, "epsilon": epsilon, "models": records,
            "update_similarity": None if scan.counts_only else similarity_record(scan)}


def similarity_record(scan: ScanResults) -> dict | None:
    """Cosines of the tuned models' updates (`ScanResults.update_similarity`): the whole-model matrix
    (rows and columns in `models` order; null where an update is zero) and, per pair, per matrix."""
    similarity = scan.update_similarity()
    if similarity is None:
        return None
    pairs = []
    for (a, b), by_matrix in similarity.per_matrix.items():
        present = [c for c in by_matrix.values() if c is not None]
        pairs.append({"a": similarity.labels[similarity.models.index(a)],
                      "b": similarity.labels[similarity.models.index(b)],
                      "cosine": similarity.between(a, b),
                      "median_matrix_cosine": float(np.median(present)) if present else None,
                      "matrices": by_matrix})
    return {"models": similarity.labels, "cosine": similarity.cosine, "pairs": pairs,
            "left_out": similarity.left_out}


CSV_COLUMNS = (
    "model", "name", "layer", "module", "rows", "cols", "intruders", "intruder_ranks",
    "delta_rel_norm", "delta_effective_rank", "stable_rank_base", "stable_rank_tuned", "base_random_like",
)


COUNTS_CSV_COLUMNS = ("model", "name", "layer", "module", "rows", "cols", "intruders", "intruder_ranks", "decided_by")


def scan_csv(scan: ScanResults, k: int, epsilon: float) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if scan.counts_only:
        writer.writerow(COUNTS_CSV_COLUMNS)
        for record in model_records(scan, k, epsilon):
            for m in record["matrices"]:
                writer.writerow([record["label"], m["name"], "" if m["layer"] is None else m["layer"], m["module"],
                                 m["shape"][0], m["shape"][1], m["intruders"], " ".join(map(str, m["intruder_ranks"])),
                                 m["decided_by"]])
        return out.getvalue()
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

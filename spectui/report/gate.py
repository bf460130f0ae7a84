"""The CI gate of `spectui scan --fail-over N / --fail-over-matrix N`: a pipeline refuses an adapter
whose intruder count is over its limit, and learns from one line per model what went over."""

from __future__ import annotations

from spectui.checkpoint.names import short_name
from spectui.results import ScanResults


def gate_failures(scan: ScanResults, k: int, epsilon: float, max_total: int | None,
                  max_matrix: int | None) -> list[str]:
    """One line per limit a tuned model exceeds (more than the limit fails); empty when the scan passes."""
    failures = []
    for index, model in enumerate(scan.comparison.tuned):
        total = scan.total(index, k, epsilon)
        if max_total is not None and total > max_total:
            failures.append(f"{model.label}: {total} intruders (k={k}, ε={epsilon}), over --fail-over {max_total}")
        if max_matrix is None:
            continue
        counts = [(result.intruders(k, epsilon), spec.name) for spec, result in scan.matrices(index)]
        over = [(count, name) for count, name in counts if count > max_matrix]
        if over:
            count, worst = max(over, key=lambda c: c[0])  # the first of the worst, in checkpoint order
            failures.append(f"{model.label}: {len(over)} matrices over --fail-over-matrix {max_matrix}, "
                            f"most in {short_name(worst)} ({count})")
    return failures

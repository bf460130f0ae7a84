"""The CI gate of `spectui scan --fail-over N / --fail-over-matrix N / --fail-if-unchanged`: a
pipeline refuses an adapter whose intruder count is over its limit, or a fine-tune that changed
nothing, and learns from one line per model what went wrong."""

from __future__ import annotations

from spectui.checkpoint.names import short_name
from spectui.results import ScanResults


def gate_failures(scan: ScanResults, k: int, epsilon: float, max_total: int | None,
                  max_matrix: int | None, fail_if_unchanged: bool = False) -> list[str]:
    """One line per limit a tuned model exceeds (more than the limit fails), and with
    `fail_if_unchanged` per model identical to the base; empty when the scan passes."""
    failures = []
    for index, model in enumerate(scan.comparison.tuned):
        if fail_if_unchanged and scan.identical_to_base(index):
            count = len(model.pairing.matrices)
            failures.append(f"{model.label}: identical to the base (all {count} matrices unchanged), "
                            "--fail-if-unchanged")
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

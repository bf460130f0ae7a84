"""`spectui mitigate`: scale intruder dimensions by λ and write the repaired model.

Models and intruder options are taken exactly as `spectui scan` takes them, and the intruders
come from the same (cached) scan, so what is scaled is what the scan counted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spectui.cli.options import (
    LAMBDAS_TEXT,
    failure_code,
    lambda_value,
    mitigation_options,
    open_from_args,
    scan_from_args,
    stdout_console,
)
from spectui.errors import UsageError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "mitigate", parents=[mitigation_options()],
        help="scale intruder dimensions by λ and save the repaired model",
        description="Scale intruder dimensions by λ (W' = W + (λ−1)σuvᵀ); save the model in its input's kind.",
    )
    parser.add_argument("--lambda", dest="lam", type=lambda_value, required=True, metavar="λ",
                        help=f"scale of each chosen intruder, in {LAMBDAS_TEXT}: 1 changes nothing, 0 removes it")
    parser.add_argument("--out", type=Path, help="directory to write (refused if it exists, unless --force)")
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--rank-extra", action="store_true",
                      help="adapters: re-factor to rank r + intruders scaled, so truncation loses nothing")
    form.add_argument("--merged", action="store_true", help="adapters: write a full merged checkpoint instead")
    parser.add_argument("--dry-run", action="store_true", help="report what would change; write nothing")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from spectui.mitigate import check_export, export, export_note, plan

    if args.out is None and not args.dry_run:
        raise UsageError("--out DIR is required unless --dry-run is given")
    comparison = open_from_args(args)
    if len(comparison.tuned) != 1:
        raise UsageError(f"mitigate takes one tuned model or adapter, not {len(comparison.tuned)}")
    tuned = comparison.tuned[0]
    if (args.merged or args.rank_extra) and not tuned.source.is_adapter:
        raise UsageError(f"{tuned.path}: is a full checkpoint; --merged and --rank-extra are for adapters")
    if not args.dry_run:
        check_export(comparison, 0, args.out, merged=args.merged, force=args.force)
    scan = scan_results(args, comparison)
    chosen = plan(scan, 0, args.k, args.eps, args.scope)
    refits = [] if args.dry_run else export(comparison, chosen, args.lam, args.out, merged=args.merged,
                                            rank_extra=args.rank_extra, force=args.force)
    out = stdout_console()
    out.print(f"{tuned.label}: λ = {args.lam:g} on {chosen.intruders} intruder(s) in "
              f"{len(chosen.matrices)} matrices (scope {chosen.scope}, k = {chosen.k}, ε = {chosen.epsilon:g})",
              highlight=False)
    out.print(_plan_table(chosen, args.lam, refits))
    if not args.dry_run:
        form = export_note(comparison, 0, merged=args.merged)
        out.print(f"wrote {args.out}" + (f" ({form})" if form else ""), highlight=False)
    return 0


def scan_results(args, comparison):
    """The same (cached) scan `spectui scan` runs; a matrix that could not be scanned stops here."""
    scan = scan_from_args(args, comparison)
    if failure_code(scan):
        raise UsageError(next(iter(scan.errors.values())).message)
    return scan


def _plan_table(chosen, lam: float, refits):
    from rich.table import Table

    from spectui.checkpoint.names import normalise, short_name

    table = Table()
    for column in ("matrix", "ranks", "σ before → after"):
        table.add_column(column)
    by_module = {normalise(r.module.weight_name): r for r in refits}
    if refits:
        table.add_column("rank", justify="right")
        table.add_column("truncation error", justify="right")
    for matrix in chosen.matrices:
        sigmas = ", ".join(f"{s:.4g} → {lam * s:.4g}" for s in matrix.sigma)
        cells = [short_name(matrix.spec.name), ", ".join(map(str, matrix.ranks)), sigmas]
        refit = by_module.get(normalise(matrix.spec.name))
        if refits:
            cells += [str(refit.rank), f"{refit.relative_error:.2%}"] if refit else ["", ""]
        table.add_row(*cells)
    return table

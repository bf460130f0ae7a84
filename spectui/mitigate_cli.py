"""`spectui mitigate` and `spectui probe`: thin wrappers over spectui.mitigate and spectui.probe.

Both take their models and intruder options exactly as `spectui scan` does, and choose intruders
from the same (cached) scan, so what they scale is what the scan counted.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from spectui.checkpoint.files import CheckpointError
from spectui.checkpoint.pairing import AdaptedModel, normalise, short_name
from spectui.cli import UsageError, cache_root, open_from_args, scan_options
from spectui.defaults import DEFAULT_LAMBDAS, DEFAULT_MAX_TOKENS, LAMBDA_RANGE, SCOPES
from spectui.finetune.data import DataError
from spectui.mitigate import Plan, Refit, check_export, export, plan
from spectui.probe import ProbeRow

_LAMBDAS = f"[{LAMBDA_RANGE[0]:g}, {LAMBDA_RANGE[1]:g}]"


def _lambda(value: str) -> float:
    lam = float(value)
    if not LAMBDA_RANGE[0] <= lam <= LAMBDA_RANGE[1]:
        raise argparse.ArgumentTypeError(f"λ must be in {_LAMBDAS}, not {value}")
    return lam


def _lambdas(value: str) -> list[float]:
    return [_lambda(part) for part in value.split(",") if part.strip()]


def _token_budget(value: str) -> int:
    n = int(value)
    if n < 2:
        raise argparse.ArgumentTypeError("must be at least 2")
    return n


def _mitigation_options() -> argparse.ArgumentParser:
    opts = argparse.ArgumentParser(add_help=False, parents=[scan_options()])
    opts.add_argument("--scope", choices=SCOPES, default="top",
                      help="top: each matrix's top intruder (the paper); all: each one in the top k (PEFT)")
    return opts


def add_mitigate_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "mitigate", parents=[_mitigation_options()],
        help="scale intruder dimensions by λ and save the repaired model",
        description="Scale intruder dimensions by λ (W' = W + (λ−1)σuvᵀ); save the model in its input's kind.",
    )
    parser.add_argument("--lambda", dest="lam", type=_lambda, required=True, metavar="λ",
                        help=f"scale of each chosen intruder, in {_LAMBDAS}: 1 changes nothing, 0 removes it")
    parser.add_argument("--out", type=Path, help="directory to write (refused if it exists, unless --force)")
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--rank-extra", action="store_true",
                      help="adapters: re-factor to rank r + intruders scaled, so truncation loses nothing")
    form.add_argument("--merged", action="store_true", help="adapters: write a full merged checkpoint instead")
    parser.add_argument("--dry-run", action="store_true", help="report what would change; write nothing")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.set_defaults(handler=run_mitigate)
    return parser


def add_probe_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "probe", parents=[_mitigation_options()],
        help="forgetting probe: reference and task loss of base, tuned and mitigated models",
        description="Loss on reference text (forgetting) and on a task, for base, tuned and mitigated models.",
    )
    parser.add_argument("--text", type=Path, required=True, help="reference text (the base's kind of text)")
    parser.add_argument("--task", type=Path, help="task file (.jsonl/.csv/.txt with `text`, and `label` "
                                                  "for a sequence classifier)")
    parser.add_argument("--lambda-sweep", type=_lambdas, default=list(DEFAULT_LAMBDAS), metavar="λ,λ,…",
                        help="λ values to try, in memory (0,0.25,0.5,0.75,1)")
    parser.add_argument("--max-tokens", type=_token_budget, default=DEFAULT_MAX_TOKENS,
                        help=f"tokens scored per text ({DEFAULT_MAX_TOKENS})")
    parser.add_argument("--json", action="store_true", help="results as JSON on stdout")
    parser.set_defaults(handler=run_probe)
    return parser


def _exits_2_on_bad_input(handler):
    """Bad input ends in one line naming the file and the problem, and exit code 2."""

    @functools.wraps(handler)
    def run(args) -> int:
        try:
            return handler(args)
        except (CheckpointError, UsageError, DataError) as err:
            print(f"spectui: error: {err}", file=sys.stderr)
            return 2

    return run


@_exits_2_on_bad_input
def run_mitigate(args) -> int:
    from rich.console import Console

    if args.out is None and not args.dry_run:
        raise UsageError("--out DIR is required unless --dry-run is given")
    comparison = open_from_args(args)
    if len(comparison.tuned) != 1:
        raise UsageError(f"mitigate takes one tuned model or adapter, not {len(comparison.tuned)}")
    tuned = comparison.tuned[0]
    if (args.merged or args.rank_extra) and not isinstance(tuned.source, AdaptedModel):
        raise UsageError(f"{tuned.path}: is a full checkpoint; --merged and --rank-extra are for LoRA adapters")
    if not args.dry_run:
        check_export(comparison, 0, args.out, merged=args.merged, force=args.force)
    _warn(comparison)
    chosen = plan(comparison, 0, _scan(comparison, args), args.k, args.eps, args.scope)
    refits = [] if args.dry_run else export(comparison, chosen, args.lam, args.out, merged=args.merged,
                                            rank_extra=args.rank_extra, force=args.force)
    out = Console() if sys.stdout.isatty() else Console(width=160)
    out.print(f"{tuned.label}: λ = {args.lam:g} on {chosen.intruders} intruder(s) in "
              f"{len(chosen.matrices)} matrices (scope {chosen.scope}, k = {chosen.k}, ε = {chosen.epsilon:g})",
              highlight=False)
    out.print(_plan_table(chosen, args.lam, refits))
    if not args.dry_run:
        out.print(f"wrote {args.out}", highlight=False)
    return 0


@_exits_2_on_bad_input
def run_probe(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from spectui.probe import Probe, is_classifier, sweep

    for file in (args.text, args.task):
        if file is not None and not file.is_file():
            raise CheckpointError(file, "no such file")
    comparison = open_from_args(args)
    classifiers = {is_classifier(model.source) for model in comparison.tuned}
    if len(classifiers) > 1:
        raise UsageError("the tuned models mix sequence classifiers and language models; probe them apart")
    _warn(comparison)
    results = _scan(comparison, args)
    plans = [plan(comparison, index, results, args.k, args.eps, args.scope)
             for index in range(len(comparison.tuned))]
    probe = Probe(comparison.base.path, args.text, args.task, classification=classifiers == {True},
                  max_tokens=args.max_tokens, device=_device(args))
    rows: list[ProbeRow] = []
    columns = TextColumn("probing"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}")
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("", total=1 + len(plans) * (1 + len(args.lambda_sweep)))
        for row in sweep(probe, comparison, plans, args.lambda_sweep):
            rows.append(row)
            progress.update(task, advance=1, description=row.model)
    if args.json:
        json.dump(_probe_record(args, comparison, plans, rows), sys.stdout)
        sys.stdout.write("\n")
    else:
        out = Console() if sys.stdout.isatty() else Console(width=160)
        out.print(_probe_table(args, rows))
    return 0


def _device(args):
    from spectui.engine import resolve_device

    try:
        return resolve_device(args.device)
    except ValueError as error:
        raise UsageError(str(error)) from error


def _scan(comparison, args) -> dict:
    """Per-matrix results of the same (cached) scan `spectui scan` runs."""
    from spectui.cache import Cache
    from spectui.engine import Scan

    cache = Cache(cache_root(args))
    scan = Scan(comparison, cache, device=str(_device(args)), workers=args.workers).run()
    if scan.errors:
        raise UsageError(next(iter(scan.errors.values())).message)
    return scan.results


def _warn(comparison) -> None:
    for warning in comparison.warnings:
        print(f"spectui: warning: {warning}", file=sys.stderr)


def _plan_table(chosen: Plan, lam: float, refits: list[Refit]):
    from rich.table import Table

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


def _probe_table(args, rows: list[ProbeRow]):
    from rich.table import Table

    title = f"Forgetting probe: {args.text.name} ({rows[0].reference.count} tokens)"
    table = Table(title=title + (f", task {args.task.name}" if args.task else ""), title_justify="left")
    table.add_column("model")
    for column in ("λ", "reference loss", "perplexity", "task loss", "task accuracy"):
        table.add_column(column, justify="right")
    for row in rows:
        task = row.task
        table.add_row(
            row.model, "—" if row.lam is None else f"{row.lam:g}", f"{row.reference.loss:.4f}",
            f"{row.reference.perplexity:.2f}", f"{task.loss:.4f}" if task else "—",
            f"{task.accuracy:.1%}" if task and task.accuracy is not None else "—",
        )
    return table


def _probe_record(args, comparison, plans: list[Plan], rows: list[ProbeRow]) -> dict:
    return {
        "base": str(comparison.base.path),
        "text": str(args.text),
        "task": str(args.task) if args.task else None,
        "k": args.k, "epsilon": args.eps, "scope": args.scope, "max_tokens": args.max_tokens,
        "models": [{"label": model.label, "tuned": str(model.path), "intruders_scaled": p.intruders,
                    "matrices_scaled": len(p.matrices)} for model, p in zip(comparison.tuned, plans)],
        "rows": [row.record() for row in rows],
    }

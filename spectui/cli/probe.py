"""`spectui probe`: the forgetting probe — loss on reference text and on a task for the base, each
tuned model, and each tuned model with its intruders scaled over a λ sweep (in memory)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spectui.cli.mitigate import scan_results
from spectui.cli.options import device, lambda_value, mitigation_options, open_from_args, stdout_console
from spectui.defaults import DEFAULT_LAMBDAS, DEFAULT_MAX_TOKENS
from spectui.errors import FileInputError, UsageError


def _lambdas(value: str) -> list[float]:
    return [lambda_value(part) for part in value.split(",") if part.strip()]


MAX_TOKENS = 1_000_000  # scored per text: past this the probe takes hours, and tokenising it gigabytes


def _token_budget(value: str) -> int:
    n = int(value) if value.isascii() and value.isdigit() and len(value) <= 9 else 0
    if not 2 <= n <= MAX_TOKENS:
        raise argparse.ArgumentTypeError(f"'{value[:40]}' is not a whole number from 2 to {MAX_TOKENS}")
    return n


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "probe", parents=[mitigation_options()],
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
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from spectui.mitigate import plan
    from spectui.probe import Probe, sweep

    for file in (args.text, args.task):
        if file is not None and not file.is_file():
            raise FileInputError(file, "no such file")
    comparison = open_from_args(args)
    classifiers = {model.source.is_classifier for model in comparison.tuned}
    if len(classifiers) > 1:
        raise UsageError("the tuned models mix sequence classifiers and language models; probe them apart")
    scan = scan_results(args, comparison)
    plans = [plan(scan, index, args.k, args.eps, args.scope) for index in range(len(comparison.tuned))]
    probe = Probe(comparison.base.path, args.text, args.task, classification=classifiers == {True},
                  max_tokens=args.max_tokens, device=device(args))
    rows = []
    columns = TextColumn("probing"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}")
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("", total=1 + len(plans) * (1 + len(args.lambda_sweep)))
        for row in sweep(probe, comparison, plans, args.lambda_sweep):
            rows.append(row)
            progress.update(task, advance=1, description=row.model)
    if args.json:
        json.dump(_record(args, comparison, plans, rows), sys.stdout)
        sys.stdout.write("\n")
    else:
        stdout_console().print(_table(args, rows))
    return 0


def _table(args, rows):
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


def _record(args, comparison, plans, rows) -> dict:
    return {
        "base": str(comparison.base.path),
        "text": str(args.text),
        "task": str(args.task) if args.task else None,
        "k": args.k, "epsilon": args.eps, "scope": args.scope, "max_tokens": args.max_tokens,
        "models": [{"label": model.label, "tuned": str(model.path), "intruders_scaled": p.intruders,
                    "matrices_scaled": len(p.matrices)} for model, p in zip(comparison.tuned, plans)],
        "rows": [row.record() for row in rows],
    }

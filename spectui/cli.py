"""`spectui` (the inspector), `spectui scan` (headless), and the other commands: thin wrappers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spectui.spectral import DEFAULT_EPSILON, DEFAULT_K

COMMANDS = ("scan",)


class UsageError(Exception):
    """Bad input found after parsing: one sentence, exit code 2."""


def _k(value: str) -> int:
    k = int(value)
    if k < 1:
        raise argparse.ArgumentTypeError("k must be at least 1")
    return k


def _epsilon(value: str) -> float:
    eps = float(value)
    if not 0 < eps <= 1:
        raise argparse.ArgumentTypeError("epsilon must be in (0, 1]")
    return eps


def _scan_options() -> argparse.ArgumentParser:
    opts = argparse.ArgumentParser(add_help=False)
    opts.add_argument("paths", nargs="*", metavar="MODEL",
                      help="BASE TUNED [TUNED ...], or one ADAPTER_DIR; none: the bundled samples")
    opts.add_argument("--k", type=_k, default=DEFAULT_K, help="top-k tuned singular vectors tested (10)")
    opts.add_argument("--eps", type=_epsilon, default=DEFAULT_EPSILON, help="intruder threshold ε (0.5)")
    opts.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    opts.add_argument("--workers", type=int, default=None, help="parallel matrix jobs")
    opts.add_argument("--cache-dir", type=Path, default=None, help="default: $XDG_CACHE_HOME/spectui")
    opts.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    opts.add_argument("--include-embeddings", action="store_true",
                      help="also scan embeddings and lm_head (off by default)")
    return opts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spectui scan",
        description="Headless scan: intruder dimensions of tuned models against a base.",
        parents=[_scan_options()],
    )
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="results as JSON on stdout")
    fmt.add_argument("--csv", action="store_true", help="results as CSV on stdout")
    return parser


def open_from_args(args):
    """Resolve the positional paths (or the samples) into a Comparison and a Cache."""
    from spectui.cache import Cache, default_cache_dir
    from spectui.checkpoint.comparison import open_comparison
    from spectui.samples import sample_comparison

    if not args.paths:
        base, tuned = sample_comparison()
    elif len(args.paths) == 1:
        base, tuned = None, args.paths
    else:
        base, tuned = args.paths[0], args.paths[1:]
    comparison = open_comparison(base, tuned, include_embeddings=args.include_embeddings)
    cache = Cache(None if args.no_cache else (args.cache_dir or default_cache_dir()))
    return comparison, cache


def run_scan(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from spectui.engine import MatrixDone, MatrixFailed, Scan, resolve_device
    from spectui.report import scan_csv, scan_json, scan_tables

    err = Console(stderr=True)
    try:
        resolve_device(args.device)
    except ValueError as error:
        raise UsageError(str(error)) from error
    comparison, cache = open_from_args(args)
    for warning in comparison.warnings:
        err.print(f"spectui: warning: {warning}", highlight=False, markup=False, soft_wrap=True)
    with Progress(TextColumn("scanning"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.description}"), console=err, transient=True) as progress:
        task = progress.add_task("", total=None)

        def on_event(event):
            if isinstance(event, (MatrixDone, MatrixFailed)):
                progress.update(task, description=event.name)
            if isinstance(event, MatrixFailed):
                err.print(f"spectui: error: {event.message}", highlight=False, markup=False, soft_wrap=True)

        scan = Scan(comparison, cache, device=args.device, workers=args.workers, on_event=on_event)
        progress.update(task, total=scan.total)
        scan.start()
        while not scan.wait(timeout=0.1):
            progress.update(task, completed=scan.done)
    if scan.errors:
        return 2 if any(e.bad_input for e in scan.errors.values()) else 1
    if args.json:
        json.dump(scan_json(comparison, scan.results, scan.errors, args.k, args.eps), sys.stdout)
        sys.stdout.write("\n")
    elif args.csv:
        sys.stdout.write(scan_csv(comparison, scan.results, scan.errors, args.k, args.eps))
    else:
        out = Console() if sys.stdout.isatty() else Console(width=160)  # pipes get whole names
        for table in scan_tables(comparison, scan.results, scan.errors, args.k, args.eps):
            out.print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    from spectui.checkpoint.files import CheckpointError

    argv = sys.argv[1:] if argv is None else argv
    command, rest = (argv[0], argv[1:]) if argv and argv[0] in COMMANDS else (None, argv)
    try:
        if command == "scan":
            return run_scan(build_parser().parse_args(rest))
        print("spectui: the inspector TUI is not installed in this build; use `spectui scan`", file=sys.stderr)
        return 2
    except (CheckpointError, UsageError) as err:
        print(f"spectui: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

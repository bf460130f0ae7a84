"""`spectui` (the inspector), `spectui scan` (headless), and the other commands: thin wrappers."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from spectui.defaults import DEFAULT_EPSILON, DEFAULT_K, TOP_VECTORS

COMMANDS = ("scan", "report", "train", "runs", "mitigate", "probe")


class UsageError(Exception):
    """Bad input found after parsing: one sentence, exit code 2."""


def _k(value: str) -> int:
    k = int(value)
    if not 1 <= k <= TOP_VECTORS:
        raise argparse.ArgumentTypeError(f"k must be from 1 to {TOP_VECTORS} (max|cos| is kept for that many)")
    return k


def _epsilon(value: str) -> float:
    eps = float(value)
    if not 0 < eps <= 1:
        raise argparse.ArgumentTypeError("epsilon must be in (0, 1]")
    return eps


def _count(value: str) -> int:
    count = int(value)
    if count < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return count


def _device(value: str) -> str:
    """Checked by name here (torch loads later); whether CUDA is present is checked when scanning."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise argparse.ArgumentTypeError(f"'{value}' is not a device (auto, cpu, cuda or cuda:N)")
    return value


def scan_options() -> argparse.ArgumentParser:
    opts = argparse.ArgumentParser(add_help=False)
    opts.add_argument("paths", nargs="*", metavar="MODEL",
                      help="BASE TUNED [TUNED ...], or one ADAPTER_DIR; none: the bundled samples")
    opts.add_argument("--k", type=_k, default=DEFAULT_K, help="top-k tuned singular vectors tested (10)")
    opts.add_argument("--eps", type=_epsilon, default=DEFAULT_EPSILON, help="intruder threshold ε (0.5)")
    opts.add_argument("--device", type=_device, default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    opts.add_argument("--workers", type=int, default=None, help="parallel matrix jobs")
    opts.add_argument("--cache-dir", type=Path, default=None, help="default: $XDG_CACHE_HOME/spectui")
    opts.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    opts.add_argument("--include-embeddings", action="store_true",
                      help="also scan embeddings and lm_head (off by default)")
    return opts


def add_scan_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "scan", parents=[scan_options()], help="headless scan: intruder dimensions as a table, JSON or CSV",
        description="Headless scan: intruder dimensions of tuned models against a base.",
    )
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="results as JSON on stdout")
    fmt.add_argument("--csv", action="store_true", help="results as CSV on stdout")
    gate = parser.add_argument_group("CI gate (exit 1 when exceeded, results still printed)")
    gate.add_argument("--fail-over", type=_count, metavar="N", help="a tuned model has more than N intruders")
    gate.add_argument("--fail-over-matrix", type=_count, metavar="N",
                      help="a single matrix has more than N intruders")
    parser.set_defaults(handler=run_scan)
    return parser


def build_command_parser() -> argparse.ArgumentParser:
    """`spectui COMMAND ...`: each subcommand sets `handler(args) -> exit code`."""
    from spectui.finetune.cli import add_runs_parser, add_train_parser
    from spectui.mitigate_cli import add_mitigate_parser, add_probe_parser
    from spectui.reports.cli import add_report_parser

    parser = argparse.ArgumentParser(prog="spectui")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (add_scan_parser, add_report_parser, add_train_parser, add_runs_parser, add_mitigate_parser,
                add_probe_parser):
        add(commands)
    return parser


def build_tui_parser() -> argparse.ArgumentParser:
    from spectui.serve import serve_options

    parser = argparse.ArgumentParser(
        prog="spectui",
        description="Inspect what fine-tuning did to a model's weights. Commands: "
        + ", ".join(COMMANDS) + " (spectui COMMAND --help).",
        parents=[scan_options(), serve_options()],
    )
    parser.add_argument("--export-dir", type=Path, default=None, help="where the export key writes (cwd)")
    return parser


def run_tui(args) -> int:
    comparison = open_from_args(args)  # bad paths fail here, before the app starts
    from spectui.tui.app import SpectuiApp
    from spectui.tui.inspector import Inspector

    inspector = Inspector(comparison, cache_root(args), device=args.device, workers=args.workers)
    SpectuiApp(inspector, k=args.k, epsilon=args.eps, export_dir=args.export_dir).run()
    return 0


def open_from_args(args):
    """Resolve the positional paths (or the samples) into a Comparison; reads headers only."""
    from spectui.checkpoint.comparison import open_comparison
    from spectui.samples import sample_comparison

    if not args.paths:
        base, tuned = sample_comparison()
    elif len(args.paths) == 1:
        base, tuned = None, args.paths
    else:
        base, tuned = args.paths[0], args.paths[1:]
    return open_comparison(base, tuned, include_embeddings=args.include_embeddings)


def cache_root(args) -> Path | None:
    from spectui.defaults import default_cache_dir

    return None if args.no_cache else (args.cache_dir or default_cache_dir())


def scan_from_args(args):
    """Open the comparison and scan it with a progress bar on stderr (shared by `scan` and `report`);
    returns (comparison, finished Scan); failed matrices are printed as they fail."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from spectui.cache import Cache
    from spectui.engine import MatrixDone, MatrixFailed, Scan, resolve_device

    err = Console(stderr=True)
    try:
        resolve_device(args.device)
    except ValueError as error:
        raise UsageError(str(error)) from error
    comparison = open_from_args(args)
    cache = Cache(cache_root(args))
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
    return comparison, scan


def scan_failure_code(scan) -> int:
    """0 when every matrix was scanned; 2 when one could not be read (bad input), else 1."""
    if not scan.errors:
        return 0
    return 2 if any(e.bad_input for e in scan.errors.values()) else 1


def run_scan(args) -> int:
    from rich.console import Console

    from spectui.report import scan_csv, scan_json, scan_tables
    from spectui.reports.gate import gate_failures

    comparison, scan = scan_from_args(args)
    if code := scan_failure_code(scan):
        return code
    if args.json:
        json.dump(scan_json(comparison, scan.results, scan.errors, args.k, args.eps), sys.stdout)
        sys.stdout.write("\n")
    elif args.csv:
        sys.stdout.write(scan_csv(comparison, scan.results, scan.errors, args.k, args.eps))
    else:
        out = Console() if sys.stdout.isatty() else Console(width=160)  # pipes get whole names
        for table in scan_tables(comparison, scan.results, scan.errors, args.k, args.eps):
            out.print(table)
    failures = gate_failures(comparison, scan.results, args.k, args.eps, args.fail_over, args.fail_over_matrix)
    for line in failures:
        print(f"spectui: gate: {line}", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    from spectui.checkpoint.files import CheckpointError

    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] in COMMANDS:
            args = build_command_parser().parse_args(argv)
            return args.handler(args)
        args = build_tui_parser().parse_args(argv)
        if args.serve:
            from spectui.serve import serve

            return serve(args, argv)
        return run_tui(args)
    except (CheckpointError, UsageError) as err:
        print(f"spectui: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

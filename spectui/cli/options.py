"""What the commands share: option types, the model and scan options, opening the models named
on the command line, and a scan with progress on stderr."""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

from spectui.defaults import DEFAULT_EPSILON, DEFAULT_K, LAMBDA_RANGE, SCOPES, TOP_VECTORS

LAMBDAS_TEXT = f"[{LAMBDA_RANGE[0]:g}, {LAMBDA_RANGE[1]:g}]"


class Parser(argparse.ArgumentParser):
    """argparse with errors in one line (the usage block is what --help is for)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parsed(value: str, kind: type, words: str):
    """`kind(value)`, or an error that says what was expected (argparse would name the function)."""
    try:
        parsed = kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not {words}") from None
    if isinstance(parsed, float) and not math.isfinite(parsed):
        raise argparse.ArgumentTypeError(f"'{value}' is not a finite number")
    return parsed


def k_value(value: str) -> int:
    k = _parsed(value, int, "a whole number")
    if not 1 <= k <= TOP_VECTORS:
        raise argparse.ArgumentTypeError(f"k must be from 1 to {TOP_VECTORS} (max|cos| is kept for that many)")
    return k


def epsilon_value(value: str) -> float:
    eps = _parsed(value, float, "a number")
    if not 0 < eps <= 1:
        raise argparse.ArgumentTypeError("epsilon must be in (0, 1]")
    return eps


def count_value(value: str) -> int:
    count = _parsed(value, int, "a whole number")
    if count < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return count


def workers_value(value: str) -> int:
    workers = _parsed(value, int, "a whole number")
    if not 1 <= workers <= 256:
        raise argparse.ArgumentTypeError("must be from 1 to 256")
    return workers


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def size_value(value: str) -> int:
    """Bytes from a size such as 500M, 20G or 1.5T (binary units)."""
    match = re.fullmatch(r"\s*(\d{1,15}(?:\.\d{1,6})?)\s*([KMGT]?)i?B?\s*", value, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"'{value[:40]}' is not a size (e.g. 500M, 20G)")
    return int(float(match[1]) * _UNITS[match[2].upper()])


def device_value(value: str) -> str:
    """Checked by name here (torch loads later); whether CUDA is present is checked when scanning."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+(,\d+)*)?", value):
        raise argparse.ArgumentTypeError(f"'{value}' is not a device (auto, cpu, cuda, cuda:N or cuda:0,1)")
    return value


def lambda_value(value: str) -> float:
    lam = _parsed(value, float, "a number")
    if not LAMBDA_RANGE[0] <= lam <= LAMBDA_RANGE[1]:
        raise argparse.ArgumentTypeError(f"λ must be in {LAMBDAS_TEXT}, not {value}")
    return lam


def scan_options() -> argparse.ArgumentParser:
    """The models to compare and how to scan them: every command that scans takes these."""
    opts = argparse.ArgumentParser(add_help=False)
    opts.add_argument("paths", nargs="*", metavar="MODEL",
                      help="BASE TUNED [TUNED ...], or one ADAPTER_DIR; none: the bundled samples")
    opts.add_argument("--k", type=k_value, default=DEFAULT_K, help="top-k tuned singular vectors tested (10)")
    opts.add_argument("--eps", type=epsilon_value, default=DEFAULT_EPSILON, help="intruder threshold ε (0.5)")
    opts.add_argument("--device", type=device_value, default="auto",
                      help="auto (every GPU when there are any), cpu, cuda (every GPU), cuda:N, cuda:0,1")
    opts.add_argument("--workers", type=workers_value, default=None, help="parallel matrix jobs")
    opts.add_argument("--memory", type=size_value, default=None, metavar="SIZE",
                      help="memory the matrix jobs may hold together; a job waits rather than exceed it "
                           "(default: half the memory available)")
    opts.add_argument("--cache-dir", type=Path, default=None, help="default: $XDG_CACHE_HOME/spectui")
    opts.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    opts.add_argument("--cache-max", type=size_value, default=None, metavar="SIZE",
                      help="cap on the cache's size; least recently used entries go first (20G)")
    opts.add_argument("--include-embeddings", action="store_true",
                      help="also scan embeddings and lm_head (off by default)")
    return opts


def mitigation_options() -> argparse.ArgumentParser:
    """The scan options, and which intruders mitigation scales."""
    opts = argparse.ArgumentParser(add_help=False, parents=[scan_options()])
    opts.add_argument("--scope", choices=SCOPES, default="top",
                      help="top: each matrix's top intruder (the paper); all: each one in the top k (PEFT)")
    return opts


def open_from_args(args):
    """Resolve the positional paths (or the samples) into a Comparison; reads headers only."""
    from spectui.checkpoint.comparison import open_comparison
    from spectui.locations import sample_comparison

    if not args.paths:
        base, tuned = sample_comparison()
    elif len(args.paths) == 1:
        base, tuned = None, args.paths
    else:
        base, tuned = args.paths[0], args.paths[1:]
    return open_comparison(base, tuned, include_embeddings=args.include_embeddings)


def cache_root(args) -> Path | None:
    from spectui.locations import cache_dir

    return None if args.no_cache else (args.cache_dir or cache_dir())


def open_cache(args, warn=None):
    """The scan cache the options name."""
    from spectui.cache import DEFAULT_MAX_BYTES, Cache

    return Cache(cache_root(args), warn=warn, max_bytes=args.cache_max or DEFAULT_MAX_BYTES)


def device(args):
    """The torch device the options name, checked against this machine."""
    from spectui.engine import resolve_device

    return resolve_device(args.device)


def warn(comparison) -> None:
    """What the user should know before reading the results, on stderr."""
    for note in comparison.notes:
        print(f"spectui: note: {note}", file=sys.stderr)
    for warning in comparison.warnings:
        print(f"spectui: warning: {warning}", file=sys.stderr)


def scan_from_args(args, comparison=None, progress: bool = True):
    """Scan the comparison (opened from the arguments unless given), with a progress bar and
    failures on stderr; returns ScanResults. Launched as several ranks (torchrun, accelerate
    launch), each scans its share and only rank 0 returns: the others exit here, quietly."""
    from rich.console import Console

    from spectui import distributed
    from spectui.engine import MatrixDone, MatrixFailed, ScanNotice
    from spectui.results import ScanResults

    device(args)
    if comparison is None:
        comparison = open_from_args(args)
    if (root := cache_root(args)) is not None:
        comparison.check_output(root, "--cache-dir")
    ranks = distributed.world()
    if not ranks or ranks[0] == 0:
        warn(comparison)
    err = Console(stderr=True)
    cache = open_cache(args, warn=lambda message: err.print(f"spectui: warning: {message}", highlight=False,
                                                             markup=False, soft_wrap=True))

    def tell_failure(event):
        if isinstance(event, ScanNotice):
            err.print(f"spectui: note: {event.message}", highlight=False, markup=False, soft_wrap=True)

    if ranks:
        gathered = distributed.scan(comparison, cache, args.device, args.workers, tell_failure, *ranks,
                                    counts=counts_wanted(args), memory=args.memory)
        if gathered is None:
            raise SystemExit(0)
        results = ScanResults(comparison, *gathered)
    else:
        with _progress(err, progress) as bar:
            scan = _scan(comparison, cache, args, bar, tell_failure, (MatrixDone, MatrixFailed))
        results = ScanResults(comparison, scan.results, scan.errors)
    _tell_failures(err, comparison, results.errors)
    return results


def _tell_failures(err, comparison, errors: dict) -> None:
    """The first matrix that could not be scanned, in checkpoint order, in one line (a bad
    adapter fails every matrix it touches in the same way: one sentence says it)."""
    if not errors:
        return
    order = {name: i for i, name in enumerate(comparison.matrix_names())}
    first = min(errors.values(), key=lambda failure: order.get(failure.name, len(order)))
    more = f" (and {len(errors) - 1} more matrices could not be scanned)" if len(errors) > 1 else ""
    err.print(f"spectui: error: {first.message}{more}", highlight=False, markup=False, soft_wrap=True)


def _progress(err, shown: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("scanning"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.description}"), console=err, transient=True, disable=not shown)


def _scan(comparison, cache, args, bar, tell_failure, events):
    """A scan in this process, its progress on the bar."""
    from spectui.engine import Scan

    task = bar.add_task("", total=None)

    def on_event(event):
        if isinstance(event, events):
            bar.update(task, description=event.name)
        tell_failure(event)

    scan = Scan(comparison, cache, device=args.device, workers=args.workers, on_event=on_event,
                counts=counts_wanted(args), memory=args.memory)
    bar.update(task, total=scan.total)
    scan.start()
    while not scan.wait(timeout=0.1):
        bar.update(task, completed=scan.done)
    return scan


def counts_wanted(args) -> tuple[int, float] | None:
    """(k, ε) when only the flags there are wanted (`spectui scan --counts-only`)."""
    return (args.k, args.eps) if getattr(args, "counts_only", False) else None


def failure_code(scan) -> int:
    """0 when every matrix was scanned; 2 when one could not be read (bad input), else 1."""
    if not scan.errors:
        return 0
    return 2 if any(e.bad_input for e in scan.errors.values()) else 1


def stdout_console():
    """Rich output for stdout: pipes get whole names rather than a terminal's width."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)

"""`spectui train` and `spectui runs`: launch fine-tuning runs headless; list, cancel, resume.
`spectui train --sequence t1,t2,…` trains the files in order as stages (spectui.cli.study).

Exit codes: 0 done, 1 the run failed or was cancelled, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import suppress
from dataclasses import fields
from subprocess import Popen

from spectui.errors import UsageError
from spectui.finetune.data import load_splits
from spectui.finetune.runs import LIVE, Run, RunError, State, create_run, find_run, list_runs
from spectui.finetune.spec import RunSpec, SpecError, field_kind, flag_name, load_spec
from spectui.locations import RUNS_ENV

POLL_S = 0.5
CANCEL_WAIT_S = 30.0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    _add_train_parser(subparsers)
    _add_runs_parser(subparsers)


def _add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="fine-tune a model (LoRA variants or full) in a run directory",
        description="Fine-tune a base model from a spec file and/or flags (flags override the "
                    "file). The run lives in <runs-dir>/<name>/ and keeps going if the "
                    "terminal closes; Ctrl-C cancels it.")
    parser.add_argument("spec", nargs="?", help="run spec file (.toml or .json)")
    for spec_field in fields(RunSpec):
        kind = field_kind(spec_field.name)
        options = {"help": spec_field.metadata["help"], "default": argparse.SUPPRESS}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            choices = spec_field.metadata.get("choices")
            metavar = spec_field.metadata.get("metavar", spec_field.name.upper())
            options.update(type=kind, choices=choices, metavar=None if choices else metavar)
        parser.add_argument(flag_name(spec_field.name), **options)
    sequence = parser.add_argument_group(
        "sequential fine-tuning (the runs <name>-stage1…N, each from the previous stage's model)")
    sequence.add_argument("--sequence", type=_files, metavar="F1,F2,…", default=argparse.SUPPRESS,
                          help="train these data files in order, one stage each (instead of "
                               "--data); after each stage, the loss on every task so far, the "
                               "reference loss and the intruders against the original base")
    sequence.add_argument("--reference", metavar="FILE", default=argparse.SUPPRESS,
                          help="pre-training-like text whose loss measures forgetting (default "
                               "for the bundled sample base: its data/reference.txt)")
    parser.add_argument("--detach", action="store_true",
                        help="start the run in the background, print its directory and return")
    _add_runs_dir(parser)
    parser.set_defaults(handler=train_command)


def _files(value: str) -> list[str]:
    files = [part.strip() for part in value.split(",") if part.strip()]
    if not files:
        raise argparse.ArgumentTypeError("give comma-separated data files")
    return files


def _add_runs_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("runs", help="list, cancel or resume fine-tuning runs")
    _add_runs_dir(parser)
    parser.set_defaults(handler=list_command)
    actions = parser.add_subparsers(dest="action", metavar="{list,cancel,resume}")
    _add_runs_dir(actions.add_parser("list", help="show every run with its state and metrics"))
    cancel = actions.add_parser("cancel", help="stop a running run (its output is not written)")
    cancel.add_argument("name")
    _add_runs_dir(cancel)
    cancel.set_defaults(handler=cancel_command)
    resume = actions.add_parser("resume", help="continue a stopped run from its last checkpoint")
    resume.add_argument("name")
    resume.add_argument("--detach", action="store_true", help="resume in the background")
    _add_runs_dir(resume)
    resume.set_defaults(handler=resume_command)


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    """The spec file's fields overridden by the flags given, validated."""
    given = {f.name: getattr(args, f.name) for f in fields(RunSpec) if hasattr(args, f.name)}
    from_file = load_spec(args.spec).to_dict() if args.spec else {}
    spec = RunSpec.from_dict({**from_file, **given})
    try:
        spec.check()
    except SpecError as error:
        raise SpecError(f"{args.spec}: {error}" if args.spec else str(error)) from None
    return spec


def train_command(args: argparse.Namespace) -> int:
    if hasattr(args, "sequence"):
        from spectui.cli.study import launch, sequence_spec

        return launch(sequence_spec(args, args.sequence), detach=args.detach)
    if hasattr(args, "reference"):
        raise UsageError("--reference measures forgetting along a --sequence; for one run, use "
                         "spectui probe")
    spec = spec_from_args(args)
    load_splits(spec)  # reads the data now, so a bad file is reported before any launch
    for warning in spec.warnings():
        print(f"spectui: warning: {warning}", file=sys.stderr)
    run = create_run(spec, _runs_dir(args))
    process = run.start()
    if args.detach:
        print(run.path)
        return 0
    print(f"run {run.name} in {run.path}", flush=True)
    return _follow(run, process)


def list_command(args: argparse.Namespace) -> int:
    runs = list_runs(_runs_dir(args), strict=True)  # a runs directory that is a file: exit 2
    print(f"{'NAME':32} {'STATE':11} {'STEP':>11} {'LOSS':>8} {'EVAL':>8}  NOTE")
    for run in runs:
        summary = run.summary()  # a run with damaged files is listed too, its note says what
        steps = f"{summary.step}/{summary.max_steps or '?'}"
        print(f"{summary.name:32} {summary.state.value:11} {steps:>11} "
              f"{_number(summary.loss):>8} {_number(summary.eval_loss):>8}  {summary.note}")
    return 0


def cancel_command(args: argparse.Namespace) -> int:
    run = find_run(args.name, _runs_dir(args))
    run.cancel()
    deadline = time.monotonic() + CANCEL_WAIT_S
    while run.status().state in LIVE and time.monotonic() < deadline:
        time.sleep(POLL_S)
    print(f"{run.name}: {run.status().state.value}")
    return 0


def resume_command(args: argparse.Namespace) -> int:
    run = find_run(args.name, _runs_dir(args))
    process = run.resume()
    if args.detach:
        print(run.path)
        return 0
    return _follow(run, process)


def _add_runs_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", default=argparse.SUPPRESS,
                        help=f"where runs live (default: ${RUNS_ENV}, else ./runs)")


def _runs_dir(args: argparse.Namespace) -> str | None:
    return getattr(args, "runs_dir", None)  # suppressed when not given, so nesting keeps it


def _follow(run: Run, process: Popen) -> int:
    """Echo the run's log until its process ends; Ctrl-C cancels the run."""
    offset = 0
    try:
        while process.poll() is None:
            text, offset = run.log_since(offset)
            print(text, end="", flush=True)
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        with suppress(RunError):  # it may have ended meanwhile
            run.cancel()
        process.wait()
    print(run.log_since(offset)[0], end="", flush=True)
    status = run.status()
    if status.state is State.DONE:
        return 0
    print(f"spectui: run {run.name} {status.state.value}"
          f"{': ' + status.message if status.message else ''} (log: {run.log_path})",
          file=sys.stderr)
    return 1


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"

"""`spectui study`: the paper's rank study (LoRA at several ranks, and full fine-tuning, on the same
data) or a sequence of tasks, trained as runs, probed and scanned, with one table of results.

Exit codes: 0 every member done and measured, 1 a member failed or the study was cancelled (the
others' results are printed all the same), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import typing
from contextlib import suppress
from dataclasses import fields, replace
from pathlib import Path
from typing import IO, Any

from spectui.atomic import write_text
from spectui.errors import UsageError
from spectui.finetune.runs import RunError, State
from spectui.finetune.spec import RunSpec, field_kind, flag_name, load_spec
from spectui.finetune.study import (
    RUN_FIELDS,
    SPEC_FILE,
    Study,
    StudyError,
    StudySpec,
    load_study_spec,
    parse_text,
    saved_name,
    start_study,
    study_field_kind,
)

POLL_S = 0.5


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study", help="train LoRA at several ranks and full fine-tuning (or a task sequence), "
                      "then probe and scan each: one table",
        description="A study: LoRA at each rank (and learning rate) and full fine-tuning on the "
                    "same data, or on tasks in sequence, each a run in the runs directory; then "
                    "the task and reference losses and the intruders of each. Flags override the "
                    "spec file. The study keeps going if the terminal closes; Ctrl-C cancels it, "
                    "and running it again goes on where it stopped.")
    parser.add_argument("spec", nargs="?", help="study spec file (.toml or .json), e.g. the "
                                                "study.json a study saved")
    for spec_field in fields(StudySpec):
        if spec_field.name != "run":
            parser.add_argument(flag_name(spec_field.name), **_options(spec_field.name,
                                                                       spec_field.metadata))
    shared = parser.add_argument_group("run settings of every member (as `spectui train`'s)")
    run_fields = {f.name: f for f in fields(RunSpec)}
    for name in RUN_FIELDS:
        metadata = run_fields[name].metadata
        options: dict[str, Any] = {"help": metadata["help"], "default": argparse.SUPPRESS,
                                   "dest": f"run__{name}"}
        kind = field_kind(name)
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            choices = metadata.get("choices")
            options.update(type=kind, choices=choices,
                           metavar=None if choices else metadata.get("metavar", name.upper()))
        shared.add_argument(flag_name(name), **options)
    parser.add_argument("--detach", action="store_true",
                        help="start the study in the background, print its directory and return")
    parser.add_argument("--json", action="store_true", help="results as JSON on stdout")
    parser.add_argument("--report", type=Path, metavar="FILE.html",
                        help="when the study ends, write its results as one self-contained HTML "
                             "page (the table and the paper's views)")
    parser.set_defaults(handler=study_command)


def _options(name: str, metadata: dict) -> dict[str, Any]:
    options: dict[str, Any] = {"help": metadata["help"], "default": argparse.SUPPRESS}
    kind, _ = study_field_kind(name)
    if name == "alpha" or typing.get_origin(kind) is list:
        return {**options, "type": _flag_type(name), "metavar": metadata["metavar"]}
    if kind is bool:
        return {**options, "action": argparse.BooleanOptionalAction}
    choices = metadata.get("choices")
    return {**options, "type": kind, "choices": choices,
            "metavar": None if choices else metadata.get("metavar", name.upper())}


def _flag_type(name: str):
    def parse(value: str) -> Any:
        try:
            return parse_text(name, value)
        except StudyError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return parse


def spec_from_args(args: argparse.Namespace) -> StudySpec:
    """The spec file's fields overridden by the flags given, resolved and checked."""
    given = {f.name: getattr(args, f.name) for f in fields(StudySpec) if hasattr(args, f.name)}
    run = {name: getattr(args, f"run__{name}") for name in RUN_FIELDS
           if hasattr(args, f"run__{name}")}
    from_file = load_study_spec(args.spec).to_dict() if args.spec else {}
    if "data" in given:
        from_file.pop("sequence", None)
    if "sequence" in given:
        from_file.pop("data", None)
    spec = StudySpec.from_dict({**from_file, **given, "run": {**from_file.get("run", {}), **run}})
    if spec.name is None and spec.out:  # the study already there: the same members
        spec = replace(spec, name=saved_name(spec.out))
    spec = spec.resolved(getattr(args, "runs_dir", None))
    try:
        spec.check()
    except StudyError as error:
        raise StudyError(f"{args.spec}: {error}" if args.spec else str(error)) from None
    return spec


def study_command(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    if args.report:
        check_report(spec, args.report, args.detach)
    return launch(spec, detach=args.detach, as_json=args.json, report=args.report)


def launch(spec: StudySpec, detach: bool = False, as_json: bool = False,
           report: Path | None = None) -> int:
    """Start (or re-attach to) the study of a checked spec and, unless detached, follow it to
    the end, print its results and write its report."""
    study, process = start_study(spec)
    if detach:
        print(study.path)
        return 0
    out = sys.stderr if as_json else sys.stdout
    print(f"study {study.name} in {study.path}"
          + (" (attached: it was running)" if process is None else ""), file=out, flush=True)
    code = follow(study, process, out)
    print_results(study, as_json)
    if report:
        write_report(study, report, out)
    return code


def check_report(spec: StudySpec, path: Path, detach: bool) -> None:
    """Refuse, before anything trains, a report that could not be written when the study ends, or
    would be written over one of the study's sources (its base, data, reference, spec, results)."""
    if detach:
        raise UsageError("--report is written when the study ends: drop --detach, or later run "
                         f"`spectui study {Path(spec.out or '') / SPEC_FILE} --report {path}`")
    if path.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"{path}: --report writes HTML; name a .html file")
    target = path.expanduser().resolve()
    study = Study(Path(spec.out or ""))
    files = [*spec.tasks, spec.reference or "", study.spec_path, study.results_path, study.log_path]
    folders = [spec.base, study.path / "heldout", *(Path(spec.runs_dir or "") / member.name
                                                     for member in spec.members())]
    clash = any(target == Path(name).expanduser().resolve() for name in files if name) or any(
        (folder := Path(name).expanduser().resolve()) == target or folder in target.parents
        for name in folders)
    if target.is_dir():
        raise UsageError(f"{path}: is a directory; name the report's .html file")
    if clash:
        raise UsageError(f"{path}: would be written over the study's own files or a source (its "
                         "base, data, reference, spec, results or a member's run); choose another "
                         "file")


def read_or_say(study: Study, prefix: str):
    """The study's results, or None after one line on stderr saying why they cannot be read."""
    from spectui.study_results import StudyResultsError, read_results

    try:
        return read_results(study.results_path)
    except StudyResultsError as error:
        print(f"spectui: {prefix}: {error}", file=sys.stderr)
        return None


def write_report(study: Study, path: Path, out: IO[str]) -> None:
    """The study's results as one HTML page (written aside, then renamed into place)."""
    from spectui.report.html import study_html

    if (results := read_or_say(study, "no report")) is None:
        return
    status = study.status()
    page = study_html(results, status.state.value, status.message)
    try:
        write_text(path, page)
    except OSError as error:
        raise UsageError(f"{path}: cannot write the report ({error.strerror or error})") from None
    print(f"report: {path}", file=out, flush=True)


def follow(study: Study, process, out: IO[str]) -> int:
    """Echo the study's log until it ends; Ctrl-C cancels it (and its live members)."""
    offset = 0
    try:
        while (process.poll() is None) if process is not None else study.running():
            text, offset = study.log_since(offset)
            print(text, end="", file=out, flush=True)
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        with suppress(RunError):
            study.cancel()
        while study.running():
            time.sleep(POLL_S)
        if process is not None:
            process.wait()
    print(study.log_since(offset)[0], end="", file=out, flush=True)
    status = study.status()
    if status.state is State.DONE:
        return 0
    print(f"spectui: study {study.name} {status.state.value}"
          f"{': ' + status.message if status.message else ''} (log: {study.log_path})",
          file=sys.stderr)
    return 1


def print_results(study: Study, as_json: bool) -> None:
    from spectui.study_results import report_section

    if not study.results_path.exists() or (results := read_or_say(study, "warning")) is None:
        return
    status = study.status()
    if as_json:
        json.dump({"study_dir": str(study.path), "state": status.state.value,
                   "message": status.message, "results": results.to_dict(),
                   "views": report_section(results)}, sys.stdout)
        sys.stdout.write("\n")
        return
    from spectui.cli.options import stdout_console
    from spectui.report.terminal import study_tables

    console = stdout_console()
    for table in study_tables(results):
        console.print(table)


def sequence_spec(args: argparse.Namespace, files: list[str]) -> StudySpec:
    """`spectui train --sequence`: the run flags (and spec file) as a one-line sequence study."""
    given = {f.name: getattr(args, f.name) for f in fields(RunSpec) if hasattr(args, f.name)}
    from_file = load_spec(args.spec).to_dict() if args.spec else {}
    for name in ("data", "out", "start_from"):
        if given.get(name) or from_file.get(name):
            raise StudyError(f"--sequence trains its files as stages: {flag_name(name)} does not "
                             "apply")
    run = RunSpec.from_dict({**from_file, **given, "data": files[0]})
    spec = StudySpec.for_sequence(run, files, getattr(args, "reference", None),
                                  getattr(args, "runs_dir", None))
    spec = spec.resolved(getattr(args, "runs_dir", None))
    spec.check()
    return spec

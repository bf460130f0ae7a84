"""`spectui` (the inspector) and its commands: dispatch, and the one mapping from errors to exit
codes. Each command is a module of this package with `add_parser(subparsers)`, whose parser sets
`handler(args) -> exit code`; the shared options and helpers are in `spectui.cli.options`.

Exit codes: 0 ok, 1 a result the user asked to fail on (a run that failed, or an internal error:
one line naming the log that holds the details), 2 bad input (one sentence naming the file or
option), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from spectui.errors import InputError, log_internal_error, one_line, printable

# command → module of this package (the inspector itself is `tui`)
COMMANDS = {"scan": "scan", "report": "report", "mitigate": "mitigate", "probe": "probe",
            "train": "train", "runs": "train", "cache": "cache",
            "verify-merge": "verify_merge", "study": "study"}


def build_command_parser() -> argparse.ArgumentParser:
    """`spectui COMMAND ...`: every command's parser."""
    from spectui.cli.options import Parser

    parser = Parser(prog="spectui")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in dict.fromkeys(COMMANDS.values()):
        importlib.import_module(f"spectui.cli.{module}").add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] in COMMANDS:
            args = build_command_parser().parse_args(argv)
        else:
            from spectui.cli import tui

            args = tui.build_parser().parse_args(argv)
            args.argv = argv
        return args.handler(args)
    except InputError as err:
        print(f"spectui: error: {printable(str(err), keep='')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except OSError as err:  # a path given cannot be written or read: the file system said why
        where = err.filename2 or err.filename or "a file"  # a copy's destination, not its source
        print(f"spectui: error: {printable(str(where), keep='')}: {err.strerror or err}", file=sys.stderr)
        return 2
    except Exception as err:  # the last resort: never a traceback on the user's terminal
        log = log_internal_error(err)
        print(f"spectui: internal error: {type(err).__name__}: {one_line(err)} (details in {log})", file=sys.stderr)
        return 1

"""The one error type for "the user's input is wrong", and how any error is told in one line.

Every reader, parser and validator raises an `InputError` (or a subclass naming where it was
found); the CLI maps it to exit code 2 and the TUI to a notification, each in one place.
"""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input, told in one sentence: what to fix, never a traceback."""


class FileInputError(InputError):
    """Bad input found in a file (or at a path): the sentence starts with the path."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class UsageError(InputError):
    """Options that cannot be used together or as given, found after parsing."""


def printable(text: str, keep: str = "\n\t") -> str:
    """`text` with control characters (terminal escapes, newlines from file names) shown as U+FFFD:
    what a file holds must not move the cursor, colour the terminal or break a one-line message."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() or char in keep else "\ufffd" for char in text)


def one_line(error: BaseException, limit: int = 200) -> str:
    """The first line of a (often multi-line) library message, whitespace collapsed, bounded."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    text = " ".join(lines[0].split()) if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def log_internal_error(error: BaseException) -> str:
    """Append the traceback of something that should not have happened to the state directory's
    errors.log, and return where it went (for the one line the user sees)."""
    import time
    import traceback

    from spectui.locations import state_dir

    text = "".join(traceback.format_exception(error))
    try:
        log = state_dir() / "errors.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as fh:
            fh.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}\n{text}\n")
        return str(log)
    except OSError:
        return "nowhere: the state directory is not writable"

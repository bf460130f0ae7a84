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


def one_line(error: BaseException, limit: int = 200) -> str:
    """The first line of a (often multi-line) library message, whitespace collapsed, bounded."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    text = " ".join(lines[0].split()) if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"

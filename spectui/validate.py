"""Checks at the boundary: every value read from a file is checked here before it is used, and
a failure is a FileInputError naming the file and the field.

Files are opened only when they are regular files (a FIFO or a device would block a read forever),
JSON is bounded in size and nesting, and numbers are the kind they claim to be (a JSON `true` is
not the integer 1).
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from spectui.errors import FileInputError

MAX_JSON_BYTES = 64 << 20  # configs, indexes and specs are kilobytes; a shard index of a 400B model ~1 MB


Error = type[FileInputError] | Callable[[Path, str], Exception]


def open_regular(path: Path, error: Error = FileInputError, mode: str = "rb") -> IO:
    """`path` opened for reading if it is a regular file. Opened without blocking and checked on
    the open descriptor, so a FIFO (or one swapped in after a check) never blocks a read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(path, "file not found") from None
    except OSError as err:
        raise error(path, f"cannot be read ({err.strerror or err})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise error(path, "is not a regular file")
    return os.fdopen(fd, mode)


def regular_file(path: Path, error: Error = FileInputError) -> int:
    """The size of `path`, which must be a regular file (following links)."""
    with open_regular(path, error) as fh:
        return os.fstat(fh.fileno()).st_size


def read_bytes(path: Path, limit: int, error: Error = FileInputError) -> bytes:
    """A regular file's bytes, refused when larger than `limit` (also when it grows past it while
    being read)."""
    with open_regular(path, error) as fh:
        try:
            data = fh.read(limit + 1)
        except OSError as err:
            raise error(path, f"cannot be read ({err.strerror or err})") from None
    if len(data) > limit:
        raise error(path, f"is larger than {_size(limit)}, more than expected of it")
    return data


def _size(count: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:g} {unit}"
    return f"{count} bytes"


def parse_json(data: bytes | str, path: Path, error: type[FileInputError] = FileInputError) -> Any:
    try:
        return json.loads(data)
    except UnicodeDecodeError:
        raise error(path, "is not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise error(path, f"is not valid JSON (line {err.lineno})") from None
    except ValueError:  # an integer of thousands of digits
        raise error(path, "is not valid JSON (a number too long to read)") from None
    except RecursionError:
        raise error(path, "nests JSON too deeply to be read") from None


def json_object(path: Path, error: type[FileInputError] = FileInputError, limit: int = MAX_JSON_BYTES) -> dict:
    """A JSON file that holds an object."""
    data = parse_json(read_bytes(path, limit, error), path, error)
    if not isinstance(data, dict):
        raise error(path, "does not hold a JSON object")
    return data


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


def integer(value: Any, path: Path, field: str, minimum: int | None = None,
            error: type[FileInputError] = FileInputError) -> int:
    if not is_int(value) or (minimum is not None and value < minimum):
        bound = f" of at least {minimum}" if minimum is not None else ""
        raise error(path, f"{field} must be an integer{bound}, not {_shown(value)}")
    return value


def number(value: Any, path: Path, field: str, error: type[FileInputError] = FileInputError) -> float:
    if not is_number(value):
        raise error(path, f"{field} must be a finite number, not {_shown(value)}")
    return float(value)


def boolean(value: Any, path: Path, field: str, error: type[FileInputError] = FileInputError) -> bool:
    if not isinstance(value, bool):
        raise error(path, f"{field} must be true or false, not {_shown(value)}")
    return value


def text(value: Any, path: Path, field: str, error: type[FileInputError] = FileInputError) -> str:
    """A string that can be shown and written back out: valid Unicode (no lone surrogates from
    \\ud800-style escapes) and no control characters (a name that would clear the screen or set a
    terminal's title when printed)."""
    if not isinstance(value, str):
        raise error(path, f"{field} must be a string, not {_shown(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise error(path, f"{field} is not valid Unicode text") from None
    if not value.isprintable():
        raise error(path, f"{field} {_shown(value)} holds control characters")
    return value


def _shown(value: Any) -> str:
    shown = json.dumps(value, ensure_ascii=True, default=str)
    return shown if len(shown) <= 40 else shown[:39] + "…"

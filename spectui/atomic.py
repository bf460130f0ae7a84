"""Write files and directories so that a reader never sees half of one: everything is written
under a temporary name beside its destination, then renamed into place.

A temporary name carries its writer's process id, so what a killed writer left behind is found
and removed by the next writer of the same destination.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_SUFFIX = ".tmp"


def write_bytes(path: Path, data: bytes) -> Path:
    path = Path(path)
    _make_parent(path)
    tmp = _temporary(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask gives the usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode())


@contextmanager
def directory(out: Path, replace: bool = False) -> Iterator[Path]:
    """A fresh directory to fill, published as `out` only if the block completes. With `replace`,
    an existing `out` is swapped out and removed; without, an existing `out` is an error."""
    out = Path(out)
    _make_parent(out)
    tmp = _temporary(out)
    tmp.mkdir()  # not mkdtemp: its 0700 mode would stay on the published directory
    try:
        yield tmp
        if replace and out.exists():
            old = _temporary(out)
            os.replace(out, old)
            os.replace(tmp, out)
            _remove(old)
        else:
            os.rename(tmp, out)
    finally:
        _remove(tmp)


def _make_parent(path: Path) -> None:
    """The destination's folder, made if missing; a file in the way is said as such (mkdir would
    say "File exists")."""
    for folder in (path.parent, *path.parent.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "is a file, not a folder", str(folder))
            break
    path.parent.mkdir(parents=True, exist_ok=True)


def _temporary(destination: Path) -> Path:
    """A name no one else uses, beside `destination`, after clearing what dead writers left."""
    for leftover in destination.parent.glob(f".{glob.escape(destination.name)}.*{_SUFFIX}"):
        if not _writer_alive(leftover):
            _remove(leftover)
    return destination.with_name(f".{destination.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{_SUFFIX}")


def _writer_alive(leftover: Path) -> bool:
    tag = leftover.name.removesuffix(_SUFFIX).rsplit(".", 1)[-1]
    try:
        pid = int(tag.split("-", 1)[0])
        os.kill(pid, 0)
    except ValueError:
        return True  # not one of ours: leave it alone
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


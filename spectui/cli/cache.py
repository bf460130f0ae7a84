"""`spectui cache [info | clear]`: where the scan cache is, what it holds per model, and emptying it."""

from __future__ import annotations

import argparse
from pathlib import Path

from spectui.cli.options import size_value, stdout_console
from spectui.errors import printable


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("cache", help="what the scan cache holds, per model; clear it",
                                   description="The scan cache: decompositions and results, by content.")
    _cache_options(parser)
    parser.set_defaults(handler=info)
    actions = parser.add_subparsers(dest="action", metavar="{info,clear}")
    _cache_options(actions.add_parser("info", help="where it is, its size, and what each model scanned holds"))
    clear = actions.add_parser("clear", help="remove every entry, or one model's")
    clear.add_argument("model", nargs="?", type=Path, help="only this model's entries (as scanned)")
    _cache_options(clear)
    clear.set_defaults(handler=clear_command)


def _cache_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", type=Path, default=argparse.SUPPRESS, help="default: $XDG_CACHE_HOME/spectui")
    parser.add_argument("--cache-max", type=size_value, default=argparse.SUPPRESS, metavar="SIZE",
                        help="the cap the scans use (20G)")


def _cache(args):
    from spectui.cache import DEFAULT_MAX_BYTES, Cache
    from spectui.locations import cache_dir

    return Cache(getattr(args, "cache_dir", None) or cache_dir(),
                 max_bytes=getattr(args, "cache_max", None) or DEFAULT_MAX_BYTES)


def info(args) -> int:
    from rich.table import Table

    cache = _cache(args)
    entries = cache.entries()
    total = sum(size for _, size, _ in entries)
    out = stdout_console()
    out.print(f"{cache.root}: {len(entries)} entries, {_bytes(total)} of a {_bytes(cache.max_bytes)} cap",
              highlight=False)
    table = Table("model", "role", "entries", "bytes")
    for model in cache.models():
        table.add_row(model.path, model.role, str(model.entries), _bytes(model.bytes))
    if table.row_count:
        out.print(table)
    return 0


def clear_command(args) -> int:
    cache = _cache(args)
    freed = cache.clear(args.model)
    which = f"{printable(str(args.model), keep='')}'s entries" if args.model else "every entry"
    print(f"removed {which} from {cache.root}: {_bytes(freed)} freed")
    return 0


def _bytes(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GB"

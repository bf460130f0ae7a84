"""`spectui [MODEL ...]`: the inspector, in this terminal or (`--serve`) in a browser."""

from __future__ import annotations

import argparse
from pathlib import Path

from spectui.cli.options import Parser, cache_root, open_from_args, scan_options
from spectui.cli.serve import serve, serve_options


def build_parser() -> argparse.ArgumentParser:
    from spectui.cli import COMMANDS

    parser = Parser(
        prog="spectui",
        description="Inspect what fine-tuning did to a model's weights. Commands: "
        + ", ".join(COMMANDS) + " (spectui COMMAND --help).",
        parents=[scan_options(), serve_options()],
    )
    parser.add_argument("--export-dir", type=Path, default=None, help="where the export key writes (cwd)")
    parser.set_defaults(handler=run)
    return parser


def run(args) -> int:
    if args.serve:
        return serve(args)
    comparison = open_from_args(args)  # bad paths fail here, before the app starts
    if args.export_dir is not None:
        comparison.check_output(args.export_dir, "--export-dir")
    if (root := cache_root(args)) is not None:
        comparison.check_output(root, "--cache-dir")
    from spectui.tui.app import SpectuiApp
    from spectui.tui.inspector import Inspector

    inspector = Inspector(comparison, cache_root(args), device=args.device, workers=args.workers,
                          cache_max=args.cache_max, memory=args.memory)
    SpectuiApp(inspector, k=args.k, epsilon=args.eps, export_dir=args.export_dir).run()
    return 0

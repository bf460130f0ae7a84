"""`spectui report`: scan as `spectui scan` does, then write the report files."""

from __future__ import annotations

from pathlib import Path

from spectui.cli.options import failure_code, open_from_args, scan_from_args, scan_options
from spectui.errors import UsageError, printable

DEFAULT_OUT = Path("spectui-report.html")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", parents=[scan_options()], help="write a shareable report: HTML, Markdown or CSV",
        description="Scan, then write a self-contained HTML report (figures inline, viewable offline) and/or "
        f"Markdown and CSV. With no output option: --out {DEFAULT_OUT}.",
    )
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help="report whose format is its suffix: .html, .md or .csv")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="Markdown tables, whatever the suffix")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="CSV, the rows of `spectui scan --csv`")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from spectui.report import format_of, write_report

    outputs = [(path, kind, option) for path, kind, option in
               ((args.markdown, "markdown", "--markdown"), (args.csv, "csv", "--csv")) if path]
    if args.out or not outputs:
        out = args.out or DEFAULT_OUT
        outputs.insert(0, (out, format_of(out), "--out"))
    comparison = open_from_args(args)
    for path, _, option in outputs:  # before the scan: a refused output costs nothing
        comparison.check_output(path, option)
    scan = scan_from_args(args, comparison)
    if code := failure_code(scan):
        return code
    for path, kind, _ in outputs:
        try:
            write_report(scan, args.k, args.eps, path, kind)
        except OSError as err:
            raise UsageError(f"{path}: cannot write the report ({err.strerror})") from err
        print(printable(str(path), keep=""))
    return 0

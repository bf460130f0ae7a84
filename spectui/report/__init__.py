"""Reports to share a scan: one self-contained HTML page, Markdown for issues, CSV for spreadsheets.

`write_report` takes results already computed (by `spectui report` or the TUI's export key); the
renderers, and matplotlib with them, are imported only when a report is written.
"""

from __future__ import annotations

from pathlib import Path

from spectui import atomic
from spectui.errors import UsageError
from spectui.results import ScanResults

FORMATS = {".html": "html", ".htm": "html", ".md": "markdown", ".markdown": "markdown", ".csv": "csv"}


def format_of(path: Path) -> str:
    """The report format a file name asks for."""
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise UsageError(f"{path}: cannot tell the report format from '{path.suffix}' "
                         "(use .html, .md or .csv)") from None


def render(scan: ScanResults, k: int, epsilon: float, kind: str) -> str:
    if kind == "html":
        from spectui.report.html import scan_html as renderer
    elif kind == "markdown":
        from spectui.report.markdown import scan_markdown as renderer
    elif kind == "csv":
        from spectui.report.records import scan_csv as renderer
    else:
        raise ValueError(f"unknown report format '{kind}' (html, markdown or csv)")
    return renderer(scan, k, epsilon)


def write_report(scan: ScanResults, k: int, epsilon: float, out_path: Path, kind: str | None = None) -> Path:
    """Write one report atomically; `kind` (html, markdown, csv) defaults to what the suffix says."""
    out_path = Path(out_path)
    return atomic.write_text(out_path, render(scan, k, epsilon, kind or format_of(out_path)))

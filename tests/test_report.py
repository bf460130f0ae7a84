"""Several fine-tunes of one base, and the reports that share them: HTML (in a browser), Markdown, CSV."""

import csv
import io
import json
import re

import pytest
from chromium import dump_dom, needs_chromium
from models import lora_model, save_adapter, tiny_llama

import spectui.engine as engine
from spectui.cache import Cache
from spectui.checkpoint.comparison import open_comparison
from spectui.checkpoint.names import short_name
from spectui.report import html as html_report
from spectui.report import write_report
from spectui.results import ScanResults


@pytest.fixture(scope="module")
def three(tiny, tmp_path_factory):
    """Three tuned models of the tiny base: LoRA r=2, a full fine-tune, and LoRA r=4 on other modules."""
    root = tmp_path_factory.mktemp("three")
    wide = lora_model(tiny_llama(), seed=5, r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "o_proj"])
    save_adapter(wide, root / "lora4", base_ref=str(tiny / "base"))
    return [tiny / "lora", tiny / "full", root / "lora4"]


@pytest.fixture(scope="module")
def written(cli, tiny, three, tmp_path_factory):
    """One `spectui report` run writing all three formats, and the JSON of the same scan."""
    out = tmp_path_factory.mktemp("report")
    code, printed, _ = cli("report", tiny / "base", *three, "--out", out / "report.html",
                        "--markdown", out / "report.md", "--csv", out / "report.csv", "--cache-dir", out / "cache")
    assert code == 0
    assert printed.split() == [str(out / name) for name in ("report.html", "report.md", "report.csv")]
    code, scanned, _ = cli("scan", tiny / "base", *three, "--json", "--cache-dir", out / "cache")
    assert code == 0
    return out, json.loads(scanned)


def test_three_tuned_models_decompose_the_base_once_and_total_as_single_scans(cli, tiny, three, monkeypatch):
    calls = []
    real = engine.decompose_base
    monkeypatch.setattr(engine, "decompose_base", lambda w: calls.append(w.shape) or real(w))
    code, out, _ = cli("scan", tiny / "base", *three, "--json", "--no-cache")
    joint = json.loads(out)["models"]
    base_matrices = open_comparison(str(tiny / "base"), [str(p) for p in three]).matrix_names()
    assert code == 0 and len(calls) == len(base_matrices) == 14  # engine.decompose_base is the base side
    monkeypatch.setattr(engine, "decompose_base", real)
    for record, path in zip(joint, three):
        code, out, _ = cli("scan", tiny / "base", path, "--json", "--no-cache")
        single = json.loads(out)
        assert code == 0 and record["label"] == single["label"] == path.name
        assert record["total_intruders"] == single["total_intruders"]
        assert {m["name"]: m["intruders"] for m in record["matrices"]} == \
               {m["name"]: m["intruders"] for m in single["matrices"]}
    totals = [r["total_intruders"] for r in joint]
    assert totals[0] > 0 and totals[1] == 0 and totals[2] > 0  # LoRA has intruders, the dense update none


@needs_chromium
@pytest.mark.slow
def test_html_report_opens_in_chromium_with_the_summary_and_figures(written):
    out, data = written
    dom = dump_dom((out / "report.html").as_uri())
    for record in data["models"]:
        row = re.search(rf"{re.escape(record['label'])}</td><td>([^<]*)</td><td class=\"n\"><strong>(\d+)</strong>",
                        dom)
        assert row, record["label"]
        assert row.groups() == (record["description"], str(record["total_intruders"]))
    assert dom.count("<svg") >= 3  # the ε and k curves, and at least one matrix
    assert "Intruders vs ε" in dom and "Intruders vs k" in dom
    assert "table class=\"grid\"" in dom


def test_html_is_self_contained(written):
    page = (written[0] / "report.html").read_text()
    assert "<script" not in page and "<link" not in page
    assert not re.findall(r"""(?:src|href)=(?!["']?(?:data:|#))""", page)  # only inline data and in-page ids
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "inlined figures must not share element ids"


def test_markdown_matches_the_json(written):
    out, data = written
    markdown = (out / "report.md").read_text()
    for record in data["models"]:
        cells = _md_row(markdown, record["label"])
        assert cells[1:3] == [record["description"], str(record["total_intruders"])]
        with_any = sum(1 for m in record["matrices"] if m["intruders"])
        assert cells[3] == f"{with_any}/{len(record['matrices'])}"
        sweep = _md_row(markdown, record["label"], nth=1)
        assert sweep[1:] == [str(v) for v in record["intruders_vs_epsilon"].values()]
    labels = [r["label"] for r in data["models"]]
    per_matrix = {r["label"]: {short_name(m["name"]): m for m in r["matrices"]} for r in data["models"]}
    rows = [line for line in markdown.splitlines() if line.startswith("| `")]
    assert len(rows) == 14
    for line in rows:
        cells = _cells(line)
        for label, cell in zip(labels, cells[2:]):
            m = per_matrix[label].get(cells[0].strip("`† "))
            if m is None:
                assert cell == "–"
            else:
                assert int(cell.split()[0].strip("*")) == m["intruders"]
                ranks = re.search(r"\(([\d,]+)\)", cell)
                assert (ranks.group(1) if ranks else "") == ",".join(map(str, m["intruder_ranks"]))


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split(" | ")]


def _md_row(markdown: str, label: str, nth: int = 0) -> list[str]:
    return [_cells(line) for line in markdown.splitlines() if line.startswith(f"| {label} |")][nth]


def test_csv_matches_the_json(written):
    out, data = written
    rows = list(csv.DictReader(io.StringIO((out / "report.csv").read_text())))
    expected = [(r["label"], m["name"], m["intruders"]) for r in data["models"] for m in r["matrices"]]
    assert [(r["model"], r["name"], int(r["intruders"])) for r in rows] == expected


@pytest.fixture(scope="module")
def scanned(tiny, three, written):
    """The comparison and the scan behind `written`, in this process (read back from its cache)."""
    comparison = open_comparison(str(tiny / "base"), [str(p) for p in three])
    scan = engine.Scan(comparison, Cache(written[0] / "cache"), device="cpu").run()
    return ScanResults(comparison, scan.results, scan.errors)


@pytest.mark.slow
def test_reports_are_byte_for_byte_reproducible(written, scanned, tmp_path):
    again = write_report(scanned, 10, 0.5, tmp_path / "again.html")
    assert again.read_bytes() == (written[0] / "report.html").read_bytes()


def test_matrix_figures_are_capped_and_the_rest_counted(written, scanned, tmp_path, monkeypatch):
    monkeypatch.setattr(html_report, "MAX_MATRIX_FIGURES", 2)
    capped = write_report(scanned, 10, 0.5, tmp_path / "capped.htm").read_text()
    with_intruders = {m["name"] for r in written[1]["models"] for m in r["matrices"] if m["intruders"]}
    assert capped.count("<figure>") == 2
    assert f"({len(with_intruders) - 2} more not drawn" in capped


def test_bad_output_names_exit_2_in_one_line(cli, tiny, tmp_path):
    ran = cli("report", tiny / "lora", "--out", tmp_path / "report.txt")
    assert ran.code == 2
    assert _lines(ran.err) == [f"spectui: error: {tmp_path / 'report.txt'}: cannot tell the "
                               "report format from '.txt' (use .html, .md or .csv)"]
    (tmp_path / "file").write_text("")
    ran = cli("report", tiny / "lora", "--csv", tmp_path / "file" / "r.csv", "--no-cache")
    lines = _lines(ran.err)
    assert ran.code == 2 and len(lines) == 1 and "r.csv: cannot write the report" in lines[0]
    ran = cli("report", tmp_path / "nope", "--out", tmp_path / "r.html")
    lines = _lines(ran.err)
    assert ran.code == 2 and len(lines) == 1 and "nope" in lines[0] and not (tmp_path / "r.html").exists()


def _lines(err: str) -> list[str]:
    """What stderr says, without notes (which base an adapter named)."""
    return [line for line in err.splitlines() if line.strip() and not line.startswith("spectui: note:")]

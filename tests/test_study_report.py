"""A study's HTML report (`spectui study … --report FILE.html`): one self-contained page with the
results table and the paper's views as inline SVG, for a rank study and for a sequence; opened in
headless Chromium as a reader would; refused where it could not be written or would overwrite a source."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from chromium import dump_dom, needs_chromium
from studies import rank_study, sequence, written

import spectui.cli.study as study_cli
from spectui.finetune.runs import State
from spectui.finetune.study import Study
from spectui.locations import samples_dir
from spectui.report.html import study_html
from spectui.study_results import cell_text, forgetting_matrix, results_table, table_cells


def page_of(tmp_path: Path, results, state: str = "done", message: str = "") -> Path:
    path = tmp_path / f"{results.name}.html"
    path.write_text(study_html(results, state, message))
    return path


def rows(dom: str) -> list[list[str]]:
    """Every table row of the page as its cells' text."""
    return [[re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", dom, re.S)]


@needs_chromium
@pytest.mark.slow
def test_a_rank_study_page_has_the_table_and_the_three_views(tmp_path):
    results = rank_study()
    dom = dump_dom(page_of(tmp_path, results, "failed", "1 of 5 members not done").as_uri())
    table = results_table(results)
    shown = rows(dom)
    assert [column.title for column in table.columns] in shown
    for cells in table_cells(table):  # every member's row, as the CLI prints it
        assert cells in shown
    assert dom.count("<svg") == 3
    for title in ("Intruders vs rank", "Forgetting vs rank", "Effective rank of ΔW vs rank"):
        assert title in dom
    for label in ("ε=0.5", "ε=0.9", "r1", "r8", "full"):  # the ε curves, the ranks on the x axis
        assert f">{label}<" in dom or f"{label} " in dom
    assert "the study is failed: 1 of 5 members not done" in dom
    assert "ranks-r8-lr0.01 failed: the loss became nan at step 12" in dom
    assert "nearest 2.2000" in dom  # ranks compared at matched task loss
    for name in ("ranks-r1-lr0.01", "ranks-r8-lr0.001", "ranks-full"):
        assert f"<code>{name}</code>" in dom


@needs_chromium
@pytest.mark.slow
def test_a_sequence_page_has_each_lines_forgetting_matrix_and_the_stage_views(tmp_path):
    results = sequence()
    dom = dump_dom(page_of(tmp_path, results).as_uri())
    shown = rows(dom)
    for line in ("r2", "full"):
        matrix = forgetting_matrix(results, line)
        for task, row, forgot in zip(matrix.tasks, matrix.loss, matrix.forgetting()):
            assert [task, *map(cell_text, row), cell_text(forgot, signed=True)] in shown
    assert ["intruders", "0", "9", "18", "27", ""] in shown and ["intruders", "0", "1", "2", "3", ""] in shown
    assert dom.count("<svg") == 2
    assert "Intruders vs stage (ε = 0.5)" in dom and "Reference loss vs stage" in dom
    assert "the study is" not in dom  # done: nothing to warn about


def test_the_page_is_self_contained_and_reproducible():
    for results in (rank_study(), sequence()):
        page = study_html(results)
        assert "<script" not in page and "<link" not in page
        assert not re.findall(r"""(?:src|href)=(?!["']?(?:data:|#))""", page)
        ids = re.findall(r'\sid="([^"]+)"', page)
        assert len(ids) == len(set(ids)), "inlined figures must not share element ids"
        assert study_html(results) == page


def test_the_report_is_written_when_the_study_ends(tmp_path, monkeypatch):
    """`launch` writes it after following the study (its start and follow stand in for training)."""
    directory = tmp_path / "study"
    written(directory, rank_study())
    study = Study(directory)
    study.set_status(State.DONE)
    monkeypatch.setattr(study_cli, "start_study", lambda spec: (study, None))
    monkeypatch.setattr(study_cli, "follow", lambda study, process, out: 0)
    report = tmp_path / "out" / "ranks.html"
    assert study_cli.launch(None, report=report) == 0
    assert report.read_text() == study_html(rank_study(), "done")
    assert [path.name for path in report.parent.iterdir()] == ["ranks.html"]  # nothing half-written left


def test_a_study_without_results_writes_no_report(tmp_path, capsys):
    study = Study(tmp_path / "empty")
    study.path.mkdir()
    study_cli.write_report(study, tmp_path / "r.html", io.StringIO())
    assert not (tmp_path / "r.html").exists()
    assert "no report" in capsys.readouterr().err


@pytest.mark.parametrize(("report", "message"), [
    ("r.txt", "--report writes HTML; name a .html file"),
    ("{base}/report.html", "would be written over the study's own files or a source"),
    ("{out}/results.html", None),  # beside the results, under another name: allowed
    ("{out}/folder.html", "is a directory"),
])
def test_a_report_that_would_overwrite_a_source_is_refused_before_anything_trains(
        cli, tmp_path, monkeypatch, report, message):
    monkeypatch.setenv("SPECTUI_RUNS_DIR", str(tmp_path / "runs"))
    samples = samples_dir()
    out = tmp_path / "runs" / "s"
    (out / "folder.html").mkdir(parents=True)
    path = report.format(base=samples / "base", out=out)
    started = []
    monkeypatch.setattr(study_cli, "launch", lambda *args, **kwargs: started.append(kwargs) or 0)
    ran = cli("study", "--base", samples / "base", "--data", samples / "data" / "task.jsonl", "--name", "s",
              "--out", out, "--report", path)
    if message is None:
        assert ran.code == 0 and started[0]["report"] == Path(path)
    else:
        assert ran.code == 2 and message in ran.err and not started
        assert len(ran.err.strip().splitlines()) == 1


def test_report_and_detach_do_not_go_together(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTUI_RUNS_DIR", str(tmp_path / "runs"))
    samples = samples_dir()
    ran = cli("study", "--base", samples / "base", "--data", samples / "data" / "task.jsonl", "--name", "s",
              "--detach", "--report", tmp_path / "r.html")
    assert ran.code == 2 and "--report is written when the study ends: drop --detach" in ran.err
    assert f"spectui study {tmp_path / 'runs' / 's' / 'study.json'} --report" in ran.err
    assert not (tmp_path / "runs" / "s").exists()

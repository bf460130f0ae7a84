"""`spectui scan --fail-over N / --fail-over-matrix N`: the exit codes a CI pipeline relies on."""

import contextlib
import io
import json

import pytest

from spectui.cli import main


@pytest.fixture(scope="module")
def counts(tiny, tmp_path_factory):
    """The LoRA adapter's total and its worst matrix, from an ungated scan."""
    cache = tmp_path_factory.mktemp("gate-cache")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["scan", str(tiny / "base"), str(tiny / "lora"), "--json", "--cache-dir", str(cache)]) == 0
    data = json.loads(out.getvalue())
    worst = max(m["intruders"] for m in data["matrices"])
    assert data["total_intruders"] > worst > 0
    return data["total_intruders"], worst, cache


def gate(capsys, tiny, cache, *options, tuned=("lora",)):
    """Scan the tiny base against `tuned` (names in the tiny fixture, or paths) with the gate `options`."""
    code = main(["scan", str(tiny / "base"), *(str(tiny / t) for t in tuned), "--json", "--cache-dir", str(cache),
                 *map(str, options)])
    out = capsys.readouterr()
    return code, out.out, [line for line in out.err.splitlines() if line.strip()]


def test_at_the_limits_passes(tiny, counts, capsys):
    total, worst, cache = counts
    code, out, err = gate(capsys, tiny, cache, "--fail-over", total, "--fail-over-matrix", worst)
    assert code == 0 and err == []
    assert json.loads(out)["total_intruders"] == total


def test_over_the_total_fails_and_still_prints_results(tiny, counts, capsys):
    total, _, cache = counts
    code, out, err = gate(capsys, tiny, cache, "--fail-over", total - 1)
    assert code == 1
    assert json.loads(out)["total_intruders"] == total
    assert err == [f"spectui: gate: lora: {total} intruders (k=10, ε=0.5), over --fail-over {total - 1}"]


def test_over_the_matrix_limit_fails_naming_the_worst(tiny, counts, capsys):
    _, worst, cache = counts
    code, out, err = gate(capsys, tiny, cache, "--fail-over-matrix", worst - 1)
    assert code == 1 and json.loads(out)["matrices"]
    assert len(err) == 1 and err[0].startswith("spectui: gate: lora: ") and f"({worst})" in err[0]
    assert f"over --fail-over-matrix {worst - 1}, most in layers." in err[0]


def test_each_tuned_model_is_gated_on_its_own(tiny, counts, capsys):
    _, _, cache = counts
    code, out, err = gate(capsys, tiny, cache, "--fail-over", 0, tuned=("lora", "full"))
    assert code == 1 and len(json.loads(out)["models"]) == 2
    assert len(err) == 1 and err[0].startswith("spectui: gate: lora: ")  # the dense update has none


def test_bad_input_exits_2(tiny, counts, tmp_path, capsys):
    _, _, cache = counts
    code, out, err = gate(capsys, tiny, cache, "--fail-over", 0, tuned=(str(tmp_path / "missing"),))
    assert code == 2 and out == "" and len(err) == 1 and "missing" in err[0]
    for bad in ("-1", "many"):
        with pytest.raises(SystemExit) as exit_:
            main(["scan", str(tiny / "lora"), "--fail-over-matrix", bad])
        assert exit_.value.code == 2

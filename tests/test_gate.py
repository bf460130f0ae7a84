"""`spectui scan --fail-over N / --fail-over-matrix N`: the exit codes a CI pipeline relies on."""

import json

import pytest


@pytest.fixture(scope="module")
def counts(cli, tiny, tmp_path_factory):
    """The LoRA adapter's total and its worst matrix, from an ungated scan."""
    cache = tmp_path_factory.mktemp("gate-cache")
    ran = cli("scan", tiny / "base", tiny / "lora", "--json", "--cache-dir", cache)
    assert ran.code == 0
    data = json.loads(ran.out)
    worst = max(m["intruders"] for m in data["matrices"])
    assert data["total_intruders"] > worst > 0
    return data["total_intruders"], worst, cache


def gate(cli, tiny, cache, *options, tuned=("lora",)):
    """Scan the tiny base against `tuned` (names in the tiny fixture, or paths) with the gate `options`."""
    code, out, err = cli("scan", tiny / "base", *(tiny / t for t in tuned), "--json", "--cache-dir", cache, *options)
    return code, out, [line for line in err.splitlines() if line.strip()]


def test_at_the_limits_passes(tiny, counts, cli):
    total, worst, cache = counts
    code, out, err = gate(cli, tiny, cache, "--fail-over", total, "--fail-over-matrix", worst)
    assert code == 0 and err == []
    assert json.loads(out)["total_intruders"] == total


def test_over_the_total_fails_and_still_prints_results(tiny, counts, cli):
    total, _, cache = counts
    code, out, err = gate(cli, tiny, cache, "--fail-over", total - 1)
    assert code == 1
    assert json.loads(out)["total_intruders"] == total
    assert err == [f"spectui: gate: lora: {total} intruders (k=10, ε=0.5), over --fail-over {total - 1}"]


def test_over_the_matrix_limit_fails_naming_the_worst(tiny, counts, cli):
    _, worst, cache = counts
    code, out, err = gate(cli, tiny, cache, "--fail-over-matrix", worst - 1)
    assert code == 1 and json.loads(out)["matrices"]
    assert len(err) == 1 and err[0].startswith("spectui: gate: lora: ") and f"({worst})" in err[0]
    assert f"over --fail-over-matrix {worst - 1}, most in layers." in err[0]


def test_each_tuned_model_is_gated_on_its_own(tiny, counts, cli):
    _, _, cache = counts
    code, out, err = gate(cli, tiny, cache, "--fail-over", 0, tuned=("lora", "full"))
    assert code == 1 and len(json.loads(out)["models"]) == 2
    assert len(err) == 1 and err[0].startswith("spectui: gate: lora: ")  # the dense update has none


def test_bad_input_exits_2(tiny, counts, tmp_path, cli):
    _, _, cache = counts
    code, out, err = gate(cli, tiny, cache, "--fail-over", 0, tuned=(str(tmp_path / "missing"),))
    assert code == 2 and out == "" and len(err) == 1 and "missing" in err[0]
    for bad in ("-1", "many"):
        with pytest.raises(SystemExit) as exit_:
            cli("scan", tiny / "lora", "--fail-over-matrix", bad)
        assert exit_.value.code == 2

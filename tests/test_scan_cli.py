"""`spectui scan` as a script sees it: JSON/CSV schema, exit codes, one-line errors."""

import csv
import io
import json
import shutil
import subprocess
import sys

import pytest
from naive import naive_intruders
from safetensors.torch import load_file, save_file

REQUIRED = {"base", "tuned", "k", "epsilon", "total_intruders", "skipped", "matrices"}
MATRIX_KEYS = {"name", "shape", "intruders", "intruder_ranks", "max_cos", "sigma_base", "sigma_tuned",
               "delta_rel_norm", "delta_effective_rank"}


def test_json_schema_and_counts_match_naive(cli, tiny, cache_dir):
    code, out, _ = cli("scan", tiny / "base", tiny / "lora", "--json", "--cache-dir", cache_dir)
    assert code == 0
    data = json.loads(out)
    assert set(data) >= REQUIRED
    assert data["k"] == 10 and data["epsilon"] == 0.5
    assert {s["reason"] for s in data["skipped"]} >= {"1-D tensor", "not changed by the adapter"}
    base, tuned = load_file(tiny / "base" / "model.safetensors"), _merged(tiny)
    total = 0
    for m in data["matrices"]:
        assert set(m) >= MATRIX_KEYS
        assert len(m["max_cos"]) == 10 and len(m["sigma_base"]) == min(m["shape"])
        expected = naive_intruders(base[m["name"]], tuned[m["name"]])
        assert m["intruder_ranks"] == expected, m["name"]
        assert m["intruders"] == len(expected)
        total += m["intruders"]
    assert data["total_intruders"] == total > 0


def _merged(tiny):
    """The tuned weights by PEFT's own merge, the independent reference."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny / "base")
    return PeftModel.from_pretrained(model, tiny / "lora").merge_and_unload().state_dict()


def test_k_and_eps_options(cli, tiny, cache_dir):
    code, out, _ = cli("scan", tiny / "lora", "--json", "--k", "1", "--eps", "0.9", "--cache-dir", cache_dir)
    data = json.loads(out)
    assert code == 0 and data["k"] == 1 and data["epsilon"] == 0.9
    assert all(len(m["max_cos"]) == 1 and m["intruders"] <= 1 for m in data["matrices"])


def test_several_tuned_models_give_one_record_each(cli, tiny, cache_dir):
    code, out, _ = cli("scan", tiny / "base", tiny / "lora", tiny / "full", "--json", "--cache-dir", cache_dir)
    data = json.loads(out)
    assert code == 0 and [m["label"] for m in data["models"]] == ["lora", "full"]
    assert len(data["models"][1]["matrices"]) == 14
    assert all(set(m) >= REQUIRED for m in data["models"])


def test_csv_matches_json(cli, tiny, cache_dir):
    _, out_json, _ = cli("scan", tiny / "base", tiny / "full", "--json", "--cache-dir", cache_dir)
    _, out_csv, _ = cli("scan", tiny / "base", tiny / "full", "--csv", "--cache-dir", cache_dir)
    rows = list(csv.DictReader(io.StringIO(out_csv)))
    matrices = json.loads(out_json)["matrices"]
    assert [r["name"] for r in rows] == [m["name"] for m in matrices]
    assert [int(r["intruders"]) for r in rows] == [m["intruders"] for m in matrices]


def test_table_output(cli, tiny, cache_dir):
    code, out, _ = cli("scan", tiny / "base", tiny / "lora", tiny / "full", "--cache-dir", cache_dir)
    assert code == 0
    assert "Intruder dimensions" in out and "lora" in out and "layers.0.self_attn.q_proj" in out


def _truncated(tiny, tmp):
    shutil.copytree(tiny / "full", tmp / "t")
    data = (tmp / "t" / "model.safetensors").read_bytes()
    (tmp / "t" / "model.safetensors").write_bytes(data[: len(data) // 2])
    return tmp / "t"


def _garbage(tiny, tmp):
    (tmp / "g").mkdir()
    (tmp / "g" / "model.safetensors").write_bytes(b"\x07" * 64 + b"not a model" * 100)
    return tmp / "g"


def _nan(tiny, tmp):
    state = load_file(tiny / "full" / "model.safetensors")
    state["model.layers.1.self_attn.k_proj.weight"][0, 0] = float("nan")
    (tmp / "n").mkdir()
    save_file(state, tmp / "n" / "model.safetensors")
    return tmp / "n"


def _wrong_adapter(tiny, tmp):
    from models import lora_model, save_adapter, tiny_llama

    return save_adapter(lora_model(tiny_llama(hidden=48), r=2, lora_alpha=4, target_modules=["q_proj"]),
                        tmp / "wrong", base_ref="../base")


def _ia3(tiny, tmp):
    shutil.copytree(tiny / "lora", tmp / "ia3")
    cfg = json.loads((tmp / "ia3" / "adapter_config.json").read_text())
    (tmp / "ia3" / "adapter_config.json").write_text(json.dumps({**cfg, "peft_type": "IA3"}))
    return tmp / "ia3"


def _bad_json(tiny, tmp):
    shutil.copytree(tiny / "lora", tmp / "bj")
    (tmp / "bj" / "adapter_config.json").write_text("{ not json")
    return tmp / "bj"


BAD = {
    "missing path": (lambda tiny, tmp: tmp / "nope", "no such file or directory"),
    "empty dir": (lambda tiny, tmp: (tmp / "empty").mkdir() or tmp / "empty", "holds no model weights"),
    "truncated": (_truncated, "truncated"),
    "garbage": (_garbage, "not a valid safetensors file"),
    "NaN weights": (_nan, "contains NaN"),
    "adapter for another base": (_wrong_adapter, "made for another base model"),
    "tensors of another kind than peft_type": (_ia3, "holds no IA³ tensors"),
    "malformed adapter config": (_bad_json, "is not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_one_line_naming_the_file(cli, case, tiny, tmp_path, cache_dir):
    make, phrase = BAD[case]
    tuned = make(tiny, tmp_path)
    code, out, err = cli("scan", tiny / "base", tuned, "--json", "--cache-dir", cache_dir)
    assert code == 2
    assert out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and phrase in lines[0], err
    assert "Traceback" not in err
    assert str(tuned.name) in lines[0]


def test_bad_device_and_arguments(cli, tiny):
    assert cli("scan", tiny / "lora", "--device", "cuda:7")[0] == 2
    with pytest.raises(SystemExit) as exit_:
        cli("scan", "--eps", "2")
    assert exit_.value.code == 2
    with pytest.raises(SystemExit) as exit_:
        cli("scan", "--device", "tpu")
    assert exit_.value.code == 2


def test_console_script_runs_as_a_process(tiny, cache_dir):
    result = subprocess.run(
        [sys.executable, "-m", "spectui", "scan", str(tiny / "lora"), "--json", "--cache-dir", str(cache_dir)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["total_intruders"] > 0


def test_missing_file_message_is_not_a_traceback_in_a_process(tmp_path):
    result = subprocess.run([sys.executable, "-m", "spectui", "scan", str(tmp_path / "a"), str(tmp_path / "b")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().count("\n") == 0 and "no such file" in result.stderr

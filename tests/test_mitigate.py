"""Intruder mitigation: the definition on planted intruders, exports against PEFT, and bad input."""

import copy
import json
import shutil

import pytest
import torch
from models import lora_model, save_adapter, tiny_gpt2, tiny_llama
from safetensors.torch import load_file

from spectui.cache import Cache
from spectui.checkpoint.comparison import open_comparison
from spectui.checkpoint.names import short_name
from spectui.checkpoint.pairing import load_matrix
from spectui.engine import Scan
from spectui.mitigate import chosen_ranks, plan, preview, scale_intruders
from spectui.results import ScanResults
from spectui.spectral import compare, decompose

Q0 = "model.layers.0.self_attn.q_proj.weight"
DOWN1 = "model.layers.1.mlp.down_proj.weight"


def mitigated_weights(comparison, chosen, lam: float):
    """(tuned tensor name, W' in stored orientation) of each chosen matrix, from the definition."""
    model = comparison.tuned[chosen.model_index]
    for matrix in chosen.matrices:
        w = scale_intruders(load_matrix(model.source, matrix.spec.tuned_name, matrix.spec), matrix.ranks, lam)
        yield matrix.spec.tuned_name, w.T if matrix.spec.transposed else w


def planted(w0: torch.Tensor, count: int) -> torch.Tensor:
    """W0 + Σ c_i x_i y_iᵀ with c_i above σ_max(W0), x_i (y_i) spread evenly over 8 of W0's trailing
    left (right) singular vectors: max|cos| = 0.35 < ε, and W0's leading singular vectors stay
    exact singular vectors of W, so the intruders are exactly ranks 0 … count − 1."""
    u0, s0, v0h = torch.linalg.svd(w0.double(), full_matrices=False)
    w = w0.double().clone()
    for i in range(count):
        group = slice(s0.numel() - 8 * (i + 1), s0.numel() - 8 * i)
        x, y = u0[:, group].sum(dim=1), v0h[group].sum(dim=0)
        w += (6 - 2 * i) * s0[0] * torch.outer(x / x.norm(), y / y.norm())
    return w.to(w0.dtype)


def scan_results(comparison) -> ScanResults:
    scan = Scan(comparison, Cache(None), device="cpu", workers=1).run()
    return ScanResults(comparison, scan.results, scan.errors)


def svdvals(w):
    return torch.linalg.svdvals(w.double())


# -- the definition, on one matrix -----------------------------------------------------------------


@pytest.fixture(scope="module")
def two_intruders():
    w0 = torch.randn(48, 40, generator=torch.Generator().manual_seed(5))
    w = planted(w0, 2)
    base = decompose(w0)
    return w0, w, base, compare(base, w0, w)


def test_planted_intruders_are_found_and_scopes_choose_as_specified(two_intruders):
    *_, result = two_intruders
    assert result.intruder_ranks() == [0, 1]
    assert chosen_ranks(result, 10, 0.5, "top") == [0]
    assert chosen_ranks(result, 10, 0.5, "all") == [0, 1]


def test_lambda_one_is_the_identity(two_intruders):
    w = two_intruders[1]
    assert torch.equal(scale_intruders(w, [0, 1], 1.0), w.double())


@pytest.mark.parametrize("scope, left", [("all", []), ("top", [0])])
def test_lambda_zero_removes_the_components_and_the_intruders(two_intruders, scope, left):
    w0, w, base, result = two_intruders
    ranks = chosen_ranks(result, 10, 0.5, scope)
    removed = scale_intruders(w, ranks, 0.0)
    sigma = svdvals(w)
    kept = sigma[len(ranks):]  # the scaled σ drop out of the spectrum; nothing else moves
    torch.testing.assert_close(svdvals(removed)[:kept.numel()], kept, rtol=1e-10, atol=1e-10)
    after = compare(base, w0, removed.float())
    assert after.max_cos[0] >= 0.5 if scope == "all" else after.max_cos[0] < 0.5
    # all: no intruder is left; top: the second planted one has risen to rank 0, with its own σ
    assert after.intruder_ranks() == left
    assert after.sigma_tuned[0] == pytest.approx(kept[0].item())


def test_preview_is_the_spectrum_of_the_mitigated_matrix(two_intruders):
    _, w, _, result = two_intruders
    for lam in (0.0, 0.3, 1.5):
        before, after = preview(result, [0, 1], lam)
        assert before is result.sigma_tuned
        actual = svdvals(scale_intruders(w, [0, 1], lam))
        torch.testing.assert_close(torch.from_numpy(after.copy()), actual, rtol=1e-5, atol=1e-4)


# -- full checkpoints ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """A float32 base and a float16, sharded tuned checkpoint with intruders planted in two matrices
    (two in Q0, one in DOWN1), plus a side file that must travel along."""
    root = tmp_path_factory.mktemp("full")
    base = tiny_llama()
    base.save_pretrained(root / "base")
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        for name, count in ((Q0, 2), (DOWN1, 1)):
            weight = tuned.get_parameter(name)
            weight.copy_(planted(weight, count))
    tuned.half().save_pretrained(root / "tuned", max_shard_size="40KB")
    (root / "tuned" / "tokenizer.json").write_text("{}")
    return root


def files_of(directory):
    return sorted(p.name for p in directory.iterdir())


def tensors_of(directory):
    state = {}
    for file in sorted(directory.glob("*.safetensors")):
        state.update(load_file(file))
    return state


def test_full_checkpoint_at_lambda_one_is_bit_identical(cli, full, tmp_path):
    code, _, err = cli("mitigate", full / "base", full / "tuned", "--lambda", "1", "--scope", "all",
                           "--out", tmp_path / "out", "--no-cache")
    assert code == 0, err
    assert files_of(tmp_path / "out") == files_of(full / "tuned")
    for name in files_of(full / "tuned"):
        assert (tmp_path / "out" / name).read_bytes() == (full / "tuned" / name).read_bytes(), name


def test_full_checkpoint_keeps_files_dtypes_and_scales_only_the_planted_matrices(cli, full, tmp_path):
    from transformers import AutoModelForCausalLM

    code, out, err = cli("mitigate", full / "base", full / "tuned", "--lambda", "0.5",
                             "--scope", "all", "--out", tmp_path / "out", "--no-cache")
    assert code == 0, err
    assert "3 intruder(s) in 2 matrices" in out
    assert files_of(tmp_path / "out") == files_of(full / "tuned")
    before, after = tensors_of(full / "tuned"), tensors_of(tmp_path / "out")
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {Q0, DOWN1}
    assert all(after[name].dtype == torch.float16 for name in after)
    for name, ranks in ((Q0, [0, 1]), (DOWN1, [0])):
        expected = scale_intruders(before[name].float(), ranks, 0.5)
        torch.testing.assert_close(after[name], expected.half())
        sigma = svdvals(before[name])
        scaled = torch.cat([sigma[:len(ranks)] * 0.5, sigma[len(ranks):]]).sort(descending=True).values
        torch.testing.assert_close(svdvals(after[name]), scaled, rtol=2e-3, atol=2e-3)
    AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    rescanned = open_comparison(str(full / "base"), [str(tmp_path / "out")])
    assert set(rescanned.tuned[0].source.names()) == before.keys()


def test_lambda_zero_leaves_no_intruder_for_the_rescan(cli, full, tmp_path):
    code, _, err = cli("mitigate", full / "base", full / "tuned", "--lambda", "0", "--scope", "all",
                           "--out", tmp_path / "out", "--no-cache")
    assert code == 0, err
    comparison = open_comparison(str(full / "base"), [str(tmp_path / "out")])
    results = scan_results(comparison)
    assert results.result(0, Q0).intruders() == results.result(0, DOWN1).intruders() == 0


def test_dry_run_reports_and_writes_nothing(cli, full, tmp_path):
    code, out, err = cli("mitigate", full / "base", full / "tuned", "--lambda", "0.75", "--dry-run",
                             "--out", tmp_path / "out", "--no-cache")
    assert code == 0, err
    assert "layers.0.self_attn.q_proj" in out and "layers.1.mlp.down_proj" in out and "→" in out
    assert "2 intruder(s) in 2 matrices (scope top" in out  # top: one per matrix
    assert not (tmp_path / "out").exists()


def test_bin_checkpoint_stays_bin(cli, tiny, tmp_path):
    state = load_file(tiny / "full" / "model.safetensors")
    (tmp_path / "tuned").mkdir()
    torch.save(state, tmp_path / "tuned" / "pytorch_model.bin")
    shutil.copy(tiny / "full" / "config.json", tmp_path / "tuned")
    code, out, err = cli("mitigate", tiny / "base", tmp_path / "tuned", "--lambda", "0", "--eps", "0.9",
                             "--out", tmp_path / "out", "--no-cache")
    assert code == 0, err
    assert files_of(tmp_path / "out") == ["config.json", "pytorch_model.bin"]
    written = torch.load(tmp_path / "out" / "pytorch_model.bin", weights_only=True)
    changed = [name for name in state if not torch.equal(written[name], state[name])]
    assert written.keys() == state.keys() and changed
    assert all(short_name(name) in out for name in changed)


# -- LoRA adapters ---------------------------------------------------------------------------------


def peft_model(base_dir, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)


def test_scope_all_finds_peft_intruders_and_exports_peft_weights(cli, tiny, tmp_path):
    intruders = pytest.importorskip("peft.tuners.lora.intruders",
                                    reason="peft < 0.19 has no reduce_intruder_dimension")
    comparison = open_comparison(str(tiny / "base"), [str(tiny / "lora")])
    ours = plan(scan_results(comparison), 0, scope="all")
    reference, logs = peft_model(tiny / "base", tiny / "lora"), []
    intruders.reduce_intruder_dimension(reference, mitigation_lambda=0.75, logging_sink=logs.append)
    # PEFT logs "<module>: Intruders: n" or "<module>: No intruders" per LoRA layer.
    peft_counts = {line.split(": ")[0].removeprefix("base_model.model."): int(line.rsplit(" ", 1)[1])
                   for line in logs if "Intruders: " in line}
    assert peft_counts
    assert peft_counts == {m.spec.name.removesuffix(".weight"): len(m.ranks) for m in ours.matrices}

    code, out, err = cli("mitigate", tiny / "base", tiny / "lora", "--lambda", "0.75",
                             "--scope", "all", "--out", tmp_path / "out", "--no-cache")
    assert code == 0, err
    assert "truncation error" in out
    # Both re-factor ΔW' = ΔW + (λ − 1)Σσuvᵀ to rank r by SVD; PEFT in float32, we in float64, so the
    # factors may differ in sign but their merged products agree.
    expected = reference.merge_and_unload().state_dict()
    exported = peft_model(tiny / "base", tmp_path / "out").merge_and_unload().state_dict()
    for name in expected:
        torch.testing.assert_close(exported[name], expected[name], rtol=1e-5, atol=1e-5, msg=name)


def test_rank_extra_loses_nothing_and_loads_everywhere(cli, tiny, tmp_path):
    out = tmp_path / "deeper" / "out"  # the relative base path must be re-pointed from here
    code, stdout, err = cli("mitigate", tiny / "lora", "--lambda", "0.3", "--scope", "all",
                                "--rank-extra", "--out", out, "--no-cache")
    assert code == 0, err
    assert "0.00%" in stdout
    config = json.loads((out / "adapter_config.json").read_text())
    assert set(config["rank_pattern"].values()) == {4}  # r = 2, plus two intruders scaled per module
    comparison = open_comparison(str(tiny / "base"), [str(tiny / "lora")])
    chosen = plan(scan_results(comparison), 0, scope="all")
    wanted = dict(mitigated_weights(comparison, chosen, 0.3))
    merged = peft_model(tiny / "base", out).merge_and_unload().state_dict()
    assert wanted
    for name, weight in wanted.items():
        torch.testing.assert_close(merged[name], weight.float(), rtol=1e-5, atol=1e-5, msg=name)
    reopened = open_comparison(None, [str(out)])  # spectui finds the base from the rewritten config
    assert reopened.tuned[0].pairing.matrices == comparison.tuned[0].pairing.matrices


def test_merged_export_is_a_full_checkpoint_of_the_mitigated_weights(cli, tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    code, _, err = cli("mitigate", tiny / "base", tiny / "lora", "--lambda", "0.5", "--merged",
                           "--out", tmp_path / "out", "--no-cache")
    assert code == 0, err
    assert files_of(tmp_path / "out") == files_of(tiny / "base")
    comparison = open_comparison(str(tiny / "base"), [str(tiny / "lora")])
    wanted = dict(mitigated_weights(comparison, plan(scan_results(comparison), 0), 0.5))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    merged_lora = peft_model(tiny / "base", tiny / "lora").merge_and_unload().state_dict()
    for name in merged_lora:
        expected = wanted[name].float() if name in wanted else merged_lora[name]
        torch.testing.assert_close(model[name], expected, rtol=1e-6, atol=1e-6, msg=name)
    assert open_comparison(str(tiny / "base"), [str(tmp_path / "out")]).tuned[0].pairing.matrices


def test_adapter_at_lambda_one_keeps_its_tensors(cli, tiny, tmp_path):
    code, _, err = cli("mitigate", tiny / "lora", "--lambda", "1", "--out", tmp_path / "out",
                           "--no-cache")
    assert code == 0, err
    before, after = load_file(tiny / "lora" / "adapter_model.safetensors"), tensors_of(tmp_path / "out")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


# -- bad input -------------------------------------------------------------------------------------


def _ia3(tiny, tmp):
    shutil.copytree(tiny / "lora", tmp / "ia3")
    config = json.loads((tmp / "ia3" / "adapter_config.json").read_text())
    (tmp / "ia3" / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "IA3"}))
    return [tmp / "ia3"]


def _dora(tiny, tmp):
    base = tiny_llama()
    dora = lora_model(base, r=2, lora_alpha=4, use_dora=True, target_modules=["q_proj"])
    return [tiny / "base", save_adapter(dora, tmp / "dora")]


def _existing_out(tiny, tmp):
    (tmp / "out").mkdir()
    (tmp / "out" / "keep.txt").write_text("mine")
    return [tiny / "lora"]


BAD = {
    "tensors of another kind than peft_type": (_ia3, "holds no IA³ tensors"),
    "DoRA adapter": (_dora, "is a DoRA adapter"),
    "existing --out": (_existing_out, "already exists; pass --force"),
    "two tuned models": (lambda tiny, tmp: [tiny / "base", tiny / "lora", tiny / "full"], "one tuned model"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(cli, case, tiny, tmp_path):
    make, phrase = BAD[case]
    models = make(tiny, tmp_path)
    before = files_of(tmp_path)
    code, out, err = cli("mitigate", *models, "--lambda", "0.5", "--out", tmp_path / "out",
                             "--no-cache")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and phrase in err and "Traceback" not in err
    assert files_of(tmp_path) == before
    if case == "existing --out":
        assert files_of(tmp_path / "out") == ["keep.txt"]


def test_force_replaces_an_existing_out(cli, tiny, tmp_path):
    _existing_out(tiny, tmp_path)
    code, _, err = cli("mitigate", tiny / "lora", "--lambda", "0.5", "--out", tmp_path / "out",
                           "--force", "--no-cache")
    assert code == 0, err
    assert "keep.txt" not in files_of(tmp_path / "out") and files_of(tmp_path) == ["out"]


def test_out_may_not_replace_a_source(cli, tiny):
    code, _, err = cli("mitigate", tiny / "lora", "--lambda", "0.5", "--out", tiny, "--force",
                           "--no-cache")
    assert code == 2 and "would replace the source" in err


@pytest.mark.parametrize("lam", ["2.5", "-0.1"])
def test_lambda_outside_0_2_exits_2(cli, tiny, tmp_path, lam):
    with pytest.raises(SystemExit) as exit_:
        cli("mitigate", tiny / "lora", "--lambda", lam, "--out", tmp_path / "out")
    assert exit_.value.code == 2 and not (tmp_path / "out").exists()


ORIENTATIONS = {
    "gpt2-conv1d": (tiny_gpt2, {"target_modules": ["c_attn", "c_fc"], "fan_in_fan_out": True}),
    "embedding": (tiny_llama, {"target_modules": ["embed_tokens", "q_proj"]}),
}


@pytest.mark.parametrize("case", list(ORIENTATIONS))
def test_exports_hold_the_mitigated_weights_in_any_orientation(cli, case, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    make_base, lora_kwargs = ORIENTATIONS[case]
    base = make_base()
    base.save_pretrained(tmp_path / "base")
    save_adapter(lora_model(base, r=2, lora_alpha=4, **lora_kwargs), tmp_path / "lora")
    for form in ("--rank-extra", "--merged"):
        code, _, err = cli("mitigate", tmp_path / "base", tmp_path / "lora", "--lambda", "0.25",
                               "--scope", "all", form, "--include-embeddings", "--out", tmp_path / form,
                               "--no-cache")
        assert code == 0, err
    comparison = open_comparison(str(tmp_path / "base"), [str(tmp_path / "lora")],
                                 include_embeddings=True)
    chosen = plan(scan_results(comparison), 0, scope="all")
    adapter = PeftModel.from_pretrained(make_base(), tmp_path / "--rank-extra")
    exports = {
        "adapter": adapter.merge_and_unload().state_dict(),
        "merged": AutoModelForCausalLM.from_pretrained(tmp_path / "--merged").state_dict(),
    }
    assert any(m.spec.transposed or m.spec.role == "embedding" for m in chosen.matrices)
    for matrix in chosen.matrices:
        spec = matrix.spec
        tuned = comparison.tuned[0].source.load(spec.name)  # stored: (in, out) for Conv1D
        expected = scale_intruders(tuned.T if spec.transposed else tuned, matrix.ranks, 0.25)
        expected = (expected.T if spec.transposed else expected).float()
        for form, state in exports.items():
            torch.testing.assert_close(state[spec.name], expected, rtol=1e-5, atol=1e-5,
                                       msg=f"{form} {spec.name}")

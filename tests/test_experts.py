"""Mixture-of-experts checkpoints: 3-D expert tensors (gpt-oss, Llama-4, transformers ≥ 5's fused
Mixtral) scanned one expert matrix at a time, per-expert 2-D tensors named by expert, both layouts
paired with each other, LoRA on expert parameters (PEFT's target_parameters) against PEFT's own
merge, mitigation written back into the 3-D tensor, and hostile expert tensors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from models import lora_model, save_adapter
from naive import naive_intruders
from safetensors.torch import load_file, save_file

from spectui.cache import Cache
from spectui.checkpoint import files
from spectui.checkpoint.comparison import open_comparison, open_store
from spectui.checkpoint.names import layer_and_module
from spectui.checkpoint.pairing import load_matrix
from spectui.engine import Scan
from spectui.mitigate import plan, scale_intruders
from spectui.results import ScanResults

HIDDEN, FF, EXPERTS = 16, 24, 3
SMALL = dict(vocab_size=64, hidden_size=HIDDEN, intermediate_size=FF, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, num_local_experts=EXPERTS)


def gpt_oss(seed: int = 0):
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(seed)
    return GptOssForCausalLM(GptOssConfig(**SMALL, head_dim=8, num_experts_per_tok=2,
                                          layer_types=["full_attention"] * 2))


def llama4(seed: int = 0):
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    torch.manual_seed(seed)
    return Llama4ForCausalLM(Llama4TextConfig(**SMALL, intermediate_size_mlp=32, head_dim=8))


def mixtral(seed: int = 0):
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(seed)
    return MixtralForCausalLM(MixtralConfig(**SMALL))


MODELS = {"gpt_oss": (gpt_oss, "mlp"), "llama4": (llama4, "feed_forward"), "mixtral": (mixtral, "mlp")}


def expert_matrix(model_type: str, param: torch.Tensor, expert: int, matrix: str) -> torch.Tensor:
    """An expert's matrix (out, in) from a fused parameter, written from each model's forward:
    gpt-oss `x @ gate_up[e]` then gate = [..., ::2], up = [..., 1::2]; Llama-4 `bmm(x, gate_up)`
    then chunk(2); Mixtral `linear(x, gate_up[e]).chunk(2)`."""
    slab = param[expert]
    if model_type == "mixtral":
        return {"gate_proj": slab[:FF], "up_proj": slab[FF:], "down_proj": slab}[matrix]
    if matrix == "down_proj":
        return slab.T
    if model_type == "gpt_oss":
        return {"gate_proj": slab[:, 0::2], "up_proj": slab[:, 1::2]}[matrix].T
    return {"gate_proj": slab[:, :FF], "up_proj": slab[:, FF:]}[matrix].T


def fused_state(model) -> dict[str, torch.Tensor]:
    """The model's weights under the names and layout it holds in memory (transformers ≥ 5 saves
    Mixtral's experts back one tensor each; this keeps them fused, as other writers do)."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def save_fused(model, path):
    path.mkdir(parents=True)
    save_file(fused_state(model), path / "model.safetensors")
    model.config.to_json_file(path / "config.json")
    return path


def planted(state: dict, name: str, expert: int, matrix: str, model_type: str, seed: int = 0) -> dict:
    """One tall expert matrix given one intruder (W0 + c·x yᵀ, c above σ_max), in place in the fused tensor."""
    state = dict(state)
    param = state[name].clone()
    w = expert_matrix(model_type, param, expert, matrix)  # a view into `param`
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(w.shape[0], generator=gen), torch.randn(w.shape[1], generator=gen)
    u0 = torch.linalg.svd(w, full_matrices=False)[0]
    x -= u0 @ (u0.T @ x)  # outside W0's column space (the matrix is tall): an intruder whatever the seed
    w += 3 * float(torch.linalg.matrix_norm(w, ord=2)) * torch.outer(x / x.norm(), y / y.norm())
    state[name] = param
    return state


@pytest.fixture(scope="module")
def oss(tmp_path_factory):
    root = tmp_path_factory.mktemp("oss")
    model = gpt_oss()
    model.save_pretrained(root / "base")
    state = planted(fused_state(model), "model.layers.0.mlp.experts.gate_up_proj", 1, "gate_proj", "gpt_oss")
    (root / "tuned").mkdir()
    save_file(state, root / "tuned" / "model.safetensors")
    model.config.to_json_file(root / "tuned" / "config.json")
    return root, model


# -- 3-D experts split into matrices ---------------------------------------------------------------

@pytest.mark.parametrize("model_type", ["gpt_oss", "llama4", "mixtral"])
def test_each_expert_matrix_is_read_as_its_model_uses_it(model_type, tmp_path):
    make, block = MODELS[model_type]
    model = make()
    store = open_store(save_fused(model, tmp_path / "fused"))
    state = fused_state(model)
    experts = store.experts()
    for layer in range(2):
        stored = f"model.layers.{layer}.{block}.experts"
        assert set(experts.by_stored) >= {f"{stored}.gate_up_proj", f"{stored}.down_proj"}
        for expert in range(EXPERTS):
            for matrix, shape in (("gate_proj", (FF, HIDDEN)), ("up_proj", (FF, HIDDEN)), ("down_proj", (HIDDEN, FF))):
                name = f"{stored}.{expert}.{matrix}.weight"
                param = state[f"{stored}.{'down_proj' if matrix == 'down_proj' else 'gate_up_proj'}"]
                assert store.shape(name) == shape
                torch.testing.assert_close(store.load(name), expert_matrix(model_type, param, expert, matrix),
                                           rtol=0, atol=0, msg=name)
                assert layer_and_module(name) == (layer, f"{block}.experts.{matrix}")


def test_the_gate_and_up_halves_are_what_the_forward_pass_computes(tmp_path):
    """gpt-oss interleaves gate and up: x·W_gateᵀ must equal the even columns of x @ gate_up[e]."""
    model = gpt_oss()
    store = open_store(save_fused(model, tmp_path / "fused"))
    gate_up = model.model.layers[1].mlp.experts.gate_up_proj.detach()
    x = torch.randn(5, HIDDEN)
    both = x @ gate_up[2]
    gate = store.load("model.layers.1.mlp.experts.2.gate_proj.weight")
    up = store.load("model.layers.1.mlp.experts.2.up_proj.weight")
    torch.testing.assert_close(x @ gate.T, both[:, ::2])
    torch.testing.assert_close(x @ up.T, both[:, 1::2])


def test_an_expert_is_read_alone(oss, monkeypatch):
    root, _ = oss
    store = open_store(root / "base")
    read = []
    original = files._read_safetensor
    monkeypatch.setattr(files, "_read_safetensor", lambda info: read.append(info.nbytes) or original(info))
    store.load("model.layers.0.mlp.experts.2.up_proj.weight")
    whole = store.info("model.layers.0.mlp.experts.gate_up_proj").nbytes
    assert read == [whole // EXPERTS]


def test_pairing_names_every_expert_and_the_scan_agrees_with_the_naive_count(oss):
    root, _ = oss
    comparison = open_comparison(str(root / "base"), [str(root / "tuned")])
    tuned = comparison.tuned[0]
    specs = {spec.name: spec for spec in tuned.pairing.matrices}
    planted_name = "model.layers.0.mlp.experts.1.gate_proj.weight"
    spec = specs[planted_name]
    assert (spec.layer, spec.module, spec.expert, spec.shape, spec.transposed) == (0, "mlp.experts.gate_proj", 1,
                                                                                  (FF, HIDDEN), False)
    experts = [s for s in specs.values() if s.expert is not None]
    assert len(experts) == 2 * EXPERTS * 3
    reasons = {s.name: s.reason for s in tuned.pairing.skipped}
    assert not any(r == "3-D tensor" for r in reasons.values())
    assert reasons["model.layers.0.mlp.experts.gate_up_proj_bias"].startswith("expert biases")
    assert "only in tuned" not in reasons.values()
    names = comparison.matrix_names()
    assert names.index("model.layers.0.mlp.experts.0.gate_proj.weight") < names.index(
        "model.layers.0.mlp.experts.2.down_proj.weight") < names.index("model.layers.1.self_attn.q_proj.weight")
    scan = Scan(comparison, Cache(None), device="cpu", workers=1).run()
    assert not scan.errors
    for name, spec in specs.items():
        w0 = load_matrix(comparison.base, name, spec)
        w = load_matrix(tuned.source, spec.tuned_name, spec)
        assert scan.results[(0, name)].intruder_ranks(10, 0.5) == naive_intruders(w0, w), name
    assert scan.results[(0, planted_name)].intruder_ranks(10, 0.5)[:1] == [0]
    results = ScanResults(comparison, scan.results, scan.errors)
    assert [s.name for s, r in results.matrices(0) if r.intruders(10, 0.5)] == [planted_name]


def test_mixtral_on_disk_and_fused_pair_expert_by_expert(tmp_path):
    model = mixtral()
    model.save_pretrained(tmp_path / "disk")  # transformers ≥ 5 writes Mixtral's experts back one by one
    assert "model.layers.0.block_sparse_moe.experts.2.w1.weight" in load_file(tmp_path / "disk" / "model.safetensors")
    save_fused(model, tmp_path / "fused")
    for base, tuned in (("disk", "fused"), ("fused", "disk")):
        comparison = open_comparison(str(tmp_path / base), [str(tmp_path / tuned)])
        specs = {s.name: s for s in comparison.tuned[0].pairing.matrices if s.expert is not None}
        assert len(specs) == 2 * EXPERTS * 3, base
        for spec in specs.values():
            torch.testing.assert_close(load_matrix(comparison.base, spec.name, spec),
                                       load_matrix(comparison.tuned[0].source, spec.tuned_name, spec), rtol=0, atol=0)
    on_disk = open_comparison(str(tmp_path / "disk"), [str(tmp_path / "disk")]).tuned[0].pairing.matrices
    w1 = next(s for s in on_disk if s.name == "model.layers.1.block_sparse_moe.experts.2.w1.weight")
    assert (w1.layer, w1.module, w1.expert) == (1, "block_sparse_moe.experts.w1", 2)


def test_square_experts_take_their_orientation_from_the_model_type(tmp_path):
    """hidden == ff: down_proj (E, 16, 16) cannot tell (in, out) from (out, in) by shape."""
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(0)
    model = GptOssForCausalLM(GptOssConfig(**{**SMALL, "intermediate_size": HIDDEN}, head_dim=8,
                                           layer_types=["full_attention"] * 2))
    store = open_store(save_fused(model, tmp_path / "square"))
    down = model.model.layers[0].mlp.experts.down_proj.detach()
    torch.testing.assert_close(store.load("model.layers.0.mlp.experts.1.down_proj.weight"), down[1].T)


# -- LoRA on expert parameters -------------------------------------------------------------------

def expert_lora(model_type: str, tmp_path, targets=("gate_up_proj", "down_proj")):
    make, block = MODELS[model_type]
    model = make()
    model.save_pretrained(tmp_path / "base")
    peft_model = lora_model(model, r=2, lora_alpha=6, target_modules=["q_proj"],
                            target_parameters=[f"{block}.experts.{t}" for t in targets])
    save_adapter(peft_model, tmp_path / "lora", base_ref="../base")
    merged = fused_state(copy.deepcopy(peft_model).merge_and_unload())
    return block, merged


@pytest.mark.parametrize("model_type", ["gpt_oss", "llama4", "mixtral"])
def test_lora_on_experts_equals_peft_merge_and_unload(model_type, tmp_path):
    block, merged = expert_lora(model_type, tmp_path)
    comparison = open_comparison(str(tmp_path / "base"), [str(tmp_path / "lora")])
    tuned = comparison.tuned[0]
    specs = [s for s in tuned.pairing.matrices if s.expert is not None]
    assert len(specs) == 2 * EXPERTS * 3 and "q_proj" in " ".join(s.name for s in tuned.pairing.matrices)
    for spec in specs:
        matrix = spec.module.rpartition(".")[2]
        matrix = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}.get(matrix, matrix)
        fused = f"model.layers.{spec.layer}.{block}.experts.{'down_proj' if matrix == 'down_proj' else 'gate_up_proj'}"
        wanted = expert_matrix(model_type, merged[fused], spec.expert, matrix)
        ours = load_matrix(tuned.source, spec.tuned_name, spec)
        torch.testing.assert_close(ours, wanted, rtol=1e-5, atol=1e-6, msg=spec.name)
        b, a = tuned.source.delta_factors(spec)
        assert b.shape[1] == 2
        torch.testing.assert_close(b @ a, ours - load_matrix(comparison.base, spec.name, spec), rtol=1e-4, atol=1e-6)
    if model_type != "mixtral":  # the 3-D parameter itself, merged whole (verify-merge and merged exports read it)
        for name in (f"model.layers.0.{block}.experts.gate_up_proj", f"model.layers.1.{block}.experts.down_proj"):
            torch.testing.assert_close(tuned.source.load(name), merged[name], rtol=1e-5, atol=1e-6)
    assert tuned.source.refittable() is None  # written merged by mitigation: no per-expert re-fit


def test_lora_on_one_expert_parameter_named_short(tmp_path):
    _, merged = expert_lora("gpt_oss", tmp_path, targets=("down_proj",))
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    config["target_parameters"] = ["down_proj"]  # PEFT matches a target by the end of the name too
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps(config))
    tuned = open_comparison(str(tmp_path / "base"), [str(tmp_path / "lora")]).tuned[0]
    downs = [s for s in tuned.pairing.matrices if s.expert is not None]
    assert {s.module for s in downs} == {"mlp.experts.down_proj"}
    for spec in downs:
        wanted = merged[f"model.layers.{spec.layer}.mlp.experts.down_proj"][spec.expert].T
        torch.testing.assert_close(tuned.source.load(spec.name), wanted, rtol=1e-5, atol=1e-6)


def test_expert_lora_scans_and_verifies_from_the_cli(cli, tmp_path):
    expert_lora("gpt_oss", tmp_path)
    ran = cli("scan", tmp_path / "base", tmp_path / "lora", "--json", "--no-cache")
    assert ran.code == 0, ran.err
    data = json.loads(ran.out)
    names = {m["name"] for m in data["matrices"]}
    assert "model.layers.1.mlp.experts.2.up_proj.weight" in names and len(names) == 2 * (EXPERTS * 3 + 1)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    PeftModel.from_pretrained(base, tmp_path / "lora").merge_and_unload().save_pretrained(tmp_path / "merged")
    ran = cli("verify-merge", tmp_path / "base", tmp_path / "lora", tmp_path / "merged")
    assert ran.code == 0, ran.err + ran.out


# -- mitigation writes back into the 3-D tensor ----------------------------------------------------

def test_mitigation_of_an_expert_writes_its_part_of_the_3d_tensor(cli, oss, tmp_path):
    root, _ = oss
    ran = cli("mitigate", root / "base", root / "tuned", "--lambda", "0", "--out", tmp_path / "out", "--no-cache")
    assert ran.code == 0, ran.err
    written = load_file(tmp_path / "out" / "model.safetensors")
    tuned = load_file(root / "tuned" / "model.safetensors")
    name = "model.layers.0.mlp.experts.gate_up_proj"
    comparison = open_comparison(str(root / "base"), [str(root / "tuned")])
    scan = Scan(comparison, Cache(None), device="cpu", workers=1).run()
    chosen = plan(ScanResults(comparison, scan.results, scan.errors), 0)
    assert [m.spec.name for m in chosen.matrices] == ["model.layers.0.mlp.experts.1.gate_proj.weight"]
    wanted = scale_intruders(expert_matrix("gpt_oss", tuned[name], 1, "gate_proj"), chosen.matrices[0].ranks, 0)
    torch.testing.assert_close(expert_matrix("gpt_oss", written[name], 1, "gate_proj").double(), wanted,
                               rtol=1e-5, atol=1e-6)
    for expert, matrix in ((1, "up_proj"), (0, "gate_proj"), (2, "gate_proj")):  # the rest as it was
        assert torch.equal(expert_matrix("gpt_oss", written[name], expert, matrix),
                           expert_matrix("gpt_oss", tuned[name], expert, matrix))
    assert all(torch.equal(written[k], v) for k, v in tuned.items() if k != name)


@pytest.mark.parametrize("model_type", ["gpt_oss", "mixtral"])
def test_mitigation_of_an_expert_lora_writes_a_merged_checkpoint(cli, model_type, tmp_path):
    block, merged = expert_lora(model_type, tmp_path)
    ran = cli("mitigate", tmp_path / "base", tmp_path / "lora", "--lambda", "1", "--out", tmp_path / "same",
              "--no-cache")
    assert ran.code == 0 and "merged checkpoint" in ran.out, ran.err
    same = open_store(tmp_path / "same")
    comparison = open_comparison(str(tmp_path / "base"), [str(tmp_path / "lora")])
    for spec in comparison.tuned[0].pairing.matrices:  # λ = 1: PEFT's merge, in the base's own layout
        torch.testing.assert_close(same.load(spec.name).float(), comparison.tuned[0].source.load(spec.name),
                                   rtol=1e-5, atol=1e-6)
    ran = cli("mitigate", tmp_path / "base", tmp_path / "lora", "--lambda", "0", "--scope", "all", "--out",
              tmp_path / "scaled", "--no-cache")
    assert ran.code == 0, ran.err
    scaled = open_store(tmp_path / "scaled")
    scan = Scan(comparison, Cache(None), device="cpu", workers=1).run()
    chosen = plan(ScanResults(comparison, scan.results, scan.errors), 0, scope="all")
    assert any(m.spec.expert is not None for m in chosen.matrices)
    for matrix in chosen.matrices:
        w = load_matrix(comparison.tuned[0].source, matrix.spec.tuned_name, matrix.spec)
        torch.testing.assert_close(scaled.load(matrix.spec.name).double(), scale_intruders(w, matrix.ranks, 0),
                                   rtol=1e-5, atol=1e-6, msg=matrix.spec.name)


# -- hostile expert tensors and adapters -------------------------------------------------------------

def one_line_exit_2(ran) -> str:
    lines = [line for line in ran.err.splitlines() if line.strip()]
    assert ran.code == 2 and len(lines) == 1 and "Traceback" not in ran.err, ran.err
    return lines[0]


def raw_safetensors(path, header: dict, data: bytes = b""):
    blob = json.dumps(header).encode()
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + data)


@pytest.mark.parametrize(("shape", "dtype", "phrase"), [
    ([1 << 40, 0, 16], "F32", "empty expert tensor"),
    ([100000, 16, 0], "BF16", "empty expert tensor"),
    ([2, 16, 7], "F32", "cannot be halved"),
    ([2, 16, 48], "U8", "uint8 tensor: not a float"),
])
def test_odd_expert_tensors_get_a_reason(shape, dtype, phrase, tmp_path):
    size = {"F32": 4, "BF16": 2, "U8": 1}[dtype]
    nbytes = shape[0] * shape[1] * shape[2] * size
    for side in ("base", "tuned"):
        (tmp_path / side).mkdir()
        raw_safetensors(tmp_path / side / "model.safetensors", {
            "model.layers.0.mlp.experts.gate_up_proj": {"dtype": dtype, "shape": shape, "data_offsets": [0, nbytes]},
            "model.layers.0.mlp.router.weight": {"dtype": "F32", "shape": [2, 16],
                                                 "data_offsets": [nbytes, nbytes + 128]},
        }, bytes(nbytes + 128))
        (tmp_path / side / "config.json").write_text(json.dumps({"model_type": "gpt_oss", "hidden_size": 16}))
    comparison = open_comparison(str(tmp_path / "base"), [str(tmp_path / "tuned")])
    reasons = {s.name: s.reason for s in comparison.tuned[0].pairing.skipped}
    assert phrase in reasons["model.layers.0.mlp.experts.gate_up_proj"]


@pytest.fixture(scope="module")
def oss_lora(tmp_path_factory):
    root = tmp_path_factory.mktemp("oss-lora")
    expert_lora("gpt_oss", root)
    return root


def damaged_adapter(root, tmp_path, config=None, tensors=None):
    import shutil

    shutil.copytree(root / "lora", tmp_path / "lora")
    if config:
        cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
        (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps({**cfg, **config}))
    if tensors:
        state = load_file(tmp_path / "lora" / "adapter_model.safetensors")
        save_file(tensors(state), tmp_path / "lora" / "adapter_model.safetensors")
    return tmp_path / "lora"


A_KEY = "base_model.model.model.layers.0.mlp.experts.lora_A.weight"


@pytest.mark.parametrize(("config", "tensors", "phrase"), [
    ({"target_parameters": "mlp.experts.gate_up_proj"}, None, "target_parameters must be a list"),
    ({"target_parameters": [7]}, None, "target_parameters"),
    (None, lambda s: {**s, A_KEY: s[A_KEY][:5]}, "multiple of the rank"),
    (None, lambda s: {**s, A_KEY: torch.zeros(6, 5)}, "do not fit the base parameter"),
    (None, lambda s: {**s, A_KEY: torch.zeros(0, 24)}, "do not have a multiple of the rank"),
    (None, lambda s: {**s, A_KEY.replace("experts.", "experts.base_layer.base_layer."): s[A_KEY].clone()},
     "nesting depth"),
    ({"target_parameters": ["mlp.experts.down_proj"]}, None, "nesting depth"),
    ({"r": 3}, None, "rank r=3"),
])
def test_expert_lora_that_cannot_fit_is_one_line(cli, oss_lora, tmp_path, config, tensors, phrase):
    adapter = damaged_adapter(oss_lora, tmp_path, config, tensors)
    assert phrase in one_line_exit_2(cli("scan", oss_lora / "base", adapter, "--no-cache"))


def test_experts_in_a_bin_checkpoint_read_as_in_safetensors(tmp_path):
    model = gpt_oss()
    twin = open_store(save_fused(model, tmp_path / "st"))
    (tmp_path / "bin").mkdir()
    torch.save(fused_state(model), tmp_path / "bin" / "pytorch_model.bin")
    model.config.to_json_file(tmp_path / "bin" / "config.json")
    store = open_store(tmp_path / "bin")
    assert set(store.experts().parts) == set(twin.experts().parts)
    for name in ("model.layers.0.mlp.experts.1.up_proj.weight", "model.layers.1.mlp.experts.2.down_proj.weight"):
        torch.testing.assert_close(store.load(name), twin.load(name), rtol=0, atol=0)


def test_a_truncated_expert_checkpoint_is_one_line(cli, oss, tmp_path):
    root, _ = oss
    (tmp_path / "cut").mkdir()
    data = (root / "tuned" / "model.safetensors").read_bytes()
    (tmp_path / "cut" / "model.safetensors").write_bytes(data[:len(data) // 2])
    (tmp_path / "cut" / "config.json").write_bytes((root / "tuned" / "config.json").read_bytes())
    assert "truncated" in one_line_exit_2(cli("scan", root / "base", tmp_path / "cut", "--no-cache"))

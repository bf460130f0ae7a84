"""Quantized and odd bases: bitsandbytes 4-bit (nf4, fp4, with and without double quantization) and
8-bit, float8 with block / tensor / row scales, gpt-oss's MXFP4 experts, each dequantized and held to
the format's own error (and to bitsandbytes' and transformers' own dequantization where they run);
non-float tensors and quantization state get a reason; hostile quantized tensors never crash."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import lora_model, save_adapter, tiny_llama
from safetensors.torch import load_file, save_file

from spectui.checkpoint import files
from spectui.checkpoint.comparison import open_comparison, open_store
from spectui.checkpoint.files import CheckpointError
from spectui.checkpoint.quantized import MXFP4_VALUES

NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]
Q = "model.layers.0.self_attn.q_proj.weight"


def one_line_exit_2(ran) -> str:
    lines = [line for line in ran.err.splitlines() if line.strip()]
    assert ran.code == 2 and len(lines) == 1 and "Traceback" not in ran.err, ran.err
    return lines[0]


def bitsandbytes_runs() -> bool:
    try:
        import bitsandbytes.functional as bnb

        q, state = bnb.quantize_4bit(torch.randn(8, 64), quant_type="nf4")
        bnb.dequantize_4bit(q, state)
    except Exception:  # not installed, or no backend for this machine
        return False
    return True


needs_bnb = pytest.mark.skipif(not bitsandbytes_runs(), reason="bitsandbytes cannot run here")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    tiny_llama().save_pretrained(root / "base")
    return root


def saved(tmp_path, name: str, state: dict, config: dict | None = None):
    path = tmp_path / name
    path.mkdir()
    save_file(state, path / "model.safetensors")
    (path / "config.json").write_text(json.dumps({"model_type": "llama", **(config or {})}))
    return path


# -- bitsandbytes 4-bit --------------------------------------------------------------------------

def pack_nf4(w: torch.Tensor, blocksize: int = 64) -> dict[str, torch.Tensor]:
    """bitsandbytes' serialized 4-bit format, written by hand (no double quantization): codes two a
    byte, high nibble first; absmax per block; the code table; the JSON state as uint8."""
    flat = w.float().reshape(-1)
    blocks = flat.reshape(-1, blocksize)
    absmax = blocks.abs().max(dim=1).values
    table = torch.tensor(NF4)
    codes = (blocks / absmax[:, None]).reshape(-1, 1).sub(table).abs().argmin(dim=1).to(torch.uint8)
    state = {"quant_type": "nf4", "blocksize": blocksize, "dtype": "float32", "shape": list(w.shape)}
    return {"": ((codes[0::2] << 4) | codes[1::2]).reshape(-1, 1), ".absmax": absmax, ".quant_map": table,
            ".quant_state.bitsandbytes__nf4": torch.tensor(list(json.dumps(state).encode()), dtype=torch.uint8)}


def test_a_hand_written_nf4_weight_reads_back_as_its_codes_times_absmax(tmp_path):
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(0))
    state = {f"{Q}{suffix}": t for suffix, t in pack_nf4(w).items()}
    store = open_store(saved(tmp_path, "nf4", state))
    packed = state[Q].reshape(-1)
    codes = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1).long()
    wanted = (torch.tensor(NF4)[codes].reshape(-1, 64) * state[f"{Q}.absmax"][:, None]).reshape(32, 128)
    assert store.shape(Q) == (32, 128) and store.quantized and "bitsandbytes nf4" in store.description
    torch.testing.assert_close(store.load(Q), wanted, rtol=0, atol=0)
    gaps = torch.tensor(NF4).diff().max() / 2  # nearest code: off by at most half the widest gap
    blocks_err = (store.load(Q) - w).reshape(-1, 64).abs().max(dim=1).values
    assert bool((blocks_err <= gaps * state[f"{Q}.absmax"] + 1e-6).all())
    assert store.unreadable(f"{Q}.absmax").startswith("bitsandbytes nf4 absmax of")


@needs_bnb
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bitsandbytes_4bit_reads_back_as_bitsandbytes_dequantizes_it(tmp_path, quant_type, double, dtype):
    import bitsandbytes.functional as bnb

    w = torch.randn(48, 200, generator=torch.Generator().manual_seed(1)).to(dtype)  # 9600: a short last block
    q, quant_state = bnb.quantize_4bit(w, blocksize=128, quant_type=quant_type, compress_statistics=double)
    state = {Q: q, **{f"{Q}.{k}": v for k, v in quant_state.as_dict(packed=True).items()}}
    store = open_store(saved(tmp_path, "bnb", state))
    ours = store.load(Q)
    assert ours.dtype == dtype and store.shape(Q) == (48, 200)
    torch.testing.assert_close(ours, bnb.dequantize_4bit(q, quant_state), rtol=0, atol=0)
    # the format's own error: half the widest gap of its 16 codes, times the block's absmax (itself
    # 8-bit quantized with double quantization)
    table = quant_state.code.float().sort().values
    bound = (table.diff().max() / 2 + (0.02 if double else 0)) * w.float().abs().max()
    assert float((ours.float() - w.float()).abs().max()) <= float(bound)


@needs_bnb
def test_a_model_saved_4bit_and_8bit_by_transformers_scans_against_its_original(cli, base, tmp_path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    original = load_file(base / "base" / "model.safetensors")
    for bits, config in (("4", BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                  bnb_4bit_use_double_quant=True)),
                         ("8", BitsAndBytesConfig(load_in_8bit=True))):
        model = AutoModelForCausalLM.from_pretrained(base / "base", quantization_config=config, device_map="cpu")
        model.save_pretrained(tmp_path / f"bnb{bits}")
        store = open_store(tmp_path / f"bnb{bits}")
        assert store.quantized and store.quantization == ("bitsandbytes nf4" if bits == "4" else "bitsandbytes int8")
        for name in (Q, "model.layers.1.mlp.down_proj.weight"):
            w, ours = original[name], store.load(name).float()
            assert ours.shape == w.shape
            if bits == "8":  # round(fp16(w)·127/absmax_row): half a step of its row, and fp16's rounding
                step = w.abs().max(dim=1, keepdim=True).values / 127
                assert bool(((ours - w).abs() <= step / 2 + w.abs() * 2.0 ** -11 + 1e-7).all()), name
            else:
                assert float((ours - w).norm() / w.norm()) < 0.15, name
        ran = cli("scan", tmp_path / f"bnb{bits}", base / "base", "--json", "--no-cache")
        assert ran.code == 0, ran.err
        data = json.loads(ran.out)
        assert any("quantized" in warning and "bitsandbytes" in warning for warning in data["warnings"])
        reasons = {s["name"]: s["reason"] for s in data["skipped"]}
        side = f"{Q}.absmax" if bits == "4" else "model.layers.0.self_attn.q_proj.SCB"
        assert reasons[side].endswith(f"of {Q}")
        assert len(data["matrices"]) == 14


@needs_bnb
def test_a_qlora_adapter_on_its_4bit_base_scans_and_refuses_a_merged_export(cli, base, tmp_path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model = AutoModelForCausalLM.from_pretrained(base / "base", device_map="cpu", quantization_config=(
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")))
    model.save_pretrained(tmp_path / "bnb4")
    adapter = lora_model(tiny_llama(), r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    save_adapter(adapter, tmp_path / "qlora", base_ref="../bnb4")
    comparison = open_comparison(str(tmp_path / "bnb4"), [str(tmp_path / "qlora")])
    tuned = comparison.tuned[0]
    for spec in tuned.pairing.matrices:  # ΔW is the adapter's exactly: the base's rounding cancels
        b, a = tuned.source.delta_factors(spec)
        delta = tuned.source.load(spec.name).float() - comparison.base.load(spec.name).float()
        torch.testing.assert_close(delta, b @ a, rtol=1e-4, atol=1e-5)
    assert cli("scan", tmp_path / "qlora", "--json", "--no-cache").code == 0
    ran = cli("mitigate", tmp_path / "bnb4", tmp_path / "qlora", "--lambda", "0.5", "--merged", "--out",
              tmp_path / "out", "--no-cache")
    errors = [line for line in ran.err.splitlines() if "error" in line]  # after the base's quantization warning
    assert ran.code == 2 and len(errors) == 1 and "writes only float checkpoints" in errors[0], ran.err
    assert not (tmp_path / "out").exists()


# -- float8 --------------------------------------------------------------------------------------

def fp8_blocks(w: torch.Tensor, block: int = 128, dtype=torch.float8_e4m3fn):
    """DeepSeek-V3's layout: q = w / s per block, s = amax / finfo.max (weight_scale_inv holds s)."""
    rows, cols = w.shape
    br, bc = -(-rows // block), -(-cols // block)
    scale = torch.empty(br, bc)
    for i in range(br):
        for j in range(bc):
            scale[i, j] = w[i * block:(i + 1) * block, j * block:(j + 1) * block].abs().max() / torch.finfo(dtype).max
    expanded = scale.repeat_interleave(block, 0)[:rows].repeat_interleave(block, 1)[:, :cols]
    return (w / expanded).to(dtype), scale


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_with_block_scales_reads_back_within_its_precision(tmp_path, dtype):
    w = torch.randn(200, 300, generator=torch.Generator().manual_seed(2))  # ragged last blocks both ways
    q, scale = fp8_blocks(w, dtype=dtype)
    state = {Q: q, Q.replace("weight", "weight_scale_inv"): scale,
             "model.layers.0.self_attn.k_proj.weight": w.clone()}
    store = open_store(saved(tmp_path, "fp8", state, {"quantization_config": {"quant_method": "fp8",
                                                                             "weight_block_size": [128, 128]}}))
    ours = store.load(Q)
    mantissa = 3 if dtype == torch.float8_e4m3fn else 2
    tiny = torch.finfo(dtype).smallest_normal * scale.max()
    assert bool(((ours - w).abs() <= w.abs() * 2.0 ** -(mantissa + 1) + tiny).all())
    expanded = scale.repeat_interleave(128, 0)[:200].repeat_interleave(128, 1)[:, :300]
    torch.testing.assert_close(ours, q.float() * expanded, rtol=0, atol=0)
    assert "(128×128 blocks)" in store.quantization and store.quantized
    assert store.unreadable(Q.replace("weight", "weight_scale_inv")).endswith(f"of {Q}")


def test_float8_with_tensor_and_row_scales(tmp_path):
    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(3))
    k = Q.replace("q_proj", "k_proj")
    tensor_scale = w.abs().max() / 448
    row_scale = w.abs().max(dim=1, keepdim=True).values / 448
    state = {Q: (w / tensor_scale).to(torch.float8_e4m3fn),
             Q.replace("weight", "weight_scale"): tensor_scale.reshape(1),
             Q.replace("weight", "input_scale"): torch.ones(1),
             k: (w / row_scale).to(torch.float8_e4m3fn), k.replace("weight", "weight_scale"): row_scale}
    store = open_store(saved(tmp_path, "fp8", state))
    for name in (Q, k):
        assert float(((store.load(name) - w).abs() / w.abs().clamp(min=1e-3)).max()) <= 2 ** -4 + 1e-3, name
    assert store.unreadable(Q.replace("weight", "input_scale")).startswith("activation scale")


# -- MXFP4 (gpt-oss) -----------------------------------------------------------------------------

def test_mxfp4_experts_read_as_transformers_dequantizes_them(tmp_path, monkeypatch):
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    gen = torch.Generator().manual_seed(4)
    experts, hidden, ff = 3, 64, 32
    prefix = "model.layers.0.mlp.experts"
    state = {}
    for param, rows, cols in (("gate_up_proj", 2 * ff, hidden), ("down_proj", hidden, ff)):
        state[f"{prefix}.{param}_blocks"] = torch.randint(0, 256, (experts, rows, cols // 32, 16), generator=gen,
                                                          dtype=torch.uint8)
        state[f"{prefix}.{param}_scales"] = torch.randint(120, 130, (experts, rows, cols // 32), generator=gen,
                                                          dtype=torch.uint8)
    store = open_store(saved(tmp_path, "mxfp4", state, {"model_type": "gpt_oss", "hidden_size": hidden,
                                                        "intermediate_size": ff}))
    assert f"{prefix}.gate_up_proj" in store.names() and store.quantization == "MXFP4"
    for param in ("gate_up_proj", "down_proj"):
        wanted = convert_moe_packed_tensors(state[f"{prefix}.{param}_blocks"], state[f"{prefix}.{param}_scales"],
                                            dtype=torch.float32)
        torch.testing.assert_close(store.load(f"{prefix}.{param}"), wanted, rtol=0, atol=0)
    gate_up = convert_moe_packed_tensors(state[f"{prefix}.gate_up_proj_blocks"], state[f"{prefix}.gate_up_proj_scales"],
                                         dtype=torch.float32)
    read = []
    original = files._read_safetensor
    monkeypatch.setattr(files, "_read_safetensor", lambda info: read.append(info.nbytes) or original(info))
    up = store.load(f"{prefix}.2.up_proj.weight")  # gpt-oss: up is the odd columns of x @ gate_up[e]
    torch.testing.assert_close(up, gate_up[2][:, 1::2].T, rtol=0, atol=0)
    assert sum(read) * experts == sum(store.info(f"{prefix}.gate_up_proj_{s}").nbytes for s in ("blocks", "scales"))
    codes = {abs(v) for v in MXFP4_VALUES}
    down = store.load(f"{prefix}.0.down_proj.weight")  # every value a code times a power of two
    mantissa = down.abs() / torch.exp2(torch.floor(torch.log2(down.abs().clamp(min=1e-30))))
    assert set(mantissa[down != 0].unique().tolist()) <= {c / 2 ** math.floor(math.log2(c)) for c in codes if c}


# -- what cannot be read gets a reason --------------------------------------------------------------

def test_non_float_tensors_get_a_reason_and_the_rest_scans(cli, base, tmp_path):
    state = load_file(base / "base" / "model.safetensors")
    gptq = "model.layers.0.self_attn.v_proj"
    state[f"{gptq}.qweight"] = torch.zeros(4, 32, dtype=torch.int32)
    state[f"{gptq}.qzeros"] = torch.zeros(1, 4, dtype=torch.int32)
    state[f"{gptq}.scales"] = torch.ones(1, 32, dtype=torch.float16)
    del state[f"{gptq}.weight"]
    state["model.layers.1.self_attn.o_proj.weight"] = torch.zeros(32, 32, dtype=torch.int8)  # no SCB
    state["model.layers.1.mlp.up_proj.weight"] = torch.ones(72, 32, dtype=torch.bool)
    odd = saved(tmp_path, "odd", state)
    ran = cli("scan", odd, base / "base", "--json", "--no-cache")
    assert ran.code == 0, ran.err
    reasons = {s["name"]: s["reason"] for s in json.loads(ran.out)["skipped"]}
    assert reasons[f"{gptq}.qweight"].startswith("GPTQ/AWQ packed int4 weight")
    assert reasons[f"{gptq}.scales"] == f"GPTQ/AWQ scales of {gptq}"
    assert reasons["model.layers.1.self_attn.o_proj.weight"] == "int8 tensor: not a float weight"
    assert reasons["model.layers.1.mlp.up_proj.weight"] == "bool tensor: not a float weight"


def fake_4bit(tmp_path, change) -> dict:
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(0))
    state = {f"{Q}{suffix}": t for suffix, t in pack_nf4(w).items()}
    change(state)
    return state


def blob(text: str) -> torch.Tensor:
    return torch.tensor(list(text.encode()), dtype=torch.uint8)


STATE = f"{Q}.quant_state.bitsandbytes__nf4"
GOOD = {"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [32, 128]}


@pytest.mark.parametrize(("change", "phrase"), [
    (lambda s: s.update({STATE: blob("{not json")}), "not JSON"),
    (lambda s: s.update({STATE: blob("\xff\xfe")}), "not JSON"),
    (lambda s: s.update({STATE: torch.zeros(1 << 17, dtype=torch.uint8)}), "not a short uint8 text"),
    (lambda s: s.update({STATE: blob(json.dumps([1, 2]))}), "not a table"),
    (lambda s: s.update({STATE: blob(json.dumps({**GOOD, "shape": [32, 4096]}))}), "expected for shape"),
    (lambda s: s.update({STATE: blob(json.dumps({**GOOD, "shape": [-1, 128]}))}), "no valid shape"),
    (lambda s: s.update({STATE: blob(json.dumps({**GOOD, "shape": "big"}))}), "no valid shape"),
    (lambda s: s.update({STATE: blob(json.dumps({**GOOD, "blocksize": 7}))}), "block size"),
    (lambda s: s.update({STATE: blob(json.dumps({**GOOD, "dtype": "int8"}))}), "dtype"),
    (lambda s: s.update({STATE: blob(json.dumps({**GOOD, "quant_type": "fp4"}))}), "its name nf4"),
    (lambda s: s.update({STATE: blob(json.dumps({**GOOD, "nested_blocksize": 256, "nested_dtype": "float32",
                                                  "nested_offset": "x"}))}), "nested offset"),
    (lambda s: s.pop(f"{Q}.absmax"), "absmax is missing"),
    (lambda s: s.update({f"{Q}.absmax": torch.ones(3)}), "absmax has 3"),
    (lambda s: s.update({f"{Q}.quant_map": torch.ones(15)}), "quant_map has 15"),
])
def test_a_damaged_4bit_weight_gets_a_reason_not_a_crash(cli, base, tmp_path, change, phrase):
    state = load_file(base / "base" / "model.safetensors")
    del state[Q]
    state.update(fake_4bit(tmp_path, change))
    path = saved(tmp_path, "bad", state)
    ran = cli("scan", path, base / "base", "--json", "--no-cache")
    assert ran.code == 0, ran.err
    reason = {s["name"]: s["reason"] for s in json.loads(ran.out)["skipped"]}[Q]
    assert reason.startswith("bitsandbytes nf4 weight:") and phrase in reason, reason
    with pytest.raises(CheckpointError, match="cannot read"):
        open_store(path).load(Q)


@pytest.mark.parametrize(("extra", "phrase"), [
    ({"weight_scale_inv": torch.ones(3, 3)}, "does not tile"),
    ({"weight_scale_inv": torch.ones(2, 2, 2)}, "fits neither"),
    ({"weight_scale_inv": torch.ones(1, 1, dtype=torch.int32)}, "not float"),
])
def test_float8_with_scales_that_do_not_fit_gets_a_reason(cli, base, tmp_path, extra, phrase):
    state = load_file(base / "base" / "model.safetensors")
    state[Q] = state[Q].to(torch.float8_e4m3fn)
    state.update({Q.replace("weight", name): t for name, t in extra.items()})
    ran = cli("scan", saved(tmp_path, "bad", state), base / "base", "--json", "--no-cache")
    assert ran.code == 0, ran.err
    reason = {s["name"]: s["reason"] for s in json.loads(ran.out)["skipped"]}[Q]
    assert reason.startswith("float8 e4m3 weight:") and phrase in reason, reason


def test_mxfp4_blocks_that_do_not_fit_their_scales_get_a_reason(tmp_path):
    prefix = "model.layers.0.mlp.experts.down_proj"
    state = {f"{prefix}_blocks": torch.zeros(2, 8, 2, 16, dtype=torch.uint8),
             f"{prefix}_scales": torch.zeros(2, 8, 3, dtype=torch.uint8)}
    store = open_store(saved(tmp_path, "bad", state, {"model_type": "gpt_oss"}))
    assert "do not fit" in store.unreadable(prefix)
    assert store.unreadable(f"{prefix}_scales").startswith("MXFP4 scales of")


@pytest.mark.parametrize("dtype", ["F4", "I128", "complex"])
def test_a_dtype_safetensors_does_not_know_is_one_line(cli, base, tmp_path, dtype):
    (tmp_path / "odd").mkdir()
    header = json.dumps({Q: {"dtype": dtype, "shape": [2, 2], "data_offsets": [0, 4]}}).encode()
    (tmp_path / "odd" / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
    assert "unsupported dtype" in one_line_exit_2(cli("scan", base / "base", tmp_path / "odd", "--no-cache"))


def test_unsigned_and_e8m0_tensors_are_read_and_given_a_reason(tmp_path):
    state = {"model.layers.0.mlp.up_proj.weight": torch.ones(4, 4, dtype=torch.uint16),
             "model.layers.0.mlp.down_proj.weight": torch.ones(4, 4, dtype=torch.uint32)}
    if hasattr(torch, "float8_e8m0fnu"):
        state["model.layers.0.mlp.gate_proj.weight"] = torch.ones(4, 4).to(torch.float8_e8m0fnu)
    store = open_store(saved(tmp_path, "u", state))
    for name in state:
        assert "not a float weight" in store.unreadable(name)
        assert store.load(name).shape == (4, 4)
    assert math.prod(store.shape("model.layers.0.mlp.up_proj.weight")) == 16


# -- hostile files: one sentence, never a traceback -------------------------------------------------

def test_a_truncated_quantized_checkpoint_is_one_line(cli, base, tmp_path):
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(0))
    path = saved(tmp_path, "cut", {f"{Q}{suffix}": t for suffix, t in pack_nf4(w).items()})
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[:-40])
    assert "truncated" in one_line_exit_2(cli("scan", path, base / "base", "--no-cache"))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["quant_type", "blocksize", "dtype", "shape", "nested_blocksize",
                                        "nested_dtype", "nested_offset", "x"]),
                       st.one_of(st.integers(-5, 1 << 40), st.floats(allow_nan=True), st.text(max_size=8),
                                 st.lists(st.integers(-3, 1 << 33), max_size=5), st.none()), max_size=8))
def test_any_4bit_state_reads_or_gets_a_reason(tmp_path_factory, state):
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(0))
    tensors = {f"{Q}{suffix}": t for suffix, t in pack_nf4(w).items()}
    tensors[STATE] = blob(json.dumps({**GOOD, **state}))
    store = open_store(saved(tmp_path_factory.mktemp("fuzz"), "q", tensors))
    reason = store.unreadable(Q)
    if reason is None:
        assert store.load(Q).shape == store.shape(Q)
    else:
        assert reason.startswith("bitsandbytes nf4 weight:") and "\n" not in reason
        with pytest.raises(CheckpointError):
            store.load(Q)


def test_a_quantized_bin_checkpoint_reads_as_its_safetensors_twin(tmp_path):
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(0))
    state = {f"{Q}{suffix}": t for suffix, t in pack_nf4(w).items()}
    state[Q.replace("q_proj", "k_proj")] = torch.zeros(8, 8, dtype=torch.int32)
    twin = open_store(saved(tmp_path, "st", state))
    (tmp_path / "bin").mkdir()
    torch.save(state, tmp_path / "bin" / "pytorch_model.bin")
    store = open_store(tmp_path / "bin")
    torch.testing.assert_close(store.load(Q), twin.load(Q), rtol=0, atol=0)
    assert store.unreadable(Q.replace("q_proj", "k_proj")) == "int32 tensor: not a float weight"

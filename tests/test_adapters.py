"""Our adapter reconstruction against PEFT's own merge_and_unload, on tiny real models."""

import copy

import pytest
import torch
from models import lora_model, save_adapter, tiny_gpt2, tiny_llama

from spectui.checkpoint.comparison import open_comparison

CASES = {
    "lora": (tiny_llama, dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])),
    "rslora": (tiny_llama, dict(r=4, lora_alpha=8, use_rslora=True, target_modules=["k_proj", "up_proj"])),
    "patterns": (tiny_llama, dict(
        r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "o_proj"],
        rank_pattern={"q_proj": 4, "layers.1.self_attn.v_proj": 1}, alpha_pattern={"v_proj": 7},
    )),
    "gpt2-conv1d": (tiny_gpt2, dict(r=2, lora_alpha=5, target_modules=["c_attn", "c_proj", "c_fc"],
                                    fan_in_fan_out=True)),
    "dora": (tiny_llama, dict(r=2, lora_alpha=4, use_dora=True, target_modules=["q_proj", "down_proj"])),
    "dora-gpt2": (tiny_gpt2, dict(r=2, lora_alpha=4, use_dora=True, target_modules=["c_attn"],
                                  fan_in_fan_out=True)),
    "embedding": (tiny_llama, dict(r=3, lora_alpha=6, target_modules=["embed_tokens", "q_proj"])),
    "modules-to-save": (tiny_llama, dict(r=2, lora_alpha=4, target_modules=["q_proj"],
                                         modules_to_save=["lm_head"])),
}


@pytest.mark.parametrize("case", list(CASES))
def test_reconstruction_equals_peft_merge_and_unload(case, tmp_path):
    make_base, lora_kwargs = CASES[case]
    base = make_base()
    base.save_pretrained(tmp_path / "base")
    peft_model = lora_model(base, **lora_kwargs)
    if "modules_to_save" in lora_kwargs:
        with torch.no_grad():
            peft_model.base_model.model.lm_head.modules_to_save["default"].weight.add_(1.0)
    save_adapter(peft_model, tmp_path / "adapter")
    merged = copy.deepcopy(peft_model).merge_and_unload().state_dict()

    comparison = open_comparison(str(tmp_path / "base"), [str(tmp_path / "adapter")], include_embeddings=True)
    tuned = comparison.tuned[0]
    scanned = {spec.name for spec in tuned.pairing.matrices}
    assert scanned, "the adapter changes some matrices"
    for name in scanned:
        ours = tuned.source.load(name)
        assert ours.shape == merged[name].shape, name
        torch.testing.assert_close(ours, merged[name].float(), rtol=1e-5, atol=1e-5, msg=name)
    untouched = {s.name for s in tuned.pairing.skipped if s.reason == "not changed by the adapter"}
    assert untouched and not untouched & scanned


def test_gpt2_conv1d_is_scanned_in_out_in_orientation(tmp_path):
    base = tiny_gpt2()
    base.save_pretrained(tmp_path / "base")
    save_adapter(lora_model(base, r=2, lora_alpha=4, target_modules=["c_fc"], fan_in_fan_out=True),
                 tmp_path / "adapter")
    comparison = open_comparison(str(tmp_path / "base"), [str(tmp_path / "adapter")])
    spec = comparison.tuned[0].pairing.matrices[0]
    assert spec.name.endswith("mlp.c_fc.weight") and spec.transposed
    assert spec.shape == (128, 32)  # Conv1D stores (in=32, out=128)


def test_low_rank_delta_factors_reproduce_delta(tmp_path, tiny):
    comparison = open_comparison(str(tiny / "base"), [str(tiny / "lora")])
    model = comparison.tuned[0]
    spec = model.pairing.matrices[0]
    b, a = model.source.delta_factors(spec)
    delta = model.source.load(spec.name) - comparison.base.load(spec.name)
    torch.testing.assert_close(b @ a, delta, rtol=1e-4, atol=1e-5)

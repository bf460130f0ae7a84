"""Checkpoint formats, pairing and skip reasons, adapter-only invocation."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spectui.checkpoint.comparison import open_comparison, open_store
from spectui.checkpoint.files import CheckpointError
from spectui.checkpoint.names import normalise


def all_tensors(directory):
    state = {}
    for file in sorted(directory.glob("*.safetensors")):
        state.update(load_file(file))
    return state


def test_sharded_safetensors_read_like_single(tiny, tmp_path):
    from models import tiny_llama

    tiny_llama().save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    single, sharded = open_store(tiny / "base"), open_store(tmp_path / "sharded")
    assert sorted(single.names()) == sorted(sharded.names())
    for name in single.names():
        torch.testing.assert_close(single.load(name), sharded.load(name))


def test_bin_checkpoints_single_and_sharded(tiny, tmp_path):
    state = all_tensors(tiny / "base")
    (tmp_path / "bin").mkdir()
    torch.save(state, tmp_path / "bin" / "pytorch_model.bin")
    names = sorted(state)
    half = len(names) // 2
    (tmp_path / "shards").mkdir()
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        file = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({n: state[n] for n in part}, tmp_path / "shards" / file)
        weight_map.update({n: file for n in part})
    (tmp_path / "shards" / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for directory in ("bin", "shards"):
        store = open_store(tmp_path / directory)
        assert sorted(store.names()) == names
        for name in names:
            torch.testing.assert_close(store.load(name), state[name])


def test_single_safetensors_file_path(tiny):
    store = open_store(tiny / "base" / "model.safetensors")
    assert "model.layers.0.self_attn.q_proj.weight" in store
    assert store.config.get("model_type") == "llama"


def test_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    import pickle

    (tmp_path / "m").mkdir()
    with open(tmp_path / "m" / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"w": Evil()}, fh)
    with pytest.raises(CheckpointError, match="refusing to unpickle|not a readable"):
        open_store(tmp_path / "m")


def test_prefixes_are_normalised():
    assert normalise("base_model.model.model.layers.0.mlp.up_proj.weight") == "layers.0.mlp.up_proj.weight"
    bert = "bert.encoder.layer.0.attention.self.query.weight"
    assert normalise(bert) == bert.removeprefix("bert.")
    assert normalise("transformer.h.0.attn.c_attn.weight") == "h.0.attn.c_attn.weight"


def test_unmatched_tensors_are_reported_with_reasons(tiny, tmp_path):
    from safetensors.torch import save_file

    state = all_tensors(tiny / "full")
    dropped = "model.layers.1.mlp.up_proj.weight"
    del state[dropped]
    state["model.layers.0.mlp.gate_proj.weight"] = torch.zeros(3, 3)
    state["extra.proj.weight"] = torch.zeros(4, 4)
    (tmp_path / "odd").mkdir()
    save_file(state, tmp_path / "odd" / "model.safetensors")
    comparison = open_comparison(str(tiny / "base"), [str(tmp_path / "odd")])
    reasons = {s.name: s.reason for s in comparison.tuned[0].pairing.skipped}
    assert reasons[dropped] == "not in tuned"
    assert reasons["model.layers.0.mlp.gate_proj.weight"].startswith("shape mismatch: base (72, 32), tuned (3, 3)")
    assert reasons["extra.proj.weight"] == "only in tuned"
    assert reasons["model.layers.0.input_layernorm.weight"] == "1-D tensor"
    assert reasons["model.embed_tokens.weight"].startswith("embedding (off by default")
    assert reasons["lm_head.weight"].startswith("lm_head (off by default")
    scanned = {m.name for m in comparison.tuned[0].pairing.matrices}
    assert len(scanned) == 12 and dropped not in scanned


def test_prefixed_tuned_checkpoint_pairs_with_bare_base(tiny, tmp_path):
    """A base saved as the bare LlamaModel (no `model.` prefix) pairs with a …ForCausalLM tuned."""
    from safetensors.torch import save_file

    state = {k.removeprefix("model."): v for k, v in all_tensors(tiny / "base").items()}
    (tmp_path / "bare").mkdir()
    save_file(state, tmp_path / "bare" / "model.safetensors")
    comparison = open_comparison(str(tmp_path / "bare"), [str(tiny / "full")])
    assert len(comparison.tuned[0].pairing.matrices) == 14


def test_adapter_alone_finds_base_beside_it(tiny):
    comparison = open_comparison(None, [str(tiny / "lora")])
    assert comparison.base.path == (tiny / "base").resolve()


def test_adapter_alone_finds_base_in_local_hub_cache(tiny, tmp_path, monkeypatch):
    import shutil

    snapshot = tmp_path / "hub" / "models--acme--tiny-base" / "snapshots" / "abc123"
    shutil.copytree(tiny / "base", snapshot)
    (tmp_path / "hub" / "models--acme--tiny-base" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny-base" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny / "lora", adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "acme/tiny-base"
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    comparison = open_comparison(None, [str(adapter)])
    assert comparison.base.path == snapshot
    assert len(comparison.tuned[0].pairing.matrices) == 6


def test_labels_name_run_outputs_by_their_run_and_tell_twins_apart():
    from spectui.checkpoint.comparison import _labels

    assert _labels([Path("/runs/lora-r1/output"), Path("/models/full")]) == ["lora-r1/output", "full"]
    assert _labels([Path("/a/x/lora"), Path("/b/y/lora"), Path("/c/full")]) == ["x/lora", "y/lora", "c/full"]

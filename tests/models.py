"""Tiny real checkpoints and PEFT adapters, built in the tests (model hubs are unreachable)."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_llama(seed: int = 0, hidden: int = 32, layers: int = 2, vocab: int = 96):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=hidden, intermediate_size=2 * hidden + 8, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, vocab_size=vocab, max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=96, n_positions=64))


def perturbed(model, scale: float = 0.02, seed: int = 1):
    """A stand-in full fine-tune: every 2-D weight moved by small dense noise."""
    import copy

    tuned = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tuned.parameters():
            if p.ndim == 2:
                p.add_(scale * torch.randn(p.shape, generator=gen) * p.std())
    return tuned


def lora_model(base, seed: int = 2, **lora_kwargs):
    """A PEFT model whose LoRA factors are random and non-zero, as after training."""
    import copy

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(**lora_kwargs))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.3)
    return peft_model


def save_adapter(peft_model, path: Path, base_ref: str | None = None) -> Path:
    peft_model.save_pretrained(path)
    if base_ref is not None:
        import json

        cfg_file = path / "adapter_config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg["base_model_name_or_path"] = base_ref
        cfg_file.write_text(json.dumps(cfg))
    return path

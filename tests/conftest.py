import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from models import lora_model, perturbed, save_adapter, tiny_llama


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny LLaMA base, a dense full fine-tune of it, and a LoRA adapter on it, all on disk."""
    root = tmp_path_factory.mktemp("tiny")
    base = tiny_llama()
    base.save_pretrained(root / "base")
    perturbed(base).save_pretrained(root / "full")
    adapter = lora_model(base, r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"])
    save_adapter(adapter, root / "lora", base_ref="../base")
    return root


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"

import io
from contextlib import redirect_stderr, redirect_stdout
from typing import NamedTuple

import pytest
from models import lora_model, perturbed, save_adapter, tiny_llama

from spectui.cli import main


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


class Ran(NamedTuple):
    code: int
    out: str
    err: str


@pytest.fixture(scope="session")
def cli():
    """`spectui ARGS...` in-process, as the console script runs it: (exit code, stdout, stderr)."""

    def run(*argv) -> Ran:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main([str(arg) for arg in argv])
        return Ran(code, out.getvalue(), err.getvalue())

    return run

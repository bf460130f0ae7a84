"""Fixtures for the fine-tuning tests: a tiny LLaMA base with its own tokenizer, small data sets,
and the `spectui` parser with the fine-tuning subcommands."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pytest

from spectui.cli import build_command_parser

WORDS = ["the", "a", "big", "small", "cat", "dog", "bird", "sat", "ran", "flew", "on", "under",
         "red", "blue", "green", "mat", "log", "tree"]


def sentences(count: int, seed: int) -> list[str]:
    """Short sentences from a fixed template: repetitive enough that a few steps lower the loss."""
    rng = random.Random(seed)
    subjects, verbs, places = ("cat", "dog", "bird"), ("sat", "ran", "flew"), ("mat", "log", "tree")
    return [f"the {rng.choice(('big', 'small'))} {rng.choice(subjects)} {rng.choice(verbs)} on "
            f"the {rng.choice(('red', 'blue', 'green'))} {rng.choice(places)}"
            for _ in range(count)]


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised two-layer LLaMA and a word-level tokenizer, saved like a hub model."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory = tmp_path_factory.mktemp("tiny-llama")
    specials = ["<unk>", "<pad>", "<s>", "</s>"]
    vocab = {token: index for index, token in enumerate(specials + list(WORDS))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                        pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                         num_attention_heads=4, num_key_value_heads=4, vocab_size=300,
                         max_position_embeddings=64, pad_token_id=1, bos_token_id=2,
                         eos_token_id=3)
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def text_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "text.jsonl"
    path.write_text("".join(json.dumps({"text": line}) + "\n" for line in sentences(64, 0)))
    return path


@pytest.fixture(scope="session")
def label_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Classification: label 1 when a cat is in the sentence."""
    path = tmp_path_factory.mktemp("data") / "labels.jsonl"
    rows = [{"text": line, "label": int("cat" in line)} for line in sentences(64, 1)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def spectui() -> argparse.ArgumentParser:
    return build_command_parser()

"""Tokenised examples, padded batches, and the reproducible micro-batch stream of a run."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from spectui.finetune.data import Example

IGNORE_INDEX = -100  # label value the loss skips (padding)


@dataclass(frozen=True)
class Features:
    input_ids: list[int]
    label: int | None = None  # class index for classification; causal LM predicts input_ids


def tokenize(examples: list[Example], tokenizer: PreTrainedTokenizerBase,
             max_len: int) -> list[Features]:
    if not examples:  # tokenizers refuse an empty batch
        return []
    ids = tokenizer([example.text for example in examples], truncation=True,
                    max_length=max_len)["input_ids"]
    return [Features(tokens, example.label) for tokens, example in zip(ids, examples, strict=True)]


def collate(features: list[Features], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and labels (the ids themselves for causal LM)."""
    width = max(len(item.input_ids) for item in features)
    input_ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, item in enumerate(features):
        input_ids[row, : len(item.input_ids)] = torch.tensor(item.input_ids)
        attention_mask[row, : len(item.input_ids)] = 1
    if features[0].label is None:
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    else:
        labels = torch.tensor([item.label for item in features])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@dataclass
class BatchStream:
    """The training set as an endless sequence of micro-batches, each fixed by (seed, index).

    Index m is position m % per_epoch of epoch m // per_epoch, in an order shuffled by the seed
    and the epoch, so resuming at a step needs no saved data-loader state.
    """

    features: list[Features]
    batch_size: int
    seed: int
    _epoch: int = field(default=-1, init=False, repr=False)
    _order: list[int] = field(default_factory=list, init=False, repr=False)

    @property
    def per_epoch(self) -> int:
        return math.ceil(len(self.features) / self.batch_size)

    def batch(self, index: int) -> list[Features]:
        epoch, position = divmod(index, self.per_epoch)
        if epoch != self._epoch:
            self._order = list(range(len(self.features)))
            random.Random(f"{self.seed}:{epoch}").shuffle(self._order)
            self._epoch = epoch
        start = position * self.batch_size
        return [self.features[i] for i in self._order[start : start + self.batch_size]]

"""The forgetting probe: what tuning, and then mitigation, does to the base's own kind of text.

Forgetting is measured as in the paper: the loss on pre-training-like reference text, next-token
cross-entropy for a causal LM and MLM pseudo-loss for a masked LM, beside the loss on a task file
(and the accuracy, for a sequence classifier). BASE is loaded once with transformers. Each
variant (a tuned model, or a mitigated one at some λ) is copied into it in memory by spectui's
normalised tensor names and undone afterwards, so a λ sweep writes no checkpoint. Adapters are
merged by spectui's own PEFT-exact merge. Remote code is never run.

MLM pseudo-loss: the tokens of each block are split by position into `MLM_GROUPS` interleaved
groups (about 15% of a block each); one forward pass masks one group, so every token is masked
exactly once and predicted from all the others. It is deterministic, and costs `MLM_GROUPS`
passes rather than one per token.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from spectui.checkpoint.comparison import Comparison
from spectui.checkpoint.files import CheckpointError
from spectui.checkpoint.names import normalise
from spectui.checkpoint.source import WeightSource
from spectui.defaults import DEFAULT_LAMBDAS, DEFAULT_MAX_TOKENS
from spectui.errors import FileInputError, one_line
from spectui.finetune.data import Example, load_examples
from spectui.mitigate import Plan, components
from spectui.validate import regular_file

MAX_BLOCK = 256  # reference text is scored in blocks of this many tokens, or the model's context
MLM_GROUPS = 7
MAX_TOKEN_CHARS = 64  # bytes of text read per token scored: tokens are far shorter
BATCH = 8
Part = tuple[str, torch.Tensor]  # (tensor name, intruder component in stored orientation)


@dataclass(frozen=True)
class Score:
    """Mean loss over `count` scored tokens (language modelling) or examples (classification)."""

    loss: float
    count: int
    accuracy: float | None = None

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


@dataclass(frozen=True)
class ProbeRow:
    model: str
    lam: float | None  # None: the model as tuned (or the base), not mitigated
    reference: Score
    task: Score | None

    def record(self) -> dict:
        task = self.task
        return {
            "model": self.model, "lambda": self.lam,
            "reference_loss": self.reference.loss, "reference_perplexity": self.reference.perplexity,
            "reference_tokens": self.reference.count,
            "task_loss": task.loss if task else None, "task_accuracy": task.accuracy if task else None,
            "task_count": task.count if task else None,
        }


class Probe:
    """BASE's language model (and, for a labelled task, a classifier built on BASE) with the
    evaluation tokens prepared once; `score` evaluates one variant of the weights."""

    def __init__(self, base: Path, text: Path, task: Path | None = None, *, classification: bool = False,
                 max_tokens: int = DEFAULT_MAX_TOKENS, device: str | torch.device = "cpu"):
        from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

        self.device = torch.device(device)
        self.tokenizer = _tokenizer(base)
        config = _config(base)
        lm_class = _lm_class(base, config)
        self.masked = lm_class is AutoModelForMaskedLM
        if self.masked and self.tokenizer.mask_token_id is None:
            raise CheckpointError(base, "is a masked LM whose tokenizer has no mask token to score text with")
        self.lm, _ = _load(lm_class, base, self.device)
        context = min(MAX_BLOCK, getattr(config, "max_position_embeddings", None) or MAX_BLOCK)
        block = context - 2 if self.masked else context  # room for [CLS] and [SEP]
        self.reference = _reference_blocks(self.tokenizer, text, max_tokens, block, self.masked)
        examples = self._examples(task, classification, max_tokens) if task else []
        self.task = [ids for ids, _ in examples]
        self.labels, self.classifier, self.head = None, None, set()
        if classification and examples:
            self.labels = torch.tensor([example.label for _, example in examples])
            self.classifier, self.head = _load(AutoModelForSequenceClassification, base, self.device,
                                               num_labels=int(self.labels.max()) + 1, pad_token_id=self._pad_id)

    def _examples(self, task: Path, classification: bool,
                  max_tokens: int) -> list[tuple[list[int], Example]]:
        """A causal LM must learn where an example ends, so its examples end with EOS; a masked LM
        or a classifier reads them as written."""
        end = None if self.masked or classification else self.tokenizer.eos_token_id
        examples = load_examples(task, "classification" if classification else "causal-lm")
        return _within_budget(self.tokenizer, examples, max_tokens, end)

    @property
    def _pad_id(self) -> int:
        tok = self.tokenizer
        return next(i for i in (tok.pad_token_id, tok.eos_token_id, 0) if i is not None)

    def score(self, source: WeightSource | None = None, parts: Sequence[Part] = (),
              lam: float = 1.0) -> tuple[Score, Score | None]:
        """Reference and task scores of BASE, of `source`, or of `source` with each intruder
        component scaled by λ (W' = W + (λ − 1)·component)."""
        with _patched(self.lm, source, parts, lam):
            reference = self._lm_score(self.lm, self.reference)
            task = self._lm_score(self.lm, self.task) if self.task and self.classifier is None else None
        if self.classifier is not None:
            with _patched(self.classifier, source, parts, lam) as supplied:
                # A head BASE lacks is random until a tuned model supplies it.
                task = self._classify() if self.head <= supplied else None
        return reference, task

    def _lm_score(self, model, seqs: list[list[int]]) -> Score:
        if self.masked:
            special = torch.tensor(self.tokenizer.all_special_ids, device=self.device)
            return _masked_loss(model, self._batches(seqs), self.tokenizer.mask_token_id, special)
        return _causal_loss(model, self._batches(seqs))

    @torch.no_grad()
    def _classify(self) -> Score:
        losses, hits, start = 0.0, 0, 0
        for ids, mask in self._batches(self.task):
            labels = self.labels[start:start + len(ids)].to(self.device)
            start += len(ids)
            logits = self.classifier(input_ids=ids, attention_mask=mask).logits.double()
            losses += F.cross_entropy(logits, labels, reduction="sum").item()
            hits += int((logits.argmax(-1) == labels).sum())
        return Score(losses / start, start, hits / start)

    def _batches(self, seqs: list[list[int]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Right-padded batches of token ids with their attention masks, on the model's device."""
        for first in range(0, len(seqs), BATCH):
            chunk = seqs[first:first + BATCH]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), self._pad_id)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, seq in enumerate(chunk):
                ids[row, :len(seq)] = torch.tensor(seq)
                mask[row, :len(seq)] = 1
            yield ids.to(self.device), mask.to(self.device)


def sweep(probe: Probe, comparison: Comparison, plans: Sequence[Plan],
          lambdas: Sequence[float] = DEFAULT_LAMBDAS) -> Iterator[ProbeRow]:
    """Base, then each tuned model as tuned and mitigated at every λ (the paper's Fig. 8), one row
    at a time; each matrix is decomposed once per model, whatever the number of λ."""
    yield ProbeRow("base", None, *probe.score())
    for plan in plans:
        yield from model_sweep(probe, comparison, plan, lambdas)


def model_sweep(probe: Probe, comparison: Comparison, plan: Plan,
                lambdas: Sequence[float] = DEFAULT_LAMBDAS) -> Iterator[ProbeRow]:
    """One tuned model as tuned, then mitigated at every λ (the TUI's sweep of the model shown)."""
    model = comparison.tuned[plan.model_index]
    yield ProbeRow(model.label, None, *probe.score(model.source))
    parts = [(name, part.float()) for name, part in components(comparison, plan)]
    for lam in lambdas:
        yield ProbeRow(model.label, lam, *probe.score(model.source, parts, lam))


@contextmanager
def _patched(model, source, parts: Sequence[Part], lam: float) -> Iterator[set[str]]:
    """`model` holding the variant's tensors (matched by normalised name; the ones it lacks, such
    as another model's head, are ignored); yields the names set and restores the rest on exit."""
    slots = {normalise(name): tensor for name, tensor in model.state_dict().items()}
    saved: dict[str, torch.Tensor] = {}

    def put(name: str, value: torch.Tensor) -> None:
        key = normalise(name)
        slot = slots.get(key)
        if slot is None:
            return
        if slot.shape != value.shape:
            raise CheckpointError(source.path, f"tensor {name} has shape {tuple(value.shape)}, but the "
                                               f"model built from BASE has {tuple(slot.shape)} there")
        saved.setdefault(key, slot.clone())
        slot.copy_(value)

    try:
        with torch.no_grad():
            for name in _tuned_names(source):
                put(name, source.load(name))
            for name, part in parts:
                key = normalise(name)
                if key in slots:
                    put(name, slots[key] + (lam - 1) * part.to(slots[key]))
        yield set(saved)
    finally:
        with torch.no_grad():
            for key, original in saved.items():
                slots[key].copy_(original)


def _tuned_names(source: WeightSource | None) -> list[str]:
    return [] if source is None else [name for name in source.names() if source.changes(name)]


@torch.no_grad()
def _causal_loss(model, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> Score:
    """Mean next-token cross-entropy over every predicted (non-padding) token."""
    total, count = 0.0, 0
    for ids, mask in batches:
        logits = model(input_ids=ids, attention_mask=mask).logits.double()
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        losses = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), reduction="sum")
        total += losses.item()
        count += int((targets != -100).sum())
    return Score(total / count, count)


@torch.no_grad()
def _masked_loss(model, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], mask_id: int,
                 special: torch.Tensor) -> Score:
    """MLM pseudo-loss: the mean cross-entropy of each non-special token when it is masked."""
    total, count = 0.0, 0
    for ids, mask in batches:
        content = mask.bool() & ~torch.isin(ids, special)
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        for group in range(MLM_GROUPS):
            chosen = content & (positions % MLM_GROUPS == group)
            if chosen.any():
                logits = model(input_ids=ids.masked_fill(chosen, mask_id), attention_mask=mask).logits
                total += F.cross_entropy(logits[chosen].double(), ids[chosen], reduction="sum").item()
                count += int(chosen.sum())
    return Score(total / count, count)


def _reference_blocks(tokenizer, text: Path, max_tokens: int, block: int,
                      masked: bool) -> list[list[int]]:
    """The first `max_tokens` tokens of the text, cut into blocks; a masked LM's blocks are
    wrapped in its start and end tokens as in pre-training."""
    content = _leading_text(text, max_tokens * MAX_TOKEN_CHARS)
    ids = tokenizer(content, add_special_tokens=False, verbose=False)["input_ids"][:max_tokens]
    if len(ids) < 2 or not content.strip():
        raise FileInputError(text, "holds fewer than two tokens of text to score")
    pieces = [ids[i:i + block] for i in range(0, len(ids), block)]
    return [_wrapped(tokenizer, piece) if masked else piece for piece in pieces if len(piece) > 1]


def _leading_text(path: Path, limit: int) -> str:
    """The first `limit` bytes of a UTF-8 text file: a probe scores a bounded number of tokens, so
    it reads no more than they can take, however large the file (or its one line)."""
    regular_file(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit)
    except OSError as err:
        raise FileInputError(path, f"cannot be read ({err.strerror})") from err
    try:  # a character cut at the limit is left out, not an error
        return codecs.getincrementaldecoder("utf-8")().decode(data, final=len(data) < limit)
    except UnicodeDecodeError:
        raise FileInputError(path, "is not UTF-8 text") from None


def _wrapped(tokenizer, ids: list[int]) -> list[int]:
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    return [i for i in (start, *ids, end) if i is not None]


def _within_budget(tokenizer, examples: list[Example], max_tokens: int,
                   end: int | None) -> list[tuple[list[int], Example]]:
    """(token ids, ending with `end` if given, example) for the leading examples that fit in
    `max_tokens`."""
    kept, used = [], 0
    for example in examples:
        ids = tokenizer(example.text, verbose=False)["input_ids"]
        if end is not None and ids[-1:] != [end]:
            ids = ids + [end]
        used += len(ids)
        if kept and used > max_tokens:
            break
        kept.append((ids, example))
    return kept


def _tokenizer(base: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(base, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as err:
        problem = f"has no usable tokenizer, which the probe needs ({one_line(err)})"
        raise CheckpointError(base, problem) from err


def _config(base: Path):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(base, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise CheckpointError(base, f"has no usable config.json ({one_line(err)})") from err


def _lm_class(base: Path, config):
    """Causal or masked LM, by the architecture BASE was saved as; the head is what scores text."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    names = config.architectures or []
    if any(name.endswith("ForMaskedLM") for name in names):
        return AutoModelForMaskedLM
    if any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in names):
        return AutoModelForCausalLM
    described = ", ".join(names) or config.model_type
    raise CheckpointError(base / "config.json", f"describes {described}, not a causal or masked language "
                                                "model, so it cannot score text")


def _load(model_class, base: Path, device: torch.device, **config) -> tuple[torch.nn.Module, set[str]]:
    """The model in float32 (never judge losses in half precision) and the normalised names of
    the weights BASE did not have, which the probe accounts for itself."""
    try:
        with _quiet_transformers():
            model, info = model_class.from_pretrained(base, dtype=torch.float32, trust_remote_code=False,
                                                      output_loading_info=True, **config)
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(base, f"cannot be loaded with transformers ({one_line(err)})") from err
    return model.to(device).eval(), {normalise(name) for name in info["missing_keys"]}


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No progress bars or load reports on the terminal the probe's own table goes to."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()

"""Regenerate spectui's bundled sample models and data sets, then verify the intruder demo.

Run from the repository root (CPU only, offline, about 7 minutes on 2 cores):

    python sample_models/make_samples.py

It writes, next to this file:
  data/      pretrain.txt, reference.txt (+ their PYTHON-LICENSE.txt), task.jsonl, task_eval.jsonl,
             classify.jsonl
  base/      a small Llama pre-trained on data/pretrain.txt (float16 safetensors + tokenizer)
  lora/      a rank-2 PEFT LoRA adapter of base, trained on data/task.jsonl
  lora-r16/  the same with rank 16 and alpha 32
  full/      a full fine-tune of base on the same task data (float16, like base)

and prints, per model, the task and reference losses and the intruder-dimension counts of
Shuttleworth et al. (arXiv 2410.21228), computed the naive way, so that the samples are shown
to demonstrate the paper's finding: low-rank LoRA has intruders, full fine-tuning almost none.
"""

from __future__ import annotations

import json
import math
import pydoc_data.topics
import random
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.utils.logging import disable_progress_bar

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
SEED = 0
THREADS = 2  # fixed, so that CPU reductions (and hence the weights) are reproducible
EOS, PAD = "<|endoftext|>", "<|pad|>"
VOCAB_SIZE = 1024
SEQ_LEN = 128
PYTHON_LICENSE = Path(pydoc_data.topics.__file__).parents[1] / "LICENSE.txt"  # licence of the corpus
REFERENCE_CHARS = 30_000
TASK_LINES, TASK_EVAL_LINES, CLASSIFY_LINES = 2000, 200, 400
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOP_K, EPSILON = 10, 0.5
EPSILON_SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class TrainSpec:
    """Optimiser schedule: AdamW, linear warm-up, cosine decay to 10% of the peak rate."""

    steps: int
    lr: float
    batch_size: int
    weight_decay: float = 0.0
    warmup: int = 0


@dataclass(frozen=True)
class LoraRun:
    """One LoRA sample: output folder, rank, alpha and its training schedule."""

    name: str
    r: int
    alpha: int
    spec: TrainSpec


# LoRA needs a far higher learning rate than full fine-tuning to learn the task; these settings
# bring all fine-tunes to about the same task loss, so their intruder counts compare fairly.
PRETRAIN = TrainSpec(steps=2000, lr=2e-3, batch_size=16, weight_decay=0.5, warmup=100)
FULL = TrainSpec(steps=800, lr=1.5e-5, batch_size=32, warmup=20)
LORA_RUNS = (
    LoraRun("lora", r=2, alpha=4, spec=TrainSpec(steps=800, lr=3e-3, batch_size=32, warmup=20)),
    LoraRun("lora-r16", r=16, alpha=32, spec=TrainSpec(steps=800, lr=5e-4, batch_size=32, warmup=20)),
)


# ---------------------------------------------------------------- data sets


def split_pydoc_topics(seed: int) -> tuple[str, str]:
    """Split the stdlib's Python documentation topics into pre-training and held-out text.

    Whole topics are held out, so reference.txt is unseen text of the same kind as pretrain.txt.
    """
    topics = pydoc_data.topics.topics
    keys = sorted(topics)
    random.Random(seed).shuffle(keys)
    pretrain, reference = [], []
    for key in keys:
        text = topics[key].strip()
        held = sum(map(len, reference))
        fits = held < REFERENCE_CHARS and held + len(text) <= 2 * REFERENCE_CHARS
        (reference if fits else pretrain).append(text)
    return "\n\n".join(pretrain) + "\n", "\n\n".join(reference) + "\n"


def arithmetic_problem(rng: random.Random) -> tuple[int, str, int, int]:
    """Draw a two-operand problem; its format is nothing like the documentation corpus."""
    a, b = rng.randrange(100), rng.randrange(100)
    op = rng.choice("+-")
    return a, op, b, a + b if op == "+" else a - b


def task_rows(rng: random.Random, n: int) -> list[dict]:
    """Fine-tuning lines such as ``Q: 23 + 48 = ? A: 71``."""
    rows = []
    for _ in range(n):
        a, op, b, result = arithmetic_problem(rng)
        rows.append({"text": f"Q: {a} {op} {b} = ? A: {result}"})
    return rows


def classify_rows(rng: random.Random, n: int) -> list[dict]:
    """Sequence-classification lines: is the stated equation true (1) or false (0)?"""
    rows = []
    for i in range(n):
        a, op, b, result = arithmetic_problem(rng)
        label = i % 2
        shown = result if label else result + rng.choice([-10, -2, -1, 1, 2, 10])
        rows.append({"text": f"{a} {op} {b} = {shown}", "label": label})
    rng.shuffle(rows)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write one JSON object per line (the format spectui's fine-tune form reads)."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def write_data_sets() -> tuple[str, str, list[str], list[str]]:
    """Write every file of data/ and return the texts the models are trained and judged on."""
    DATA.mkdir(parents=True, exist_ok=True)
    pretrain, reference = split_pydoc_topics(SEED)
    rng = random.Random(SEED)
    task = task_rows(rng, TASK_LINES + TASK_EVAL_LINES)
    (DATA / "pretrain.txt").write_text(pretrain, encoding="utf-8")
    (DATA / "reference.txt").write_text(reference, encoding="utf-8")
    shutil.copyfile(PYTHON_LICENSE, DATA / "PYTHON-LICENSE.txt")  # the PSF licence asks for its notice
    write_jsonl(DATA / "task.jsonl", task[:TASK_LINES])
    write_jsonl(DATA / "task_eval.jsonl", task[TASK_LINES:])
    write_jsonl(DATA / "classify.jsonl", classify_rows(rng, CLASSIFY_LINES))
    texts = [row["text"] for row in task]
    return pretrain, reference, texts[:TASK_LINES], texts[TASK_LINES:]


# ---------------------------------------------------------------- tokenizer and batches


def train_tokenizer(corpus: str) -> PreTrainedTokenizerFast:
    """Byte-level BPE on the pre-training corpus, so any text (digits included) encodes."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus.split("\n\n"), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS, pad_token=PAD)


def encode_lines(tokenizer: PreTrainedTokenizerFast, lines: list[str]) -> list[list[int]]:
    """Token ids of each line followed by EOS, so a model learns where an answer ends."""
    return [ids + [tokenizer.eos_token_id] for ids in tokenizer(lines)["input_ids"]]


def collate(seqs: list[list[int]], pad_id: int) -> Batch:
    """Right-pad a list of id sequences; padded positions are masked out of the loss."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def random_windows(ids: list[int], batch_size: int, gen: torch.Generator) -> Iterator[Batch]:
    """Endless batches of random SEQ_LEN windows of one token stream (pre-training)."""
    stream = torch.tensor(ids)
    while True:
        starts = torch.randint(len(stream) - SEQ_LEN, (batch_size,), generator=gen).tolist()
        windows = torch.stack([stream[s : s + SEQ_LEN] for s in starts])
        yield {"input_ids": windows, "attention_mask": torch.ones_like(windows), "labels": windows}


def shuffled_batches(seqs: list[list[int]], batch_size: int, pad_id: int, gen: torch.Generator) -> Iterator[Batch]:
    """Endless epochs over short sequences, reshuffled each epoch (fine-tuning)."""
    while True:
        order = torch.randperm(len(seqs), generator=gen).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield collate([seqs[i] for i in order[start : start + batch_size]], pad_id)


def eval_batches(seqs: list[list[int]], pad_id: int, batch_size: int = 64) -> list[Batch]:
    """Fixed, ordered batches, so every model is judged on exactly the same tokens."""
    return [collate(seqs[i : i + batch_size], pad_id) for i in range(0, len(seqs), batch_size)]


def chunks(ids: list[int]) -> list[list[int]]:
    """Cut a token stream into consecutive SEQ_LEN pieces (reference-text evaluation)."""
    return [ids[i : i + SEQ_LEN] for i in range(0, len(ids) - SEQ_LEN + 1, SEQ_LEN)]


# ---------------------------------------------------------------- training


def lr_factor(step: int, spec: TrainSpec) -> float:
    """Warm-up then cosine decay to 10%, a schedule that trains tiny models stably."""
    if step < spec.warmup:
        return (step + 1) / spec.warmup
    progress = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))


def train(model: torch.nn.Module, batches: Iterator[Batch], spec: TrainSpec, label: str) -> None:
    """The one training loop: pre-training and both fine-tunes differ only in data and spec."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, spec))
    model.train()
    started, running = time.perf_counter(), None
    for step in range(spec.steps):
        loss = model(**next(batches)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if (step + 1) % max(1, spec.steps // 10) == 0:
            elapsed = time.perf_counter() - started
            print(f"  {label} step {step + 1}/{spec.steps}  loss {running:.3f}  {elapsed:.0f}s")
    model.eval()


@torch.no_grad()
def eval_loss(model: torch.nn.Module, batches: list[Batch]) -> float:
    """Mean next-token cross-entropy over all non-padding target tokens."""
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        losses = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), reduction="none")
        total += losses.sum().item()
        count += (targets != -100).sum().item()
    return total / count


def new_base_model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A 4-layer, 128-wide Llama with tied embeddings (about 0.9M parameters)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2 * SEQ_LEN,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def save_half(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    """Save in float16 to fit the size budget; fine-tunes start from the reloaded, rounded base."""
    model.to(torch.float16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def load_causal_lm(folder: Path) -> PreTrainedModel:
    """Load a saved model in float32, the precision all training and SVDs use."""
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def reseed() -> torch.Generator:
    """Reset all randomness, so each stage is reproducible on its own and order-independent."""
    torch.manual_seed(SEED)
    return torch.Generator().manual_seed(SEED)


def pretrain_base(tokenizer: PreTrainedTokenizerFast, corpus: str) -> None:
    """Pre-train base/ on the documentation corpus."""
    gen = reseed()
    model = new_base_model(tokenizer)
    ids = tokenizer(corpus)["input_ids"]
    train(model, random_windows(ids, PRETRAIN.batch_size, gen), PRETRAIN, "pretrain")
    save_half(model, tokenizer, HERE / "base")


def finetune_full(tokenizer: PreTrainedTokenizerFast, task: list[list[int]]) -> None:
    """Fine-tune every weight of base/ on the task and save it as full/."""
    gen = reseed()
    model = load_causal_lm(HERE / "base")
    batches = shuffled_batches(task, FULL.batch_size, tokenizer.pad_token_id, gen)
    train(model, batches, FULL, "full")
    save_half(model, tokenizer, HERE / "full")


def finetune_lora(run: LoraRun, tokenizer: PreTrainedTokenizerFast, task: list[list[int]]) -> None:
    """Train a LoRA adapter of base/ on the task; its config points at ``../base``."""
    gen = reseed()
    config = LoraConfig(r=run.r, lora_alpha=run.alpha, lora_dropout=0.0, target_modules=TARGET_MODULES)
    model = get_peft_model(load_causal_lm(HERE / "base"), config)
    batches = shuffled_batches(task, run.spec.batch_size, tokenizer.pad_token_id, gen)
    train(model, batches, run.spec, run.name)
    saved = model.peft_config["default"]
    saved.base_model_name_or_path = "../base"  # relative to the adapter folder, as spectui resolves it
    saved.target_modules = sorted(saved.target_modules)  # a set: its saved order would vary per run
    model.save_pretrained(HERE / run.name, save_embedding_layers=False)  # no vocab check against ../base
    (HERE / run.name / "README.md").unlink()  # PEFT's placeholder model card; sample_models/README.md says it all


# ---------------------------------------------------------------- verification


def decoder_matrices(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """All 2-D weights inside the decoder layers, in float64 (never judge spectra in fp16)."""
    return {
        name: tensor.double() for name, tensor in model.state_dict().items() if ".layers." in name and tensor.ndim == 2
    }


def top_k_similarity(w0: torch.Tensor, w: torch.Tensor, k: int = TOP_K) -> torch.Tensor:
    """m_j = max_i |u_j . u0_i| for the top-k left singular vectors u_j of w (the paper's test)."""
    u0 = torch.linalg.svd(w0, full_matrices=False).U
    u = torch.linalg.svd(w, full_matrices=False).U
    return (u[:, :k].T @ u0).abs().max(dim=1).values


def similarities(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor]) -> torch.Tensor:
    """Stack m_j of every decoder matrix (rows) so any epsilon can be counted afterwards."""
    return torch.stack([top_k_similarity(base[name], tuned[name]) for name in base])


def mp_edge_ratio(w: torch.Tensor) -> float:
    """sigma_max over the Marchenko-Pastur edge of a random matrix of the same size and RMS.

    About 1 means a random-like spectrum; trained matrices with structure rise above it.
    """
    rows, cols = w.shape
    edge = w.pow(2).mean().sqrt() * (rows**0.5 + cols**0.5)
    return (torch.linalg.matrix_norm(w, ord=2) / edge).item()


def merged_lora(folder: Path) -> PreTrainedModel:
    """Base with the adapter merged by PEFT itself (W0 + alpha/r * B @ A)."""
    return PeftModel.from_pretrained(load_causal_lm(HERE / "base"), folder).merge_and_unload()


def verify(task_eval: list[Batch], reference: list[Batch]) -> None:
    """Reload every sample from disk and print losses and intruder counts per model."""
    base = load_causal_lm(HERE / "base")
    base_weights = decoder_matrices(base)
    tuned = {"full": load_causal_lm(HERE / "full")}
    tuned.update({run.name: merged_lora(HERE / run.name) for run in LORA_RUNS})
    ratios = sorted(mp_edge_ratio(w) for w in base_weights.values())
    print(f"\nbase sigma_max / MP edge: min {ratios[0]:.2f}, median {ratios[len(ratios) // 2]:.2f}")
    print(f"\n{'model':<10}{'task loss':>10}{'ref loss':>10}{'intruders':>11}{'matrices':>10}", end="")
    print(f"   (k={TOP_K}, eps={EPSILON}, of {len(base_weights)} decoder matrices)")
    sweeps = {}
    for name, model in {"base": base, **tuned}.items():
        sims = similarities(base_weights, decoder_matrices(model))
        flags = sims < EPSILON
        sweeps[name] = [int((sims < eps).sum()) for eps in EPSILON_SWEEP]
        print(
            f"{name:<10}{eval_loss(model, task_eval):>10.3f}{eval_loss(model, reference):>10.3f}"
            f"{int(flags.sum()):>11}{int(flags.any(dim=1).sum()):>10}"
        )
    print_sweep(sweeps)


def print_sweep(sweeps: dict[str, list[int]]) -> None:
    """Intruder totals per epsilon for each model: the paper's Fig. 4 as numbers."""
    print(f"\n{'eps sweep':<10}" + "".join(f"{eps:>5}" for eps in EPSILON_SWEEP) + f"   (k={TOP_K})")
    for name, counts in sweeps.items():
        print(f"{name:<10}" + "".join(f"{count:>5}" for count in counts))


def main() -> None:
    """Build data, tokenizer, base and fine-tunes in order, then verify the demo."""
    started = time.perf_counter()
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    disable_progress_bar()
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}")
    corpus, reference, task, task_eval = write_data_sets()
    tokenizer = train_tokenizer(corpus)
    pretrain_base(tokenizer, corpus)
    task_ids = encode_lines(tokenizer, task)
    finetune_full(tokenizer, task_ids)
    for run in LORA_RUNS:
        finetune_lora(run, tokenizer, task_ids)
    pad = tokenizer.pad_token_id
    verify(
        eval_batches(encode_lines(tokenizer, task_eval), pad),
        eval_batches(chunks(tokenizer(reference)["input_ids"]), pad),
    )
    print(f"\ndone in {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()

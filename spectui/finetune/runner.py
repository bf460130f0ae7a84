"""The training process of one run: `python -m spectui.finetune.runner RUN_DIR`.

A plain PyTorch loop (AdamW, a transformers learning-rate schedule) driven through
`accelerate.Accelerator`, so the same code runs on one device and under `accelerate launch`
(DDP): process p of n takes micro-batches p, p + n, ..., every process evaluates the whole
evaluation set, and only the first one writes files. Resume restores data order and RNG, so a
resumed single-process run matches an uninterrupted one exactly (under DDP only the first
process's RNG state is saved).

metrics.jsonl gets one line per log interval, evaluation and the last step:
    step, max_steps, epoch, loss (mean since the previous line), eval_loss (null when not
    evaluated at that step), eval_accuracy (classification only), lr, grad_norm,
    tokens_per_s, elapsed_s
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase, get_scheduler
from transformers.utils import logging as transformers_logging

from spectui import atomic
from spectui.errors import InputError, one_line
from spectui.finetune.batches import IGNORE_INDEX, BatchStream, Features, collate, tokenize
from spectui.finetune.checkpoints import restore, resume_point, save_checkpoint
from spectui.finetune.data import Example, load_splits
from spectui.finetune.merge import prepare_start
from spectui.finetune.models import (
    build_model,
    load_tokenizer,
    save_output,
    save_pissa_init,
)
from spectui.finetune.runs import Run, State
from spectui.finetune.spec import RunSpec

MIXED_PRECISION = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}
OUT_OF_MEMORY = ("ran out of memory; lower batch_size or max_seq_len (raise grad_accum to keep "
                 "the effective batch size)")


class TrainingError(Exception):
    """Training cannot go on; the message says why, in one line."""


class Cancelled(BaseException):
    """SIGTERM or SIGINT arrived. A BaseException, so no library's `except Exception` eats it."""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m spectui.finetune.runner RUN_DIR", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _raise_cancelled)
    transformers_logging.disable_progress_bar()  # the log is a file: no carriage-return bars
    return 0 if execute(Run(args[0])) is State.DONE else 1


def execute(run: Run) -> State:
    """Train the run and record how it ended in its status (by the first process only)."""
    leader = os.environ.get("RANK", "0") == "0"
    if leader:
        run.set_status(State.RUNNING)
    try:
        train(run)
        state, message = State.DONE, ""
    except Cancelled as reason:
        state, message = State.CANCELLED, f"stopped by {reason}"
    except (TrainingError, InputError) as error:
        state, message = State.FAILED, str(error)
    except (torch.OutOfMemoryError, MemoryError):
        state, message = State.FAILED, OUT_OF_MEMORY
    except Exception as error:
        traceback.print_exc()
        state, message = State.FAILED, (f"unexpected {type(error).__name__}: {one_line(error)} "
                                        f"(traceback in {run.log_path})")
    if leader:
        run.set_status(state, message)
        print(f"{state.value}: {message}" if message else state.value, flush=True)
    return state


def train(run: Run) -> None:
    """Train from the spec, or on from the last checkpoint, to the final output."""
    spec = run.spec()
    _check_device(spec)
    accelerator = Accelerator(cpu=spec.device == "cpu", mixed_precision=MIXED_PRECISION[spec.dtype])
    if spec.start_from:  # the previous model, merged first when it is an adapter (once: rank 0)
        if accelerator.is_main_process:
            prepare_start(run)
        accelerator.wait_for_everyone()
        spec = replace(spec, base=run.starting_model())
    tokenizer = load_tokenizer(spec)
    train_set, eval_set = _datasets(spec, tokenizer)
    checkpoint = resume_point(run)
    model = build_model(spec, tokenizer, _num_labels(train_set + eval_set), checkpoint)
    if spec.method == "pissa" and accelerator.is_main_process and not run.pissa_init_dir.exists():
        with atomic.directory(run.pissa_init_dir) as directory:
            save_pissa_init(model, directory)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=spec.learning_rate, weight_decay=0.0)
    stream = BatchStream(train_set, spec.batch_size, spec.seed)
    micro_per_step = spec.grad_accum * accelerator.num_processes
    total = spec.max_steps or max(1, math.ceil(spec.epochs * stream.per_epoch / micro_per_step))
    scheduler = get_scheduler(spec.scheduler, optimizer, num_warmup_steps=spec.warmup_steps,
                              num_training_steps=total)
    model, optimizer = accelerator.prepare(model, optimizer)
    loop = Loop(run, spec, accelerator, tokenizer, model, optimizer, scheduler, stream, eval_set,
                total)
    if checkpoint:
        loop.resume_from(checkpoint)
    accelerator.print(f"{spec.method} on {spec.base}: {len(train_set)} training and "
                      f"{len(eval_set)} evaluation examples, {total} steps on "
                      f"{accelerator.device} ({accelerator.num_processes} process(es))", flush=True)
    for warning in spec.warnings():
        accelerator.print(f"warning: {warning}", flush=True)
    loop.train()


@dataclass
class Loop:
    """The training loop's state; `train()` goes from `step` to `total_steps`."""

    run: Run
    spec: RunSpec
    accelerator: Accelerator
    tokenizer: PreTrainedTokenizerBase
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    stream: BatchStream
    eval_set: list[Features]
    total_steps: int
    step: int = 0
    elapsed_before: float = 0.0  # seconds trained before this process (by a resumed run)
    started: float = field(default_factory=time.monotonic)
    first_step: int = 0  # where this process started, for the ETA

    def resume_from(self, checkpoint: Path) -> None:
        self.step, self.elapsed_before = restore(checkpoint, self.optimizer, self.scheduler)
        if self.accelerator.is_main_process:
            self.run.keep_metrics_until(self.step)
            print(f"resuming from {checkpoint} at step {self.step}", flush=True)

    def train(self) -> None:
        self.first_step, losses, tokens, since = self.step, [], 0, time.monotonic()
        while self.step < self.total_steps:
            loss, step_tokens, grad_norm = self._train_step()
            losses.append(loss)
            tokens += step_tokens
            evaluation = self._evaluate() if self._eval_due() else {}
            if evaluation or self.step % self.spec.log_every == 0 or self._last_step():
                now = time.monotonic()
                self._log(sum(losses) / len(losses), tokens / max(now - since, 1e-9), grad_norm,
                          evaluation)
                losses, tokens, since = [], 0, now
            if self.spec.save_every and self.step % self.spec.save_every == 0:
                self._save_checkpoint()
        if self.accelerator.is_main_process:
            # replace: an output a run recorded as unfinished (killed after publishing it) is redone
            with atomic.directory(self.run.output_dir, replace=True) as directory:
                save_output(self._unwrapped(), self.tokenizer, self.spec, directory,
                            self.run.pissa_init_dir)
            print(f"output: {self.run.output_dir}", flush=True)

    def _train_step(self) -> tuple[float, int, float]:
        """One optimizer step over grad_accum micro-batches per process.

        Returns the mean loss and the token count over all processes, and the gradient norm
        before clipping."""
        accumulate, accelerator = self.spec.grad_accum, self.accelerator
        self.model.train()
        loss_sum = torch.zeros((), device=accelerator.device)
        tokens = torch.zeros((), device=accelerator.device)
        for micro in range(accumulate):
            index = ((self.step * accumulate + micro) * accelerator.num_processes
                     + accelerator.process_index)
            batch = self._on_device(collate(self.stream.batch(index), self.tokenizer.pad_token_id))
            syncing = micro == accumulate - 1  # all-reduce gradients only once per step
            with nullcontext() if syncing else accelerator.no_sync(self.model):
                loss = self.model(**batch).loss
                accelerator.backward(loss / accumulate)
            loss_sum += loss.detach().float()
            tokens += batch["attention_mask"].sum()
        totals = accelerator.reduce(torch.stack([loss_sum / accumulate, tokens]), reduction="sum")
        mean_loss = totals[0].item() / accelerator.num_processes
        if not math.isfinite(mean_loss):
            raise TrainingError(f"the loss became {mean_loss} at step {self.step + 1}; lower the "
                                f"learning rate ({self.spec.learning_rate:g}) or train in float32")
        grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), self.spec.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()
        self.step += 1
        return mean_loss, int(totals[1].item()), float(grad_norm)

    @torch.no_grad()
    def _evaluate(self) -> dict[str, float]:
        """Evaluation loss (per predicted token, or per example when classifying) and accuracy."""
        self.model.eval()
        classifying = self.spec.task == "classification"
        loss_sum = weight_sum = correct = 0.0
        for start in range(0, len(self.eval_set), self.spec.batch_size):
            chunk = self.eval_set[start : start + self.spec.batch_size]
            batch = self._on_device(collate(chunk, self.tokenizer.pad_token_id))
            output = self.model(**batch)
            labels = batch["labels"]
            if classifying:
                weight = len(labels)
                correct += (output.logits.argmax(-1) == labels).sum().item()
            else:
                weight = (labels[:, 1:] != IGNORE_INDEX).sum().item()
            loss_sum += output.loss.item() * weight
            weight_sum += weight
        result = {"eval_loss": loss_sum / weight_sum}
        if classifying:
            result["eval_accuracy"] = correct / weight_sum
        return result

    def _log(self, loss: float, tokens_per_s: float, grad_norm: float,
             evaluation: dict[str, float]) -> None:
        """Append a metrics line and print the matching progress line."""
        if not self.accelerator.is_main_process:
            return
        micro_batches = self.step * self.spec.grad_accum * self.accelerator.num_processes
        row: dict[str, Any] = {
            "step": self.step,
            "max_steps": self.total_steps,
            "epoch": round(micro_batches / self.stream.per_epoch, 4),
            "loss": loss,
            "eval_loss": evaluation.get("eval_loss"),
        }
        if self.spec.task == "classification":
            row["eval_accuracy"] = evaluation.get("eval_accuracy")
        row.update(lr=self.scheduler.get_last_lr()[0], grad_norm=grad_norm,
                   tokens_per_s=round(tokens_per_s, 1), elapsed_s=round(self._elapsed(), 3))
        self.run.append_metrics(row)
        seconds_per_step = (time.monotonic() - self.started) / (self.step - self.first_step)
        eta = timedelta(seconds=round(seconds_per_step * (self.total_steps - self.step)))
        evaluated = "".join(f"  {key} {value:.4f}" for key, value in evaluation.items())
        print(f"step {self.step}/{self.total_steps}  loss {loss:.4f}{evaluated}  "
              f"lr {row['lr']:.2e}  {tokens_per_s:,.0f} tok/s  ETA {eta}", flush=True)

    def _save_checkpoint(self) -> None:
        if self.accelerator.is_main_process:
            path = save_checkpoint(self.run, self.step, self._elapsed(), self._unwrapped(),
                                   self.tokenizer, self.optimizer, self.scheduler)
            print(f"checkpoint: {path}", flush=True)

    def _eval_due(self) -> bool:
        every = self.spec.eval_every
        return bool(self.eval_set) and ((every and self.step % every == 0) or self._last_step())

    def _last_step(self) -> bool:
        return self.step == self.total_steps

    def _elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    def _on_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value.to(self.accelerator.device) for key, value in batch.items()}

    def _unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)


def _datasets(spec: RunSpec,
              tokenizer: PreTrainedTokenizerBase) -> tuple[list[Features], list[Features]]:
    """Tokenised training and evaluation sets."""
    train_set, eval_set = (_tokenized(examples, tokenizer, spec) for examples in load_splits(spec))
    if not train_set:
        raise TrainingError(f"{spec.data}: no example is longer than one token")
    return train_set, eval_set


def _tokenized(examples: list[Example], tokenizer: PreTrainedTokenizerBase,
               spec: RunSpec) -> list[Features]:
    features = tokenize(examples, tokenizer, spec.max_seq_len)
    if spec.task == "causal-lm":  # a single token has no next token to learn from
        features = [item for item in features if len(item.input_ids) > 1]
    return features


def _num_labels(features: list[Features]) -> int:
    """Classes for a classification head: labels are 0..n-1 (at least two classes)."""
    return max(2, 1 + max((item.label or 0 for item in features), default=0))


def _check_device(spec: RunSpec) -> None:
    """Refuse an unavailable accelerator instead of silently training on the CPU."""
    if spec.device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"device {spec.device} was asked for but no CUDA GPU is visible")
    if spec.device == "mps" and not torch.backends.mps.is_available():
        raise TrainingError("device mps was asked for but is not available")


def _raise_cancelled(signum: int, frame: object) -> None:
    raise Cancelled(signal.Signals(signum).name)


if __name__ == "__main__":
    raise SystemExit(main())

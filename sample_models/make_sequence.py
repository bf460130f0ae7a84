"""Write the bundled task sequence for sequential fine-tuning: three short tasks of different
templates, trained one after another by `spectui train --sequence` (or a study's `sequence`).

Run from the repository root (no model, no torch; a second):

    python sample_models/make_sequence.py

It writes data/seq_task1.jsonl, data/seq_task2.jsonl and data/seq_task3.jsonl, LINES distinct
lines each, `{"text": ...}` as spectui's fine-tuning reads them:

  1. multiplication   Q: 7 x 12 = ? A: 84
  2. word reversal    reverse: river stone apple -> apple stone river
  3. date format      date: 14/03/2021 => March 14, 2021

Each task is drawn without repetition from its own seeded generator, so the files are the same on
every run and a held-out share of a file is never seen in training.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
LINES = 300
SEED = 16
WORDS = ("apple", "river", "stone", "cloud", "green", "table", "light", "music", "garden", "paper",
         "window", "silver", "forest", "bridge", "candle", "rabbit", "winter", "orange", "pocket",
         "planet", "yellow", "summer", "mirror", "castle")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")


def multiplication(rng: random.Random) -> list[str]:
    pairs = list(itertools.product(range(2, 32), range(2, 12)))
    return [f"Q: {a} x {b} = ? A: {a * b}" for a, b in rng.sample(pairs, LINES)]


def reversal(rng: random.Random) -> list[str]:
    triples = list(itertools.permutations(WORDS, 3))
    return [f"reverse: {' '.join(words)} -> {' '.join(reversed(words))}"
            for words in rng.sample(triples, LINES)]


def dates(rng: random.Random) -> list[str]:
    days = list(itertools.product(range(1, 29), range(1, 13), range(1990, 2030)))
    return [f"date: {day:02d}/{month:02d}/{year} => {MONTHS[month - 1]} {day}, {year}"
            for day, month, year in rng.sample(days, LINES)]


def main() -> None:
    for number, make in enumerate((multiplication, reversal, dates), start=1):
        lines = make(random.Random(f"{SEED}:{number}"))
        path = DATA / f"seq_task{number}.jsonl"
        path.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines), encoding="utf-8")
        print(f"{path}: {len(lines)} lines, e.g. {lines[0]!r}")


if __name__ == "__main__":
    main()

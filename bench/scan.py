"""Scan speed and memory: spectui cold / warm against the paper's naive method, in one run.

    python bench/scan.py [--quick] [--repeat N]

Each measurement runs in its own subprocess (so peak RSS is its own) on the same machine in the
same run; results are reported as ratios to the naive reference measured here, and written to
bench/results/scan-<time>.json. The naive reference is the paper's algorithm as its code does it:
two full float64 SVDs per matrix, one matrix after another, nothing cached. Each method runs
--repeat times (interleaved) and the fastest run counts.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def naive_scan(base: str, tuned: str, k: int = 10, eps: float = 0.5) -> dict[str, list[int]]:
    import torch

    from spectui.checkpoint.comparison import open_comparison
    from spectui.checkpoint.pairing import load_matrix

    torch.set_num_threads(torch.get_num_threads())
    comparison = open_comparison(base, [tuned])
    flags = {}
    model = comparison.tuned[0]
    for spec in model.pairing.matrices:
        w0 = load_matrix(comparison.base, spec.name, spec).double()
        w = load_matrix(model.source, spec.tuned_name, spec).double()
        u0, _, _ = torch.linalg.svd(w0, full_matrices=False)
        u, _, _ = torch.linalg.svd(w, full_matrices=False)
        max_cos = (u.T @ u0).abs().max(dim=1).values
        flags[spec.name] = [int(j) for j in torch.nonzero(max_cos[:k] < eps).flatten()]
    return flags


def spectui_scan(base: str, tuned: str, cache: str | None) -> dict[str, list[int]]:
    from spectui.cache import Cache
    from spectui.checkpoint.comparison import open_comparison
    from spectui.engine import Scan

    comparison = open_comparison(base, [tuned])
    scan = Scan(comparison, Cache(Path(cache) if cache else None), device="cpu").run()
    return {name: r.intruder_ranks() for (_, name), r in scan.results.items()}


def spectral_core_only(base: str, tuned: str) -> tuple[dict[str, list[int]], float]:
    """A warm scan's arithmetic alone: matrices and base decompositions in memory before the clock
    starts, then `compare` on as many threads as a scan uses; no reading, hashing or caching. An
    implementation of this algorithm cannot beat it, so naive / core bounds what savings anywhere
    else could bring. Returns the flags and the seconds of the timed part."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from spectui.checkpoint.comparison import open_comparison
    from spectui.checkpoint.pairing import load_matrix
    from spectui.engine import _limit_lapack_threads, default_workers
    from spectui.spectral import compare, decompose

    comparison = open_comparison(base, [tuned])
    model = comparison.tuned[0]
    pairs = {}
    for spec in model.pairing.matrices:
        w0 = load_matrix(comparison.base, spec.name, spec)
        factors = model.source.delta_factors(spec)
        pairs[spec.name] = (decompose(w0), w0, load_matrix(model.source, spec.tuned_name, spec), factors)
    _limit_lapack_threads(1)
    start = time.perf_counter()
    with ThreadPoolExecutor(default_workers([torch.device("cpu")]), initializer=torch.set_num_threads,
                            initargs=(1,)) as pool:
        results = dict(zip(pairs, pool.map(lambda args: compare(*args), pairs.values())))
    seconds = time.perf_counter() - start
    return {name: r.intruder_ranks() for name, r in results.items()}, seconds


def child(mode: str, base: str, tuned: str, cache: str | None) -> None:
    """Runs in a subprocess: time one scan, report flags, seconds and peak RSS as JSON. Imports
    come first, outside the timing: both methods pay the same ~1 s for torch (and spectui 0.15 s more for
SciPy, which a scan's worker imports in the background)."""
    import scipy.linalg  # noqa: F401 — spectui's CPU eigen-solvers
    import torch  # noqa: F401

    import spectui.cache
    import spectui.checkpoint.comparison
    import spectui.engine  # noqa: F401

    start = time.perf_counter()
    if mode == "core":
        flags, seconds = spectral_core_only(base, tuned)
    else:
        flags = naive_scan(base, tuned) if mode == "naive" else spectui_scan(base, tuned, cache)
        seconds = time.perf_counter() - start
    peak_mb = peak_rss_mb()
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "blas": blas_kernels(), "flags": flags}))


def blas_kernels() -> str:
    """Which kernels each loaded OpenBLAS runs (call after the solvers are imported): a development
    machine may pin older ones through OPENBLAS_CORETYPE, which a user's machine does not (README)."""
    from threadpoolctl import threadpool_info

    return ", ".join(sorted({f"{i['internal_api']} {i.get('architecture', '?')}" for i in threadpool_info()
                             if i["user_api"] == "blas"}))


def peak_rss_mb() -> float:
    """This process's own high-water mark: VmHWM starts afresh at exec, unlike ru_maxrss, which Linux
    carries over from the parent (a parent that built a big model would inflate every child)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(mode: str, base: Path, tuned: Path, cache: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, str(base), str(tuned), str(cache or "")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def generated_pair(root: Path, layers: int, hidden: int, seed: int = 0) -> tuple[Path, Path, Path]:
    """A LLaMA-shaped base with trained-like (decaying) spectra, a LoRA r=8 adapter and a full
    fine-tune of it — built here, never committed."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 16 * 16,
                         num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=8,
                         vocab_size=1024, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                u, _ = torch.linalg.qr(torch.randn(p.shape[0], p.shape[0]))
                v, _ = torch.linalg.qr(torch.randn(p.shape[1], p.shape[1]))
                r = min(p.shape)
                s = torch.logspace(0, -2, r) * (1 + 0.1 * torch.rand(r))
                p.copy_((u[:, :r] * s.sort(descending=True).values) @ v[:, :r].T)
    base, full, lora = root / f"base-{layers}", root / f"full-{layers}", root / f"lora-{layers}"
    model.save_pretrained(base)
    with torch.no_grad():
        tuned = LlamaForCausalLM(config)
        tuned.load_state_dict(model.state_dict())
        for p in tuned.parameters():
            if p.ndim == 2:
                p.add_(0.02 * p.std() * torch.randn_like(p))
        tuned.save_pretrained(full)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(0.05 * torch.randn_like(p))
    peft_model.save_pretrained(lora)
    return base, lora, full


def compare_case(label: str, base: Path, tuned: Path, workdir: Path, repeat: int) -> dict:
    """Each method `repeat` times, interleaved so that drift in the machine's speed hits all three
    alike; the fastest of each is kept."""
    cache = workdir / f"cache-{label}"
    runs: dict[str, list[dict]] = {"naive": [], "cold": [], "warm": [], "core": []}
    for _ in range(repeat):
        shutil.rmtree(cache, ignore_errors=True)
        runs["naive"].append(measure("naive", base, tuned))
        runs["cold"].append(measure("spectui", base, tuned, cache))
        shutil.rmtree(cache / "pair")  # keep the base decompositions only: a new tuned model
        runs["warm"].append(measure("spectui", base, tuned, cache))
        runs["core"].append(measure("core", base, tuned))
    naive, cold, warm, core = (min(runs[mode], key=lambda r: r["seconds"]) for mode in runs)
    agree = all(r["flags"] == naive["flags"] for mode in runs.values() for r in mode)
    row = {
        "case": label, "matrices": len(naive["flags"]),
        "intruders": sum(len(v) for v in naive["flags"].values()),
        "naive_s": naive["seconds"], "cold_s": cold["seconds"], "warm_s": warm["seconds"],
        "cold_speedup": naive["seconds"] / cold["seconds"], "warm_speedup": naive["seconds"] / warm["seconds"],
        "core_s": core["seconds"], "core_speedup": naive["seconds"] / core["seconds"],
        "flags_identical": agree, "peak_mb_naive": naive["peak_mb"], "peak_mb_cold": cold["peak_mb"],
        "blas": cold["blas"],
    }
    print(f"{label:28} {row['matrices']:4d} matrices  naive {row['naive_s']:7.2f}s  "
          f"cold {row['cold_s']:6.2f}s ({row['cold_speedup']:4.1f}×)  warm {row['warm_s']:6.2f}s "
          f"({row['warm_speedup']:4.1f}×)  core {row['core_s']:6.2f}s ({row['core_speedup']:4.1f}×)  "
          f"flags identical: {agree}  peak {row['peak_mb_cold']:.0f} MB  {row['blas']}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="samples only, skip the generated models")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each method; the fastest counts")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, base, tuned, cache = args.child
        child(mode, base, tuned, cache or None)
        return
    from spectui.locations import samples_dir

    samples = samples_dir()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for tuned in ("lora", "full"):
            rows.append(compare_case(f"samples base→{tuned}", samples / "base", samples / tuned, work, args.repeat))
        if not args.quick:
            for layers in (4, 8):
                base, lora, full = generated_pair(work, layers=layers, hidden=512)
                rows.append(compare_case(f"generated {layers}L h512 →lora", base, lora, work, args.repeat))
                rows.append(compare_case(f"generated {layers}L h512 →full", base, full, work, args.repeat))
    out = ROOT / "bench" / "results" / f"scan-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

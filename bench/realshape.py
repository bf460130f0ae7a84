"""One decoder layer at real shapes, scanned the way users would otherwise do it and with spectui,
projected to the whole model; every time is measured in this run, on this machine.

    python bench/realshape.py [--quick] [--layers N] [--case 8b|70b|moe ...] [--tuned lora|dense ...]

Cases (generated here, never committed; bf16 like released checkpoints):
  8b   Llama-3-8B layer: q/o 4096², k/v 1024×4096, gate/up 14336×4096, down 4096×14336 (× 32 layers)
  70b  Llama-3-70B layer: q/o 8192², k/v 1024×8192, gate/up 28672×8192, down 8192×28672 (× 80 layers)
  moe  Mixtral-8x7B layer: attention as 8b, and 8 experts of w1/w3 14336×4096, w2 4096×14336 (× 32)
`--quick` divides every dimension by 4 (the 8b layer then takes a minute or two on two cores).
`--layers N` generates and scans N layers: the whole model is projected from their time per layer.
One layer's seven matrices leave one worker idle at the end (three large ones on two workers); in a
model of 32 layers that tail is paid once, so a projection from one layer overstates spectui's time.

Tuned sides: a LoRA r=16 adapter on every matrix, and a dense (full fine-tune-like) update. Both
plant a realistic mix among the top-10 tuned singular vectors of each matrix: most match a base
vector, two or three are intruders, and one sits near ε (max|cos| 0.46–0.54), where shortcuts err.

Columns (each a whole process, peak RSS its own, fastest of --repeat runs):
  paper fp32   the paper's code / PEFT: float32 torch.linalg.svd of W0 and of W, per matrix
  cold         spectui scan, empty cache
  base cached  spectui scan of this tuned model when the base's decompositions are cached
               (a second adapter on the same base)
  all cached   spectui scan again
  read+hash    reading and hashing the base's and the tuned model's weight files once (SHA-256): the
               floor for "all cached", which must not be slower
  counts cold  spectui scan --counts-only, empty cache (certified flags; the base's spectrum only)
  counts base cached   the same with the base's spectra cached (a second adapter)
  counts base decomposed   the same after a full scan cached the base's decompositions (a second
               adapter's CI gate after the first was browsed in the inspector)
Flags (intruder ranks at k=10, ε=0.5) must be identical to the paper's in every column; the counts
columns also say how many matrices the certificates left to the exact path (W0's full decomposition).
Results go to bench/results/realshape-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from scan import blas_kernels, peak_rss_mb  # noqa: E402  (the bench's own helper, beside this file)

K, EPS, RANK = 10, 0.5, 16
ATTENTION = {"self_attn.q_proj": (4096, 4096), "self_attn.k_proj": (1024, 4096),
             "self_attn.v_proj": (1024, 4096), "self_attn.o_proj": (4096, 4096)}
MLP = {"mlp.gate_proj": (14336, 4096), "mlp.up_proj": (14336, 4096), "mlp.down_proj": (4096, 14336)}
CASES = {
    "8b": ({**ATTENTION, **MLP}, 32),
    "70b": ({**{k: (v[0] * 2 if v[0] == 4096 else v[0], v[1] * 2) for k, v in ATTENTION.items()},
             **{k: (v[0] * 2, v[1] * 2) for k, v in MLP.items()}}, 80),
    "moe": ({**ATTENTION, **{f"block_sparse_moe.experts.{e}.{w}.": s for e in range(8)
                             for w, s in (("w1", (14336, 4096)), ("w3", (14336, 4096)), ("w2", (4096, 14336)))}},
            32),
}


def shapes(case: str, quick: bool, layers: int = 1) -> dict[str, tuple[int, int]]:
    found, _ = CASES[case]
    scale = 4 if quick else 1
    return {f"model.layers.{layer}.{name.rstrip('.')}.weight": (m // scale, n // scale)
            for layer in range(layers) for name, (m, n) in found.items()}


# -- generating a layer -----------------------------------------------------------------------

def trained_like(m: int, n: int, gen):
    """W0 = U diag(s) Vᵀ with a trained-like spectrum: a few large singular values, then a slow decay."""
    import torch

    r = min(m, n)
    fast = "cuda" if DEVICE.startswith("cuda") else "cpu"  # the QRs of a 70B layer take minutes on a CPU
    u, _ = torch.linalg.qr(torch.randn(m, r, generator=gen).to(fast))
    v, _ = torch.linalg.qr(torch.randn(n, r, generator=gen).to(fast))
    s = torch.logspace(0, -1.5, r) * (1 + 0.05 * torch.rand(r, generator=gen))
    s[:8] *= torch.linspace(4, 1.5, 8)
    w0 = (u * s.sort(descending=True).values.to(fast)) @ v.T
    return w0.cpu(), u[:, :32].cpu()


def planted(w0, u0_top, gen):
    """(B, A) of a rank-16 update whose directions make intruders, a near-threshold vector and
    matched ones among the top 10 of W0 + B·A."""
    import torch

    m, n = w0.shape
    top = float(torch.linalg.matrix_norm(w0, ord=2))
    cols, rows = [], []

    def unit(v):
        return v / v.norm()

    for strength in (1.3, 1.1, 0.9):  # intruders: new directions, strong enough to rank in the top 10
        cols.append(strength * top * unit(torch.randn(m, generator=gen)))
        rows.append(unit(torch.randn(n, generator=gen)))
    near = 0.50 + 0.04 * (float(torch.rand(1, generator=gen)) - 0.5)  # max|cos| about 0.48–0.52
    z = unit(torch.randn(m, generator=gen))
    z = unit(z - u0_top[:, 20] * (u0_top[:, 20] @ z))
    cols.append(1.2 * top * (near * u0_top[:, 20] + math.sqrt(1 - near**2) * z))
    rows.append(unit(torch.randn(n, generator=gen)))
    for i in range(RANK - len(cols)):  # small changes along existing directions: matched vectors
        cols.append(0.05 * top * unit(u0_top[:, i % 8] + 0.1 * torch.randn(m, generator=gen) / math.sqrt(m)))
        rows.append(unit(torch.randn(n, generator=gen)))
    return torch.stack(cols, dim=1), torch.stack(rows)


def write_case(root: Path, case: str, quick: bool, layers: int = 1, seed: int = 0) -> tuple[Path, Path, Path, int]:
    """base/, lora/ (a PEFT adapter) and dense/ (a full checkpoint); and the base checkpoint's bytes."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    base, dense, lora = (root / case / name for name in ("base", "dense", "lora"))
    tensors = {"base": {}, "dense": {}, "lora": {}}
    for name, (m, n) in shapes(case, quick, layers).items():
        w0, u0_top = trained_like(m, n, gen)
        b, a = planted(w0, u0_top, gen)
        tensors["base"][name] = w0.to(torch.bfloat16)
        noise = 0.02 * w0.std() * torch.randn(m, n, generator=gen)
        tensors["dense"][name] = (w0 + b @ a + noise).to(torch.bfloat16)
        module = "base_model.model." + name.removesuffix(".weight")
        tensors["lora"][f"{module}.lora_B.weight"] = b.contiguous()
        tensors["lora"][f"{module}.lora_A.weight"] = a.contiguous()
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 128256}
    for path in (base, dense):
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps(config))
    save_file(tensors["base"], base / "model.safetensors")
    save_file(tensors["dense"], dense / "model.safetensors")
    lora.mkdir(parents=True)
    save_file(tensors["lora"], lora / "adapter_model.safetensors")
    (lora / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": RANK, "lora_alpha": RANK, "base_model_name_or_path": str(base),
        "target_modules": sorted({n.split(".")[-2] for n in tensors["base"]})}))
    return base, lora, dense, (base / "model.safetensors").stat().st_size


# -- the methods, each in its own process -----------------------------------------------------

def paper_fp32(base: str, tuned: str, device: str) -> dict[str, list[int]]:
    """What the paper's code and PEFT's reduce_intruder_dimension do: full float32 SVDs of W0 and W,
    on the device the scan gets too."""
    import torch

    from spectui.checkpoint.comparison import open_comparison
    from spectui.checkpoint.pairing import load_matrix

    comparison = open_comparison(base, [tuned])
    flags = {}
    for spec in comparison.tuned[0].pairing.matrices:
        w0 = load_matrix(comparison.base, spec.name, spec).to(device)
        w = load_matrix(comparison.tuned[0].source, spec.tuned_name, spec).to(device)
        u0 = torch.linalg.svd(w0, full_matrices=False)[0]
        u = torch.linalg.svd(w, full_matrices=False)[0][:, :K]
        max_cos = (u.T @ u0).abs().max(dim=1).values
        flags[spec.name] = [int(j) for j in torch.nonzero(max_cos < EPS).flatten()]
    return flags


def spectui_scan(base: str, tuned: str, cache: str, device: str, counts: bool = False):
    """The flags; how many matrices the certificates left to the exact path (counts only), how
    many had W0 decomposed again as its cached compact form left a flag open, and how many
    matrices each route decided (counts only)."""
    from spectui.cache import Cache
    from spectui.checkpoint.comparison import open_comparison
    from spectui.engine import Scan

    comparison = open_comparison(base, [tuned])
    scan = Scan(comparison, Cache(Path(cache), max_bytes=1 << 40), device=device,
                counts=(K, EPS) if counts else None).run()
    if scan.errors:
        raise SystemExit(f"scan failed: {next(iter(scan.errors.values())).message}")
    flags = {name: r.intruder_ranks(K, EPS) for (_, name), r in scan.results.items()}
    routes = {}
    for result in scan.results.values():
        how = getattr(result, "decided_by", "full scan")
        routes[how] = routes.get(how, 0) + 1
    return flags, scan.fallbacks, scan.redecomposed, routes


def read_and_hash(*folders: str) -> None:
    """Every weight file of the models, read once in 64 MB blocks and hashed."""
    import hashlib

    for folder in folders:
        for file in sorted(Path(folder).glob("*.safetensors")):
            h = hashlib.sha256()
            with open(file, "rb") as fh:
                while block := fh.read(64 << 20):
                    h.update(block)


def child(mode: str, base: str, tuned: str, cache: str, device: str) -> None:
    import scipy.linalg  # noqa: F401 — imports outside the clock, for both methods
    import torch

    import spectui.engine  # noqa: F401

    start, cpu_start = time.perf_counter(), time.process_time()
    fallbacks = redecomposed = routes = None
    if mode == "read_hash":
        flags = read_and_hash(base, tuned)
    elif mode == "paper":
        flags = paper_fp32(base, tuned, device)
    else:
        flags, fallbacks, redecomposed, routes = spectui_scan(base, tuned, cache, device, counts=mode == "counts")
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    cpu = time.process_time() - cpu_start
    print(json.dumps({"seconds": time.perf_counter() - start, "cpu_seconds": cpu, "peak_mb": peak_rss_mb(),
                      "blas": blas_kernels(), "flags": flags, "fallbacks": fallbacks, "redecomposed": redecomposed,
                      "decided_by": routes}))


DEVICE = "cpu"  # set from --device


def measure(mode: str, base: Path, tuned: Path, cache: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, str(base), str(tuned), str(cache), DEVICE]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{mode} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cache_bytes(cache: Path, kind: str) -> int:
    return sum(p.stat().st_size for p in (cache / kind).rglob("*.safetensors")) if (cache / kind).is_dir() else 0


def run_case(case: str, tuned_kind: str, paths, base_bytes: int, layers: int, workdir: Path, repeat: int,
             measured_layers: int) -> dict:
    base, lora, dense = paths
    tuned = lora if tuned_kind == "lora" else dense
    cache = workdir / f"cache-{case}-{tuned_kind}"
    counts_cache = workdir / f"cache-{case}-{tuned_kind}-counts"
    runs: dict[str, list[dict]] = {"paper": [], "cold": [], "base_cached": [], "all_cached": [], "read_hash": [],
                                   "counts_cold": [], "counts_base_cached": [], "counts_base_decomposed": []}
    for _ in range(repeat):
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(counts_cache, ignore_errors=True)
        runs["paper"].append(measure("paper", base, tuned, cache))
        runs["cold"].append(measure("spectui", base, tuned, cache))
        written = cache_bytes(cache, "base")
        shutil.rmtree(cache / "pair")  # the base's entries stay: a new tuned model
        runs["base_cached"].append(measure("spectui", base, tuned, cache))
        runs["all_cached"].append(measure("spectui", base, tuned, cache))
        runs["read_hash"].append(measure("read_hash", base, tuned, cache))
        shutil.rmtree(cache / "pair")
        runs["counts_base_decomposed"].append(measure("counts", base, tuned, cache))
        runs["counts_cold"].append(measure("counts", base, tuned, counts_cache))
        counts_written = sum(cache_bytes(counts_cache, kind) for kind in ("spectrum", "base"))
        shutil.rmtree(counts_cache / "pair", ignore_errors=True)  # a fallback's full result: not for a new model
        runs["counts_base_cached"].append(measure("counts", base, tuned, counts_cache))
    best = {mode: min(rows, key=lambda r: r["seconds"]) for mode, rows in runs.items()}
    paper = best["paper"]
    row = {"case": case, "tuned": tuned_kind, "matrices": len(paper["flags"]), "layers_in_model": layers,
           "layers_measured": measured_layers, "blas": best["cold"]["blas"],
           "intruders": sum(len(v) for v in paper["flags"].values()),
           "flags_identical": all(r["flags"] == paper["flags"] for mode, rows in runs.items() for r in rows
                                  if mode != "read_hash"),
           "all_cached_over_read_hash": best["all_cached"]["seconds"] / best["read_hash"]["seconds"],
           "base_cache_bytes": written, "base_checkpoint_bytes": base_bytes,
           "cache_ratio": written / base_bytes, "counts_cache_ratio": counts_written / base_bytes,
           "counts_fallbacks": best["counts_cold"]["fallbacks"],
           "base_cached_redecomposed": best["base_cached"]["redecomposed"],
           "decided_by": {mode: best[mode]["decided_by"] for mode in best if mode.startswith("counts")}}
    for mode, r in best.items():
        row[f"{mode}_s"] = r["seconds"] / measured_layers  # per layer
        row[f"{mode}_cpu_s"] = r["cpu_seconds"] / measured_layers
        row[f"{mode}_peak_mb"] = r["peak_mb"]
        row[f"{mode}_speedup"] = paper["seconds"] / r["seconds"]
        row[f"{mode}_model_min"] = r["seconds"] / measured_layers * layers / 60
    print(f"{case:4} {tuned_kind:5} {row['matrices']:3d} matrices, {row['intruders']:3d} intruders, "
          f"{row['blas']} | " + "  ".join(
        f"{mode} {row[f'{mode}_s']:7.1f}s ×{row[f'{mode}_speedup']:4.1f} ({row[f'{mode}_model_min']:6.1f} min/model, "
        f"{row[f'{mode}_peak_mb']:.0f} MB)" for mode in best) +
        f" | cache {row['cache_ratio']:.2f}× base (counts: {row['counts_cache_ratio']:.3f}×, "
        f"{row['counts_fallbacks']} left to the exact path; base cached: {row['base_cached_redecomposed']} "
        f"decomposed again) | counts decided by {row['decided_by']} | flags identical: {row['flags_identical']}",
        flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every dimension divided by 4")
    parser.add_argument("--case", nargs="*", choices=list(CASES), default=["8b", "moe", "70b"])
    parser.add_argument("--tuned", nargs="*", choices=["lora", "dense"], default=["lora", "dense"])
    parser.add_argument("--repeat", type=int, default=1, help="runs of each method; the fastest counts")
    parser.add_argument("--layers", type=int, default=1, help="layers generated and scanned (times are per layer)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda (every GPU) or cuda:N: both methods run there")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    global DEVICE
    DEVICE = args.device
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for case in args.case:
            *paths, base_bytes = write_case(work, case, args.quick, args.layers)
            for tuned_kind in args.tuned:
                rows.append(run_case(case, tuned_kind, paths, base_bytes, CASES[case][1], work, args.repeat,
                                     args.layers))
            shutil.rmtree(work / case)
    out = ROOT / "bench" / "results" / f"realshape-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, "device": args.device, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

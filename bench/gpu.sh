#!/usr/bin/env bash
# The real-shape benchmark on a GPU machine: one short prepared run, nothing heavy installed (torch
# with CUDA comes from the README's install). Prints the table bench/realshape.py prints and leaves
# its JSON in bench/results/ (and in $OUT when that is set, e.g. on a lent device machine).
#   bash bench/gpu.sh [--quick]          # --quick: every dimension / 4, for a first look
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import spectui" 2>/dev/null; then
    python -m venv .gpu-venv && . .gpu-venv/bin/activate
    pip install -q "torch==2.13.0" -e .
fi
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible"
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name} {p.total_memory / 2**30:.0f} GiB")
from spectui.engine import _fp64_ratio
print(f"float64 / float32 matmul time on cuda:0: {_fp64_ratio(0):.1f}× (solves stay on the GPU below 8×)")
# Whether same-shape batching pays: 8 float64 Gram eigen-decompositions in one batched call against
# one call each (torch batches cuSOLVER's Jacobi solver only up to 32×32 and loops above).
import time
for n in (32, 128, 1024, 4096):
    g = torch.randn(8, n, n, device="cuda:0", dtype=torch.float64)
    g = g @ g.transpose(1, 2)
    times = []
    for run in (lambda: torch.linalg.eigh(g), lambda: [torch.linalg.eigh(x) for x in g]):
        run(); torch.cuda.synchronize()
        start = time.perf_counter(); run(); torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    print(f"eigh 8×{n}²: batched {times[0] * 1e3:.1f} ms, one by one {times[1] * 1e3:.1f} ms ({times[1] / times[0]:.1f}×)")
PY
python bench/realshape.py --device cuda --case 8b moe 70b --tuned lora dense "$@"
if [ -n "${OUT:-}" ]; then cp bench/results/realshape-*.json "$OUT"/; fi

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
PY
python bench/realshape.py --device cuda --case 8b moe 70b --tuned lora dense "$@"
if [ -n "${OUT:-}" ]; then cp bench/results/realshape-*.json "$OUT"/; fi

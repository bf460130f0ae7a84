"""`spectui scan` as a distributed job, for models too big for one machine's patience: launched by
`torchrun` or `accelerate launch` (torch.distributed), every rank scans its share of the matrices,
balanced by cost, writing the cache it is given; rank 0 gathers the results and reports exactly
what a single process would.

The ranks exchange only the small per-matrix results (arrays of singular values and max|cos|),
so the cache need not be shared between nodes; on one node they share it.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable, Sequence

from spectui.checkpoint.comparison import Comparison


def world() -> tuple[int, int] | None:
    """(rank, world size) when this process is one of several launched together, else None."""
    try:
        size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    except ValueError:
        return None
    return (rank, size) if size > 1 and 0 <= rank < size else None


def share(names: Sequence[str], costs: dict[str, int], rank: int, size: int) -> list[str]:
    """This rank's matrices: the costliest first, each to the least loaded rank (the same answer
    on every rank, as it depends only on the names and shapes)."""
    loads = [(0, r) for r in range(size)]
    mine = []
    for name in sorted(names, key=lambda n: (-costs[n], n)):
        load, owner = heapq.heappop(loads)
        if owner == rank:
            mine.append(name)
        heapq.heappush(loads, (load + costs[name], owner))
    return mine


def scan(comparison: Comparison, cache, device: str, workers: int | None,
         on_event: Callable | None, rank: int, size: int, counts: tuple[int, float] | None = None,
         memory: int | None = None):
    """Scan this rank's share (`counts`: only the flags at (k, ε), as `engine.Scan`); rank 0 returns
    every rank's results and failures, the others None."""
    import torch
    import torch.distributed as dist

    from spectui.engine import Scan, matrix_cost
    from spectui.intruders import MatrixCounts
    from spectui.spectral import MatrixResult

    if device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend=backend)
    try:
        names = comparison.matrix_names()
        costs = {name: matrix_cost(comparison.spec(name).shape) for name in names}
        mine = share(names, costs, rank, size)
        part = Scan(comparison, cache, device=device, workers=workers, on_event=on_event, names=mine,
                    counts=counts, memory=memory).run()
        payload = ({key: result.to_arrays() for key, result in part.results.items()}, part.errors)
        gathered = [None] * size if rank == 0 else None
        dist.gather_object(payload, gathered, dst=0)
    finally:
        dist.destroy_process_group()
    if rank != 0:
        return None
    results, errors = {}, {}
    kind = MatrixResult if counts is None else MatrixCounts
    for arrays, failed in gathered:
        results.update({key: kind.from_arrays(*value) for key, value in arrays.items()})
        errors.update(failed)
    return results, errors

"""`spectui scan` launched as several ranks: shares balanced by cost, and the JSON of one process."""

import json
import socket
import subprocess
import sys

import pytest

from spectui.distributed import share


def test_shares_cover_every_matrix_once_and_balance_the_cost():
    costs = {f"m{i}": c for i, c in enumerate([100, 90, 50, 40, 30, 30, 10, 5, 5, 1])}
    shares = [share(list(costs), costs, rank, 3) for rank in range(3)]
    assert sorted(n for s in shares for n in s) == sorted(costs)
    loads = [sum(costs[n] for n in s) for s in shares]
    assert max(loads) - min(loads) <= max(costs.values())
    assert shares == [share(list(reversed(costs)), costs, rank, 3) for rank in range(3)]  # same on every rank


@pytest.mark.slow
def test_two_gloo_ranks_give_the_json_of_one_process(tiny, tmp_path, cli):
    single = cli("scan", tiny / "base", tiny / "lora", tiny / "full", "--json", "--device", "cpu", "--no-cache")
    assert single.code == 0
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
         "-m", "spectui", "scan", str(tiny / "base"), str(tiny / "lora"), str(tiny / "full"), "--json",
         "--device", "cpu", "--cache-dir", str(tmp_path / "shared-cache")],
        capture_output=True, text=True, timeout=240)
    assert launched.returncode == 0, launched.stderr
    assert json.loads(launched.stdout) == json.loads(single.out)

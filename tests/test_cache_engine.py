"""The on-disk cache and the scan engine: reuse, damage, priorities, cancellation, sharing."""

import contextlib
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import spectui.engine as engine
from spectui.cache import Cache
from spectui.checkpoint.comparison import open_comparison
from spectui.engine import MatrixDone, Scan, ScanFinished


def run(tiny, cache, *tuned, **kw):
    comparison = open_comparison(str(tiny / "base"), [str(tiny / t) for t in tuned])
    return Scan(comparison, cache, device="cpu", **kw).run()


def same_results(a, b):
    assert a.keys() == b.keys()
    for key in a:
        for field in ("max_cos", "sigma_base", "sigma_tuned", "sigma_delta", "similarity"):
            np.testing.assert_array_equal(getattr(a[key], field), getattr(b[key], field))


def test_second_scan_hits_the_cache_with_identical_results(tiny, cache_dir):
    first = run(tiny, Cache(cache_dir), "lora")
    second_cache = Cache(cache_dir)
    second = run(tiny, second_cache, "lora")
    assert second_cache.hits == 6 and second_cache.misses == 0
    same_results(first.results, second.results)


def test_damaged_cache_entries_are_recomputed(tiny, cache_dir):
    first = run(tiny, Cache(cache_dir), "full")
    entries = sorted((cache_dir / "pair").rglob("*.safetensors"))
    assert entries
    entries[0].write_bytes(b"garbage")
    data = bytearray(entries[1].read_bytes())
    data[-3] ^= 0xFF  # flip bits inside the tensor data: only the digest notices
    entries[1].write_bytes(bytes(data))
    cache = Cache(cache_dir)
    second = run(tiny, cache, "full")
    assert cache.misses >= 2
    same_results(first.results, second.results)
    assert not list(cache_dir.rglob("*.tmp"))


def test_no_cache_writes_nothing(tiny, tmp_path):
    run(tiny, Cache(None), "lora")
    assert not list(tmp_path.rglob("*.safetensors"))


def test_base_is_decomposed_once_for_several_tuned_models(tiny, monkeypatch):
    calls = []
    real = engine.decompose_base
    monkeypatch.setattr(engine, "decompose_base", lambda w: calls.append(w.shape) or real(w))
    scan = run(tiny, Cache(None), "lora", "full", "full")
    # engine.decompose_base is the base side (compare() decomposes each tuned matrix itself)
    assert len(calls) == len(scan.names) == 14
    assert len(scan.results) == 6 + 14 + 14


def test_totals_of_a_joint_scan_equal_single_scans(tiny):
    joint = run(tiny, Cache(None), "lora", "full")
    for index, name in enumerate(("lora", "full")):
        single = run(tiny, Cache(None), name)
        assert {n: r.intruders() for (i, n), r in joint.results.items() if i == index} == \
               {n: r.intruders() for (_, n), r in single.results.items()}


def test_prioritised_matrix_goes_first(tiny):
    comparison = open_comparison(str(tiny / "base"), [str(tiny / "full")])
    order = []
    scan = Scan(comparison, Cache(None), device="cpu", workers=1,
                on_event=lambda e: order.append(e.name) if isinstance(e, MatrixDone) else None)
    last = scan.names[-1]
    scan.prioritize(last)
    scan.run()
    assert order[0] == last and len(order) == 14


def test_two_phases_count_every_matrix_first_then_its_spectra_the_one_in_view_first(tiny):
    """The TUI's scan: every matrix's counts (MatrixCounts, at the scan's k and ε), then every
    spectrum (the full result replacing them), except that the matrix in view has its spectra
    before anything; its counts are then not computed at all. Results end as a plain scan's."""
    from spectui.intruders import MatrixCounts
    from spectui.spectral import MatrixResult

    comparison = open_comparison(str(tiny / "base"), [str(tiny / "lora"), str(tiny / "full")])
    events = []
    scan = Scan(comparison, Cache(None), device="cpu", workers=1, counts=(10, 0.5), then_spectra=True,
                on_event=lambda e: events.append(e) if isinstance(e, MatrixDone) else None)
    viewed = scan.names[-1]
    scan.prioritize(viewed)
    scan.run()
    kinds = [(e.name, type(e.result)) for e in events]
    assert {name for name, _ in kinds[:2]} == {viewed} and all(kind is MatrixResult for _, kind in kinds[:2])
    first_full = next(i for i, (name, kind) in enumerate(kinds) if kind is MatrixResult and name != viewed)
    counted = [name for name, kind in kinds if kind is MatrixCounts]
    assert all(kind is MatrixCounts for _, kind in kinds[2:first_full]) and viewed not in counted
    assert set(counted) == set(scan.names) - {viewed}
    assert scan.done == scan.total == 2 * len(scan.names) and scan.phase_done("counts") == len(scan.names)
    plain = run(tiny, Cache(None), "lora", "full")
    same_results(scan.results, plain.results)
    for e in events:
        if isinstance(e.result, MatrixCounts):
            assert e.result.intruder_ranks(10, 0.5) == plain.results[(e.model, e.name)].intruder_ranks(10, 0.5)


def test_cancel_stops_early_and_reports(tiny):
    comparison = open_comparison(str(tiny / "base"), [str(tiny / "full")])
    finished = []
    gate = threading.Event()

    def on_event(event):
        if isinstance(event, MatrixDone):
            gate.wait(5)
        if isinstance(event, ScanFinished):
            finished.append(event)

    scan = Scan(comparison, Cache(None), device="cpu", workers=1, on_event=on_event).start()
    scan.cancel()
    gate.set()
    assert scan.wait(30)
    assert finished == [ScanFinished(cancelled=True)]
    assert scan.done < scan.total


def test_progress_and_eta(tiny):
    scan = run(tiny, Cache(None), "full")
    assert scan.done == scan.total == 14 and scan.finished
    assert scan.eta() == pytest.approx(0.0)


def test_the_eta_learns_each_shapes_time_and_scales_unseen_shapes_by_their_work():
    times = engine.ShapeTimes()
    assert times.estimate((64, 64), 64**3) is None  # nothing measured yet
    times.add((64, 64), 64**3, 0.01, computed=False)  # read from the cache: says little of the rest
    assert times.estimate((64, 256), 64 * 256 * 64) == pytest.approx(0.01)
    times.add((64, 64), 64**3, 2.0, computed=True)
    times.add((64, 64), 64**3, 4.0, computed=True)
    assert times.estimate((64, 64), 64**3) == pytest.approx(3.0)  # its own shape's mean
    assert times.estimate((64, 256), 4 * 64**3) == pytest.approx(6.0 * 4 / 2)  # seconds per unit of work


def test_a_paused_scan_waits_after_the_matrix_in_hand_and_goes_on_when_resumed(tiny):
    comparison = open_comparison(str(tiny / "base"), [str(tiny / "full")])
    first = threading.Event()

    def on_event(event):
        if isinstance(event, MatrixDone) and not first.is_set():
            scan.pause()
            first.set()

    scan = Scan(comparison, Cache(None), device="cpu", workers=1, on_event=on_event)
    scan.start()
    assert first.wait(60)
    assert not scan.wait(0.5) and scan.paused and scan.done == 1
    eta = scan.eta()
    assert eta > 0
    time.sleep(0.3)
    assert scan.eta() == pytest.approx(eta)  # what is left, not a rate over time spent waiting
    scan.pause(False)
    assert scan.wait(60) and scan.done == scan.total and not scan.paused


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="thread priorities are a POSIX feature")
def test_workers_run_below_the_interactive_threads(tiny):
    priorities = []

    def on_event(event):
        if isinstance(event, MatrixDone):  # sent from the worker thread that computed it
            priorities.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    comparison = open_comparison(str(tiny / "base"), [str(tiny / "lora")])
    Scan(comparison, Cache(None), device="cpu", on_event=on_event).run()
    ours = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert priorities and all(p >= min(ours + engine.WORKER_NICENESS, 19) for p in priorities)


_PINNED_SLABS = """
import sys
if sys.argv[1] == "engine":
    import spectui.engine  # noqa: F401
import numpy as np

def resident():
    return int(open("/proc/self/statm").read().split()[1]) * 4096

first = np.ones(20 << 17)
del first  # a freed 20 MB block: glibc's own threshold rises past 16 MB
before = resident()
small, slabs = [], []
for _ in range(32):
    slabs.append(np.ones(2 << 20))  # 16 MB, as a Gram's slabs are
    small.append(np.ones(1000))  # a small block after each pins the heap below it
del slabs
print((resident() - before) >> 20)
"""


@pytest.mark.skipif(engine._HeapTrimmer._glibc() is None or not Path("/proc/self/statm").exists(),
                    reason="glibc's heap on Linux")
def test_slab_sized_blocks_go_back_when_freed_whatever_pins_the_heap():
    """Without the engine's floor glibc keeps 32 freed 16 MB slabs (512 MB) behind small blocks."""
    import subprocess
    import sys

    def retained(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _PINNED_SLABS, mode], capture_output=True, text=True, check=True)
        return int(out.stdout)

    assert retained("plain") >= 256
    assert retained("engine") < 32


def test_free_heap_is_handed_back_once_resident_memory_has_grown_by_the_slack(monkeypatch):
    resident, trims = [100 << 20], []
    monkeypatch.setattr(engine, "_resident_bytes", lambda: resident[0])
    heap = engine._HeapTrimmer()
    heap._malloc_trim = lambda pad: trims.append(pad) or resident.__setitem__(0, 120 << 20)
    heap.after_matrix()  # the first matrix sets the ceiling
    resident[0] = (100 << 20) + heap.SLACK
    heap.after_matrix()
    assert trims == []
    resident[0] += 1
    heap.after_matrix()
    assert trims == [0]
    resident[0] = (120 << 20) + heap.SLACK  # the new ceiling counts from what the trim left
    heap.after_matrix()
    assert trims == [0]


def test_the_cache_stays_under_its_cap_by_evicting_the_least_recently_used(tiny, cache_dir):
    run(tiny, Cache(cache_dir), "lora")
    sizes = {file: size for file, size, _ in Cache(cache_dir).entries()}
    total = sum(sizes.values())
    old = sorted(sizes, key=lambda f: f.stat().st_mtime)[0]
    os.utime(old, (1, 1))  # the least recently used
    cap = total + max(sizes.values()) // 2
    cache = Cache(cache_dir, max_bytes=cap)
    second = run(tiny, cache, "full")  # new pair entries must push old ones out
    assert not second.errors
    held = Cache(cache_dir).entries()
    assert sum(size for _, size, _ in held) <= cap
    assert old not in {file for file, _, _ in held}


def test_info_lists_each_model_and_clear_removes_one_models_entries(tiny, cache_dir, cli):
    run(tiny, Cache(cache_dir), "lora", "full")
    ran = cli("cache", "info", "--cache-dir", cache_dir)
    assert ran.code == 0 and "entries" in ran.out
    listed = {m.path for m in Cache(cache_dir).models()}
    assert listed == {str((tiny / name).resolve()) for name in ("base", "lora", "full")}
    by_path = {m.path: m for m in Cache(cache_dir).models()}
    lora, base = (by_path[str((tiny / name).resolve())] for name in ("lora", "base"))
    assert lora.entries == 6 and base.role == "base"  # q, v and down of two layers
    ran = cli("cache", "clear", tiny / "lora", "--cache-dir", cache_dir)
    assert ran.code == 0 and "freed" in ran.out
    left = {m.path for m in Cache(cache_dir).models()}
    assert str((tiny / "lora").resolve()) not in left and str((tiny / "full").resolve()) in left
    assert cli("cache", "clear", "--cache-dir", cache_dir).code == 0
    assert Cache(cache_dir).entries() == []


def test_a_manifest_naming_files_outside_the_cache_is_ignored(tiny, cache_dir, tmp_path):
    import json

    run(tiny, Cache(cache_dir), "lora")
    victim = tmp_path / "keep.txt"
    victim.write_text("mine")
    for manifest in (cache_dir / "models").glob("*.json"):
        data = json.loads(manifest.read_text())
        data["keys"] = {"pair": ["../../../" + str(victim)]}
        manifest.write_text(json.dumps(data))
    assert Cache(cache_dir).models() == []
    Cache(cache_dir).clear(tiny / "lora")
    assert victim.read_text() == "mine"


def test_device_names_resolve_to_every_gpu_or_those_named(monkeypatch):
    import torch

    from spectui.engine import resolve_devices
    from spectui.errors import UsageError

    assert resolve_devices("cpu") == [torch.device("cpu")]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert resolve_devices("auto") == [torch.device("cuda", i) for i in range(3)]
    assert resolve_devices("cuda") == [torch.device("cuda", i) for i in range(3)]
    assert resolve_devices("cuda:2,0,2") == [torch.device("cuda", 2), torch.device("cuda", 0)]
    with pytest.raises(UsageError, match="has 3 CUDA device"):
        resolve_devices("cuda:0,5")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_devices("auto") == [torch.device("cpu")]
    with pytest.raises(UsageError, match="not available"):
        resolve_devices("cuda:0")


def test_a_matrix_that_runs_out_of_gpu_memory_is_done_on_the_cpu(tiny, cache_dir, monkeypatch):
    """The GPU path's logic, run on the CPU: a worker on a 'cuda' device whose solve raises CUDA's
    out-of-memory error does that matrix again on the CPU and says so once, with the same result."""
    import torch

    expected = run(tiny, Cache(None), "lora").results
    real_scan_matrix = engine.Scan._scan_matrix
    failed = []

    def on_device(self, name, phase, device):
        if device.type == "cuda":
            failed.append(name)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real_scan_matrix(self, name, phase, device)

    monkeypatch.setattr(engine.Scan, "_scan_matrix", on_device)
    monkeypatch.setattr(engine, "resolve_devices", lambda device: [torch.device("cuda", 0)])
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    streams = []  # each worker runs on a stream of its own (`engine.worker_stream`)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: streams.append(device) or len(streams))
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    events = []
    comparison = open_comparison(str(tiny / "base"), [str(tiny / "lora")])
    scan = Scan(comparison, Cache(None), device="cuda", on_event=events.append).run()
    notices = [e.message for e in events if isinstance(e, engine.ScanNotice)]
    assert streams == [torch.device("cuda", 0)] * scan.workers
    assert not scan.errors and len(failed) == len(notices) == len(scan.names) > 0
    assert all("computed on the CPU" in n for n in notices)
    same_results(scan.results, expected)


def test_counts_on_a_gpu_with_fast_float64_decompose_w0_instead_of_certifying(tiny, cache_dir, monkeypatch):
    """The GPU path's choice, run on the CPU: where W0's decomposition runs on a GPU with fast float64,
    the counts take it at once (it answers the spectra too) and never run the CPU certificates; a GPU
    with slow float64 leaves the solves to the CPU, and the certificates run."""
    import torch

    import spectui.certify as certify

    monkeypatch.setattr(engine, "_fp64_ratio", lambda index: 2.0)
    assert not engine.certifies(torch.device("cuda", 0))
    monkeypatch.setattr(engine, "_fp64_ratio", lambda index: 32.0)
    assert engine.certifies(torch.device("cuda", 0)) and engine.certifies(torch.device("cpu"))

    def no_certificates(*args, **kwargs):
        raise AssertionError("the certificates ran")

    monkeypatch.setattr(engine, "certifies", lambda device: False)
    monkeypatch.setattr(certify, "tuned_top", no_certificates)
    counted = run(tiny, Cache(cache_dir), "lora", counts=(10, 0.5))
    assert not counted.errors and counted.fallbacks == 0
    assert {r.decided_by for r in counted.results.values()} == {"exact"}
    full = run(tiny, Cache(cache_dir), "lora")  # the spectra phase reads what the counts computed
    assert full.from_cache == len(full.results) == len(counted.results)
    for key, result in full.results.items():
        assert counted.results[key].intruder_ranks(10, 0.5) == result.intruder_ranks(10, 0.5)


@pytest.mark.parametrize("budget", ["none fits beside another", "the largest beside the smallest"])
def test_jobs_in_hand_never_hold_more_than_the_memory_budget(tiny, monkeypatch, budget):
    comparison = open_comparison(str(tiny / "base"), [str(tiny / "full")])
    sizes = sorted({engine.job_bytes(comparison.spec(n).shape) for n in comparison.matrix_names()})
    assert len(sizes) > 1  # matrices of several shapes
    memory = 1 if budget == "none fits beside another" else sizes[-1] + sizes[0]
    held, peaks, lock = [], [], threading.Lock()
    real = Scan._scan_on

    def watched(self, name, phase, device):
        with lock:
            held.append(engine.job_bytes(comparison.spec(name).shape))
            peaks.append((len(held), sum(held)))
        time.sleep(0.02)  # long enough for the other worker to take a job beside this one
        try:
            return real(self, name, phase, device)
        finally:
            with lock:
                held.remove(engine.job_bytes(comparison.spec(name).shape))

    monkeypatch.setattr(Scan, "_scan_on", watched)
    scan = Scan(comparison, Cache(None), device="cpu", workers=2, memory=memory).run()
    assert scan.done == scan.total and not scan.errors
    if memory == 1:  # every job is larger than the budget: each runs alone
        assert max(count for count, _ in peaks) == 1
    else:
        assert all(total <= memory for count, total in peaks if count > 1)
        assert max(count for count, _ in peaks) == 2  # small jobs still ran beside large ones
    monkeypatch.undo()
    same_results(scan.results, run(tiny, Cache(None), "full").results)


@pytest.mark.parametrize("tuned", ["lora", "full"])
def test_a_fully_cached_scan_only_reads_and_hashes_the_stored_tensors(tiny, cache_dir, monkeypatch, tuned):
    first = run(tiny, Cache(cache_dir), tuned)

    def no_conversion(*args, **kwargs):
        raise AssertionError("a cached matrix was turned into float32")

    monkeypatch.setattr(engine, "load_matrix", no_conversion)
    again = run(tiny, Cache(cache_dir), tuned)
    assert not again.errors and again.from_cache == len(first.results)
    same_results(first.results, again.results)
    counted = run(tiny, Cache(cache_dir), tuned, counts=(10, 0.5))
    assert not counted.errors and {r.decided_by for r in counted.results.values()} == {"cache"}

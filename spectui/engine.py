"""Per-matrix scan jobs on worker threads: priorities, cancellation, progress events, cache.

One job is one base matrix: it is decomposed once (or read from the cache) and compared with every
tuned model that changes it, so only one base matrix and one tuned matrix per worker are in memory.
torch releases the GIL in its kernels, so threads scale; each worker gets its share of the cores.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import os
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spectui.cache import Cache, tensor_digest
from spectui.certify import Flags, TunedTop, base_head, certify, certify_reduced, low_rank_gram, tuned_top
from spectui.checkpoint.comparison import Comparison
from spectui.checkpoint.files import CheckpointError
from spectui.checkpoint.pairing import load_matrix
from spectui.compact import CompactBase
from spectui.defaults import SIMILARITY_SIZE, TOP_VECTORS
from spectui.eigen import Reduction, full_gram, reduce
from spectui.eigen import gram as gram_of  # `gram` names the matrix in the counts
from spectui.errors import UsageError, one_line
from spectui.intruders import MatrixCounts
from spectui.spectral import (
    BaseSpectrum,
    Decomposition,
    MatrixResult,
    compare,
    decompose,
    decompose_base,
    marchenko_pastur_distance,
    singular_values,
)


@dataclass(frozen=True)
class MatrixDone:
    name: str
    model: int
    result: MatrixResult | MatrixCounts
    cached: bool


@dataclass(frozen=True)
class MatrixFailed:
    name: str
    message: str
    bad_input: bool


@dataclass(frozen=True)
class ScanFinished:
    cancelled: bool


@dataclass(frozen=True)
class ScanNotice:
    """Something the user should know that changed how the scan ran (told once each)."""

    message: str


ScanEvent = MatrixDone | MatrixFailed | ScanNotice | ScanFinished


def resolve_devices(device: str) -> list[torch.device]:
    """The devices a `--device` value names: `auto` every visible GPU (else the CPU), `cuda` every
    visible GPU, `cuda:0,1` those, `cpu` the CPU. One that cannot be used is a UsageError."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return [torch.device("cpu")]
    if not device.startswith("cuda"):
        raise UsageError(f"--device {device}: only cpu and cuda are supported (try cpu, cuda or cuda:0,1)")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine")
    count = torch.cuda.device_count()
    indexes = device.removeprefix("cuda").removeprefix(":")
    try:
        chosen = [int(i) for i in indexes.split(",")] if indexes else list(range(count))
    except ValueError:
        raise UsageError(f"--device {device}: not a device name (try cpu, cuda or cuda:0,1)") from None
    if any(not 0 <= i < count for i in chosen):
        raise UsageError(f"--device {device}: this machine has {count} CUDA device(s)")
    return [torch.device("cuda", i) for i in dict.fromkeys(chosen)]


def resolve_device(device: str) -> torch.device:
    """The first device a `--device` value names: what runs one model at a time (the probe)."""
    return resolve_devices(device)[0]


FP64_SLOW = 8.0  # a GPU whose float64 matmul is this much slower than float32 leaves solves to LAPACK


def solver_device(device: torch.device) -> torch.device:
    """Where a matrix's float64 eigen-solves run: on the GPU when its float64 is fast (data-centre
    GPUs), else on the CPU (consumer GPUs run float64 at 1/32 or 1/64 of float32; spectui computes in
    float64 for exactness, so there the CPU's LAPACK is faster). Measured once per device."""
    if device.type != "cuda":
        return device
    return device if _fp64_ratio(device.index or 0) < FP64_SLOW else torch.device("cpu")


def certifies(device: torch.device) -> bool:
    """Whether a counts job on `device` runs the certificates (`certify`, on the CPU) rather than
    W0's full decomposition: on a GPU whose float64 is fast the decomposition takes well under a
    second, less than the certificates' products take on the CPU, and it answers the spectra too."""
    return solver_device(device).type == "cpu"


@functools.cache
def _fp64_ratio(index: int) -> float:
    import time as clock

    device = torch.device("cuda", index)
    times = {}
    for dtype in (torch.float32, torch.float64):
        a = torch.randn(2048, 2048, device=device, dtype=dtype)
        torch.cuda.synchronize(device)
        start = clock.perf_counter()
        for _ in range(5):
            a @ a
        torch.cuda.synchronize(device)
        times[dtype] = clock.perf_counter() - start
    return times[torch.float64] / times[torch.float32]


class _HeapTrimmer:
    """glibc keeps freed blocks in its heaps, where later small allocations pin them, so resident
    memory grew with model depth and with the slabs of each big matrix. Blocks of MMAP_FLOOR and more
    are mapped on their own and so handed back when freed (glibc's own threshold rises up to 32 MB
    as blocks are freed: two workers on 8B matrices then held ~500 MB of freed slabs); for the rest,
    free memory goes back whenever resident memory has grown by SLACK since the last time. Together
    they cost no measured speed (bench/README.md). No-op off glibc or without /proc."""

    SLACK = 64 << 20
    MMAP_FLOOR = 16 << 20
    _M_MMAP_THRESHOLD = -3  # mallopt's parameter (malloc.h)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ceiling: int | None = None
        libc = self._glibc()
        self._malloc_trim = None if libc is None else libc.malloc_trim
        if libc is not None:
            libc.mallopt(self._M_MMAP_THRESHOLD, self.MMAP_FLOOR)

    def after_matrix(self) -> None:
        if self._malloc_trim is None or (resident := _resident_bytes()) is None:
            return
        with self._lock:
            if self._ceiling is None:
                self._ceiling = resident + self.SLACK
            elif resident > self._ceiling:
                self._malloc_trim(0)
                self._ceiling = (_resident_bytes() or resident) + self.SLACK

    @staticmethod
    def _glibc():
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        return ctypes.CDLL(name) if name and "libc.so" in name else None


def _resident_bytes() -> int | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


_heap = _HeapTrimmer()


WORKER_NICENESS = 10


def _yield_to_interactive_threads() -> None:
    """Lower this worker thread's CPU priority (Linux schedules threads as tasks): with every core
    busy decomposing, the TUI's event loop still runs at once when a key arrives. Headless scans
    lose nothing, as there is nothing else to run."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not permitted: left as it is
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICENESS)


def _limit_lapack_threads(threads: int) -> None:
    """SciPy's OpenBLAS runs each call on every core; with one call per worker at a time that
    oversubscribes them (bench/README.md). The limit is process-wide, as
    OpenBLAS allows, and reaches only libraries already loaded: hence the import."""
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")


def job_bytes(shape: tuple[int, int]) -> int:
    """What one matrix job holds at its peak on the CPU, measured on 8B-sized matrices (bench/README.md):
    W0, W and W0's left vectors in float32 with what reading them passes through (≈ 10 bytes per
    element of the matrix), and Gram-sized float64 arrays with the eigen-solver's workspace (≈ 24
    bytes per element of the smaller Gram)."""
    m, n = shape
    return 10 * m * n + 24 * min(m, n) ** 2


def default_memory() -> int:
    """Half the memory available when the scan starts (unknown: no limit)."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        return int(fields["MemAvailable"].split()[0]) * 1024 // 2
    except (OSError, KeyError, ValueError, IndexError):
        return 1 << 62


def worker_stream(device: torch.device):
    """A GPU worker's own CUDA stream for everything it runs: on the default stream two workers'
    kernels and copies would wait for each other, on their own one's copies overlap the other's
    solves. (Nothing to do on the CPU.)"""
    if device.type != "cuda":
        return contextlib.nullcontext()
    torch.cuda.set_device(device)
    return torch.cuda.stream(torch.cuda.Stream(device))


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host matrix on `device`; to a GPU through pinned memory without blocking, so this thread
    goes on reading while the copy runs on its stream (torch's caching host allocator holds the
    pinned block until the copy is done, and reuses it for the next matrix)."""
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def default_workers(devices: list[torch.device]) -> int:
    """On the CPU two single-threaded solves beat one two-threaded one (LAPACK's eigen-solvers scale
    poorly); on GPUs two workers each, so one reads the next matrix while the other computes."""
    cores = os.cpu_count() or 1
    return 2 * len(devices) if devices[0].type == "cuda" else max(1, min(cores, 4))


class Scan:
    """Scan a comparison in the background; events arrive on `on_event`, from worker threads."""

    def __init__(
        self,
        comparison: Comparison,
        cache: Cache,
        device: str = "auto",
        workers: int | None = None,
        on_event: Callable[[ScanEvent], None] | None = None,
        models: list[int] | None = None,
        names: Collection[str] | None = None,
        counts: tuple[int, float] | None = None,
        then_spectra: bool = False,
        memory: int | None = None,
    ):
        """`models`: indices of the tuned models to scan (all by default), e.g. one just added;
        `names`: the base matrices to scan (all those the models change by default), e.g. one
        rank's share of a distributed scan; `counts`: (k, ε) to find only the flags there
        (`MatrixCounts`, certified without the base's vectors where `certify` can) instead of
        every spectrum; with `then_spectra`, every matrix's counts first and then its spectra (the
        full `MatrixResult`, replacing the counts), a prioritized matrix's spectra before anything;
        `memory`: bytes the jobs in hand may hold together (`job_bytes`; default `default_memory`): a
        worker takes a smaller job, or waits, rather than exceed it, and a job larger than it runs alone."""
        self.comparison = comparison
        self.models = list(range(len(comparison.tuned))) if models is None else models
        self.cache = cache
        self.devices = resolve_devices(device)
        self.workers = workers or default_workers(self.devices)
        self.on_event = on_event or (lambda event: None)
        self.names = [n for n in comparison.matrix_names(self.models) if names is None or n in names]
        self.results: dict[tuple[int, str], MatrixResult | MatrixCounts] = {}
        self.counts = counts
        self.fallbacks = 0  # counted pairs the certificates left to the exact path
        self.redecomposed = 0  # pairs whose base's compact form (`CompactBase`) left a flag open: W0 decomposed again
        self._used: dict[Path, dict[str, set[str]]] = {}  # cache keys each model's scan used, by kind
        self.errors: dict[str, MatrixFailed] = {}
        self.phases = ("spectra",) if counts is None else ("counts", "spectra") if then_spectra else ("counts",)
        self._cost = {name: matrix_cost(comparison.spec(name).shape) for name in self.names}
        self.memory = memory or default_memory()
        self._bytes = {name: job_bytes(comparison.spec(name).shape) for name in self.names}
        self._held = 0  # job_bytes of the jobs in hand
        self._done: set[tuple[str, str]] = set()  # (phase, name) jobs
        self._taken: set[tuple[str, str]] = set()
        self._order = itertools.count()
        self._queue = [(rank, next(self._order), phase, name) for rank, phase in enumerate(self.phases)
                       for name in self.names]
        self._urgency = itertools.count(-1, -1)
        self._lock = threading.Condition()
        self._cancelled = False
        self._paused = False
        self._times = {phase: ShapeTimes() for phase in self.phases}
        self._running: dict[tuple[str, str], float] = {}  # jobs in hand, since when
        self.from_cache = 0  # results read from the cache rather than computed (a resumed scan)
        self._live = 0
        self._finished = False

    # -- control ------------------------------------------------------------------------------
    def start(self) -> Scan:
        self._torch_threads = torch.get_num_threads()  # the workers set one; the process gets its own back
        if self.devices[0].type == "cpu":
            _limit_lapack_threads(max(1, (os.cpu_count() or 1) // self.workers))
        self._live = self.workers
        for i in range(self.workers):
            device = self.devices[i % len(self.devices)]
            threading.Thread(target=self._work, args=(device,), daemon=True, name=f"spectui-scan-{i}").start()
        return self

    def run(self) -> Scan:
        """Start and wait: the headless path."""
        self.start()
        self.wait()
        return self

    def prioritize(self, name: str, spectra: bool = True) -> None:
        """What the user looks at jumps the queue (the most recent request first): its spectra (a
        matrix view; they answer its counts too), or with `spectra` False its first phase (a row
        highlighted in a list)."""
        job = (self.phases[-1] if spectra else self.phases[0], name)
        with self._lock:
            if name in self._cost and job not in self._taken:
                heapq.heappush(self._queue, (next(self._urgency), next(self._order), *job))

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            self._queue.clear()
            self._lock.notify_all()

    def pause(self, paused: bool = True) -> None:
        """Workers finish the matrix in hand, then wait (the machine is needed for something else);
        what is done stays in the cache either way, so even quitting loses nothing."""
        with self._lock:
            self._paused = paused
            self._lock.notify_all()

    @property
    def paused(self) -> bool:
        return self._paused and not self._finished

    def wait(self, timeout: float | None = None) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: self._finished, timeout)

    # -- progress -----------------------------------------------------------------------------
    @property
    def done(self) -> int:
        return len(self._done)

    @property
    def total(self) -> int:
        return len(self.names) * len(self.phases)

    def phase_done(self, phase: str) -> int:
        """Matrices through `phase` (a matrix whose spectra came first has its counts too)."""
        with self._lock:
            return sum((phase, n) in self._done or ("spectra", n) in self._done for n in self.names)

    @property
    def finished(self) -> bool:
        return self._finished

    def eta(self) -> float | None:
        """Seconds left: each matrix still to do at the time its shape took here (shapes not yet
        seen scaled from those that were by their SVD work), shared among the workers."""
        now = time.monotonic()
        with self._lock:
            left = [(p, n) for p in self.phases for n in self.names if (p, n) not in self._done]
            estimates = [self._times[p].estimate(self.comparison.spec(n).shape, self._cost[n]) for p, n in left]
            if any(e is None for e in estimates):
                return None
            in_hand = sum(now - since for since in self._running.values())
        return max(0.0, sum(estimates) - in_hand) / self.workers

    # -- workers ------------------------------------------------------------------------------
    def _next(self) -> tuple[str, str] | None:
        """The next (phase, name) job that fits in memory beside the jobs in hand (waiting for one to
        finish when none does); none for a matrix that failed, and no counts once its spectra were
        taken."""
        with self._lock:
            while True:
                self._lock.wait_for(lambda: not self._paused or self._cancelled)
                job, waiting = self._fitting_job()
                if job is not None:
                    self._taken.add(job)
                    self._running[job] = time.monotonic()
                    self._held += self._bytes[job[1]]
                    return job
                if not waiting or self._cancelled:
                    return None
                self._lock.wait()  # a job in hand finishing frees its memory

    def _fitting_job(self) -> tuple[tuple[str, str] | None, bool]:
        """The most urgent job that fits, and whether any too large to fit now are left (called
        holding the lock)."""
        passed, found = [], None
        while self._queue and not self._cancelled:
            entry = heapq.heappop(self._queue)
            phase, name = job = entry[2:]
            if job in self._taken:
                continue
            if name in self.errors or phase == "counts" and ("spectra", name) in self._taken:
                self._taken.add(job)
                self._done.add(job)
                continue
            if self._running and self._held + self._bytes[name] > self.memory:
                passed.append(entry)
                continue
            found = job
            break
        for entry in passed:
            heapq.heappush(self._queue, entry)
        return found, bool(passed)

    def _work(self, device: torch.device) -> None:
        # The heavy solves run in LAPACK, on the cores each worker was given; torch's own thread
        # pool busy-waits between calls and fought LAPACK's for the same cores (--workers 1 was 10×
        # slower than 2), so torch keeps one thread per worker.
        torch.set_num_threads(1)
        _yield_to_interactive_threads()
        try:
            with worker_stream(device):
                self._work_through_jobs(device)
        finally:  # however this worker ends, the scan finishes when the last one does
            with self._lock:
                self._live -= 1
                if self._live == 0:
                    self._finish_locked()

    def _work_through_jobs(self, device: torch.device) -> None:
        while (job := self._next()) is not None:
            phase, name = job
            computed = False
            try:
                computed = self._scan_on(name, phase, device)
            except CheckpointError as err:
                self._fail(name, str(err), bad_input=True)
            except Exception as err:  # a worker must never die silently: the scan would never finish
                self._fail(name, f"{name}: {type(err).__name__}: {one_line(err)}", bad_input=False)
            _heap.after_matrix()
            with self._lock:
                seconds = time.monotonic() - self._running.pop(job)
                self._times[phase].add(self.comparison.spec(name).shape, self._cost[name], seconds, computed)
                self._done.add(job)
                self._held -= self._bytes[name]
                self._lock.notify_all()

    def _finish_locked(self) -> None:
        torch.set_num_threads(self._torch_threads)
        base = self.comparison.base.path
        for path, keys in self._used.items():
            self.cache.remember(path, "base" if path == base else "tuned", keys)
        self._finished = True
        self._lock.notify_all()
        self.on_event(ScanFinished(cancelled=self._cancelled))

    def _fail(self, name: str, message: str, bad_input: bool) -> None:
        event = MatrixFailed(name, message, bad_input)
        self.errors[name] = event
        self.on_event(event)

    def _scan_on(self, name: str, phase: str, device: torch.device) -> bool:
        """One matrix on `device`; one that does not fit in a GPU's memory is done on the CPU.
        True when something was decomposed (not all read from the cache)."""
        try:
            return self._scan_matrix(name, phase, device)
        except torch.cuda.OutOfMemoryError:
            if device.type != "cuda":
                raise
            torch.cuda.empty_cache()
            self._notice(f"{name} did not fit in the memory of {device}: computed on the CPU (slower)")
            return self._scan_matrix(name, phase, torch.device("cpu"))

    def _notice(self, message: str) -> None:
        self.on_event(ScanNotice(message))

    def _scan_matrix(self, name: str, phase: str, device: torch.device) -> bool:
        comparison = self.comparison
        w0 = _Weight(comparison.base, name, comparison.spec(name))
        if phase == "counts":
            return self._count_matrix(name, device, w0)
        self._use(comparison.base.path, "base", w0.key)
        computed = False
        base = None
        last = next((i for i in reversed(self.models) if comparison.tuned[i].spec(name) is not None), None)
        for index, model, spec in self._tuned(name):
            w, factors, key = _tuned_weight(w0, model, spec)
            self._use(model.path, "pair", key)
            if (result := self.cache.get_result(key)) is not None:
                self.from_cache += 1
                self._done_with(name, index, result, cached=True)
                continue
            solver = solver_device(device)
            if w.same_as(w0):
                # the fine-tune left it as it was: no decomposition, nothing to cache
                base = base or self.cache.get_base(w0.key, w0.shape)
                sigma = base.sigma if base is not None else singular_values(to_device(w0.matrix(), solver))
                self._done_with(name, index, unchanged_result(sigma, w0.shape), cached=False)
                continue
            base = base or self.cache.get_base(w0.key, w0.shape)
            if base is None:  # decomposing W0 is this matrix's memory peak: W is read again after it
                w.release()
                base = self._decompose_base(w0.key, w0.matrix(), solver)
            if factors is not None and index == last and not base.needs_w0:  # one matrix less held
                w0.release()
            result, base = self._compare(base, w0, w.matrix(), factors, solver)
            self.cache.put_result(key, result)
            computed = True
            self._done_with(name, index, result, cached=False)
        return computed

    def _done_with(self, name: str, index: int, result: MatrixResult, cached: bool) -> None:
        self.results[(index, name)] = result
        self.on_event(MatrixDone(name, index, result, cached))

    def _tuned(self, name: str):
        """(index, model, spec) for each tuned model that changes base matrix `name`, in turn (its W
        is read then: one tuned matrix in memory at a time)."""
        for index in self.models:
            model = self.comparison.tuned[index]
            spec = model.spec(name)
            if spec is not None and not self._cancelled:
                yield index, model, spec

    def _use(self, path: Path, kind: str, key: str) -> None:
        self._used.setdefault(path, {}).setdefault(kind, set()).add(key)

    def _count_matrix(self, name: str, device: torch.device, w0: _Weight) -> bool:
        """The counts phase of one base matrix: per tuned model, a cached full result if there is
        one; else the certificates (`_BaseEvidence`: from W0's cached decomposition, its cached
        spectrum, or its Gram reduced to a band); what none decides (tuned vectors not
        separated, a vector within rounding of ε) goes to the exact path, as everything does on a GPU
        with fast float64 (`certifies`)."""
        k, epsilon = self.counts
        computed = False
        evidence = _BaseEvidence(self, w0)
        solver, certified = solver_device(device), certifies(device)
        for index, model, spec in self._tuned(name):
            top = min(k, *w0.shape)
            weight, factors, key = _tuned_weight(w0, model, spec)
            if (result := self.cache.get_result(key)) is not None:
                self._use(model.path, "pair", key)
                self.from_cache += self.phases == ("counts",)  # else the spectra phase reads it again
                found = result.max_cos[:top].astype(np.float64)
                self._counted(name, index, MatrixCounts(w0.shape, k, epsilon, found, found, "cache"), True)
                continue
            if weight.same_as(w0):
                ones = np.ones(top)
                self._counted(name, index, MatrixCounts(w0.shape, k, epsilon, ones, ones, "unchanged"), False)
                continue
            w = weight.matrix()
            tuned = evidence.tuned_top(w, factors, top) if certified else None
            flags, how = evidence.flags(tuned, epsilon) if tuned is not None else (None, "exact")
            if flags is not None:
                counts = MatrixCounts(w0.shape, k, epsilon, flags.lower, flags.upper, how)
            else:
                evidence.release()  # W0's decomposition is the bigger peak
                self.fallbacks += certified
                self._use(self.comparison.base.path, "base", w0.key)
                base = evidence.base() or self._decompose_base(w0.key, w0.matrix(), solver)
                self._use(model.path, "pair", key)
                result, _ = self._compare(base, w0, w, factors, solver)
                self.cache.put_result(key, result)
                found = result.max_cos[:top].astype(np.float64)
                counts = MatrixCounts(w0.shape, k, epsilon, found, found, how)
            computed = True
            self._counted(name, index, counts, False)
        return computed

    def _counted(self, name: str, index: int, counts: MatrixCounts, cached: bool) -> None:
        if isinstance(self.results.get((index, name)), MatrixResult):
            return  # its spectra came first (another worker, the matrix in view)
        self.results[(index, name)] = counts
        self.on_event(MatrixDone(name, index, counts, cached))

    def _decompose_base(self, base_key: str, w0: torch.Tensor, device: torch.device) -> CompactBase:
        base = decompose_base(to_device(w0, device))
        self.cache.put_base(base_key, base)
        return base

    def _compare(self, base: Decomposition | CompactBase, w0: _Weight, w: torch.Tensor,
                 factors: tuple[torch.Tensor, torch.Tensor] | None,
                 solver: torch.device) -> tuple[MatrixResult, Decomposition | CompactBase]:
        """`compare`, W0 decomposed again where its compact form leaves a flag open; and the
        base it compared with, for the job's next tuned model (W0 is decomposed again once at most)."""
        matrix = to_device(w0.matrix(), solver) if factors is None or base.needs_w0 else None
        result = compare(base, matrix, to_device(w, solver), factors)
        if result is None:
            self.redecomposed += 1
            matrix = to_device(w0.matrix(), solver)
            base = decompose(matrix)
            result = compare(base, matrix if factors is None else None, to_device(w, solver), factors)
        return result, base


class _BaseEvidence:
    """What the counts of one base matrix know of W0, cheapest first, each read or computed once per
    job and kept for its next tuned model: its cached decomposition (`CompactBase`: cosines with
    proven bounds, a few products), its cached spectrum (Lanczos certificates on products with W0;
    a tall W0's float64 Gram), its Gram reduced to a band (whose spectrum is then cached:
    all that a second tuned model needs of W0 besides its decomposition)."""

    _UNREAD = object()

    def __init__(self, scan: Scan, w0: _Weight):
        self._scan, self._w0 = scan, w0
        self._compact = self._spectrum = self._UNREAD
        self._gram = self._reduction = self._lam = None
        self._irreducible = False  # reduce() found no LAPACK: asking again would form the Gram again

    def flags(self, tuned: TunedTop, epsilon: float) -> tuple[Flags | None, str]:
        """(flags, how they were decided) for the top tuned vectors, or (None, "exact") where no
        evidence decides them all."""
        for how, attempt in (("compact", self._from_compact), ("bounds", self._from_spectrum),
                             ("reduction", self._from_reduction)):
            flags = attempt(tuned, epsilon)
            if flags is not None and flags.decided:
                return flags, how
        return None, "exact"

    def release(self) -> None:
        self._gram = self._reduction = None

    def base(self) -> CompactBase | None:
        """W0's cached decomposition, for the exact path (read once)."""
        if self._compact is self._UNREAD:
            self._compact = self._read("base", self._scan.cache.get_base)
        return self._compact

    def _read(self, kind: str, get):
        found = get(self._w0.key, self._w0.shape)
        if found is not None:
            self._scan._use(self._scan.comparison.base.path, kind, self._w0.key)
        return found

    def _from_compact(self, tuned: TunedTop, epsilon: float) -> Flags | None:
        compact = self.base()
        if compact is None:
            return None
        w0 = self._w0.matrix() if compact.needs_w0 else None
        return Flags(*compact.count_bounds(tuned.u, tuned.error, w0), epsilon=float(np.float32(epsilon)))

    def tuned_top(self, w: torch.Tensor, factors: tuple[torch.Tensor, torch.Tensor] | None, k: int) -> TunedTop | None:
        """W's top k vectors (`certify.tuned_top`). Where nothing of W0 is cached the counts reduce its
        Gram anyway: that comes first, and a low-rank W's search runs on it (`low_rank_gram`)."""
        if factors is None or self.base() is not None or self.spectrum() is not None:
            return tuned_top(w, k)
        reduction = self._reduce()
        if reduction is None:
            return tuned_top(w, k)
        return tuned_top(w, k, low_rank_gram(reduction, self._w0.matrix(), *factors))

    def spectrum(self) -> BaseSpectrum | None:
        """W0's cached spectrum and head (read once), or the one its reduction found."""
        if self._spectrum is self._UNREAD:
            self._spectrum = self._read("spectrum", self._scan.cache.get_spectrum)
        return self._spectrum

    def _from_spectrum(self, tuned: TunedTop, epsilon: float) -> Flags | None:
        if self.base() is not None:  # its bounds (~1e-5) left a vector open: these are looser, reduce
            return None
        if self.spectrum() is None or self._reduction is not None:  # the reduction decides more
            return None
        w0 = self._w0.matrix()
        if w0.shape[0] > w0.shape[1] and self._gram is None:
            self._gram = full_gram(w0)  # the bounds' products; the reduction's input if they fall short
        head = (self._spectrum.head, self._spectrum.head_error)
        return certify(w0, tuned, self._spectrum.sigma, epsilon, self._gram, head)

    def _from_reduction(self, tuned: TunedTop, epsilon: float) -> Flags | None:
        reduction = self._reduce()
        return None if reduction is None else certify_reduced(self._w0.matrix(), reduction, self._lam, tuned, epsilon)

    def _reduce(self) -> Reduction | None:
        """W0's Gram reduced (once; None off the CPU's LAPACK), its spectrum and head cached."""
        if self._reduction is None and not self._irreducible:
            w0 = self._w0.matrix()
            self._reduction = reduce(self._gram if self._gram is not None else gram_of(w0), scratch=True)
            self._gram = None
            if self._reduction is None:
                self._irreducible = True
                return None
            self._lam = self._reduction.eigenvalues()
            if self.spectrum() is None:
                sigma = np.sqrt(np.clip(self._lam, 0, None))[::-1].copy()
                self._spectrum = BaseSpectrum(sigma, *base_head(w0, self._reduction, self._lam))
                self._scan.cache.put_spectrum(self._w0.key, self._spectrum)
                self._scan._use(self._scan.comparison.base.path, "spectrum", self._w0.key)
        return self._reduction


class _Weight:
    """One matrix of one model as its job needs it. The cache key hashes what is stored (or a low-rank
    update's factors), so a job whose results are cached costs reading and hashing those bytes; the
    float32 matrix the computations take (`load_matrix`: oriented, checked finite) is made only when
    one runs, and may be let go and read again."""

    def __init__(self, source, name: str, spec, factors: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.source, self.name, self.spec = source, name, spec
        self.shape = tuple(spec.shape)
        self._stored = None if factors is not None else source.load(name)
        orientation = "transposed" if spec.transposed else "as stored"
        self.key = tensor_digest(*(factors or (self._stored,)), orientation)
        self._matrix: torch.Tensor | None = None

    def matrix(self) -> torch.Tensor:
        """Oriented and checked; bfloat16 or float16 as stored (every computation converts slabs)."""
        if self._matrix is None:
            self._matrix = load_matrix(self.source, self.name, self.spec, stored=self._stored, as_stored=True)
            self._stored = None
        return self._matrix

    def release(self) -> None:
        self._stored = self._matrix = None

    def same_as(self, other: _Weight) -> bool:
        """Equal matrices: the same stored bytes, or equal values (read only then)."""
        if self.key == other.key:
            return True
        a, b = self.matrix(), other.matrix()
        return torch.equal(a, b) if a.dtype == b.dtype else torch.equal(a.float(), b.float())


def _tuned_weight(w0: _Weight, model, spec) -> tuple[_Weight, tuple[torch.Tensor, torch.Tensor] | None, str]:
    """A tuned model's matrix, its ΔW's low-rank factors (None: dense) and the pair's cache key."""
    factors = model.source.delta_factors(spec)
    w = _Weight(model.source, spec.tuned_name, spec, factors)
    return w, factors, tensor_digest(w0.key, w.key, "low-rank delta" if factors else "dense delta")


def unchanged_result(sigma: torch.Tensor, shape: tuple[int, int]) -> MatrixResult:
    """What `compare` finds when W = W0 exactly, from W0's singular values alone (no vectors: the
    eigenvalues cost a fraction of a decomposition): W's singular vectors are W0's, so every max|cos|
    is 1 (no intruder at any ε) and ΔW's spectrum is zero, which is how `results.is_unchanged`
    knows the pair."""

    top, size = min(TOP_VECTORS, *shape), min(shape)
    sigma = sigma.cpu().numpy()
    return MatrixResult(
        shape=shape, sigma_base=sigma, sigma_tuned=sigma.copy(), sigma_delta=np.zeros(size),
        max_cos=np.ones(top, dtype=np.float32), best_base=np.arange(top, dtype=np.int32),
        similarity=np.eye(min(top, SIMILARITY_SIZE), min(size, SIMILARITY_SIZE), dtype=np.float32),
        delta_rel_norm=0.0, base_mp_distance=marchenko_pastur_distance(sigma, shape),
    )


class ShapeTimes:
    """What a matrix took in this scan, by shape: the ETA's model. Shapes differ by 100× in cost
    (k/v against gate/up), and a matrix read from the cache costs almost nothing, so one average
    rate misleads; a shape not yet decomposed is scaled from those that were by their SVD work."""

    def __init__(self) -> None:
        self._by_shape: dict[tuple[int, int], list[float]] = {}
        self._work = self._seconds = 0.0  # over decomposed matrices
        self._cached: list[float] = []

    def add(self, shape: tuple[int, int], work: int, seconds: float, computed: bool) -> None:
        if computed:
            self._by_shape.setdefault(tuple(shape), []).append(seconds)
            self._work += work
            self._seconds += seconds
        else:
            self._cached.append(seconds)

    def estimate(self, shape: tuple[int, int], work: int) -> float | None:
        """Seconds for one more matrix of this shape; None before anything was measured."""
        if seen := self._by_shape.get(tuple(shape)):
            return sum(seen) / len(seen)
        if self._work:
            return self._seconds * work / self._work
        return sum(self._cached) / len(self._cached) if self._cached else None


def matrix_cost(shape: tuple[int, int]) -> int:
    m, n = shape
    return m * n * min(m, n)

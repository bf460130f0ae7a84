"""The cache's compact form of a base decomposition (`spectui.compact`), proven against float64 SVDs:
every cosine bound holds (square, wide and tall bases, small singular values), every flag it gives
at the ε the results are read at is the naive one, what it cannot decide goes back to W0's
decomposition, and it takes under half of the base's bf16 bytes at real aspect ratios."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from naive import naive_max_cos
from safetensors.torch import save_file

from spectui.cache import Cache
from spectui.certify import Flags, tuned_top
from spectui.checkpoint.comparison import open_comparison
from spectui.compact import VALUE_TOLERANCE
from spectui.defaults import EPSILON_SWEEP, TOP_VECTORS
from spectui.engine import Scan
from spectui.spectral import MatrixResult, compare, decompose, decompose_base

SHAPES = [(256, 256), (192, 512), (512, 192)]
TAIL = 100  # a base vector the compact form keeps quantized (beyond the float32 head)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def trained_like(m: int, n: int, seed: int, floor: float = 10**-1.5) -> torch.Tensor:
    """W0 = U diag(σ) Vᵀ, a few large σ then a slow decay down to `floor`, bf16-rounded."""
    gen = torch.Generator().manual_seed(seed)
    r = min(m, n)
    u = torch.linalg.qr(torch.randn(m, r, generator=gen, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(n, r, generator=gen, dtype=torch.float64)).Q
    sigma = torch.logspace(0, math.log10(floor), r, dtype=torch.float64)
    sigma *= 1 + 0.05 * torch.rand(r, generator=gen, dtype=torch.float64)
    sigma[:8] *= torch.linspace(4, 1.5, 8, dtype=torch.float64)
    return ((u * sigma.sort(descending=True).values) @ v.T).to(torch.bfloat16).float()


def probes(u0: torch.Tensor, seed: int, cosines=(0.3, 0.5 + 2e-3, 0.5 - 2e-3, 0.7, 0.95)) -> torch.Tensor:
    """Unit vectors: random ones, and ones at the given |cos| with a head and a tail base vector."""
    gen = torch.Generator().manual_seed(seed)
    m = u0.shape[0]
    cols = [_unit(torch.randn(m, generator=gen, dtype=torch.float64)) for _ in range(4)]
    for index in (3, TAIL):
        target = u0[:, index]
        for c in cosines:
            z = torch.randn(m, generator=gen, dtype=torch.float64)
            z = _unit(z - target * (target @ z))
            cols.append(c * target + math.sqrt(1 - c * c) * z)
    return torch.stack(cols, 1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("floor", [10**-1.5, 1e-4])
def test_every_bound_holds_and_is_tight(shape, floor):
    w0 = trained_like(*shape, seed=1, floor=floor)
    u0 = torch.linalg.svd(w0.double(), full_matrices=False).U
    t = probes(u0, seed=2)
    reference = (t.T @ u0).abs().max(dim=1).values
    compact = decompose_base(w0)
    lower, upper = compact.bounds(t.float(), w0)
    assert (lower <= reference + 1e-6).all() and (upper >= reference - 1e-6).all()
    if floor > 1e-2:  # the bounds divide by σ_i for a tall W0: only tiny σ widen them
        assert (upper - lower).max() < 5e-4


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("offset", [-1e-2, -1e-3, -1e-5, 1e-5, 1e-3, 1e-2])
def test_flags_at_every_read_threshold_are_the_naive_ones_or_left_open(shape, offset):
    w0 = trained_like(*shape, seed=3)
    u0 = torch.linalg.svd(w0.double(), full_matrices=False).U
    t = probes(u0, seed=4, cosines=(0.3 + offset, 0.5 + offset, 0.9 + offset)).float()
    reference = (t.double().T @ u0).abs().max(dim=1).values.numpy()
    found = decompose_base(w0).max_cos(t, w0)
    if abs(offset) >= 1e-3:
        assert found is not None
    if found is None:
        assert abs(offset) < 1e-3
        return
    value = found[0].numpy()
    assert np.abs(value - reference).max() < VALUE_TOLERANCE
    for epsilon in EPSILON_SWEEP:
        assert (value < np.float32(epsilon)).tolist() == (reference < np.float32(epsilon)).tolist()


def test_a_zero_singular_value_of_a_tall_base_leaves_its_flags_open():
    w0 = trained_like(384, 128, seed=5)
    w0[:, -1] = 0  # rank-deficient: the left vector of σ = 0 is any null vector
    u0 = torch.linalg.svd(w0.double(), full_matrices=False).U
    compact = decompose_base(w0)
    assert compact.max_cos(probes(u0, seed=6).float(), w0) is None
    tuned = tuned_top(_planted(w0, 3, 0.8, seed=6), 10)  # and a new model's counts from it
    assert not Flags(*compact.count_bounds(tuned.u, tuned.error, w0), epsilon=0.5).decided


def test_the_decomposition_and_its_compact_form_give_one_result():
    w0 = trained_like(512, 192, seed=7)
    w = w0 + 0.3 * torch.randn(512, 4, generator=torch.Generator().manual_seed(8)) @ torch.randn(4, 192)
    full, compact = decompose(w0), decompose_base(w0)
    a, b = compare(full, w0, w), compare(compact, w0, w)
    assert np.abs(a.max_cos - b.max_cos).max() < 1e-4
    np.testing.assert_allclose(a.similarity, b.similarity, atol=1e-6)
    np.testing.assert_allclose(a.overlap, b.overlap, atol=1e-6)
    assert a.intruder_ranks(TOP_VECTORS, 0.5) == b.intruder_ranks(TOP_VECTORS, 0.5) == \
           [int(j) for j in np.flatnonzero(naive_max_cos(w0, w).numpy()[:TOP_VECTORS] < 0.5)]


def entry_bytes(m: int, n: int) -> int:
    """A base entry's arrays: σ (float64), the float32 head, the rest of the vectors in two bytes
    (U0's, or V0's for a tall W0) and their steps (float64)."""
    dim, kept = min(m, n), min(TOP_VECTORS, m, n)
    return 8 * dim + 4 * m * kept + 2 * (n if m > n else m) * (dim - kept) + 8 * (dim - kept)


def test_it_takes_under_half_the_bf16_bytes_of_a_llama_layer():
    """Llama-3-8B's shapes (q/o 4096², k/v 1024×4096, gate/up 14336×4096, down 4096×14336): a square
    matrix's entry is about its own bytes, the tall and wide MLP matrices' far less, the layer's
    under half."""
    layer = {(4096, 4096): 2, (1024, 4096): 2, (14336, 4096): 2, (4096, 14336): 1}
    ratio = {shape: entry_bytes(*shape) / (2 * shape[0] * shape[1]) for shape in layer}
    assert ratio[(4096, 4096)] < 1.02 and ratio[(14336, 4096)] < 0.32 and ratio[(4096, 14336)] < 0.3
    total = sum(count * entry_bytes(*shape) for shape, count in layer.items())
    assert total < 0.42 * sum(count * 2 * m * n for (m, n), count in layer.items())


def test_real_entries_have_the_size_counted_above(tmp_path):
    w0 = trained_like(512, 192, seed=9)
    cache = Cache(tmp_path)
    cache.put_base("ab" * 32, decompose_base(w0))
    file = next(tmp_path.rglob("*.safetensors"))
    arrays = entry_bytes(512, 192)
    assert arrays < file.stat().st_size < arrays + 1024
    assert cache.get_base("ab" * 32, (512, 192)).fits((512, 192))
    assert cache.get_base("ab" * 32, (513, 192)) is None and not file.exists()  # not its shape: dropped
    good = decompose_base(w0)
    for name, bad in (("step", torch.full_like(good.step, float("nan"))), ("step", -good.step),
                      ("sigma", -good.sigma), ("head", good.head * float("inf"))):
        cache.put_base("cd" * 32, dataclasses.replace(good, **{name: bad}))  # a valid digest, hostile values
        assert cache.get_base("cd" * 32, (512, 192)) is None


def _model(path, tensors, dtype=torch.bfloat16):
    path.mkdir(parents=True)
    save_file({name: t.to(dtype).contiguous() for name, t in tensors.items()}, path / "model.safetensors")
    return path


def _with_top_vector(m: int, n: int, top: torch.Tensor, seed: int) -> torch.Tensor:
    """A matrix whose top left singular vector is `top`, well separated from the next."""
    gen = torch.Generator().manual_seed(seed)
    r = min(m, n)
    u = torch.linalg.qr(torch.cat([top[:, None], torch.randn(m, r - 1, generator=gen, dtype=torch.float64)], 1)).Q
    u[:, 0] = top
    v = torch.linalg.qr(torch.randn(n, r, generator=gen, dtype=torch.float64)).Q
    return ((u * torch.logspace(1, -1, r, dtype=torch.float64)) @ v.T).float()


def _planted(w0: torch.Tensor, index: int, cosine: float, seed: int) -> torch.Tensor:
    """A tuned matrix whose top left vector has |cos| `cosine` with W0's left vector `index`."""
    m, n = w0.shape
    u0 = torch.linalg.svd(w0.double(), full_matrices=False).U
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(m, generator=gen, dtype=torch.float64)
    z = _unit(z - u0[:, index] * (u0[:, index] @ z))
    return _with_top_vector(m, n, cosine * u0[:, index] + math.sqrt(1 - cosine**2) * z, seed)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("index", [3, TAIL])
@pytest.mark.parametrize("offset", [-1e-2, -1e-3, -1e-5, 1e-5, 1e-3, 1e-2])
def test_counts_from_a_cached_base_are_the_naive_flags_or_left_open(shape, index, offset):
    """A new tuned model's counts on a cached base (`count_bounds`): tuned vectors found by block
    Krylov within their error, cosines with the stored vectors within theirs. Every bound holds
    against two float64 SVDs; a vector 1e-3 or more from ε is decided, and as the naive method does."""
    w0 = trained_like(*shape, seed=11)
    w = _planted(w0, index, 0.5 + offset, seed=12)
    reference = naive_max_cos(w0, w)[:10].numpy()
    assert abs(reference[0] - (0.5 + offset)) < 1e-6
    tuned = tuned_top(w, 10)
    compact = decompose_base(w0)
    lower, upper = compact.count_bounds(tuned.u, tuned.error, w0 if compact.needs_w0 else None)
    assert (lower <= reference + 1e-9).all() and (upper >= reference - 1e-9).all()
    flags = Flags(lower, upper, epsilon=0.5)
    if abs(offset) >= 1e-3:
        assert flags.decided
    if flags.decided:
        assert flags.intruder_ranks() == [int(j) for j in np.flatnonzero(reference < np.float32(0.5))]


def test_a_new_model_is_counted_from_the_cached_base(tmp_path):
    """After a full scan, a second tuned model's counts-only scan is decided from the base's cached
    decomposition (no reduction of W0); its top vector planted 1e-5 above ε leaves that matrix to
    the other routes. Every flag is the naive one."""
    names = [f"model.layers.{i}.mlp.{kind}.weight" for i, kind in enumerate(("up_proj", "down_proj", "up_proj"))]
    w0 = {name: trained_like(256, 192, seed=50 + i) if "up" in name else trained_like(192, 256, seed=50 + i)
          for i, name in enumerate(names)}
    base = _model(tmp_path / "base", w0)
    first = _model(tmp_path / "first", {name: _planted(w, TAIL, 0.8, 60 + i) for i, (name, w) in enumerate(w0.items())})
    cosines = {names[0]: 0.5 + 1e-5, names[1]: 0.35, names[2]: 0.7}
    second_w = {name: _planted(w, TAIL, cosines[name], 70 + i) for i, (name, w) in enumerate(w0.items())}
    second = _model(tmp_path / "second", second_w, torch.float32)
    cache = Cache(tmp_path / "cache")
    Scan(open_comparison(str(base), [str(first)]), cache).run()
    scan = Scan(open_comparison(str(base), [str(second)]), cache, counts=(10, 0.5)).run()
    how = {name: counts.decided_by for (_, name), counts in scan.results.items()}
    assert how[names[1]] == how[names[2]] == "compact" and how[names[0]] != "compact"
    for (_, name), counts in scan.results.items():
        reference = naive_max_cos(w0[name], second_w[name])[:10].numpy()
        assert counts.intruder_ranks(10, 0.5) == [int(j) for j in np.flatnonzero(reference < np.float32(0.5))]


def test_a_second_model_on_a_cached_base_decomposes_it_again_only_where_a_flag_is_open(tmp_path):
    """Two fine-tunes of one base: the first decomposes it (and compares with its compact form, as
    the second does from the cache); the second's top vector planted 1e-5 above ε from a quantized
    base vector leaves that matrix open, and it alone is decomposed again (once, whatever the number
    of tuned models that need it). Every flag is the naive one."""
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(3)]
    w0 = {name: trained_like(256, 192, seed=10 + i) for i, name in enumerate(names)}

    def tuned(name: str, near: float, seed: int) -> torch.Tensor:
        u0 = torch.linalg.svd(w0[name].double(), full_matrices=False).U
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(256, generator=gen, dtype=torch.float64)
        z = _unit(z - u0[:, TAIL] * (u0[:, TAIL] @ z))
        return _with_top_vector(256, 192, near * u0[:, TAIL] + math.sqrt(1 - near**2) * z, seed)

    base = _model(tmp_path / "base", w0)
    first = _model(tmp_path / "first", {name: tuned(name, 0.75, 20 + i) for i, name in enumerate(names)})
    second_w = {name: tuned(name, 0.5 + 1e-5 if i == 0 else 0.35, 30 + i) for i, name in enumerate(names)}
    second = _model(tmp_path / "second", second_w, torch.float32)  # bf16 would move the plant by ~1e-3
    cache = Cache(tmp_path / "cache")
    assert Scan(open_comparison(str(base), [str(first)]), cache).run().redecomposed == 0
    scan = Scan(open_comparison(str(base), [str(second)]), cache).run()
    assert scan.redecomposed == 1
    # two such models in one scan: W0 is decomposed again once, for the first, and serves both
    third = _model(tmp_path / "third", {**second_w, names[0]: tuned(names[0], 0.5 + 2e-5, 40)}, torch.float32)
    fresh = Cache(tmp_path / "fresh")
    Scan(open_comparison(str(base), [str(first)]), fresh).run()
    assert Scan(open_comparison(str(base), [str(second), str(third)]), fresh).run().redecomposed == 1
    for (_, name), result in scan.results.items():
        assert isinstance(result, MatrixResult)
        reference = naive_max_cos(w0[name], second_w[name]).numpy()
        assert abs(reference[0] - (0.5 + 1e-5 if name == names[0] else 0.35)) < 1e-6
        for epsilon in EPSILON_SWEEP:
            assert result.intruder_ranks(TOP_VECTORS, epsilon) == \
                   [int(j) for j in np.flatnonzero(reference[:TOP_VECTORS] < np.float32(epsilon))]


def test_half_precision_checkpoints_are_held_as_stored_and_answer_as_float32(tmp_path, monkeypatch):
    """A bfloat16 W0 and W stay bfloat16 in a job (half the bytes: every computation converts a slab
    at a time, exactly), and a scan of them answers exactly as one of the same values stored float32:
    full and counts-only, tall, wide and square."""
    from spectui import engine

    shapes = {"model.layers.0.mlp.up_proj.weight": (320, 192), "model.layers.0.mlp.down_proj.weight": (192, 320),
              "model.layers.0.self_attn.o_proj.weight": (256, 256)}
    w0 = {name: trained_like(*shape, seed=60 + i) for i, (name, shape) in enumerate(shapes.items())}
    gen = torch.Generator().manual_seed(61)
    w = {name: t + 0.02 * torch.randn(t.shape, generator=gen, dtype=torch.float64) for name, t in w0.items()}
    half = {name: t.to(torch.bfloat16) for name, t in w0.items()}, {name: t.to(torch.bfloat16) for name, t in w.items()}
    held = []
    real = engine.decompose_base
    monkeypatch.setattr(engine, "decompose_base", lambda m: held.append(m.dtype) or real(m))
    answers = []
    for dtype in (torch.bfloat16, torch.float32):
        root = tmp_path / str(dtype)
        base, tuned = _model(root / "base", half[0], dtype), _model(root / "tuned", half[1], dtype)
        full = Scan(open_comparison(str(base), [str(tuned)]), Cache(root / "cache")).run().results
        counts = Scan(open_comparison(str(base), [str(tuned)]), Cache(root / "fresh"), counts=(10, 0.5)).run().results
        answers.append((full, counts))
    assert held == [torch.bfloat16] * 3 + [torch.float32] * 3
    (full_half, counts_half), (full_single, counts_single) = answers
    for key, result in full_single.items():
        for name in MatrixResult.ARRAYS:
            np.testing.assert_array_equal(getattr(full_half[key], name), getattr(result, name), err_msg=name)
        assert counts_half[key].decided_by == counts_single[key].decided_by
        np.testing.assert_array_equal(counts_half[key].lower, counts_single[key].lower)
        np.testing.assert_array_equal(counts_half[key].upper, counts_single[key].upper)

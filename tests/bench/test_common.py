"""What the testbeds share (bench/testbeds/common.py): the metrics against closed forms, the cache's settings check and
its atomic write, seeded initialisation and the thread bound."""

import math

import pytest
import scipy.linalg
import torch
from torch import nn

from bench.testbeds import common


def test_frechet_distance_matches_closed_forms():
    g = torch.Generator().manual_seed(1)
    mean_a, mean_b = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    var_a, var_b = torch.rand(5, generator=g, dtype=torch.float64) + 0.1, torch.rand(5, generator=g, dtype=torch.float64) + 0.1
    diagonal = (mean_a - mean_b).pow(2).sum() + (var_a.sqrt() - var_b.sqrt()).pow(2).sum()  # commuting covariances
    fd = common.frechet_distance_gaussians(mean_a, var_a.diag(), mean_b, var_b.diag())
    assert fd == pytest.approx(float(diagonal), rel=1e-10)
    m_a, m_b = torch.randn(5, 5, generator=g, dtype=torch.float64), torch.randn(5, 5, generator=g, dtype=torch.float64)
    cov_a, cov_b = m_a @ m_a.T, m_b @ m_b.T  # general case against scipy's matrix square root of Σ_a Σ_b
    reference = (mean_a - mean_b).pow(2).sum() + cov_a.trace() + cov_b.trace() \
        - 2 * scipy.linalg.sqrtm((cov_a @ cov_b).numpy()).real.trace()
    assert common.frechet_distance_gaussians(mean_a, cov_a, mean_b, cov_b) == pytest.approx(float(reference), rel=1e-8)


def test_psnr_closed_form():
    a = torch.zeros(2, 64)
    b = a.clone()
    b[0] += 0.125  # MSE 1/64 -> 10·log10(4·64) (0.125 is exact in binary)
    out = common.psnr(a, b)
    assert out[0].item() == pytest.approx(10 * math.log10(256.0), rel=1e-12) and math.isinf(out[1].item())


def test_batch_levels_broadcast_a_scalar_in_the_state_dtype():
    x = torch.zeros(3, 5, dtype=torch.float64)
    levels = common.batch_levels(0.5, x)
    assert levels.shape == (3,) and levels.dtype == torch.float64 and levels.tolist() == [0.5] * 3
    assert torch.equal(common.batch_levels(torch.tensor([1.0, 2.0, 3.0]), x), torch.tensor([1.0, 2.0, 3.0], dtype=x.dtype))


def test_cache_reads_only_what_its_settings_made(tmp_path):
    path = common.cache_path(tmp_path, "net")
    assert path == tmp_path / "net.safetensors" and common.cache_path(None, "net").parent == common.CACHE_DIR
    module = common.seeded_init(lambda: nn.Linear(3, 2), 0)
    common.write_cache(path, module, {"width": 3, "seed": 0}, train_seconds="1.500")
    assert not list(tmp_path.glob("*.partial"))
    tensors, metadata = common.read_cache(path, {"seed": 0, "width": 3})  # key order does not matter
    assert all(torch.equal(tensors[name], value) for name, value in module.state_dict().items())
    assert metadata["train_seconds"] == "1.500"
    assert common.read_cache(path, {"width": 4, "seed": 0}) is None
    assert common.read_cache(tmp_path / "missing.safetensors", {"width": 3, "seed": 0}) is None


def test_seeded_init_repeats_its_weights_and_leaves_the_global_generator_alone():
    state = torch.random.get_rng_state()
    a, b, c = (common.seeded_init(lambda: nn.Linear(4, 4), seed) for seed in (7, 7, 8))
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_torch_threads_holds_inside_the_block_and_restores_after():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with common.torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)

"""Fixtures shared by the unit tests: the 16-d class-conditional Gaussian mixture of testbed 1 and clean samples."""

import pytest
import torch

from bench.testbeds import gmm


@pytest.fixture(scope="module")
def mixture() -> gmm.GaussianMixture:
    """16 dims, 3 classes of 2 components each, seed 0."""
    return gmm.make_mixture(dim=16, n_classes=3, components_per_class=2, seed=0)


@pytest.fixture(scope="module")
def x0(mixture) -> torch.Tensor:
    """64 clean samples of class 1."""
    return mixture.sample(64, torch.Generator().manual_seed(5), cls=1)

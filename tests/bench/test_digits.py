"""Testbed 2 (bench/testbeds/digits.py): the split, the safetensors cache, the metrics and short-budget trained models.

The models here are trained into pytest's tmp dir with a short budget (TINY: 600 Adam steps of batch 128 for a 128-wide,
2-block denoiser, ~3 s each on an idle core; a 600-step classifier), never the bench's cache, so the file takes ~20 s of
CPU and every assertion measures a freshly trained network. Statistical checks allow 3 standard errors of the quantity they test.
"""

import math

import pytest
import torch

from bench.testbeds import digits
from bench.testbeds.common import frechet_distance

TINY = dict(steps=600, batch=128, lr=3e-3, hidden=128, depth=2)
CLASSIFIER = dict(steps=600)


@pytest.fixture(scope="module")
def split() -> digits.DigitsSplit:
    return digits.load_digits_split()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("digits_cache")


@pytest.fixture(scope="module")
def classifier(split, cache) -> digits.DigitsClassifier:
    return digits.train_or_load_classifier(split, cache, **CLASSIFIER)


@pytest.fixture(scope="module", params=[False, True], ids=["eps", "flow"])
def denoiser(request, split, cache) -> digits.DigitsDenoiser:
    return digits.train_or_load_denoiser(request.param, split, cache, **TINY)


# ---------------------------------------------------------------------------------------------------------------------
# Data and cache


def test_split_is_deterministic_disjoint_stratified_and_scaled(split):
    again = digits.load_digits_split()
    assert torch.equal(split.train_index, again.train_index) and torch.equal(split.test_index, again.test_index)
    assert torch.equal(split.train_x, again.train_x) and torch.equal(split.test_y, again.test_y)
    assert (len(split.train_index), len(split.test_index)) == (1500, 297)
    assert set(split.train_index.tolist()).isdisjoint(split.test_index.tolist())
    assert sorted(split.train_index.tolist() + split.test_index.tolist()) == list(range(1797))
    counts = torch.bincount(split.test_y, minlength=10)
    assert counts.min() >= 27 and counts.max() <= 31  # stratified: 297/10 ± the rounding of uneven class sizes
    assert split.train_x.min() == -1.0 and split.train_x.max() == 1.0 and split.train_x.shape[1] == 64


def test_training_is_deterministic(split, tmp_path):
    a = digits.train_or_load_classifier(split, tmp_path / "a", steps=20)
    b = digits.train_or_load_classifier(split, tmp_path / "b", steps=20)
    for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(wa, wb), name


def test_cache_round_trip_and_invalidation(split, tmp_path, monkeypatch):
    trained = digits.train_or_load_denoiser(False, split, tmp_path, steps=5, hidden=32, depth=1)
    path = tmp_path / "digits_denoiser_eps.safetensors"
    assert path.exists() and not list(tmp_path.glob("*.partial"))

    def no_training(*args, **kwargs):
        raise AssertionError("retrained")

    monkeypatch.setattr(digits, "_adam_loop", no_training)
    loaded = digits.train_or_load_denoiser(False, split, tmp_path, steps=5, hidden=32, depth=1)
    for (name, wa), wb in zip(trained.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(wa, wb), name
    assert loaded.train_seconds == pytest.approx(trained.train_seconds, abs=1e-3)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(trained.denoiser(3)(x, torch.tensor(1.0)), loaded.denoiser(3)(x, torch.tensor(1.0)))

    with pytest.raises(AssertionError, match="retrained"):  # other settings
        digits.train_or_load_denoiser(False, split, tmp_path, steps=6, hidden=32, depth=1)
    monkeypatch.setattr(digits, "VERSION", digits.VERSION + 1)
    with pytest.raises(AssertionError, match="retrained"):  # other code version
        digits.train_or_load_denoiser(False, split, tmp_path, steps=5, hidden=32, depth=1)


# ---------------------------------------------------------------------------------------------------------------------
# Metrics


def test_frechet_distance_is_zero_on_itself_and_grows_with_corruption(split, classifier):
    train = digits.embed(classifier, split.train_x)
    assert abs(frechet_distance(train, train)) < 1e-9 * float(torch.cov(train.T).trace())
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(split.test_x.shape, generator=g)
    floor = frechet_distance(digits.embed(classifier, split.test_x), train)
    corrupted = [frechet_distance(digits.embed(classifier, split.test_x + level * noise), train)
                 for level in (0.3, 0.6, 1.0)]
    assert floor < corrupted[0] < corrupted[1] < corrupted[2], (floor, corrupted)


def test_label_accuracy_of_the_classifier(split, classifier):
    held_out = digits.label_accuracy(classifier, split.test_x, split.test_y)
    assert held_out > 0.9, held_out  # an 8×8 digit MLP reaches ~0.97
    shuffled = split.test_y[torch.randperm(len(split.test_y), generator=torch.Generator().manual_seed(3))]
    assert digits.label_accuracy(classifier, split.test_x, shuffled) < 0.3


# ---------------------------------------------------------------------------------------------------------------------
# Short-budget denoisers


def test_pair_denoiser_is_the_two_branches(denoiser, split):
    x, sigma = split.test_x[:6].reshape(6, 1, 8, 8) + 0.5, torch.full((6,), 0.5)
    labels = split.test_y[:6]
    cond, uncond = denoiser.pair_denoiser(labels)(x, sigma)
    assert cond.shape == x.shape
    torch.testing.assert_close(cond, denoiser.denoiser(labels)(x, sigma), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(uncond, denoiser.denoiser(None)(x, sigma), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(cond, uncond, atol=1e-3)


def _linear_mse(split: digits.DigitsSplit, sigma: float, flow: bool) -> tuple[float, float]:
    """Held-out x0 MSE of the trivial predictor (the train mean) and of the best linear one (Gaussian fit of the train split:
    ``μ + a·Σ(a²Σ + σ²I)⁻¹(x - a·μ)``), on the same noise as :func:`digits.x0_mse` (seed 0)."""
    a = 1 - sigma if flow else 1.0
    mean, cov = split.train_x.double().mean(0), torch.cov(split.train_x.double().T)
    x0 = split.test_x.double()
    x = a * x0 + sigma * torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)).double()
    gain = a * cov @ torch.linalg.inv(a**2 * cov + sigma**2 * torch.eye(64, dtype=torch.float64))
    linear = mean + (x - a * mean) @ gain.T
    return float((x0 - mean).pow(2).mean()), float((x0 - linear).pow(2).mean())


def test_denoiser_beats_the_trivial_predictor_at_mid_sigma(denoiser, split):
    # The short budget is not enough to beat the best linear predictor too (the cached 4,000-step models do: summary()).
    sigma = 0.5 if denoiser.flow else 1.0  # the same VE level (s/(1-s) = 1)
    net = digits.x0_mse(denoiser, split.test_x, split.test_y, sigma)
    trivial, linear = _linear_mse(split, sigma, denoiser.flow)
    assert net < 0.6 * trivial, (net, trivial, linear)


def test_cfg_raises_label_accuracy(denoiser, classifier):
    labels = digits.balanced_labels(600)  # 10-step Euler keeps the test short; the summary uses 2,000 samples and 20 steps
    plain, guided = (digits.label_accuracy(classifier, digits.sample(denoiser, labels, scale, steps=10), labels)
                     for scale in (1.0, 3.0))
    std_error = math.sqrt(max(plain * (1 - plain), 1e-3) / len(labels))
    assert guided > plain + 3 * std_error, (plain, guided)

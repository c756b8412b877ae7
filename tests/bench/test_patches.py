"""Testbed 4 (bench/testbeds/patches.py): the photo patches and their split, the U-Net's preconditioning in both
parametrisations, label dropout, a few optimiser steps, the cache and the metrics. No network is trained to convergence:
models are fresh (seeded) or trained for a handful of steps into pytest's tmp dir, so the file runs in seconds."""

import dataclasses
import math

import pytest
import torch

from bench.testbeds import patches
from bench.testbeds.common import frechet_distance
from samplers.core import flow_to_ve


@pytest.fixture(scope="module")
def data() -> patches.PatchData:
    return patches.load_patch_data()


def _with_random_output(model: patches.PatchUNet, seed: int = 0) -> patches.PatchUNet:
    """The model with its zero-initialised output convolution replaced by random weights, so F is not 0."""
    g = torch.Generator().manual_seed(seed)
    conv = model.out[2]
    with torch.no_grad():
        conv.weight.copy_(0.1 * torch.randn(conv.weight.shape, generator=g))
        conv.bias.copy_(0.1 * torch.randn(conv.bias.shape, generator=g))
    return model


def _fresh(flow: bool, width: int = 16) -> patches.PatchUNet:
    torch.manual_seed(0)
    return patches.PatchUNet(0.56, flow, width).eval()


# ---------------------------------------------------------------------------------------------------------------------
# Data


def test_patches_have_the_shape_range_and_classes_asked_for(data):
    x, labels = data.train_batch(64, torch.Generator().manual_seed(0))
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.1
    assert labels.min() >= 0 and labels.max() < patches.N_CLASSES
    ref, ref_labels = patches.train_reference(data, per_class=3)
    assert ref.shape == (3 * patches.N_CLASSES, 3, 32, 32)
    assert torch.equal(torch.bincount(ref_labels), torch.full((patches.N_CLASSES,), 3))
    assert patches.N_CLASSES >= 8 and patches.DIM == 3072


def test_patches_are_deterministic_and_seeds_differ(data):
    a = data.train_batch(16, torch.Generator().manual_seed(3))
    b = data.train_batch(16, torch.Generator().manual_seed(3))
    c = data.train_batch(16, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    assert torch.equal(patches.heldout_patches(data, 4)[0], patches.heldout_patches(data, 4)[0])
    assert torch.equal(patches.load_patch_data().photos, data.photos)


def test_training_crops_never_touch_the_heldout_strip_and_heldout_patches_stay_inside_it(data):
    columns = torch.arange(data.photos.shape[-1])
    rows = torch.arange(data.photos.shape[-2])
    inside = (rows[None, :, None] < data.heights[:, None, None]) & (columns[None, None, :] < data.widths[:, None, None])
    heldout = columns[None, None, :] >= data.heldout_from[:, None, None]
    poison = lambda keep: dataclasses.replace(data, photos=torch.where(keep[:, None], data.photos, math.nan))  # noqa: E731
    train_only = poison(inside & ~heldout)
    x, _ = train_only.train_batch(4000, torch.Generator().manual_seed(0))
    assert not x.isnan().any(), "a training crop reached the held-out strip or the padding"
    strip_only = poison(inside & heldout)
    assert not patches.heldout_patches(strip_only, 100)[0].isnan().any()
    assert patches.train_reference(strip_only, 100)[0].isnan().all(dim=(1, 2, 3)).any()  # the poison does bite


def test_flips_mirror_the_crop(data):
    labels, top, left = torch.tensor([0, 5]), torch.tensor([10, 40]), torch.tensor([3, 70])
    plain = data.crops(labels, top, left)
    assert torch.equal(data.crops(labels, top, left, torch.tensor([True, False])), torch.stack([plain[0].flip(-1), plain[1]]))


# ---------------------------------------------------------------------------------------------------------------------
# The U-Net and its preconditioning


@pytest.mark.parametrize("flow", [False, True], ids=["eps", "flow"])
def test_unet_shapes_and_identity_as_sigma_goes_to_zero(flow):
    model = _with_random_output(_fresh(flow))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 3, 9, patches.N_CLASSES])
    far = model(x, torch.full((4,), 0.5), labels)
    assert far.shape == x.shape and (far - x).abs().max() > 0.05  # F matters away from σ = 0
    for sigma in (1e-3, 1e-5):
        c_skip, c_out, _, _ = model.preconditioning(torch.tensor([sigma]))
        # VE: c_skip = 1 - O(σ²); flow: c_skip ≈ 1/(1-s) = 1 + O(s), since there x = (1-s)·x0 at s → 0
        assert float(c_skip) == pytest.approx(1.0, abs=2 * sigma) and float(c_out) == pytest.approx(sigma, rel=1e-2)
        error = (model(x, torch.full((4,), sigma), labels) - x).abs().max()
        assert error < 20 * sigma


def test_flow_twin_is_the_eps_twin_in_its_own_parametrisation():
    """With the same weights, D_flow(x, s) = D_ve(x/(1-s), s/(1-s)): the preconditioning maps one onto the other."""
    eps, flow = _with_random_output(_fresh(False)), _with_random_output(_fresh(True))
    flow.load_state_dict(eps.state_dict())
    s = torch.tensor([0.05, 0.3, 0.6, 0.95])
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([1, 2, 3, 4])
    x_ve, sigma_ve = flow_to_ve(x, s)
    torch.testing.assert_close(flow(x, s, labels), eps(x_ve, sigma_ve, labels), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("flow", [False, True], ids=["eps", "flow"])
def test_fresh_model_is_the_linear_mmse_estimate_of_gaussian_data(flow):
    """At init F = 0 and D = c_skip·x, the best linear estimate of x0 ~ N(0, σ_d²): its MSE is a²-weighted
    ``σ_d²σ²/(a²σ_d² + σ²)`` in either parametrisation."""
    model, g = _fresh(flow), torch.Generator().manual_seed(3)
    sigma_d = model.sigma_data
    level = 0.4 if flow else 0.7
    a = 1 - level if flow else 1.0
    x0 = sigma_d * torch.randn(8, 3, 32, 32, generator=g)
    x = a * x0 + level * torch.randn(x0.shape, generator=g)
    mse = float((model.denoiser(0)(x, torch.tensor(level)) - x0).pow(2).mean())
    expected = sigma_d**2 * level**2 / (a**2 * sigma_d**2 + level**2)
    assert mse == pytest.approx(expected, rel=4 * math.sqrt(2 / x0.numel()) * 3)


def test_pair_denoiser_stacks_cond_and_the_null_class():
    model = _with_random_output(_fresh(False))
    with torch.no_grad():
        model.label.weight.normal_(generator=torch.Generator().manual_seed(4))
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    sigma = torch.tensor(1.0)
    cond, uncond = model.pair_denoiser(2)(x, sigma)
    assert cond.dtype == torch.float64 and cond.shape == x.shape
    close = dict(rtol=1e-4, atol=1e-5)  # float32 network: a batch of 6 and one of 3 round differently
    torch.testing.assert_close(cond, model.denoiser(2)(x, sigma), **close)
    torch.testing.assert_close(uncond, model.denoiser(None)(x, sigma), **close)
    assert (cond - uncond).abs().max() > 1e-3


@pytest.mark.parametrize("dropout, trained_rows", [(0.0, "classes"), (1.0, "null")])
def test_label_dropout_trains_the_null_class(data, dropout, trained_rows):
    model = _with_random_output(_fresh(False)).train()  # a zero output layer would pass no gradient back
    x0, labels = data.train_batch(16, torch.Generator().manual_seed(6))
    patches.denoising_loss(model, x0, labels, torch.Generator().manual_seed(7), dropout).backward()
    touched = model.label.weight.grad.abs().sum(1) > 0
    null = patches.N_CLASSES
    if trained_rows == "null":
        assert touched[null] and not touched[:null].any()
    else:
        assert not touched[null] and touched[labels.unique()].all()


def test_a_few_adam_steps_lower_the_loss_on_a_fixed_batch(data):
    model = _fresh(False, width=8)
    x0, labels = data.train_batch(16, torch.Generator().manual_seed(8))

    def fixed_batch_loss(_: torch.Generator) -> torch.Tensor:
        return patches.denoising_loss(model, x0, labels, torch.Generator().manual_seed(9), 0.0)

    before = float(fixed_batch_loss(None).detach())
    patches.adam_steps(model, fixed_batch_loss, steps=30, lr=3e-3, seed=0, warmup=1)
    assert float(fixed_batch_loss(None).detach()) < 0.7 * before


# ---------------------------------------------------------------------------------------------------------------------
# Cache, metrics and sampling


def test_cache_round_trip_records_loss_and_time_and_retrains_on_new_settings(data, tmp_path, monkeypatch):
    tiny = dict(steps=2, batch=4, width=8)
    trained = patches.train_or_load_denoiser(True, data, tmp_path, **tiny)
    assert (tmp_path / "patches_denoiser_flow.safetensors").exists() and not list(tmp_path.glob("*.partial"))
    assert math.isfinite(trained.final_loss) and trained.train_seconds > 0

    def no_training(*args, **kwargs):
        raise AssertionError("retrained")

    monkeypatch.setattr(patches, "adam_steps", no_training)
    loaded = patches.train_or_load_denoiser(True, data, tmp_path, **tiny)
    for (name, wa), wb in zip(trained.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(wa, wb), name
    assert loaded.final_loss == pytest.approx(trained.final_loss, rel=1e-5)
    assert loaded.train_seconds == pytest.approx(trained.train_seconds, abs=1e-3)
    with pytest.raises(AssertionError, match="retrained"):
        patches.train_or_load_denoiser(True, data, tmp_path, **dict(tiny, label_dropout=0.2))


def test_frechet_distance_is_zero_on_itself_and_grows_with_a_shift(data):
    torch.manual_seed(0)
    classifier = patches.PatchClassifier().eval()
    x, _ = patches.train_reference(data, per_class=20)
    features = patches.embed(classifier, x)
    assert features.shape == (200, 64) and features.dtype == torch.float64
    assert abs(frechet_distance(features, features)) < 1e-8
    distances = [frechet_distance(features, patches.embed(classifier, (x + shift).clamp(-1, 1)))
                 for shift in (0.1, 0.3, 0.6)]
    assert 0 < distances[0] < distances[1] < distances[2]


def test_fd_floors_are_positive_and_the_finite_sample_floor_shrinks_with_more_patches(data, monkeypatch):
    reference = patches.train_reference
    monkeypatch.setattr(patches, "train_reference", lambda d, per_class=500: reference(d, 30))  # keep the test fast
    torch.manual_seed(0)
    classifier = patches.PatchClassifier().eval()
    small, large = (patches.fd_floor(classifier, data, n, heldout=False) for n in (10, 40))
    assert 0 < large < small
    assert patches.fd_floor(classifier, data, 10) > 0


def test_precision_and_recall_see_coverage():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 8, generator=g, dtype=torch.float64)
    assert patches.precision_recall(real, real) == (1.0, 1.0)
    assert patches.precision_recall(real, real + 20) == (0.0, 0.0)
    narrow = patches.precision_recall(real, 0.2 * torch.randn(300, 8, generator=g, dtype=torch.float64))
    assert narrow[0] > 0.9 and narrow[1] < 0.5  # mode collapse: precise, poor recall


@pytest.mark.parametrize("flow", [False, True], ids=["eps", "flow"])
def test_sampling_fine_solves_and_reconstruction_run_and_are_deterministic(data, flow):
    model = _with_random_output(_fresh(flow, width=8))
    labels = patches.balanced_labels(4)
    a, b = patches.sample(model, labels, 3.0, steps=3, seed=1), patches.sample(model, labels, 3.0, steps=3, seed=1)
    assert a.shape == (4, 3, 32, 32) and torch.equal(a, b) and torch.isfinite(a).all()
    noise = patches.initial_noise(4, seed=1)
    denoiser = patches.guided_denoiser(model, labels, 3.0)
    fine = patches.fine_solve(denoiser, noise, flow, steps=12)
    assert (patches.solve_error(a, fine) > 0).all()
    assert patches.solve_error(fine, fine).abs().max() == 0
    psnr = patches.reconstruction_psnr(model, patches.heldout_patches(data, 1)[0][:4], labels, steps=3)
    assert psnr.shape == (4,) and torch.isfinite(psnr).all()

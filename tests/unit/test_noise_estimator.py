"""The learned noise-level estimator of Noise Awareness Guidance's classifier-based form (samplers/noise_estimator.py):
it reads the level of noised latents, its gradient points towards the scheduled level, it guides a miscalibrated model
like the exact posterior does, and its file round-trips strictly."""

import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bench.kit import schedule
from bench.nag import fine_schedule, learned_estimator, miscalibrated_model, window
from bench.testbeds import gmm
from samplers import core
from samplers.inversion import ddim
from samplers.nag import nag_guided, noise_level_gradient
from samplers.noise_estimator import (
    ESTIMATOR_FORMAT,
    calibration,
    load_estimator,
    log_error,
    noised_batch,
    save_estimator,
    train_noise_estimator,
)


def smooth_latents(n: int, seed: int, frames: int = 0) -> torch.Tensor:
    """Latent-like images: a smooth random field (low resolution upsampled) at about unit scale, [n, 4, (T,) 32, 32]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n * max(frames, 1), 4, 8, 8, generator=g)
    fine = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bicubic", align_corners=False)
    return fine.reshape(n, frames, 4, 32, 32).transpose(1, 2) if frames else fine


@pytest.fixture(scope="module")
def trained():
    estimator, losses = train_noise_estimator(smooth_latents(8, 0), (0.03, 14.6), False, iterations=400, batch_size=16,
                                              seed=0)
    estimator.record.update(log_error=0.0, model="test", pack_version="test")
    return estimator, losses


def test_training_lowers_the_loss_and_reads_the_level_of_unseen_latents(trained):
    estimator, losses = trained
    assert sum(losses[-50:]) / 50 < sum(losses[:50]) / 50 - 1.0
    sigmas = torch.tensor([0.3, 1.0, 3.0, 10.0])
    readings = calibration(estimator, smooth_latents(8, 1), sigmas)
    assert (readings.mean(1).diff() > 0).all()
    assert log_error(estimator, readings[1:], sigmas[1:]) < 0.15  # within ~15 % at and above the latents' scale


def test_the_gradient_pulls_a_too_noisy_latent_towards_the_scheduled_level(trained):
    estimator, _ = trained
    x0, sigma = smooth_latents(8, 2), torch.full((8,), 0.5)
    x = x0 + 0.7 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))  # shows 0.7, scheduled 0.5
    moved = x + 0.1 * sigma[:, None, None, None] ** 2 * noise_level_gradient(estimator, x, sigma)
    assert (estimator.estimate(moved) < estimator.estimate(x)).all()
    assert (estimator(moved, sigma) > estimator(x, sigma)).all()


def test_flow_and_video_latents():
    latents = smooth_latents(4, 4, frames=3)
    estimator, _ = train_noise_estimator(latents, (0.02, 1.0), True, iterations=60, batch_size=4)
    assert estimator.sigma_range[1] < 1  # s = 1 (an infinite VE level) is never trained on
    assert estimator(latents, torch.full((4,), 0.5)).shape == (4,)
    level = estimator.estimate(latents)
    assert level.shape == (4,) and ((level > 0) & (level < 1)).all()
    x, log_sigma_ve = noised_batch(latents, (0.02, 0.9), True, 6, torch.Generator().manual_seed(0))
    assert x.shape == (6, 4, 3, 32, 32) and ((log_sigma_ve > math.log(0.02 / 0.98)) & (log_sigma_ve < math.log(9))).all()


@pytest.fixture(scope="module")
def mixture_1024():
    mixture = gmm.make_mixture(dim=1024, n_classes=3, components_per_class=2, seed=0)
    return mixture, learned_estimator(mixture, False, iterations=300)


@pytest.mark.parametrize("kappa, bound", [(0.0, 1.02), (-0.3, 1.05)], ids=["exact", "reads 0.7σ"])
def test_the_default_strength_with_a_learned_estimator_never_harms(mixture_1024, kappa, bound):
    """The nodes' default (estimator mode, w 0.1) with a learned estimator on the d = 1024 mixture (as 4×16×16 latents):
    within 2 % of plain sampling's error to a fine exact solve on the exact model, 5 % on a model reading σ as 0.7σ.
    (The learned estimator also gains little there: bench/nag.py --estimator; the exact posterior gains 6 %–40 %.)"""
    mixture, learned = mixture_1024
    pair, cond = miscalibrated_model(mixture, kappa, False)
    sigmas = schedule(10, False)
    start = torch.randn(100, 1024, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigmas[0]
    fine = ddim(core.guided(mixture.pair_denoiser(1), 1.0), start, fine_schedule(sigmas, 20, False))

    def error(denoiser):
        return (ddim(denoiser, start, sigmas) - fine).square().mean().item()

    default = nag_guided(pair, cond, 1.0, estimator=learned, window=window(False))
    assert error(default) <= bound * error(core.guided(pair, 1.0))


def test_the_file_round_trips_and_builds_a_differentiable_estimator_inside_inference_mode(trained, tmp_path):
    estimator, _ = trained
    path = tmp_path / "estimator.safetensors"
    save_estimator(estimator, path)
    with torch.inference_mode():  # as ComfyUI runs nodes
        loaded = load_estimator(path)
    x, sigma = smooth_latents(2, 5) + 0.4 * torch.randn(2, 4, 32, 32), torch.full((2,), 0.3)
    assert torch.equal(loaded(x, sigma), estimator(x, sigma).detach())
    assert loaded.latent_format == estimator.latent_format and loaded.sigma_range == estimator.sigma_range
    with torch.inference_mode():
        assert noise_level_gradient(loaded, x, sigma).abs().sum() > 0


def test_a_file_written_under_the_formats_former_name_still_loads(trained, tmp_path):
    estimator, _ = trained
    path = tmp_path / "old.safetensors"
    save_estimator(estimator, path)
    tensors = load_file(path)
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
    assert metadata["format"] == "error_control_samplers.noise_awareness_estimator"
    save_file(tensors, path, metadata={**metadata, "format": "error_control_samplers.nag_noise_estimator"})
    x, sigma = smooth_latents(2, 5) + 0.4 * torch.randn(2, 4, 32, 32), torch.full((2,), 0.3)
    assert torch.equal(load_estimator(path)(x, sigma), estimator(x, sigma).detach())
    save_file(tensors, path, metadata={**metadata, "format": "error_control_samplers.vrg_profile"})
    with pytest.raises(ValueError, match="not a Noise Awareness Guidance noise estimator"):
        load_estimator(path)


def test_damaged_and_mismatched_files_are_refused(trained, tmp_path):
    estimator, _ = trained
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_estimator(bad)
    other = tmp_path / "other.safetensors"  # a valid artefact whose weights do not fit its recorded network
    record = {**estimator.record, "flow": False, "latent_format": "", "sigma_min": 0.03, "sigma_max": 14.6,
              "channels": 16, "width": 32}
    ESTIMATOR_FORMAT.save(other, estimator.net.state_dict(), record)
    with pytest.raises(ValueError, match="do not fit its recorded network"):
        load_estimator(other)

"""A learned noise-level estimator ``p_φ(σ | x)`` for Noise Awareness Guidance's classifier-based form (Zhong et al. 2025,
arXiv 2510.12497, sec. 4: guidance by ``∇ₓ log p_φ(t | x)`` of a noise-level classifier; here ``samplers.nag`` mode
``estimator``).

The estimator regresses ``λ = log σ_VE`` of a noisy latent with a heteroscedastic Gaussian,
``p(λ | x) = N(μ(x), τ(x)²)``, trained by its negative log-likelihood on forward-noised clean latents
``x = a(σ)·x0 + σ·ε`` with λ uniform over the model's range: the posterior under a log-uniform prior on σ, summarised by
its mean and spread. The density over λ differs from the one over σ by a Jacobian free of ``x``, so both have the same
``∇ₓ``. The network (:class:`NoiseLevelNet`) is tiny: a few convolutions on the latent scaled to unit RMS (the noise's
texture against the image's), pooled over space (and frames), plus ``log RMS(x)`` (the absolute scale); one forward and
backward pass per guided step costs little next to the model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .artefact import ArtefactFormat
from .core import model_sigma, noise_to, ve_sigma

WIDTH = 32
MIN_LOG_SPREAD = math.log(1e-3)
"""Floor of ``log τ``: the guidance's gradient grows as ``1/τ²``."""
CROP = 32
"""Training crops (latent pixels): noise statistics are local, and the pooled features average over the crop."""
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _frames(x: Tensor) -> tuple[Tensor, int]:
    """Images ``[B·T, C, H, W]`` of a latent batch ``[B, C, H, W]`` or video ``[B, C, T, H, W]``, and T."""
    if x.ndim == 4:
        return x, 1
    if x.ndim == 5:
        b, c, t, h, w = x.shape
        return x.transpose(1, 2).reshape(b * t, c, h, w), t
    raise ValueError(f"noise estimator: latents must be [B, C, H, W] or [B, C, T, H, W], got shape {tuple(x.shape)}.")


class NoiseLevelNet(nn.Module):
    """``x ↦ (μ, log τ)`` of ``p(log σ_VE | x)``, ``[B]`` each (module doc)."""

    def __init__(self, channels: int, width: int = WIDTH):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.SiLU())
        self.head = nn.Sequential(nn.Linear(2 * width + 1, 2 * width), nn.SiLU(), nn.Linear(2 * width, 2))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.float()
        rms = x.flatten(1).square().mean(1).add(1e-12).sqrt()
        images, frames = _frames(x / rms.reshape(-1, *[1] * (x.ndim - 1)))
        pooled = self.features(images).mean((2, 3)).reshape(len(x), frames, -1).mean(1)
        mean, log_spread = self.head(torch.cat([pooled, rms.log()[:, None]], 1)).unbind(1)
        return mean, log_spread.clamp_min(MIN_LOG_SPREAD)


def log_likelihood(net: NoiseLevelNet, x: Tensor, log_sigma_ve: Tensor) -> Tensor:
    """``log N(λ; μ(x), τ(x)²)``, ``[B]``."""
    mean, log_spread = net(x)
    return -0.5 * ((log_sigma_ve - mean) / log_spread.exp()).square() - log_spread - _LOG_SQRT_2PI


@dataclass
class NoiseEstimator:
    """A trained :class:`NoiseLevelNet` with what it was trained on; callable as ``samplers.nag.LevelLogPosterior``.

    ``flow``: the model's parametrisation (states and levels are the sampler's own); ``latent_format``: what the latents
    were (the pack records ComfyUI's latent format, scale and shift); ``sigma_range``: the levels trained on (the
    model's own parametrisation); ``record``: the rest, kept in the file."""

    net: NoiseLevelNet
    flow: bool
    latent_format: str
    sigma_range: tuple[float, float]
    record: dict

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``log p(σ | x)``, ``[B]``, differentiable in ``x`` (float32 inside, on ``x``'s device)."""
        self.net.to(x.device)
        return log_likelihood(self.net, x, ve_sigma(sigma.float(), self.flow).log())

    @torch.no_grad()
    def estimate(self, x: Tensor) -> Tensor:
        """The noise level ``x`` shows, ``exp μ(x)`` mapped to the model's parametrisation, ``[B]``."""
        self.net.to(x.device)
        return model_sigma(self.net(x)[0].exp(), self.flow)


FLOW_TOP = 0.999
"""Highest flow level trained on: s = 1 is pure noise, an infinite VE level (no guided step reaches it)."""


def _log_ve_range(sigma_range: tuple[float, float], flow: bool) -> tuple[float, float]:
    """``log σ_VE`` at both ends of ``sigma_range`` (the model's parametrisation)."""
    low, high = (ve_sigma(torch.tensor(s, dtype=torch.float64), flow).log().item() for s in sigma_range)
    return low, high


def _crops(x0: Tensor, batch: int, size: int, g: torch.Generator) -> Tensor:
    """``batch`` random crops (``size``² or the whole latent if smaller) with random horizontal flips."""
    h, w = x0.shape[-2:]
    ch, cw = min(size, h), min(size, w)
    pick = torch.randint(len(x0), (batch,), generator=g).tolist()
    top = torch.randint(h - ch + 1, (batch,), generator=g).tolist()
    left = torch.randint(w - cw + 1, (batch,), generator=g).tolist()
    flip = (torch.rand(batch, generator=g) < 0.5).tolist()
    crops = [x0[i, ..., y:y + ch, x:x + cw] for i, y, x in zip(pick, top, left)]
    return torch.stack([c.flip(-1) if f else c for c, f in zip(crops, flip)])


def noised_batch(x0: Tensor, sigma_range: tuple[float, float], flow: bool, batch: int, g: torch.Generator,
                 crop: int = CROP) -> tuple[Tensor, Tensor]:
    """Training pairs: forward-noised crops ``a(σ)·x0 + σ·ε`` and their ``log σ_VE``, λ uniform over ``sigma_range``."""
    low, high = _log_ve_range(sigma_range, flow)
    clean = _crops(x0, batch, crop, g).float()
    log_sigma_ve = low + (high - low) * torch.rand(batch, generator=g, dtype=torch.float64)
    eps = torch.randn(clean.shape, generator=g)
    x = noise_to(clean, eps, model_sigma(log_sigma_ve.exp(), flow).float(), flow)
    return x, log_sigma_ve.float()


def train_noise_estimator(x0: Tensor, sigma_range: tuple[float, float], flow: bool, iterations: int = 1500,
                          batch_size: int = 32, seed: int = 0, latent_format: str = "", device: torch.device | None = None,
                          callback: Callable[[int, float], None] | None = None) -> tuple[NoiseEstimator, list[float]]:
    """Fit a :class:`NoiseEstimator` to clean latents ``x0`` (``[N, C, H, W]`` or ``[N, C, T, H, W]``, the sampler's
    space) by Gaussian NLL on :func:`noised_batch` draws over ``sigma_range`` (flow: capped at :data:`FLOW_TOP`; Adam,
    cosine decay, seeded); ``callback(done, loss)`` after each
    iteration (progress, interruption). Returns the estimator (on the CPU) and the loss per iteration."""
    if iterations < 1 or batch_size < 1:
        raise ValueError(f"train_noise_estimator: iterations and batch_size must be >= 1, got {iterations}, {batch_size}.")
    device = device or torch.device("cpu")
    sigma_range = (sigma_range[0], min(sigma_range[1], FLOW_TOP)) if flow else sigma_range
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode(False), torch.enable_grad():
        torch.manual_seed(seed)
        net = NoiseLevelNet(x0.shape[1]).to(device)
        optimiser = torch.optim.Adam(net.parameters(), lr=2e-3)
        decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, iterations)
        clean = x0.detach().clone().float().cpu()
        losses = []
        for done in range(1, iterations + 1):
            x, log_sigma_ve = noised_batch(clean, sigma_range, flow, batch_size, g)
            loss = -log_likelihood(net, x.to(device), log_sigma_ve.to(device)).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            decay.step()
            losses.append(loss.item())
            if callback is not None:
                callback(done, losses[-1])
    net.cpu().eval().requires_grad_(False)
    record = {"iterations": iterations, "batch_size": batch_size, "seed": seed, "latents": len(x0),
              "final_loss": sum(losses[-50:]) / len(losses[-50:])}
    return NoiseEstimator(net, flow, latent_format, sigma_range, record), losses


@torch.no_grad()
def calibration(estimator: NoiseEstimator, x0: Tensor, sigmas: Tensor, seed: int = 0) -> Tensor:
    """The estimator's level read on ``x0`` noised to each of ``sigmas`` (fresh noise), ``[len(sigmas), N]``: a
    check against the truth, for the training node's plot and its recorded error."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for sigma in sigmas.tolist():
        eps = torch.randn(x0.shape, generator=g)
        rows.append(estimator.estimate(noise_to(x0.float().cpu(), eps, torch.tensor(sigma), estimator.flow)))
    return torch.stack(rows)


def log_error(estimator: NoiseEstimator, readings: Tensor, sigmas: Tensor) -> float:
    """RMS of ``log σ̂_VE − log σ_VE`` over :func:`calibration`'s readings."""
    truth = ve_sigma(sigmas.float(), estimator.flow).log()[:, None]
    return (ve_sigma(readings, estimator.flow).log() - truth).square().mean().sqrt().item()


_RECORD = {"flow": bool, "latent_format": str, "sigma_min": float, "sigma_max": float, "channels": int, "width": int,
           "iterations": int, "batch_size": int, "seed": int, "latents": int, "final_loss": float, "log_error": float,
           "model": str, "pack_version": str}
_TENSORS = tuple(NoiseLevelNet(1).state_dict())
ESTIMATOR_FORMAT = ArtefactFormat("error_control_samplers.noise_awareness_estimator", "1", _TENSORS, _RECORD,
                                  "Noise Awareness Guidance noise estimator",
                                  "Choose a file written by 'Train Noise Estimator', or train one again.",
                                  former_names=("error_control_samplers.nag_noise_estimator",))


def save_estimator(estimator: NoiseEstimator, path: str | os.PathLike) -> None:
    """Write the weights and :data:`_RECORD` fields as a safetensors artefact, atomically."""
    first = estimator.net.features[0]
    record = {**estimator.record, "flow": estimator.flow, "latent_format": estimator.latent_format,
              "sigma_min": float(estimator.sigma_range[0]), "sigma_max": float(estimator.sigma_range[1]),
              "channels": first.in_channels, "width": first.out_channels}
    ESTIMATOR_FORMAT.save(path, estimator.net.state_dict(), record)


def load_estimator(path: str | os.PathLike) -> NoiseEstimator:
    """Read a file written by :func:`save_estimator`, strictly: every weight's shape must match the recorded network.
    Never unpickles; anything else raises ``ValueError``. Built outside inference mode, so it can be differentiated."""
    tensors, record = ESTIMATOR_FORMAT.load(path, "load_estimator")
    with torch.inference_mode(False):
        net = NoiseLevelNet(record["channels"], record["width"])
        try:
            net.load_state_dict({k: v.clone() for k, v in tensors.items()}, strict=True)
        except RuntimeError as e:
            raise ValueError(f"load_estimator: {os.fspath(path)} holds weights that do not fit its recorded network "
                             f"({e}). {ESTIMATOR_FORMAT.fix}") from e
    net.eval().requires_grad_(False)
    return NoiseEstimator(net, record["flow"], record["latent_format"], (record["sigma_min"], record["sigma_max"]), record)

"""Sigma-space conventions shared by every method of the pack.

The sampler state is ``x = a(σ)·x0 + σ·ε`` in ComfyUI's k-diffusion view of a model:

* EPS and V_PREDICTION models sample in VE space: ``a(σ) = 1``;
* CONST (rectified flow: SD3, Flux, ...) models: ``a(σ) = 1 - σ`` with σ ∈ [0, 1].

A denoiser is a callable ``D(x, sigma) -> x̂0`` with ``sigma`` a ``[B]`` tensor (ComfyUI applies the model's own
input scaling). Every method is written once in terms of ``a``; the keyword ``flow`` picks the parametrisation.
Tensors keep their device and dtype; per-step scalars stay tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""``D(x, sigma) -> x̂0``: x is ``[B, ...]``, sigma is ``[B]``."""

PairDenoiser = Callable[[Tensor, Tensor], "tuple[Tensor, Tensor]"]
"""``D(x, sigma) -> (D_cond, D_uncond)`` from one batched model call."""


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims so a per-sample ``[B]`` tensor broadcasts against a ``[B, ...]`` state."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def inner(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product ``[B]`` of two ``[B, ...]`` tensors, in at least float32 (a half-precision sum over a
    latent would overflow)."""
    dtype = torch.promote_types(a.dtype, torch.float32)
    return (a.flatten(1).to(dtype) * b.flatten(1).to(dtype)).sum(1)


def alpha(sigma: Tensor, flow: bool = False) -> Tensor:
    """The signal coefficient ``a(σ)``: 1 for EPS/V (VE space), ``1 - σ`` for flow (CONST)."""
    return 1.0 - sigma if flow else torch.ones_like(sigma)


def noise_to(x0: Tensor, eps: Tensor, sigma: Tensor, flow: bool = False) -> Tensor:
    """Forward marginal ``x = a(σ)·x0 + σ·ε``; ``sigma`` is a scalar tensor or ``[B]``."""
    sigma = append_dims(torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device), x0.ndim)
    return alpha(sigma, flow) * x0 + sigma * eps


def eps_from_denoised(x: Tensor, denoised: Tensor, sigma: Tensor, flow: bool = False) -> Tensor:
    """Noise implied by a prediction: ``ε̂ = (x - a(σ)·x̂0) / σ`` (docs/methods.md#conventions). σ must be > 0."""
    sigma = append_dims(sigma, x.ndim)
    return (x - alpha(sigma, flow) * denoised) / sigma


def denoised_from_eps(x: Tensor, eps: Tensor, sigma: Tensor, flow: bool = False) -> Tensor:
    """Prediction implied by a noise estimate: ``x̂0 = (x - σ·ε̂) / a(σ)``. Needs ``a(σ) > 0``."""
    sigma = append_dims(sigma, x.ndim)
    return (x - sigma * eps) / alpha(sigma, flow)


def ddim_step(x: Tensor, denoised: Tensor, sigma: Tensor, sigma_next: Tensor, flow: bool = False) -> Tensor:
    """Deterministic DDIM step σ → σ' (Song et al. 2021, eq. 12 with η = 0, in σ form).

    ``x' = a(σ')·x̂0 + σ'·ε̂`` with ``ε̂ = (x - a(σ)·x̂0)/σ``. The same formula inverts when ``σ' > σ``. In both
    parametrisations it equals one Euler step of the probability-flow ODE, i.e. ComfyUI's ``euler`` sampler.
    ``sigma`` may be 0 only for a denoising step to ``sigma_next = 0`` (the result is then ``x̂0``).
    """
    sigma = append_dims(torch.as_tensor(sigma, dtype=x.dtype, device=x.device), x.ndim)
    sigma_next = append_dims(torch.as_tensor(sigma_next, dtype=x.dtype, device=x.device), x.ndim)
    eps = (x - alpha(sigma, flow) * denoised) / sigma.clamp_min(torch.finfo(x.dtype).tiny)
    return alpha(sigma_next, flow) * denoised + sigma_next * eps


def cfg_mix(denoised_cond: Tensor, denoised_uncond: Tensor, scale: Tensor | float) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022) in denoised space: ``D_u + w·(D_c - D_u)``.

    Identical to mixing in eps space because ε̂ is affine in x̂0 at fixed (x, σ). ``scale`` may be a float, a scalar
    tensor or a per-sample ``[B]`` tensor.
    """
    if isinstance(scale, Tensor):
        scale = append_dims(scale, denoised_cond.ndim)
    return denoised_uncond + scale * (denoised_cond - denoised_uncond)


def effective_uncond(denoised_cond: Tensor, guided: Tensor, scale: float) -> Tensor:
    """The unconditional prediction for which plain CFG at ``scale`` (≠ 1) gives ``guided``: ``(w·D_c - D_g)/(w - 1)``.

    A host's CFG function or post-CFG patches (RescaleCFG, CFGNorm, ...) make ``D_g`` differ from plain CFG; a method
    that re-weights the pair ``(D_c, Ũ)`` at ω then interpolates between the conditional model (ω = 1) and the host's
    own guided output (ω = w), so those patches keep acting. For plain CFG ``Ũ = D_u``.
    """
    return (scale * denoised_cond - guided) / (scale - 1)


def guided(pair_denoiser: PairDenoiser, scale: Tensor | float) -> Denoiser:
    """A plain denoiser from a cond/uncond pair at a fixed guidance scale."""

    def denoiser(x: Tensor, sigma: Tensor) -> Tensor:
        return cfg_mix(*pair_denoiser(x, sigma), scale)

    return denoiser


def conditional_pair(denoiser: Denoiser) -> PairDenoiser:
    """A cond/uncond pair whose two halves are one conditional call: every guided mix of it is ``denoiser`` itself
    (no negative to guide away from: guidance-distilled models, or cfg 1), at one model call instead of two."""

    def pair(x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        denoised = denoiser(x, sigma)
        return denoised, denoised

    return pair


def flow_to_ve(x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """Map a flow state at level ``s`` to VE: ``σ_ve = s/(1-s)``, ``x_ve = x/(1-s)`` (docs/methods.md#conventions)."""
    return x / append_dims(1.0 - s, x.ndim), s / (1.0 - s)


def ve_to_flow(x_ve: Tensor, sigma_ve: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`flow_to_ve`: ``s = σ/(1+σ)``, ``x = (1-s)·x_ve``."""
    s = model_sigma(sigma_ve, flow=True)
    return x_ve * append_dims(1.0 - s, x_ve.ndim), s


def ve_sigma(sigma: Tensor, flow: bool = False) -> Tensor:
    """The VE noise level of a level in either parametrisation (the identity for EPS/V)."""
    return sigma / (1.0 - sigma) if flow else sigma


def model_sigma(sigma_ve: Tensor, flow: bool = False) -> Tensor:
    """Inverse of :func:`ve_sigma`: a VE level in the model's parametrisation (flow: ``s = σ/(1+σ)``)."""
    return sigma_ve / (1.0 + sigma_ve) if flow else sigma_ve


def alpha_bar(sigma: Tensor, flow: bool = False) -> Tensor:
    """DDPM's ``ᾱ = 1/(1+σ_ve²)`` of a level in either parametrisation."""
    return 1.0 / (1.0 + ve_sigma(sigma, flow) ** 2)


def input_scale(sigma: Tensor, flow: bool = False) -> Tensor:
    """The factor the network sees the state with: ``1/√(1+σ²)`` for EPS/V (VP input), 1 for flow."""
    return torch.ones_like(sigma) if flow else torch.rsqrt(1.0 + sigma**2)


def inversion_sigmas(sigmas: Tensor, sigma_min: float = 1e-4, flow: bool = False, flow_sigma_max: float = 0.9999) -> Tensor:
    """Ascending levels for inversion from a descending SIGMAS schedule.

    Walks the schedule backwards with the final 0 replaced by ``sigma_min`` (as ComfyUI's FlipSigmas does). For flow the
    top level is kept below 1: at ``s = 1`` the state holds no signal and ComfyUI divides the latent by ``1 - s``.
    """
    check_sigmas(sigmas, "inversion_sigmas", "sigmas")
    flipped = sigmas.flip(0).clone()
    if flipped[0] == 0:
        flipped[0] = sigma_min
    if flow:
        flipped = flipped.clamp_max(flow_sigma_max)
    return flipped


def check_sigmas(sigmas: Tensor, node: str, name: str = "sigmas", ascending: bool = False) -> None:
    """Raise a ``ValueError`` naming ``node`` and ``name`` unless ``sigmas`` is a finite, strictly monotone 1-D schedule."""
    order = "ascending" if ascending else "descending"
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"{node}: input '{name}' must be a 1-D schedule with at least 2 values (1 step); "
                         f"got shape {tuple(sigmas.shape)}. Connect a scheduler node with steps >= 1.")
    if not torch.isfinite(sigmas).all():
        raise ValueError(f"{node}: input '{name}' contains NaN or inf. Check the scheduler that produced it.")
    if (sigmas < 0).any():
        raise ValueError(f"{node}: input '{name}' contains negative levels. Noise levels must be >= 0.")
    diffs = sigmas.diff()
    if not ((diffs > 0).all() if ascending else (diffs < 0).all()):
        hint = "connect the schedule through FlipSigmas" if ascending else "use a scheduler's output (not flipped)"
        raise ValueError(f"{node}: input '{name}' must be strictly {order}; {hint}.")

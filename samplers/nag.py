"""Noise Awareness Guidance (Zhong et al. 2025, "Mitigating the Noise Shift for Denoising Generative Models via Noise
Awareness Guidance", arXiv 2510.12497, ICLR 2026; docs/methods.md#noise-awareness-guidance).

*Noise shift*: accumulated error leaves the state noisier than scheduled, ``σ_actual² = σ² + σ_e²`` (paper sec. 3). The
paper steers the state back with guidance along the noise-condition axis, in two forms: classifier-based, with a
noise-level estimator ``p_φ(σ|x)``, and classifier-free, ``s_w(x|σ) = (w+1)·s(x|σ) - w·s(x)`` (paper eq. 9), ``s(x)``
being the model with its noise condition dropped. This module has the classifier-based form and a training-free stand-in
for the classifier-free one. Scores are ``(a(σ)·D - x)/σ²``, so adding ``Δs`` to the score adds ``σ²/a(σ)·Δs`` to the
denoised prediction ``D``.

**Classifier-based** (mode ``estimator``): guidance by the gradient of the estimator's log posterior at the *scheduled*
level, as classifier guidance (Dhariwal & Nichol 2021) on the noise condition,

    s_w(x|σ) = s(x|σ) + w·∇ₓ log p(σ | x),    i.e.    D_nag = D_cfg + w·(σ²/a(σ))·∇ₓ log p(σ | x)

with w fixed. The step rule was chosen on the testbed (``python -m bench.nag --estimator``): a rule that closes the
measured gap σ̂ → σ per sample (a line search along the gradient) helps about as much as a fixed w of 2 where there is a
shift, harms more where there is none, and has no knob to make it gentler; a fixed w small enough (≈ 0.1) stays within
5 % of plain sampling on every model of the grid at d = 1024 and still helps the shifted ones.

The estimator is any :data:`LevelLogPosterior`; the bench and tests plug in the exact posterior of the Gaussian-mixture
testbed. ``∇ₓ log p(σ|x) = s(x|σ) - E_{σ'|x}[s(x|σ')]`` pulls a state that reads noisier than σ towards less noise. Being
classifier guidance, it also tilts the sampled distribution towards states whose level is unambiguously σ: negligible
where the posterior is sharp (high dimension, σ above the data's scale), dominant where it is broad (d = 16 on the
testbed), another reason to keep w small. No model call: one backward pass through the estimator.

**Training-free stand-in** (modes ``fixed``, ``adaptive``; this pack's own construction): the model's own score at a level
``σ_u ≥ σ`` on the same state stands in for ``s(x)``. Scores are mixed, which in denoised space reads

    D_nag = D_cfg + w·[(D_c - x) - (σ²/σ_u²)·(D_u - x)],    D_u = D(x, σ_u)

with ``D_c`` the conditional prediction at σ and ``D_cfg`` the guided one. For Gaussian data ``x0 ~ N(0, s²)`` the bracket
is ``-σ²·(1/(s²+σ²) - 1/(s²+σ_u²))·x``: it shrinks the state, i.e. removes excess noise (mixing denoised values or eps
instead pushes the other way). ``σ_u``:

* ``fixed``: ``σ·e^δ``;
* ``adaptive``: the noise level the state actually shows, :func:`estimate_sigma`, from the residual energy against the
  model's calibrated error profile (``samplers.vrg.ErrorProfile``), floored at ``σ·e^δ``. Where the state is no noisier
  than scheduled ``σ_u`` is the floor, so ``δ = 0`` makes the guidance a no-op there.

The bracket is about ``w·(1 - σ²/σ_u²)`` of the score at high σ, where it overshoots: keep that product ≈ 0.05–0.15 and
apply the guidance in a σ window (the later part of sampling, where the shift is largest). Cost: one extra model call
(conditional only) per guided step. Both modes act even where the model has no shift (fixed always; adaptive wherever
the residual reads above σ), and on the testbed at d = 1024 both make an exact model worse.

Flow (CONST) models run the stand-in on the mapped VE state (:func:`samplers.core.flow_to_ve`); their ``D_u`` is the
model at ``s_u = σ_u/(1+σ_u)`` on ``x_u = (1-s_u)·x_ve``. The classifier-based form works in the model's own
parametrisation (``a = 1 - s``), where the estimator is defined.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from .core import Denoiser, PairDenoiser, alpha, append_dims, cfg_mix, flow_to_ve, model_sigma, ve_sigma, ve_to_flow
from .vrg import ErrorProfile

Mode = Literal["fixed", "adaptive", "estimator"]
LevelLogPosterior = Callable[[Tensor, Tensor], Tensor]
"""``log_p(x, sigma) -> [B]``: log p(σ | x) of a noise-level estimator for states ``[B, ...]`` at levels ``[B]`` (the
model's parametrisation), differentiable in ``x``; sample b's value depends on ``x[b]`` alone."""
LEVEL_CAP = 1.0
"""The highest VE level the estimator mode guides at (flow: s ≤ 0.5), about the scale of latents, which ComfyUI's latent
formats normalise to unit variance. Noise shift builds up late in sampling (paper sec. 3, fig. 2). Above the data's scale
the level a state reads varies by chance (±√(2/d) of σ) and ``w·σ²·∇ₓ log p`` moves each sample by that chance, not by
a shift: on the mixture at d = 1024 (exact posterior, w 0.1, 10 Euler steps, cfg 1 and 3) guiding every level made
the exact model and one reading σ as 0.9σ 1.08–1.12× plain CFG's error (EPS, Karras σ 0.02–20) and 1.19–1.41× (flow,
uniform s); capped here 0.96–1.03× and 0.98–1.01×, with the gain at 0.7σ kept (0.94× and 0.97×)."""
MIN_SLOPE = 0.05
"""Floor of ``g/σ²`` in :func:`estimate_sigma`: a profile whose error reaches σ² (a model no better than the noisy
input) would otherwise divide by zero."""


def _ve(x: Tensor, sigma: Tensor, flow: bool) -> tuple[Tensor, Tensor]:
    """The VE state and ``[B]`` VE level of a state in either parametrisation."""
    return flow_to_ve(x, sigma) if flow else (x, sigma)


def residual_energy(x_ve: Tensor, denoised: Tensor) -> Tensor:
    """``m = mean((x_ve - D)²)`` over all but the batch dimension, ``[B]``."""
    return (x_ve - denoised).flatten(1).square().mean(1)


def estimate_sigma(x: Tensor, denoised: Tensor, sigma: Tensor, profile: ErrorProfile, flow: bool | None = None) -> Tensor:
    """The noise level ``x`` actually carries, from the residual energy of the model's prediction ``D(x, σ)``, ``[B]``.

    For a prediction as good as the calibration says, ``E(x - D)² = σ² - mse_x0(σ) =: g(σ)`` per dimension (the residual
    is orthogonal to the prediction error), docs/methods.md#training-free-stand-in. More noise ``σ_a > σ`` raises the residual
    energy ``m``; for Gaussian data it is linear in ``σ_a²`` with slope ``(g/σ²)²``, so

        σ̂² = σ² + (m - g)·(σ²/g)²

    is exact there (first order otherwise). The simpler ``σ² + (m - g)`` is its high-σ limit (``g → σ²``) and
    underestimates the excess at low σ, where the shift is largest (paper sec. 3, fig. 2). ``g/σ²`` is floored at
    :data:`MIN_SLOPE`. ``x``, ``denoised``: ``[B, ...]``; ``sigma``: ``[B]`` in the model's parametrisation (flow: s < 1),
    and the result is too (flow: ``ŝ = σ̂/(1+σ̂)``). ``flow`` defaults to the profile's and must agree with it.
    """
    if flow is not None and flow != profile.flow:
        raise ValueError(f"estimate_sigma: the error profile was made for a {'flow' if profile.flow else 'EPS/V'} model, "
                         f"used with a {'flow' if flow else 'EPS/V'} one. Calibrate this model with VRG Calibrate.")
    flow = profile.flow
    x_ve, sigma_ve = _ve(x, sigma, flow)
    g = sigma_ve**2 - profile.mse_x0(sigma).to(x_ve)
    slope = (g / sigma_ve**2).clamp(MIN_SLOPE, 1.0)
    variance = sigma_ve**2 + (residual_energy(x_ve, denoised) - g) / slope**2
    sigma_hat = variance.clamp_min(0).sqrt()
    return model_sigma(sigma_hat, flow)


def capped_window(window: tuple[float, float] | None, flow: bool) -> tuple[float, float]:
    """``window`` (None: every level) with its top lowered to :data:`LEVEL_CAP`, in the model's parametrisation."""
    low, high = (0.0, math.inf) if window is None else window
    return low, min(high, model_sigma(LEVEL_CAP, flow))


def in_window(sigma: Tensor, window: tuple[float, float] | None, flow: bool = False) -> bool:
    """Whether every level of ``sigma`` lies in ``window = (low, high)`` (inclusive, the model's parametrisation) and the
    guidance is defined there (σ > 0; flow: s < 1, a finite VE level). One host sync: it decides whether to call the model."""
    low, high = (0.0, math.inf) if window is None else window
    top = 1.0 if flow else math.inf
    return bool(((sigma >= low) & (sigma <= high) & (sigma > 0) & (sigma < top)).all())


def unconditional_level(sigma_ve: Tensor, mode: Mode, delta: float, estimated_ve: Tensor | None = None) -> Tensor:
    """σ_u in VE: ``σ·e^δ`` (fixed), or ``max(σ̂, σ·e^δ)`` (adaptive, ``estimated_ve`` = σ̂) (module doc)."""
    floor = sigma_ve * math.exp(delta)
    if mode == "fixed":
        return floor
    if mode != "adaptive":
        raise ValueError(f"Noise Awareness Guidance: mode must be 'fixed', 'adaptive' or 'estimator', got {mode!r}.")
    return torch.maximum(estimated_ve, floor)


def noise_level_gradient(estimator: LevelLogPosterior, x: Tensor, sigma: Tensor) -> Tensor:
    """``∇ₓ log p(σ | x)``, ``[B, ...]``: one backward pass through the estimator alone (no model call).

    The gradient of the batch sum is every sample's own gradient, since sample b's log p depends on ``x[b]`` alone.
    Runs with autograd on even inside the host's ``torch.inference_mode``; ``x`` and ``sigma`` are cloned out of it.
    """
    with torch.inference_mode(False), torch.enable_grad():
        state = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(estimator(state, sigma.detach().clone()).sum(), state)
    return grad


def nag_denoise(denoiser: Denoiser, x: Tensor, sigma: Tensor, denoised: Tensor, denoised_cond: Tensor, strength: float = 0.1,
                mode: Mode = "estimator", delta: float = 0.15, profile: ErrorProfile | None = None, flow: bool = False,
                window: tuple[float, float] | None = None, estimator: LevelLogPosterior | None = None) -> Tensor:
    """Noise Awareness Guidance on one prediction (Zhong et al. 2025; module doc), by ``mode``:

        estimator:        D_nag = D_cfg + w·(σ²/a(σ))·∇ₓ log p(σ | x)          (classifier-based, ``estimator`` = log p)
        fixed, adaptive:  D_nag = D_cfg + w·[(D_c - x_ve) - (σ²/σ_u²)·(D_u - x_ve)]   (eq. 9 with ``s(x) ≈ s(x|σ_u)``)

    The defaults are the nodes': mode ``estimator`` at w = 0.1, the mode that stays within 3 % of plain sampling on
    every model of the testbed at d = 1024 (``python -m bench.nag --estimator``). ``denoiser``: the conditional model,
    called once at σ_u (not in mode estimator); ``denoised``: ``D_cfg`` (the guided
    prediction at ``(x, σ)``); ``denoised_cond``: ``D_c``; ``strength``: w ≥ 0; ``delta``: σ_u (:func:`unconditional_level`;
    adaptive needs the model's ``profile``); ``window``: the levels ``(low, high)`` to guide at, the model's
    parametrisation, in mode estimator never above :data:`LEVEL_CAP` (outside it, and for w = 0, ``denoised`` comes back
    unchanged and nothing is called). ``x``:
    ``[B, ...]``, ``sigma``: ``[B]``. The defaults are the nodes' (nodes/nag.py ``guidance_inputs``; the nodes' window is
    a fraction of sampling, here levels).
    """
    if mode == "estimator":
        window = capped_window(window, flow)
    if strength == 0 or not in_window(sigma, window, flow):
        return denoised
    if mode == "estimator":
        if estimator is None:
            raise ValueError("Noise Awareness Guidance: mode 'estimator' needs a noise-level estimator; connect one, "
                             "or use mode 'fixed' or 'adaptive'.")
        step = append_dims(sigma**2 / alpha(sigma, flow), x.ndim)
        return denoised + strength * step * noise_level_gradient(estimator, x, sigma)
    x_ve, sigma_ve = _ve(x, sigma, flow)
    estimated = None
    if mode == "adaptive":
        if profile is None:
            raise ValueError("Noise Awareness Guidance: mode 'adaptive' needs the model's VRG error profile; connect one "
                             "(VRG Calibrate or VRG Load Profile), or use mode 'fixed'.")
        estimated = ve_sigma(estimate_sigma(x, denoised_cond, sigma, profile, flow), flow)
    sigma_u = unconditional_level(sigma_ve, mode, delta, estimated)
    x_u, level_u = ve_to_flow(x_ve, sigma_u) if flow else (x_ve, sigma_u)
    denoised_u = denoiser(x_u, level_u)
    ratio = append_dims((sigma_ve / sigma_u) ** 2, x.ndim)
    return denoised + strength * ((denoised_cond - x_ve) - ratio * (denoised_u - x_ve))


def nag_guided(pair_denoiser: PairDenoiser, cond_denoiser: Denoiser, scale: float, strength: float = 0.1,
               **options) -> Denoiser:
    """A plain denoiser: CFG at ``scale`` (samplers.core.cfg_mix) followed by :func:`nag_denoise` with ``strength`` and
    ``options`` (mode, delta, profile, flow, window, estimator), e.g. ``nag_guided(pair, cond, scale, mode="estimator",
    estimator=log_p)``. ``cond_denoiser`` is the conditional model alone, for the stand-in's call at σ_u."""

    def denoiser(x: Tensor, sigma: Tensor) -> Tensor:
        denoised_cond, denoised_uncond = pair_denoiser(x, sigma)
        denoised = cfg_mix(denoised_cond, denoised_uncond, scale)
        return nag_denoise(cond_denoiser, x, sigma, denoised, denoised_cond, strength, **options)

    return denoiser

"""The peers a ComfyUI user would pick instead of this pack's methods (docs/evaluation.md#baselines-and-peers): bench only.

Written from the papers and from ComfyUI's own code paths (ComfyUI 0.33.0, ``comfy_extras/`` and ``comfy/samplers.py``;
``tests/host/test_peers_match_comfy.py`` runs ComfyUI's functions next to these on both hosts). Conventions are those of
``samplers.core``: a ``Denoiser`` maps ``(x [B, ...], σ [B])`` to x̂0, the state is ``x = a(σ)·x0 + σ·ε`` with ``a = 1``
(EPS/VE) or ``1 - σ`` (flow). ComfyUI's cfg hooks see the same quantities: ``cond_denoised``/``uncond_denoised`` are x̂0
and ``input`` is x, in either parametrisation.

* High-cfg guidance (each returns a ``Denoiser`` like :func:`samplers.core.guided`): :func:`rescale_cfg`, :func:`cfg_norm`,
  :func:`apg`, :func:`cfg_zero_star`. APG (with momentum) and CFG-Zero* (with zero-init) keep state across calls: build a
  fresh one for every sampling run.
* Inversion: :func:`flip_sigmas_euler`, :func:`unsampler`, :func:`rf_inversion` and its way back :func:`rf_inversion_reverse`.
* Schedules (descending, ending in 0): :func:`align_your_steps`, :func:`optimal_steps`, :func:`gits`, :func:`beta_schedule`
  over :func:`discrete_sigmas`; Karras is ``bench.kit.karras``. :func:`map_sigma_range` moves a VE schedule to another σ range.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.stats
import torch
from torch import Tensor

from samplers import core
from samplers.inversion import ddim

# ---------------------------------------------------------------------------------------------------------------------
# High-cfg guidance


def _batch_dims(x: Tensor) -> tuple[int, ...]:
    """Every dim but the batch: one statistic per sample."""
    return tuple(range(1, x.ndim))


def v_from_denoised(x: Tensor, denoised: Tensor, sigma: Tensor) -> Tensor:
    """v-prediction (Salimans & Ho 2022) of a VE state: ``v = (x/(1+σ²) - x̂0)·√(1+σ²)/σ``."""
    sigma = core.append_dims(sigma, x.ndim)
    return (x / (1 + sigma**2) - denoised) * (1 + sigma**2).sqrt() / sigma


def denoised_from_v(x: Tensor, v: Tensor, sigma: Tensor) -> Tensor:
    """Inverse of :func:`v_from_denoised`: ``x̂0 = x/(1+σ²) - v·σ/√(1+σ²)``."""
    sigma = core.append_dims(sigma, x.ndim)
    return x / (1 + sigma**2) - v * sigma / (1 + sigma**2).sqrt()


def _rescaled(cond: Tensor, uncond: Tensor, scale: float, multiplier: float) -> Tensor:
    """Lin et al. 2023 (arXiv 2305.08891), sec. 3.4, eq. 15-16: the CFG mix rescaled to the std of the conditional
    prediction, ``x_final = φ·x_cfg·std(x_pos)/std(x_cfg) + (1-φ)·x_cfg``; std per sample, unbiased, as ComfyUI."""
    mixed = core.cfg_mix(cond, uncond, scale)
    dims = _batch_dims(cond)
    ratio = cond.std(dim=dims, keepdim=True) / mixed.std(dim=dims, keepdim=True).clamp_min(1e-8)
    return multiplier * mixed * ratio + (1 - multiplier) * mixed


def rescale_cfg(pair: core.PairDenoiser, scale: float, multiplier: float = 0.7, flow: bool = False) -> core.Denoiser:
    """RescaleCFG (Lin et al. 2023, eq. 15-16, φ = 0.7 as the paper and ComfyUI's node) as ComfyUI 0.33.0 applies it.

    EPS/VE: rescaled in v-prediction space (the paper's model was v-prediction), i.e. on ``v = (x/(1+σ²) - x̂0)·√(1+σ²)/σ``.
    Flow: rescaled in x̂0 space directly (ComfyUI 0.33.0; 0.3.75 applied the VE v-conversion to flow models too, which
    equals this function with ``flow=False``). ComfyUI takes the EPS std over dims (1, 2, 3): all of a 4-D latent's.
    """

    def denoiser(x: Tensor, sigma: Tensor) -> Tensor:
        cond, uncond = pair(x, sigma)
        if flow:
            return _rescaled(cond, uncond, scale, multiplier)
        v = _rescaled(v_from_denoised(x, cond, sigma), v_from_denoised(x, uncond, sigma), scale, multiplier)
        return denoised_from_v(x, v, sigma)

    return denoiser


def cfg_norm(pair: core.PairDenoiser, scale: float, strength: float = 1.0) -> core.Denoiser:
    """ComfyUI core's CFGNorm (``comfy_extras/nodes_cfg.py``, the default post-CFG mode): the CFG mix in x̂0 space is
    shrunk, never grown, to the conditional prediction's norm over dim 1 (the channels, per pixel of an image latent),
    ``x̂0 = strength·D_cfg·clamp(‖D_c‖/(‖D_cfg‖ + 1e-8), 0, 1)``. ``strength`` scales the whole output, as the node does.
    The same in either parametrisation."""

    def denoiser(x: Tensor, sigma: Tensor) -> Tensor:
        cond, uncond = pair(x, sigma)
        mixed = core.cfg_mix(cond, uncond, scale)
        shrink = (cond.norm(dim=1, keepdim=True) / (mixed.norm(dim=1, keepdim=True) + 1e-8)).clamp(0.0, 1.0)
        return mixed * shrink * strength

    return denoiser


def _split_along(v: Tensor, direction: Tensor) -> tuple[Tensor, Tensor]:
    """``v`` split into its component along ``direction`` (per sample) and the rest."""
    unit = direction / core.append_dims(direction.flatten(1).norm(dim=1).clamp_min(1e-12), v.ndim)
    parallel = core.append_dims(core.inner(v, unit).to(v.dtype), v.ndim) * unit
    return parallel, v - parallel


def apg(pair: core.PairDenoiser, scale: float, eta: float = 1.0, norm_threshold: float = 5.0,
        momentum: float = 0.0) -> core.Denoiser:
    """Adaptive Projected Guidance (Sadat et al. 2024, arXiv 2410.02416, Algorithm 1), in x̂0 space.

    ``Δ = D_c - D_u``; momentum (sec. 4.3): ``Δ̄ ← Δ + β·Δ̄`` from 0; rescale (sec. 4.2): ``Δ̄·min(1, r/‖Δ̄‖)``; project
    (sec. 4.1): ``Δ̃ = Δ̄⊥ + η·Δ̄∥`` with ∥ along D_c; ``x̂0 = D_c + (w - 1)·Δ̃`` (eq. 6), so η = 1, r = 0, β = 0 is CFG.
    Defaults are ComfyUI's APG node's (η 1, r 5, β 0; the paper suggests η 0, β -0.5). Norms are per sample over all
    dims (ComfyUI: dims -1, -2, -3, the same for a 4-D latent).

    ComfyUI's node at cfg w gives ``D_c + w·Δ̃``: this function at ``scale = w + 1`` (its tooltip's "CFG at η = 1" is CFG
    at w + 1). With ``momentum ≠ 0`` the denoiser keeps the running average: use a fresh one for every sampling run
    (ComfyUI resets it when σ rises).
    """
    running: Tensor | None = None

    def denoiser(x: Tensor, sigma: Tensor) -> Tensor:
        nonlocal running
        cond, uncond = pair(x, sigma)
        guidance = cond - uncond
        if momentum != 0:
            running = guidance if running is None else guidance + momentum * running
            guidance = running
        if norm_threshold > 0:
            norm = core.append_dims(guidance.flatten(1).norm(dim=1), x.ndim)
            guidance = guidance * (norm_threshold / norm).clamp(max=1.0)
        parallel, orthogonal = _split_along(guidance, cond)
        return cond + (scale - 1) * (orthogonal + eta * parallel)

    return denoiser


def optimized_scale(cond_residual: Tensor, uncond_residual: Tensor) -> Tensor:
    """CFG-Zero* (Fan et al. 2025, arXiv 2503.18886, eq. 9): the per-sample ``s* = ⟨v_c, v_u⟩/‖v_u‖²`` that best fits the
    conditional velocity with the scaled unconditional one (1e-8 added to the norm, as the reference code), ``[B]``."""
    return core.inner(cond_residual, uncond_residual) / (core.inner(uncond_residual, uncond_residual) + 1e-8)


def cfg_zero_star(pair: core.PairDenoiser, scale: float, flow: bool = False, zero_init_steps: int | None = None) -> core.Denoiser:
    """CFG-Zero* (Fan et al. 2025) as ComfyUI's CFGZeroStar node applies it, plus the paper's zero-init.

    ``s*`` (:func:`optimized_scale`) of the residuals ``x - D_c`` and ``x - D_u`` (σ·ε̂ for EPS, s·v̂ for flow: the factor
    cancels), then ``x̂0 = s*·D_u + w·(D_c - s*·D_u)``: ComfyUI scales the unconditional *x̂0*, for EPS and flow alike.
    The paper's reference code scales the unconditional velocity instead; that differs from ComfyUI's by
    ``(1 - s*)(1 - w)·x`` in x̂0. Zero-init (sec. 4.2): the first ``zero_init_steps`` model calls predict zero velocity /
    noise, i.e. ``x̂0 = x`` (the state does not move). Default (None): 1 call for flow (the reference code's
    ``zero_steps = 0``), none for EPS (ComfyUI's node has no zero-init; the paper defines it for flow models). It
    counts calls: one a step for euler or dpmpp_2m; use a fresh denoiser for every sampling run.
    """
    zero_calls = (1 if flow else 0) if zero_init_steps is None else zero_init_steps
    calls = 0

    def denoiser(x: Tensor, sigma: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        if calls <= zero_calls:
            return x
        cond, uncond = pair(x, sigma)
        star = core.append_dims(optimized_scale(x - cond, x - uncond).to(x.dtype), x.ndim)
        return core.cfg_mix(cond, star * uncond, scale)

    return denoiser


# ---------------------------------------------------------------------------------------------------------------------
# Inversion

FLIP_SIGMA_MIN = 1e-4
"""The level ComfyUI's FlipSigmas puts in place of the schedule's final 0, and ComfyUI_Noise's Unsampler adds to all."""


def flip_sigmas(sigmas: Tensor) -> Tensor:
    """ComfyUI's FlipSigmas: the schedule reversed, a leading 0 replaced by 1e-4 (no clamp below 1 for flow)."""
    flipped = sigmas.flip(0).clone()
    if flipped[0] == 0:
        flipped[0] = FLIP_SIGMA_MIN
    return flipped


def _walk_up(denoiser: core.Denoiser, x0: Tensor, levels: Tensor, flow: bool) -> Tensor:
    """Euler along ascending ``levels`` from the noise-free state at the first level, as SamplerCustom does with
    ``add_noise`` off (ComfyUI's noise scaling of a zero noise: ``a(σ₀)·x0``)."""
    return ddim(denoiser, core.noise_to(x0, torch.zeros_like(x0), levels[0], flow), levels, flow, eval_at="current")


def flip_sigmas_euler(denoiser: core.Denoiser, x0: Tensor, sigmas: Tensor, flow: bool = False) -> Tensor:
    """DDIM inversion as ComfyUI users run it: FlipSigmas on a descending schedule, then SamplerCustom with ``euler``
    (≡ DDIM, ``samplers.core.ddim_step``) and no added noise. Returns the sampler state at the top level; ComfyUI's
    SamplerCustom hands a flow latent back divided by ``1 - s_top`` (inf at s = 1) and multiplies it again when the next
    run starts, so the state is what both runs see."""
    return _walk_up(denoiser, x0, flip_sigmas(sigmas), flow)


def unsampler(pair: core.PairDenoiser, x0: Tensor, sigmas: Tensor, cfg: float = 1.0, end_at_step: int = 0,
              normalize: bool = False) -> Tensor:
    """ComfyUI_Noise's Unsampler (BlenderNeko, ``nodes.py``) with ``euler``, for EPS/VE models: the schedule reversed
    with 1e-4 added to *every* level, walked at ``cfg`` up to ``steps - end_at_step`` steps, then optionally
    standardised with one mean and std over the whole batch (``normalize``). Defaults are the node's. On a flow schedule
    the top level would pass 1, so it is EPS only."""
    steps = len(sigmas) - 1
    last_step = steps - min(end_at_step, steps - 1)
    levels = (sigmas.flip(0) + FLIP_SIGMA_MIN)[: last_step + 1]
    latent = _walk_up(core.guided(pair, cfg), x0, levels, flow=False)
    return (latent - latent.mean()) / latent.std() if normalize else latent


RF_GAMMA, RF_ETA, RF_START, RF_STOP = 0.5, 0.9, 0.0, 0.25
"""RF-Inversion defaults (Rout et al. 2024, sec. 5 and the authors' diffusers pipeline): controller guidance γ 0.5 for
inversion; η 0.9 applied on the first quarter of the reverse steps (τ = 7 of 28)."""


def rf_inversion(denoiser: core.Denoiser, x0: Tensor, sigmas: Tensor, noise: Tensor, gamma: float = RF_GAMMA) -> Tensor:
    """RF-Inversion's controlled forward ODE (Rout et al. 2024, arXiv 2410.10792, eq. 8 and Algorithm 1), flow only.

    With t = s (0 image, 1 noise): the model's field ``u(Y, s) = (Y - D(Y, s))/s`` (dY/ds of the probability-flow ODE;
    the paper's ``-v(Y, 1-t)``), the field that ends at the fixed noise sample y1, ``u(Y | y1) = (y1 - Y)/(1 - s)``, and
    ``dY/ds = u + γ·(u(·|y1) - u)``, Euler steps along FlipSigmas of the descending ``sigmas`` (from ``(1-s₀)·x0``).
    γ = 0 is plain Euler inversion; γ = 1 returns ``noise`` exactly. ``denoiser`` is the paper's null-prompt model.
    """
    levels = flip_sigmas(sigmas)
    y = core.noise_to(x0, torch.zeros_like(x0), levels[0], flow=True)
    for s, s_next in zip(levels[:-1], levels[1:]):
        model_field = (y - denoiser(y, s.expand(y.shape[0]))) / s
        controlled = model_field + gamma * ((noise - y) / (1 - s) - model_field)
        y = y + (s_next - s) * controlled
    return y


def rf_inversion_reverse(denoiser: core.Denoiser, latent: Tensor, sigmas: Tensor, reference: Tensor, eta: float = RF_ETA,
                         start: float = RF_START, stop: float = RF_STOP) -> Tensor:
    """RF-Inversion's controlled reverse ODE (Rout et al. 2024, eq. 15 and Algorithm 2), flow only.

    ``dX/dt = v + η·(v(·|y0) - v)`` with ``v(X | y0) = (y0 - X)/(1 - t)`` the field to the reference image y0, for the
    steps ``i`` with ``start·N ≤ i < stop·N`` (η 0 outside). In σ terms the controlled field is the model's with its
    x̂0 replaced by ``(1-η)·D + η·y0``, so each step is a DDIM/Euler step on that blend down the descending ``sigmas``.
    ``denoiser`` is the (guided) model with the edit prompt.
    """
    steps = len(sigmas) - 1
    x = latent
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        strength = eta if start * steps <= i < stop * steps else 0.0
        denoised = denoiser(x, s.expand(x.shape[0]))
        x = core.ddim_step(x, (1 - strength) * denoised + strength * reference, s, s_next, flow=True)
    return x


# ---------------------------------------------------------------------------------------------------------------------
# Schedules

AYS_SIGMAS = {
    "SD1": (14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092, 0.9642583904,
            0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582),
    "SDXL": (14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141, 0.5550693289,
             0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582),
}
"""Align Your Steps (Sabour et al. 2024, arXiv 2404.14507), 10-step levels as NVIDIA's how-to page and ComfyUI's
AlignYourStepsScheduler list them (the last one is replaced by 0)."""

OPTIMAL_STEPS_SIGMAS = {
    "FLUX": (0.9968, 0.9886, 0.9819, 0.975, 0.966, 0.9471, 0.9158, 0.8287, 0.5512, 0.2808, 0.001),
    "Wan": (1.0, 0.997, 0.995, 0.993, 0.991, 0.989, 0.987, 0.985, 0.98, 0.975, 0.973, 0.968, 0.96, 0.946, 0.927, 0.902,
            0.864, 0.776, 0.539, 0.208, 0.001),
}
"""Optimal Stepsize for Diffusion Sampling (Pei et al. 2025, arXiv 2503.21774) levels for flow models, as ComfyUI's
OptimalStepsScheduler lists them (from github.com/bebebe666/OptimalSteps): 10 steps for Flux, 20 for Wan."""

GITS_SIGMAS = {1.20: (
    (14.61464119, 0.803307, 0.02916753),
    (14.61464119, 1.56271636, 0.52423614, 0.02916753),
    (14.61464119, 2.36326075, 0.92192322, 0.36617002, 0.02916753),
    (14.61464119, 2.84484982, 1.24153244, 0.59516323, 0.25053367, 0.02916753),
    (14.61464119, 5.85520077, 2.05039096, 0.95350921, 0.45573691, 0.17026083, 0.02916753),
    (14.61464119, 5.85520077, 2.45070267, 1.24153244, 0.64427125, 0.29807833, 0.09824532, 0.02916753),
    (14.61464119, 5.85520077, 2.45070267, 1.36964464, 0.803307, 0.45573691, 0.25053367, 0.09824532, 0.02916753),
    (14.61464119, 5.85520077, 2.84484982, 1.61558151, 0.95350921, 0.59516323, 0.36617002, 0.19894916, 0.09824532,
     0.02916753),
    (14.61464119, 5.85520077, 2.84484982, 1.67050016, 1.08895338, 0.74807048, 0.50118381, 0.32104823, 0.19894916,
     0.09824532, 0.02916753),
    (14.61464119, 5.85520077, 2.95596409, 1.84880662, 1.24153244, 0.83188516, 0.59516323, 0.41087446, 0.27464288,
     0.17026083, 0.09824532, 0.02916753),
    (14.61464119, 5.85520077, 3.07277966, 1.98035145, 1.36964464, 0.95350921, 0.69515091, 0.50118381, 0.36617002,
     0.25053367, 0.17026083, 0.09824532, 0.02916753),
    (14.61464119, 6.77309084, 3.46139455, 2.36326075, 1.56271636, 1.08895338, 0.803307, 0.59516323, 0.45573691,
     0.34370604, 0.25053367, 0.17026083, 0.09824532, 0.02916753),
    (14.61464119, 6.77309084, 3.46139455, 2.45070267, 1.61558151, 1.162866, 0.86115354, 0.64427125, 0.50118381,
     0.38853383, 0.29807833, 0.22545385, 0.17026083, 0.09824532, 0.02916753),
    (14.61464119, 7.49001646, 4.65472794, 3.07277966, 2.12350607, 1.51179266, 1.08895338, 0.83188516, 0.64427125,
     0.50118381, 0.38853383, 0.29807833, 0.22545385, 0.17026083, 0.09824532, 0.02916753),
    (14.61464119, 7.49001646, 4.65472794, 3.07277966, 2.12350607, 1.51179266, 1.08895338, 0.83188516, 0.64427125,
     0.50118381, 0.41087446, 0.32104823, 0.25053367, 0.19894916, 0.13792117, 0.09824532, 0.02916753),
    (14.61464119, 7.49001646, 4.65472794, 3.07277966, 2.12350607, 1.51179266, 1.08895338, 0.83188516, 0.64427125,
     0.50118381, 0.41087446, 0.34370604, 0.27464288, 0.22545385, 0.17026083, 0.13792117, 0.09824532, 0.02916753),
    (14.61464119, 7.49001646, 4.65472794, 3.07277966, 2.19988537, 1.61558151, 1.20157266, 0.92192322, 0.72133851,
     0.57119018, 0.45573691, 0.36617002, 0.29807833, 0.25053367, 0.19894916, 0.17026083, 0.13792117, 0.09824532,
     0.02916753),
    (14.61464119, 7.49001646, 4.65472794, 3.07277966, 2.19988537, 1.61558151, 1.24153244, 0.95350921, 0.74807048,
     0.59516323, 0.4783645, 0.38853383, 0.32104823, 0.27464288, 0.22545385, 0.19894916, 0.17026083, 0.13792117,
     0.09824532, 0.02916753),
    (14.61464119, 7.49001646, 4.65472794, 3.07277966, 2.19988537, 1.61558151, 1.24153244, 0.95350921, 0.74807048,
     0.59516323, 0.50118381, 0.41087446, 0.34370604, 0.29807833, 0.25053367, 0.22545385, 0.19894916, 0.17026083,
     0.13792117, 0.09824532, 0.02916753),
)}
"""GITS (Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling", arXiv 2405.11326) levels for
SD1.5 at 2…20 steps, for ComfyUI's default coefficient 1.20 only (ComfyUI's GITSScheduler, from
github.com/zju-pi/diff-sampler); ComfyUI's other coefficients (0.80…1.50) are not copied here."""


def _ending_in_zero(levels: Sequence[float] | np.ndarray) -> Tensor:
    """A float64 schedule with its last level replaced by 0, as every ComfyUI table scheduler does."""
    sigmas = torch.tensor(np.asarray(levels, dtype=np.float64))
    sigmas[-1] = 0.0
    return sigmas


def _loglinear(levels: Sequence[float], count: int) -> np.ndarray:
    """``count`` levels spread along a descending table, interpolated linearly in log σ over the table's own index
    (ComfyUI's ``loglinear_interp``; the table itself when ``count`` matches it)."""
    if count == len(levels):
        return np.asarray(levels, dtype=np.float64)
    positions = np.linspace(0, len(levels) - 1, count)
    return np.exp(np.interp(positions, np.arange(len(levels)), np.log(np.asarray(levels, dtype=np.float64))))


def _tabulated(table: Sequence[float], steps: int) -> Tensor:
    """A ``steps``-step schedule from a published table by log-linear interpolation (AYS, OptimalSteps)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return _ending_in_zero(_loglinear(table, steps + 1))


def align_your_steps(family: str, steps: int) -> Tensor:
    """Align Your Steps for ``family`` "SD1" or "SDXL" (:data:`AYS_SIGMAS`), interpolated as ComfyUI does."""
    return _tabulated(AYS_SIGMAS[family], steps)


def optimal_steps(family: str, steps: int) -> Tensor:
    """OptimalSteps for flow ``family`` "FLUX" or "Wan" (:data:`OPTIMAL_STEPS_SIGMAS`), interpolated as ComfyUI does."""
    return _tabulated(OPTIMAL_STEPS_SIGMAS[family], steps)


def gits(steps: int, coeff: float = 1.20) -> Tensor:
    """GITS for SD1.5 (:data:`GITS_SIGMAS`): the table row for 2…20 steps, beyond that the 20-step row interpolated
    log-linearly (ComfyUI's GITSScheduler)."""
    rows = GITS_SIGMAS.get(round(coeff, 2))
    if rows is None:
        raise ValueError(f"gits: only coeff {sorted(GITS_SIGMAS)} is tabulated here, got {coeff}")
    if steps < 2:
        raise ValueError(f"gits: steps must be >= 2 (the tables start at 2), got {steps}")
    return _ending_in_zero(rows[steps - 2] if steps <= len(rows) + 1 else _loglinear(rows[-1], steps + 1))


def discrete_sigmas(beta_start: float = 0.00085, beta_end: float = 0.012, timesteps: int = 1000) -> Tensor:
    """The ascending σ of a DDPM model's timesteps, float32 as ComfyUI stores them: "scaled linear" betas
    ``β = linspace(√β₀, √β₁)²``, ``ᾱ = Π(1-β)``, ``σ = √((1-ᾱ)/ᾱ)`` (defaults: SD1.x/SDXL, ComfyUI's ModelSamplingDiscrete)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt().float()


def sigma_at(model_sigmas: Tensor, timesteps: Tensor) -> Tensor:
    """σ at fractional ``timesteps`` of the ascending table ``model_sigmas``, interpolated linearly in t on log σ (ComfyUI's
    ModelSamplingDiscrete.sigma)."""
    log_sigmas = model_sigmas.double().log()
    low = timesteps.double().floor().long().clamp(0, len(log_sigmas) - 2)
    weight = timesteps.double() - low
    return ((1 - weight) * log_sigmas[low] + weight * log_sigmas[low + 1]).exp()


def normal_schedule(model_sigmas: Tensor, steps: int, sgm: bool = False) -> Tensor:
    """ComfyUI's ``normal`` scheduler on a discrete model (``sgm_uniform`` with ``sgm``): ``steps`` timesteps evenly from
    the last to the first of the table (``steps + 1`` with the last dropped for sgm), their σ, then 0."""
    last = len(model_sigmas) - 1
    timesteps = torch.linspace(last, 0, steps + 1, dtype=torch.float64)[:-1] if sgm else torch.linspace(
        last, 0, steps, dtype=torch.float64)
    return torch.cat([sigma_at(model_sigmas, timesteps), torch.zeros(1, dtype=torch.float64)])


def beta_schedule(model_sigmas: Tensor, steps: int, alpha: float = 0.6, beta: float = 0.6) -> Tensor:
    """The beta scheduler (Lee et al. 2024, "Beta Sampling is All You Need", arXiv 2407.12173) as ComfyUI's
    ``beta_scheduler``: timesteps at the Beta(α, β) quantiles of ``1 - i/steps``, rounded onto the ascending table
    ``model_sigmas``, repeats dropped (so a short table can give fewer than ``steps`` steps), then 0."""
    last = len(model_sigmas) - 1
    quantiles = 1 - np.linspace(0, 1, steps, endpoint=False)
    timesteps = np.rint(scipy.stats.beta.ppf(quantiles, alpha, beta) * last).astype(int)
    kept = [t for i, t in enumerate(timesteps) if i == 0 or t != timesteps[i - 1]]
    return torch.cat([model_sigmas.double()[kept], torch.zeros(1, dtype=torch.float64)])


SD1_SIGMA_RANGE = (0.0291671582, 14.6146412293)
"""SD1.x's lowest and highest σ (ComfyUI's ModelSamplingDiscrete): the range the AYS and GITS tables span."""


def map_sigma_range(sigmas: Tensor, target: tuple[float, float], source: tuple[float, float] = SD1_SIGMA_RANGE) -> Tensor:
    """A VE schedule moved from the σ range ``source`` (min, max) to ``target``: positive levels mapped affinely in
    log σ (so a table's spacing in log σ keeps its shape), zeros kept. For a published SD1.5 table (AYS, GITS) on a
    testbed with another range; ``bench.kit.karras``'s default 0.03…14.6 already is SD1.5's."""
    (lo, hi), (new_lo, new_hi) = np.log(source), np.log(target)
    logs = sigmas.double().clamp_min(torch.finfo(torch.float64).tiny).log()
    mapped = (new_lo + (logs - lo) * (new_hi - new_lo) / (hi - lo)).exp()
    return torch.where(sigmas > 0, mapped, 0.0)

"""DiffIER (Chen, Ding, Xue 2025, "DiffIER: Optimizing Diffusion Models with Iterative Error Reduction", arXiv 2508.13628),
**reconstructed from the paper's abstract** (docs/methods.md#diffier): the method section was not reachable, so the error
definition and the iteration below are this pack's reading, chosen by measurement on the analytic testbed
(``bench/diffier.py``), not the authors' equations.

What the abstract states: under classifier-free guidance the sampler's states leave the family the network was trained on
(a "training-inference gap"); the gap is quantified as the error accumulated during inference and the best guidance
weight is the one that minimises it; it is reduced by an iterative error minimisation at every inference step.

The per-step error. A deterministic DDIM/Euler step σ → σ' (samplers.core.ddim_step) writes the next state as

    x' = a(σ')·x̂0 + σ'·ε̂,      ε̂ = (x - a(σ)·x̂0)/σ,   x̂0 = D_u + ω·(D_c - D_u)   at (x, σ)

i.e. it assumes x' is a forward-process sample of the clean estimate x̂0. The model's own guided prediction at the next
level, ``D_w(x', σ')``, says how far that assumption is off:

    r = a(σ')·(D_w(x', σ') - x̂0)                                           (eq. R)

Along a plain run ``‖r‖/a(σ') = ‖x̂0_{i+1} - x̂0_i‖``, the drift of consecutive predictions, which every sampler callback
sees: :func:`prediction_drift` is the gap diagnostic computable from the model alone at no extra cost.

The reduction (reading C of docs/methods.md#diffier, the winner on the testbed against reading A, a fixed-point correction of x'):
the guidance weight of each step is the one whose clean estimate best agrees with the model's guided prediction at the
step's own next state, in closed form (least squares along ``Δ = D_c - D_u``, per sample),

    ω* = clamp(⟨Δ, D_w(x'(ω), σ') - D_u⟩ / ‖Δ‖²,  1, w)                       (eq. W)

found by K damped fixed-point iterations ``ω ← ω + λ·(ω* - ω)`` from ``ω = w``, each one re-evaluating the model at
the step's new ``x'(ω)``. ``w`` is the user's cfg, the upper bound: DiffIER only lowers guidance where it overshoots
the model's next prediction, never below the conditional model alone (ω = 1). K = 0 is plain CFG DDIM/Euler. The step
to σ' = 0 is never iterated (the model is not trained at σ = 0). Cost: ``2·(1 + K)`` network evaluations a step.

Where the iterations are spent (:data:`MIN_CFG`, :func:`iterations_at`). The K iterations cost as many calls as plain
CFG with twice the steps, so they run only where they measured better than that (README, DiffIER). EPS/V: at any cfg
> 1. On the analytic mixture K = 1 ties plain CFG given the same calls at cfg 1.5 on the trained MLP (sliced W2 0.0905
against 0.0901, inside the seed spread) and wins from 2; it wins on testbed 2 (FD 4.7 against 5.7 at cfg 1.5) and on
testbed 4 at cfg 3, 5, 9, 12 (FD 1.12 / 2.21 / 6.48 / 8.25 against 1.43 / 3.24 / 10.13 / 14.00). Flow: never, plain
CFG Euler at one cond/uncond call a step. On testbed 4's flow twin K = 1 loses to plain CFG given the same calls at cfg
3 and 5 (FD 4.74 against 1.52, 5.77 against 2.97) and is no better at 9 (13.9 against 13.8, label accuracy 0.67 against
0.75); on the mixture's trained flow MLP it loses at cfg 1.5 and 2 (0.093 against 0.086, 0.120 against 0.119). Its
gains on the mixture's error-field model and on testbed 2 at high cfg did not carry over to the realistic twin.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .core import PairDenoiser, cfg_mix, ddim_step, inner
from .inversion import StepCallback, check_finite_steps

MIN_CFG: dict[bool, float] = {False: 1.0, True: math.inf}
"""The lowest cfg at which DiffIER spends its iterations, keyed by ``flow`` (module doc): EPS/V any guided cfg, flow
none; below it, plain CFG."""


def iterations_at(scale: float, iterations: int, flow: bool, min_cfg: float | None = None) -> int:
    """The K that DiffIER runs at cfg ``scale``: ``iterations`` where the cfg reaches ``min_cfg`` (default
    :data:`MIN_CFG` of the family) and guides at all (``scale`` ≠ 1, where eq. W's range is {1}); else 0, plain CFG."""
    threshold = MIN_CFG[flow] if min_cfg is None else min_cfg
    return iterations if scale != 1 and scale >= threshold else 0


def agreeing_weight(denoised_cond: Tensor, denoised_uncond: Tensor, ahead: Tensor, scale: float) -> Tensor:
    """Eq. W: the per-sample ``[B]`` weight whose guided estimate is closest to ``ahead``, clamped between 1 and ``scale``."""
    delta = denoised_cond - denoised_uncond
    target = inner(delta, ahead - denoised_uncond) / inner(delta, delta).clamp_min(torch.finfo(delta.dtype).tiny)
    return target.clamp(min(1.0, scale), max(1.0, scale)).to(delta.dtype)


def diffier_step(pair: PairDenoiser, x: Tensor, sigma: Tensor, sigma_next: Tensor, scale: float, iterations: int,
                 damping: float, flow: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """One guided DDIM step σ → σ' (``[B]`` levels) with ``iterations`` damped iterations of eq. W on its weight.

    Returns the next state, the guided prediction the step used and its ``[B]`` weight ω.
    """
    denoised_cond, denoised_uncond = pair(x, sigma)
    omega = torch.full_like(sigma, scale)
    denoised = cfg_mix(denoised_cond, denoised_uncond, omega)
    x_next = ddim_step(x, denoised, sigma, sigma_next, flow)
    for _ in range(iterations):
        ahead = cfg_mix(*pair(x_next, sigma_next), scale)
        omega = omega + damping * (agreeing_weight(denoised_cond, denoised_uncond, ahead, scale) - omega)
        denoised = cfg_mix(denoised_cond, denoised_uncond, omega)
        x_next = ddim_step(x, denoised, sigma, sigma_next, flow)
    return x_next, denoised, omega


def diffier(pair: PairDenoiser, x: Tensor, sigmas: Tensor, scale: float, iterations: int = 1, damping: float = 1.0,
            flow: bool = False, callback: StepCallback | None = None, min_cfg: float | None = None) -> tuple[Tensor, Tensor]:
    """Sample along descending ``sigmas`` with :func:`diffier_step` at cfg ``scale`` (the last step, to σ = 0, plain).

    The iterations run only where :func:`iterations_at` says (cfg 1 never; below the family's :data:`MIN_CFG`, or
    ``min_cfg`` if given, neither: plain CFG Euler). Returns the samples and the weights ω used, ``[steps, B]``.
    ``callback`` receives k-diffusion's step dict ``{"x", "i", "sigma", "sigma_hat", "denoised"}`` after each step.
    Raises ``ValueError`` naming the first step whose state is not finite (checked once at the end: no GPU sync a step).
    """
    to_zero = (sigmas[1:] == 0).tolist()
    ones = x.new_ones(x.shape[0])
    finite, weights, iterated = [], [], iterations_at(scale, iterations, flow, min_cfg)
    for i in range(len(sigmas) - 1):
        k = 0 if to_zero[i] else iterated
        x_next, denoised, omega = diffier_step(pair, x, sigmas[i] * ones, sigmas[i + 1] * ones, scale, k, damping, flow)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x_next
        weights.append(omega)
        finite.append(torch.isfinite(x).all())
    check_finite_steps(finite, sigmas, "DiffIER")
    return x, torch.stack(weights)


def prediction_drift(predictions: list[Tensor]) -> Tensor:
    """The gap diagnostic (eq. R over ``a(σ')``): mean squared change of consecutive clean predictions per sample,
    ``[steps - 1, B]``."""
    stacked = torch.stack([p.flatten(1) for p in predictions])
    return stacked.diff(dim=0).square().mean(-1)


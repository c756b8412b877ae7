"""Deterministic DDIM inversion and its mirror image, the DDIM/Euler denoising walk: the baseline of every inversion method.

DDIM inversion (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12 with η = 0, run with σ' > σ; popularised for
editing by Mokady et al. 2023, "Null-text Inversion", sec. 3) must use a noise estimate taken *before* the state it steps to
exists. That "approximate-noise error" is what the step count controls, and what POLARIS attacks.

Two conventions for where the model is evaluated on an inversion step σ_k → σ_{k+1} (the ``eval_at`` option of DDIM
Inversion and POLARIS; :func:`resolve_eval_at` is the one place that reads it):

* ``"current"``: D at (x_k, σ_k); ComfyUI's FlipSigmas + ``euler`` and ComfyUI_Noise's Unsampler do this. The default.
* ``"next"``: the network sees the current state under the next level's label, as diffusers' ``DDIMInverseScheduler``
  does: feed ``x_k·c(σ_k)/c(σ_{k+1})`` at σ_{k+1}, with ``c`` the network input scale (:func:`samplers.core.input_scale`),
  and take that ε̂ as the noise of x_k.
* ``"auto"``: what reconstructed best for the model's family (:data:`AUTO_EVAL_AT`): ``"current"`` for both today.
  Reconstruction at cfg 1 (``python -m bench.inversion``; README, "DDIM Inversion"): on testbed 4 (photo patches, 30
  held-out patches) EPS current 23.9 / 29.8 dB against next 17.4 / 22.2 dB at 10 / 20 steps; flow 11.7 / 17.1 against
  14.9 / 16.8 (next ahead at 10 steps only). On testbed 2 (digits, 297 held-out) EPS current 25.0 / 30.6 / 37.3 dB
  against 25.2 / 29.9 / 36.7 at 10 / 20 / 50 steps, flow 25.8 / 31.3 / 38.7 against 23.8 / 27.0 / 32.1. Only the
  exact mixture denoiser of testbed 1 prefers next for EPS (MSE 0.018 vs 0.024 at 10 steps).

Saved workflows from before the short values stored long labels; :data:`LEGACY_EVAL_AT` maps each to what it meant
then (the old ``auto`` label meant next for EPS/V, current for flow), so old workflows replay unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from .core import Denoiser, ddim_step, denoised_from_eps, eps_from_denoised, input_scale

EvalAt = Literal["auto", "current", "next"]
Level = Literal["current", "next"]
EVAL_AT_CHOICES: tuple[str, ...] = ("auto", "current", "next")
EVAL_AT_DEFAULT: EvalAt = "current"
AUTO_EVAL_AT: dict[bool, Level] = {False: "current", True: "current"}
"""What ``"auto"`` picks, keyed by ``flow``: the convention that reconstructed best per family on testbeds 2 and 4."""
STANDARD_EVAL_AT: dict[bool, Level] = {False: "next", True: "current"}
"""The inversion papers' standard recipe, keyed by ``flow``: diffusers' ``DDIMInverseScheduler`` (next) for EPS/V, the
current level for flow; the bench's "standard DDIM" baseline, and what the old ``auto`` label meant."""
LEGACY_EVAL_AT: dict[str, dict[bool, Level]] = {
    "auto (next for EPS/V, current for flow)": STANDARD_EVAL_AT,
    "current level (FlipSigmas + euler)": {False: "current", True: "current"},
    "current level (ComfyUI, FlipSigmas + euler)": {False: "current", True: "current"},
    "next level (diffusers DDIMInverse)": {False: "next", True: "next"},
}
"""The long labels saved workflows stored before the short values, keyed by ``flow``: what each meant when saved."""
EVAL_AT_HELP = ("Where the model is evaluated on each step up. current: at the current level, as FlipSigmas + euler "
                "(best on the realistic testbeds: EPS 23.9 vs 17.4 dB at 10 steps on testbed 4, flow 31.3 vs 27.0 dB "
                "at 20 steps on testbed 2). next: the next level's label on the current latent, as diffusers' "
                "DDIMInverse and most inversion papers. auto: what measured best for the model's family (current for "
                "EPS/V and flow today).")
StepCallback = Callable[[dict], None]


def _level(sigma: Tensor, x: Tensor) -> Tensor:
    """A scalar level as the ``[B]`` tensor a denoiser expects."""
    return sigma.expand(x.shape[0])


def check_eval_at(eval_at: str, node: str = "DDIM inversion") -> None:
    """Raise a ``ValueError`` naming ``node`` unless ``eval_at`` is a short value or a saved workflow's long label."""
    if eval_at not in EVAL_AT_CHOICES and eval_at not in LEGACY_EVAL_AT:
        raise ValueError(f"{node}: input 'eval_at' must be one of {list(EVAL_AT_CHOICES)}, got {eval_at!r}. "
                         "Pick one of them in the node.")


def resolve_eval_at(eval_at: str, flow: bool, node: str = "DDIM inversion") -> Level:
    """The evaluation point an ``eval_at`` value means for a model of this family (module doc): ``"current"`` or
    ``"next"``. Accepts the short values and the long labels of older saved workflows (:data:`LEGACY_EVAL_AT`)."""
    check_eval_at(eval_at, node)
    if eval_at in LEGACY_EVAL_AT:
        return LEGACY_EVAL_AT[eval_at][flow]
    return AUTO_EVAL_AT[flow] if eval_at == "auto" else eval_at  # type: ignore[return-value]


def evaluation_point(x: Tensor, sigma: Tensor, sigma_next: Tensor, flow: bool, eval_at: EvalAt) -> tuple[Tensor, Tensor]:
    """The state and ``[B]`` level the model is fed on an inversion step from ``sigma`` to ``sigma_next`` (module doc)."""
    if resolve_eval_at(eval_at, flow) == "current":
        return x, _level(sigma, x)
    return x * (input_scale(sigma, flow) / input_scale(sigma_next, flow)), _level(sigma_next, x)


def carried_prediction(x: Tensor, sigma: Tensor, feed: Tensor, level: Tensor, denoised: Tensor, flow: bool) -> Tensor:
    """The x̂0 of ``x`` at ``sigma`` that carries the noise the model predicted at ``(feed, level)``."""
    if feed is x:
        return denoised
    return denoised_from_eps(x, eps_from_denoised(feed, denoised, level, flow), _level(sigma, x), flow)


def inversion_prediction(denoiser: Denoiser, x: Tensor, sigma: Tensor, sigma_next: Tensor, flow: bool,
                         eval_at: EvalAt = "current") -> Tensor:
    """The x̂0 an inversion step from ``sigma`` to ``sigma_next`` uses, under either evaluation convention (module doc)."""
    feed, level = evaluation_point(x, sigma, sigma_next, flow, eval_at)
    return carried_prediction(x, sigma, feed, level, denoiser(feed, level), flow)


def ddim(denoiser: Denoiser, x: Tensor, sigmas: Tensor, flow: bool = False, eval_at: EvalAt = "current",
         callback: StepCallback | None = None) -> Tensor:
    """Walk ``x`` along ``sigmas`` with deterministic DDIM steps: denoising when they descend, inversion when they ascend.

    Each step is :func:`samplers.core.ddim_step` (≡ one Euler step of the probability-flow ODE, ComfyUI's ``euler``).
    ``eval_at`` applies to ascending steps only (module doc). ``callback`` receives k-diffusion's step dict
    ``{"x", "i", "sigma", "sigma_hat", "denoised"}`` after each model call, so ComfyUI's progress bar and previews move.
    Raises ``ValueError`` naming the first step whose state is not finite (checked once at the end: no GPU sync a step).
    """
    finite, ascending = [], (sigmas[1:] > sigmas[:-1]).tolist()  # one host read for the whole walk, not one a step
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if ascending[i]:
            denoised = inversion_prediction(denoiser, x, sigma, sigma_next, flow, eval_at)
        else:
            denoised = denoiser(x, _level(sigma, x))
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        x = ddim_step(x, denoised, sigma, sigma_next, flow)
        finite.append(torch.isfinite(x).all())
    check_finite_steps(finite, sigmas, "DDIM")
    return x


def check_finite_steps(finite: list[Tensor], sigmas: Tensor, method: str) -> None:
    """Raise a ``ValueError`` at the first step whose result was NaN or inf, naming the step and its σ."""
    if not finite or torch.stack(finite).all():
        return
    step = int((~torch.stack(finite)).nonzero()[0])
    raise ValueError(f"{method}: the latent became NaN/inf at step {step + 1} (σ {float(sigmas[step]):.4g} → "
                     f"{float(sigmas[step + 1]):.4g}). Check the input latent for NaN/inf, lower cfg, or use more steps.")


def reconstruction_error(x0: Tensor, x0_reconstructed: Tensor) -> Tensor:
    """Per-sample mean squared error of a reconstruction, ``[B]``."""
    return (x0 - x0_reconstructed).pow(2).flatten(1).mean(1)


"""Schedule search: measure candidate σ schedules on the user's own model and keep the one with the lowest error.

VRG (Xu, Liu, Kong 2025, arXiv 2510.21792) ranks schedules by the cumulative prediction error (CPE), which has no
discretisation term; on a real model that ranking can be wrong (VRG can make a base schedule worse). Every fixed
recipe (karras, AYS, GITS, OptimalSteps, ...) ignores the model. The search measures instead: from the same standard
normal noise bank ``ε``, each candidate runs the sampler from ``σ_0·ε`` (ComfyUI's noise scaling of an empty latent),
and its error is

    err(σ) = mean over the bank and all dims of (x_σ - x_fine)²

where ``x_fine`` is a fine solve of the same model from the same noise (the probability-flow ODE, the same sampler on
a fine schedule, :func:`fine_schedule`) from the highest σ_0 of the candidates: a candidate that starts lower (ComfyUI's
``ddim_uniform`` starts below σ_max) samples from less noise than the others and pays for it here. The pick is the
candidate of lowest error; a tie keeps the earlier candidate, and every base comes before its VRG variant, so VRG is
kept only where it measured better than its base. Nothing is fitted on the bank (the candidates are fixed before it is
drawn), so it is not split; the pick's own error on it is the minimum of several noisy estimates, slightly optimistic.

Stability, measured on mixtures of the unit tests' kind (10 Euler steps, the exact denoiser plus a smooth error field,
its own profile; 6 EPS bases + VRG, 2 flow bases + VRG; 20 bank seeds, each pick against a 2048–4096-sample bank's):
at d = 16, banks of 4 / 8 / 16 / 32 / 64 samples agreed 16 / 18 / 19 / 20 / 20 times on EPS (a wrong pick at most 9 %
worse) and 20 times at every size on flow; at d = 1024 (EPS), banks of 8 / 32 / 64 agreed 16 / 20 / 20 times (a wrong
pick up to 35 % worse at 8). A larger latent does not make a small bank safe: :data:`DEFAULT_BANK` is 32.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .core import Denoiser, check_sigmas, noise_to
from .inversion import ddim
from .vrg import ErrorProfile, optimize_sigmas

Sampler = Callable[[Denoiser, Tensor, Tensor], Tensor]
"""``(denoiser, x, sigmas) -> x``: a deterministic sampler walking ``x`` from ``sigmas[0]`` to ``sigmas[-1]``."""

VRG_SUFFIX = "+vrg"
DEFAULT_BANK = 32
"""Noise samples the search measures on by default: the smallest bank whose pick agreed 20 of 20 times (module doc)."""
FINE_FACTOR = 8
"""The fine solve takes this many times the candidates' steps (at least :data:`FINE_MIN` steps)."""
FINE_MIN = 64
KARRAS_RHO = 7.0


@dataclass(frozen=True)
class ScheduleChoice:
    """The search's result: the chosen candidate's ``name`` and ``sigmas``, every candidate's measured ``errors``
    (name → mean squared distance to the fine solve), the ``model_calls`` (denoiser calls) the search took, and every
    measured schedule by name (``candidates``, VRG variants included)."""

    name: str
    sigmas: Tensor
    errors: dict[str, float]
    model_calls: int = 0
    candidates: dict[str, Tensor] = field(default_factory=dict)

    def record(self, sampler: str, bank: int) -> dict:
        """The JSON entry an :class:`ErrorProfile` stores under its step count (``ErrorProfile.schedules``)."""
        return {"name": self.name, "sigmas": self.sigmas.double().tolist(), "errors": dict(self.errors),
                "candidates": {k: v.double().tolist() for k, v in self.candidates.items()}, "sampler": sampler,
                "bank": bank}


def euler(flow: bool) -> Sampler:
    """ComfyUI's ``euler`` (≡ deterministic DDIM, :func:`samplers.inversion.ddim`) as a :data:`Sampler`."""
    return lambda denoiser, x, sigmas: ddim(denoiser, x, sigmas, flow)


def fine_schedule(top: float, low: float, steps: int, flow: bool) -> Tensor:
    """``steps`` model-call levels from ``top`` down to ``low``, then 0, float64: Karras ρ = 7 (Karras et al. 2022,
    eq. 5) for VE σ, uniform in s for flow (the spacing each parametrisation's ODE is smoothest in)."""
    if not 0 < low < top or steps < 2:
        raise ValueError(f"fine_schedule: need 0 < low < top and steps >= 2, got {low}, {top}, {steps}.")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    if flow:
        levels = top + ramp * (low - top)
    else:
        levels = (top ** (1 / KARRAS_RHO) + ramp * (low ** (1 / KARRAS_RHO) - top ** (1 / KARRAS_RHO))) ** KARRAS_RHO
    return torch.cat([levels, levels.new_zeros(1)])


def with_vrg(candidates: Mapping[str, Tensor], profile: ErrorProfile, **vrg_options) -> dict[str, Tensor]:
    """The candidates, then each one's VRG variant ``"<name>+vrg"`` (:func:`samplers.vrg.optimize_sigmas`)."""
    return {**candidates, **{name + VRG_SUFFIX: optimize_sigmas(sigmas, profile, **vrg_options)
                             for name, sigmas in candidates.items()}}


def _check_candidates(candidates: Mapping[str, Tensor]) -> int:
    """Every candidate a descending SIGMAS ending at 0, all of one length; returns the step count."""
    if not candidates:
        raise ValueError("choose_schedule: 'candidates' is empty; give at least one schedule.")
    lengths = {len(sigmas) for sigmas in candidates.values()}
    if len(lengths) != 1:
        raise ValueError(f"choose_schedule: candidates have lengths {sorted(lengths)}; give them all the same steps.")
    for name, sigmas in candidates.items():
        check_sigmas(sigmas, "choose_schedule", f"candidates[{name!r}]")
        if sigmas[-1] != 0:
            raise ValueError(f"choose_schedule: candidate {name!r} ends at {float(sigmas[-1])}, not 0; give full schedules.")
    return lengths.pop() - 1


def _counted(denoiser: Denoiser, calls: list[int]) -> Denoiser:
    def counting(x: Tensor, sigma: Tensor) -> Tensor:
        calls[0] += 1
        return denoiser(x, sigma)

    return counting


def schedule_errors(denoiser: Denoiser, noise: Tensor, candidates: Mapping[str, Tensor], flow: bool,
                    sampler: Sampler, fine_steps: int, batch_size: int,
                    callback: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """Each candidate's mean squared distance to the fine solve (:func:`fine_schedule`, ``fine_steps``, the same
    ``sampler``) from the highest σ_0, each candidate run from its own ``σ_0·noise``, over ``batch_size`` noise
    samples at a time. ``callback(done, total)`` runs after each sampler run."""
    low = min(float(sigmas[-2]) for sigmas in candidates.values())
    top = max(float(sigmas[0]) for sigmas in candidates.values())
    chunks = range(0, len(noise), batch_size)
    total, done = len(chunks) * (1 + len(candidates)), 0
    sums = dict.fromkeys(candidates, 0.0)
    runs = [("fine", fine_schedule(top, low, fine_steps, flow)), *candidates.items()]
    for start in chunks:
        part, fine = noise[start:start + batch_size], None
        for name, sigmas in runs:
            x = sampler(denoiser, noise_to(torch.zeros_like(part), part, sigmas[0], flow), sigmas.to(part.device))
            if fine is None:
                fine = x.double()
            else:
                sums[name] += float((x.double() - fine).square().sum())
            done += 1
            if callback is not None:
                callback(done, total)
    return {name: value / noise.numel() for name, value in sums.items()}


def choose_schedule(denoiser: Denoiser, noise: Tensor, candidates: Mapping[str, Tensor], flow: bool,
                    profile: ErrorProfile | None = None, sampler: Sampler | None = None, fine_steps: int | None = None,
                    batch_size: int | None = None, callback: Callable[[int, int], None] | None = None,
                    **vrg_options) -> ScheduleChoice:
    """The candidate schedule with the lowest measured error on ``denoiser`` (module doc).

    ``denoiser``: ``D(x, σ) -> x̂0``; ``noise``: standard normal ``[B, ...]``; ``candidates``: name → descending SIGMAS
    ending at 0, all of one length; ``flow``: the parametrisation; ``profile``: VRG's error profile, which adds each
    candidate's VRG variant ``"<name>+vrg"`` (``vrg_options`` go to ``optimize_sigmas``); ``sampler``: Euler by default;
    ``fine_steps``: the fine solve's steps (default :data:`FINE_FACTOR` × the candidates', at least :data:`FINE_MIN`);
    ``batch_size``: noise samples per run (default all); ``callback(done, total)`` after each sampler run.
    """
    steps = _check_candidates(candidates)
    if noise.ndim < 1 or len(noise) == 0:
        raise ValueError(f"choose_schedule: 'noise' is empty (shape {tuple(noise.shape)}); give at least one sample.")
    named = with_vrg(candidates, profile, **vrg_options) if profile is not None else dict(candidates)
    calls = [0]
    errors = schedule_errors(_counted(denoiser, calls), noise, named, flow, sampler or euler(flow),
                             fine_steps or max(FINE_MIN, FINE_FACTOR * steps), batch_size or len(noise), callback)
    best = min(errors, key=errors.__getitem__)  # the first of equals: a base before its VRG variant
    return ScheduleChoice(best, named[best], errors, calls[0], named)


def stored_schedule(profile: ErrorProfile, steps: int) -> tuple[str, Tensor] | None:
    """The name and SIGMAS (float32, as ComfyUI's) the search stored with ``profile`` for ``steps`` steps, if any."""
    entry = profile.schedules.get(str(steps))
    return None if entry is None else (entry["name"], torch.tensor(entry["sigmas"], dtype=torch.float32))


def stored_base(profile: ErrorProfile, steps: int) -> str | None:
    """The base (the pick without its VRG suffix) stored for the step count nearest ``steps``, if any."""
    if not profile.schedules:
        return None
    nearest = min(profile.schedules, key=lambda k: (abs(int(k) - steps), int(k)))
    return profile.schedules[nearest]["name"].removesuffix(VRG_SUFFIX)


def measured_vrg(sigmas: Tensor, profile: ErrorProfile, **vrg_options) -> tuple[Tensor, str]:
    """VRG on ``sigmas`` (:func:`samplers.vrg.optimize_sigmas`), unless the search stored with ``profile`` measured VRG
    on this very schedule (same steps, levels equal to float32 precision) worse than the schedule itself: then
    ``sigmas`` back. Also returns a line saying which, measured or predicted by the CPE."""
    entry = profile.schedules.get(str(len(sigmas) - 1), {})
    for name, levels in entry.get("candidates", {}).items():
        measured = name + VRG_SUFFIX in entry["errors"] and len(levels) == len(sigmas)
        if measured and torch.allclose(torch.tensor(levels, dtype=torch.float64), sigmas.double().cpu(), rtol=1e-6):
            base, vrg = entry["errors"][name], entry["errors"][name + VRG_SUFFIX]
            if vrg > base:
                return sigmas.clone(), f"measured: VRG {vrg / base:.3f}x the error of {name}, so {name} is kept"
            return optimize_sigmas(sigmas, profile, **vrg_options), f"measured: VRG {vrg / base:.3f}x the error of {name}"
    return optimize_sigmas(sigmas, profile, **vrg_options), "CPE prediction, not measured (no search for this schedule)"

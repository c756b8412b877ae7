"""Noise Awareness Guidance (docs/methods.md#noise-awareness-guidance) on the analytic testbed
(docs/evaluation.md#testbed-1-analytic-mixture): noise shift and sample quality against plain CFG at equal steps and at equal
model cost.

Class-conditional sampling (class 1 of the d = 16 mixture) with CFG, 10-step DDIM/Euler (Karras for EPS, uniform s for
flow), from the same starting noise for every variant. Two imperfect models, each as a cond/uncond pair:

* ``miscalibrated``: the exact denoisers believing a noise level 30 % too low (``gmm.miscalibrated``, κ = -0.3): they
  under-denoise, the direct noise-shift case. Reference: the exact guided ODE, 400 steps, same noise.
* ``mlp``: the small trained MLP (natural errors). Reference: the MLP's own guided ODE, 400 steps (as bench/vrg.py).

Variants: ``cfg`` (plain), ``nag_fixed`` (w = 0.5, δ = 0.15), ``nag_adaptive`` (w = 0.5, δ = 0, the model's measured VRG
profile), both in the later part of sampling (VE σ ≤ 1, flow s ≤ 0.5), and ``cfg_nfe`` (plain CFG with more steps, the
same network evaluations per sample as ``nag_fixed``: a CFG step costs 2, a guided step 3). Metrics, mean ± std over
seeds: ``shift``, the RMS noise level the state shows over the scheduled one, averaged over the last 4 model calls and
measured with the exact conditional denoiser and its exact profile (``samplers.nag.estimate_sigma``; ``shift_exact`` is
the same for the exact model's own run, the floor); ``err``, per-dim MSE to the reference from the same noise; ``sw2``,
sliced W2 to the reference samples; ``evals``, network evaluations per sample.

``--estimator`` (:func:`run_estimator`): classifier-based guidance with the exact noise posterior (``gmm.NoisePosterior``,
the oracle estimator) against plain CFG, the nodes' default and the adaptive mode, on models reading σ as (1+κ)σ,
κ ∈ {0, -0.1, -0.2, -0.3}, at cfg 1 and 3, d = 1024 and 16, 500 draws × 3 seeds. Error to a fine exact solve through the
same levels (40 substeps each) from the same noise, as a ratio to plain CFG on the same seed; the shift as σ̂/σ (σ̂ the
posterior's RMS level) at the first level a guided step has moved, with the fine solve's own value as the target (the
posterior reads true states low there, below the data's scale). ``--flow``: the flow family, at d = 1024 only (at d = 16
a flow state's level is ambiguous, its variance ``(1-s)²·s_d² + s²`` not being monotone in s, and σ̂ is unreadable).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
from torch import Tensor

from samplers import core
from samplers.inversion import ddim
from samplers.nag import LevelLogPosterior, estimate_sigma, in_window, nag_guided, noise_level_gradient
from samplers.noise_estimator import train_noise_estimator
from samplers.vrg import ErrorProfile, default_sigma_grid, measure_error_profile

from .kit import Counted, markdown_table, schedule
from .testbeds import gmm
from .vrg import sliced_w2

F64 = torch.float64
CLASS = 1


@dataclass(frozen=True)
class Setting:
    samples: int = 1000
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 10
    ref_steps: int = 400
    scales: tuple[float, ...] = (1.0, 3.0)
    kappa: float = -0.3
    strength: float = 0.5
    delta: float = 0.15
    mlp_steps: int = 600
    last_calls: int = 4


QUICK = Setting()


def window(flow: bool) -> tuple[float, float]:
    """The later part of sampling: VE σ ≤ 1 (about the data's scale), flow s ≤ 0.5 (the same VE level)."""
    return (0.0, 0.5) if flow else (0.0, 1.0)


def profile_of(denoiser: core.Denoiser, mixture: gmm.GaussianMixture, flow: bool, seed: int = 100) -> ErrorProfile:
    g = torch.Generator().manual_seed(seed)
    grid = default_sigma_grid(1e-3, 1.0, 64, flow=True) if flow else default_sigma_grid(0.002, 80.0, 64)
    return measure_error_profile(denoiser, mixture.sample(2048, g, CLASS), grid, g, flow=flow)


def shift(states: list, meter: core.Denoiser, profile: ErrorProfile, last: int) -> float:
    """Mean over the last ``last`` pair calls of (RMS estimated VE level) / (scheduled VE level)."""
    ratios = []
    for x, sigma in states[-last:]:
        estimate = core.ve_sigma(estimate_sigma(x, meter(x, sigma), sigma, profile), profile.flow)
        ratios.append(estimate.square().mean().sqrt().item() / core.ve_sigma(sigma[0], profile.flow).item())
    return sum(ratios) / len(ratios)


def sample(model: Counted, start: Tensor, steps: int, scale: float, flow: bool, guidance: dict | None) -> Tensor:
    denoiser = (core.guided(model.pair, scale) if guidance is None
                else nag_guided(model.pair, model.cond, scale, **guidance, flow=flow, window=window(flow)))
    return ddim(denoiser, start, schedule(steps, flow), flow)


def models(mixture: gmm.GaussianMixture, flow: bool, setting: Setting) -> dict[str, tuple[core.PairDenoiser, core.Denoiser]]:
    """Each imperfect model as (pair, its conditional half)."""
    exact_pair = mixture.pair_denoiser(CLASS, flow)
    net = gmm.train_mlp_denoiser(mixture, flow=flow, steps=setting.mlp_steps, batch=256, seed=0)
    return {"miscalibrated": (gmm.miscalibrated(exact_pair, setting.kappa, flow),
                              gmm.miscalibrated(mixture.denoiser(CLASS, flow), setting.kappa, flow)),
            "mlp": (net.pair_denoiser(CLASS), net.denoiser(CLASS))}


def _case(name: str, pair: core.PairDenoiser, cond: core.Denoiser, mixture: gmm.GaussianMixture, flow: bool, scale: float,
          seed: int, setting: Setting, meter_profile: ErrorProfile) -> list[dict]:
    noise = torch.randn(setting.samples, mixture.dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
    start = core.noise_to(torch.zeros_like(noise), noise, schedule(setting.steps, flow)[0], flow)
    exact = mixture.denoiser(CLASS, flow)
    reference_pair = mixture.pair_denoiser(CLASS, flow) if name == "miscalibrated" else pair
    reference = sample(Counted(reference_pair, cond), start, setting.ref_steps, scale, flow, None)
    floor = Counted(mixture.pair_denoiser(CLASS, flow), exact)
    sample(floor, start, setting.steps, scale, flow, None)
    shift_exact = shift(floor.states, exact, meter_profile, setting.last_calls)
    profile = profile_of(cond, mixture, flow)
    guided = {"nag_fixed": dict(strength=setting.strength, mode="fixed", delta=setting.delta),
              "nag_adaptive": dict(strength=setting.strength, mode="adaptive", delta=0.0, profile=profile)}
    rows, budget = [], None
    for variant, guidance, steps in [("cfg", None, setting.steps), *[(k, v, setting.steps) for k, v in guided.items()],
                                     ("cfg_nfe", None, None)]:
        steps = steps or math.ceil(budget / 2)
        model = Counted(pair, cond)
        x = sample(model, start, steps, scale, flow, guidance)
        if variant == "nag_fixed":
            budget = model.evals
        rows.append({"variant": variant, "steps": steps, "evals": float(model.evals),
                     "shift": shift(model.states, exact, meter_profile, setting.last_calls), "shift_exact": shift_exact,
                     "err": (x - reference).square().mean().item(), "sw2": sliced_w2(x, reference)})
    return rows


def run(setting: Setting = QUICK) -> list[dict]:
    """Per family, model and cfg scale: each variant's metrics, mean ± std over seeds, and the ratio to plain CFG."""
    mixture, out = gmm.make_mixture(dim=16, n_classes=3, components_per_class=2, seed=0), []
    for flow in (False, True):
        meter_profile = profile_of(mixture.denoiser(CLASS, flow), mixture, flow)
        for name, (pair, cond) in models(mixture, flow, setting).items():
            for scale in setting.scales:
                per_seed = [_case(name, pair, cond, mixture, flow, scale, seed, setting, meter_profile)
                            for seed in setting.seeds]
                out += _aggregate(per_seed, {"family": "flow" if flow else "eps", "model": name, "cfg": scale})
    return out


def _aggregate(per_seed: list[list[dict]], keys: dict) -> list[dict]:
    rows = []
    for k, first in enumerate(per_seed[0]):
        row = {**keys, "variant": first["variant"], "steps": first["steps"], "evals": first["evals"]}
        for metric in ("shift", "shift_exact", "err", "sw2"):
            values = torch.tensor([seed_rows[k][metric] for seed_rows in per_seed], dtype=F64)
            row[metric], row[metric + "_std"] = values.mean().item(), values.std().item()
        rows.append(row)
    for row in rows[1:]:
        row["err_ratio"], row["sw2_ratio"] = row["err"] / rows[0]["err"], row["sw2"] / rows[0]["sw2"]
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Classifier-based guidance with the exact noise posterior (the oracle estimator), and the defaults that never harm


@dataclass(frozen=True)
class EstimatorSetting:
    """The κ × cfg × mode grid: miscalibrated cond/uncond pairs (κ = 0 is the exact model) on the mixture at each dim."""

    dims: tuple[int, ...] = (1024, 16)
    samples: int = 500
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 10
    substeps: int = 40
    scales: tuple[float, ...] = (1.0, 3.0)
    kappas: tuple[float, ...] = (0.0, -0.1, -0.2, -0.3)
    strengths: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.0)
    learned_strengths: tuple[float, ...] = (0.1, 1.0)
    learned_iterations: int = 1500
    flow: bool = False


ESTIMATOR = EstimatorSetting()
GAP_LADDER = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def fine_schedule(sigmas: Tensor, substeps: int, flow: bool) -> Tensor:
    """A fine solve through every level of ``sigmas``: each interval in ``substeps`` steps, log-spaced in VE (the last one
    to 1e-4 before 0), uniform in s for flow. The reference's states at the coarse levels are read on the way."""
    if flow:
        parts = [torch.linspace(a, b, substeps + 1, dtype=F64)[:-1] for a, b in zip(sigmas[:-1], sigmas[1:])]
        return torch.cat([*parts, sigmas.new_zeros(1)])
    ends = torch.cat([sigmas[sigmas > 0], sigmas.new_tensor([1e-4])]).log()
    parts = [torch.linspace(a, b, substeps + 1, dtype=F64)[:-1].exp() for a, b in zip(ends[:-1], ends[1:])]
    return torch.cat([*parts, sigmas.new_tensor([1e-4, 0.0])])


def gap_closing(pair: core.PairDenoiser, scale: float, estimator: LevelLogPosterior, window: tuple[float, float],
                flow: bool = False) -> core.Denoiser:
    """The other step rule, for comparison (bench only): per sample, the step ``t·σ²/a·∇ₓ log p(σ|x)`` whose end point the
    estimator reads as most likely at the scheduled σ (``t`` the best of :data:`GAP_LADDER`, one batched estimator call),
    added to the CFG prediction: the move that closes the measured gap σ̂ → σ, whatever its size."""
    ladder = torch.tensor(GAP_LADDER, dtype=F64)

    def denoiser(x: Tensor, sigma: Tensor) -> Tensor:
        denoised = core.cfg_mix(*pair(x, sigma), scale)
        if not in_window(sigma, window, flow):
            return denoised
        move = core.append_dims(sigma**2 / core.alpha(sigma, flow), x.ndim) * noise_level_gradient(estimator, x, sigma)
        ends = x + ladder.to(x).reshape(-1, *[1] * x.ndim) * move
        with torch.no_grad():
            log_p = estimator(ends.flatten(0, 1), sigma.repeat(len(ladder))).reshape(len(ladder), -1)
        return denoised + core.append_dims(ladder.to(x)[log_p.argmax(0)], x.ndim) * move

    return denoiser


def _traced(denoiser: core.Denoiser, levels: Tensor, states: dict) -> core.Denoiser:
    """``denoiser``, keeping the state of each call at one of ``levels`` (``states[index of the level] = x``)."""

    def traced(x: Tensor, sigma: Tensor) -> Tensor:
        hit = (levels - sigma[0]).abs() < 1e-12
        if hit.any():
            states[int(hit.nonzero()[0])] = x
        return denoiser(x, sigma)

    return traced


def probe_index(steps: int, flow: bool) -> int:
    """The level after the window's first one in :func:`schedule`: the first state that a guided step has moved."""
    return int((schedule(steps, flow) <= window(flow)[1]).nonzero()[0]) + 1


def miscalibrated_model(mixture: gmm.GaussianMixture, kappa: float, flow: bool) -> tuple[core.PairDenoiser, core.Denoiser]:
    """The exact cond/uncond pair reading σ as (1+κ)σ (κ = 0: the exact model) and its conditional half."""
    pair, cond = mixture.pair_denoiser(CLASS, flow), mixture.denoiser(CLASS, flow)
    return (gmm.miscalibrated(pair, kappa, flow), gmm.miscalibrated(cond, kappa, flow)) if kappa else (pair, cond)


def learned_estimator(mixture: gmm.GaussianMixture, flow: bool, iterations: int, seed: int = 0) -> LevelLogPosterior:
    """The pack's learned estimator (``samplers.noise_estimator``, as the training node fits it) on 4096 unlabelled
    mixture draws shaped as ``[4, h, h]`` latents (d = 4·h²), over the oracle's range (VE σ 0.002–80)."""
    side = math.isqrt(mixture.dim // 4)
    shape = (4, side, side)
    x0 = mixture.sample(4096, torch.Generator().manual_seed(seed)).float().reshape(-1, *shape)
    sigma_range = (0.002 / 1.002, 80.0 / 81.0) if flow else (0.002, 80.0)
    estimator = train_noise_estimator(x0, sigma_range, flow, iterations, seed=seed)[0]
    return lambda x, sigma: estimator(x.reshape(-1, *shape), sigma).to(x.dtype)


def estimator_variants(pair: core.PairDenoiser, cond: core.Denoiser, profile: ErrorProfile, scale: float,
                       estimator: LevelLogPosterior, setting: EstimatorSetting,
                       learned: LevelLogPosterior | None = None) -> dict[str, core.Denoiser]:
    """Plain CFG, the nodes' default (fixed mode, w 0.5, δ 0.15) and the fixed mode at w 0.1, the adaptive mode at δ 0.15
    (the nodes' default δ) and at 0, classifier-based guidance at each fixed w with the oracle and with the ``learned``
    estimator, and the gap-closing rule; all in the window of :func:`window`."""
    flow, win = setting.flow, window(setting.flow)
    options = dict(flow=flow, window=win)
    variants = {"plain": core.guided(pair, scale),
                "fixed w 0.5 δ 0.15 (node default)": nag_guided(pair, cond, scale, 0.5, mode="fixed", delta=0.15, **options),
                "fixed w 0.1 δ 0.15": nag_guided(pair, cond, scale, 0.1, mode="fixed", delta=0.15, **options)}
    for delta in (0.15, 0.0):
        variants[f"adaptive w 0.5 δ {delta:g}"] = nag_guided(pair, cond, scale, 0.5, mode="adaptive", delta=delta,
                                                             profile=profile, **options)
    for w in setting.strengths:
        variants[f"estimator w {w:g}"] = nag_guided(pair, cond, scale, w, mode="estimator", estimator=estimator, **options)
    for w in setting.learned_strengths if learned is not None else ():
        variants[f"learned estimator w {w:g}"] = nag_guided(pair, cond, scale, w, mode="estimator", estimator=learned,
                                                            **options)
    variants["estimator, gap-closing"] = gap_closing(pair, scale, estimator, win, flow)
    return variants


def _estimator_case(mixture: gmm.GaussianMixture, model: tuple, scale: float, seed: int, posterior: gmm.NoisePosterior,
                    setting: EstimatorSetting, learned: LevelLogPosterior) -> dict[str, tuple[float, float]]:
    """Per variant: (per-dim MSE to the fine exact solve from the same noise, σ̂/σ at :func:`probe_index`);
    ``"reference"``: the fine solve's own σ̂/σ there."""
    flow, sigmas, probe = setting.flow, schedule(setting.steps, setting.flow), probe_index(setting.steps, setting.flow)
    noise = torch.randn(setting.samples, mixture.dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
    start = core.noise_to(torch.zeros_like(noise), noise, sigmas[0], flow)

    def shift_at(states: dict) -> float:
        sigma_hat = core.ve_sigma(posterior.estimate(states[probe]), flow)
        return (sigma_hat.square().mean().sqrt() / core.ve_sigma(sigmas[probe], flow)).item()

    states: dict = {}
    reference = ddim(_traced(core.guided(mixture.pair_denoiser(CLASS, flow), scale), sigmas, states), start,
                     fine_schedule(sigmas, setting.substeps, flow), flow)
    out = {"reference": (0.0, shift_at(states))}
    for name, denoiser in estimator_variants(*model, scale, posterior, setting, learned).items():
        states = {}
        x = ddim(_traced(denoiser, sigmas, states), start, sigmas, flow)
        out[name] = ((x - reference).square().mean().item(), shift_at(states))
    return out


def _pm(values: Tensor) -> str:
    return f"{values.mean().item():.3f} ± {values.std().item():.3f}"


def run_estimator(setting: EstimatorSetting = ESTIMATOR) -> list[dict]:
    """The κ × cfg × mode table: per dim, cfg and model, each variant's error as a ratio to plain CFG on the same seed, and
    the state's σ̂/σ at the probe level (plain: the gap before guidance; the fine exact solve's own value: the target),
    mean ± std over seeds. σ̂ is the exact posterior's RMS level (``gmm.NoisePosterior.estimate``); the guidance uses the
    same exact posterior, of the marginal (what an estimator trained on unlabelled latents learns), and the pack's
    learned estimator (:func:`learned_estimator`)."""
    rows, probe = [], schedule(setting.steps, setting.flow)[probe_index(setting.steps, setting.flow)]
    for dim in setting.dims:
        mixture = gmm.make_mixture(dim=dim, n_classes=3, components_per_class=2, seed=0)
        posterior = gmm.NoisePosterior(mixture, flow=setting.flow)
        learned = learned_estimator(mixture, setting.flow, setting.learned_iterations)
        for kappa in setting.kappas:
            pair, cond = miscalibrated_model(mixture, kappa, setting.flow)
            model = (pair, cond, profile_of(cond, mixture, setting.flow))
            for scale in setting.scales:
                per_seed = [_estimator_case(mixture, model, scale, seed, posterior, setting, learned) for seed in setting.seeds]
                err, gap = ({k: torch.tensor([case[k][i] for case in per_seed], dtype=F64) for k in per_seed[0]}
                            for i in (0, 1))
                name_of_model = "exact" if kappa == 0 else f"reads σ as {1 + kappa:g}σ"
                rows += [{"d": dim, "cfg": scale, "model": name_of_model, "variant": name,
                          "error / plain": _pm(err[name] / err["plain"]), f"σ̂/σ at σ {float(probe):.2f}": _pm(gap[name]),
                          "fine solve's σ̂/σ": _pm(gap["reference"])} for name in per_seed[0] if name != "reference"]
    return rows


if __name__ == "__main__":
    if "--estimator" in sys.argv:
        flow = "--flow" in sys.argv
        print(markdown_table(run_estimator(EstimatorSetting(dims=(1024,), flow=True) if flow else ESTIMATOR)))
    else:
        print(markdown_table(run()))

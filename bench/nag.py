"""Noise Awareness Guidance (METHODS.md "NAG") on the analytic testbed (EVAL.md, Testbed 1): noise shift and sample quality
against plain CFG at equal steps and at equal model cost.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from samplers import core
from samplers.inversion import ddim
from samplers.nag import estimate_sigma, nag_guided
from samplers.vrg import ErrorProfile, default_sigma_grid, measure_error_profile

from .inversion import karras
from .testbeds import gmm
from .vrg import markdown_table, sliced_w2

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


def schedule(steps: int, flow: bool) -> Tensor:
    return torch.linspace(1.0, 0.0, steps + 1, dtype=F64) if flow else karras(steps)


def window(flow: bool) -> tuple[float, float]:
    """The later part of sampling: VE σ ≤ 1 (about the data's scale), flow s ≤ 0.5 (the same VE level)."""
    return (0.0, 0.5) if flow else (0.0, 1.0)


def profile_of(denoiser: core.Denoiser, mixture: gmm.GaussianMixture, flow: bool, seed: int = 100) -> ErrorProfile:
    g = torch.Generator().manual_seed(seed)
    grid = default_sigma_grid(1e-3, 1.0, 64, flow=True) if flow else default_sigma_grid(0.002, 80.0, 64)
    return measure_error_profile(denoiser, mixture.sample(2048, g, CLASS), grid, g, flow=flow)


class Counted:
    """A pair denoiser and its conditional half that count network evaluations per sample (cond and uncond: 1 each) and
    record the state and level of every pair call."""

    def __init__(self, pair: core.PairDenoiser, cond: core.Denoiser):
        self.pair_model, self.cond_model, self.evals, self.states = pair, cond, 0, []

    def pair(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        self.evals += 2
        self.states.append((x, sigma))
        return self.pair_model(x, sigma)

    def cond(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.evals += 1
        return self.cond_model(x, sigma)


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


if __name__ == "__main__":
    print(markdown_table(run()))

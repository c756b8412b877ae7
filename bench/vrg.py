"""VRG (docs/methods.md#vrg) on the analytic testbed (docs/evaluation.md#testbed-1-analytic-mixture): profile check, CPE
before/after, sample quality.

Three tables, each a list of dicts:

* :func:`profile_check_rows`: ``measure_error_profile`` of an imperfect denoiser against the same denoiser's x0-MSE
  measured independently (fresh x0, fresh noise, another seed) at a few grid levels, with the ratio's standard error.
* :func:`cpe_rows`: the cumulative prediction error of base schedules (VE: karras, SD1.5 "normal"; flow: uniform,
  shift 3) at 10 and 20 steps, before and after ``optimize_sigmas`` with the imperfect denoiser's measured profile.
* :func:`sample_rows`: DDIM from the same starting noise with the base and the VRG schedule (same NFE), for the trained
  MLP and for the exact denoiser plus independent zero-mean error of a chosen profile (the error model VRG assumes).
  Metrics: exact NLL of samples (reported, not headlined: docs/evaluation.md#metrics), per-dim MSE to a high-accuracy solution of
  the same ODE from the same noise with the same (error-free) denoiser ("err"), the same for the error-free denoiser on the same
  schedule ("disc": the discretisation part; err - disc is the part VRG's model describes), and sliced W2 to true
  samples; mean ± std over seeds.

``QUICK`` (the default) runs in well under a minute of CPU; ``FULL`` is the reported setting.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from samplers import core
from samplers.inversion import ddim
from samplers.vrg import ErrorProfile, cumulative_error, default_sigma_grid, measure_error_profile, optimize_sigmas

from . import peers
from .kit import karras, markdown_table
from .testbeds import gmm

F64 = torch.float64
STEP_COUNTS = (10, 20)
BASES = {False: ("karras", "normal"), True: ("uniform", "shift3")}
# ComfyUI's other schedulers on SD1.5's σ table; CPE only (the sample table keeps to BASES).
CPE_BASES = {False: ("karras", "normal", "exponential", "sgm_uniform", "beta", "ays"), True: ("uniform", "shift3")}
"""Base schedules per parametrisation (key: flow)."""


@dataclass(frozen=True)
class Setting:
    """Sizes of one run of the bench."""

    mlp_steps: int = 600
    mlp_batch: int = 256
    profile_samples: int = 2048
    grid_points: int = 64
    samples: int = 2000
    seeds: tuple[int, ...] = (0, 1, 2)
    ref_steps: int = 300
    projections: int = 128


QUICK = Setting()
FULL = Setting(mlp_steps=1500, mlp_batch=512, profile_samples=8192, grid_points=96, samples=4000, seeds=(0, 1, 2, 3, 4),
               ref_steps=500)


def make_mixture() -> gmm.GaussianMixture:
    """The testbed's mixture: d = 16, 3 classes × 2 components, seed 0 (sampled unconditionally here)."""
    return gmm.make_mixture(dim=16, n_classes=3, components_per_class=2, seed=0)


# ---------------------------------------------------------------------------------------------------------------------
# Schedules


def base_schedule(name: str, steps: int) -> Tensor:
    """A base schedule by name: ComfyUI's "karras", "normal", "sgm_uniform", "beta", "exponential" and "ays" on SD1.5's
    σ table (``bench.peers``, the one copy of those recipes) or "uniform", "shift3" (flow s, ``s' = 3s/(1+2s)``)."""
    sd15 = peers.discrete_sigmas()
    if name == "karras":
        return karras(steps)
    if name in ("normal", "sgm_uniform"):
        return peers.normal_schedule(sd15, steps, sgm=name == "sgm_uniform")
    if name == "beta":
        return peers.beta_schedule(sd15, steps)
    if name == "ays":
        return peers.align_your_steps("SD1", steps)
    if name == "exponential":
        low, high = np.log(peers.SD1_SIGMA_RANGE)
        return torch.cat([torch.linspace(high, low, steps, dtype=F64).exp(), torch.zeros(1, dtype=F64)])
    s = torch.linspace(1.0, 0.0, steps + 1, dtype=F64)
    if name == "uniform":
        return s
    if name == "shift3":
        return 3 * s / (1 + 2 * s)
    raise ValueError(f"unknown base schedule {name!r}")


def reference_schedule(sigma_max: float, steps: int, flow: bool) -> Tensor:
    """A fine schedule for the reference solution: Karras ρ=7 from ``sigma_max`` to 0.002 then 0 (VE), uniform s (flow)."""
    return torch.linspace(sigma_max, 0.0, steps + 1, dtype=F64) if flow else karras(steps, 0.002, sigma_max)


def profile_grid(points: int, flow: bool) -> Tensor:
    """Calibration grid: VE σ log-spaced on [0.002, 80] (EDM's range), flow s on [0.001, 1]."""
    return default_sigma_grid(1e-3, 1.0, points, flow=True) if flow else default_sigma_grid(0.002, 80.0, points)


# ---------------------------------------------------------------------------------------------------------------------
# Denoisers and profiles


def imperfect_denoisers(mixture: gmm.GaussianMixture, flow: bool, setting: Setting) -> dict[str, core.Denoiser]:
    """The imperfect unconditional denoisers: the trained MLP and the exact one plus a smooth :class:`gmm.ErrorField`."""
    net = gmm.train_mlp_denoiser(mixture, flow=flow, steps=setting.mlp_steps, batch=setting.mlp_batch, seed=0)
    field = gmm.ErrorField(mixture.dim, seed=3, amplitude=0.3)
    return {"mlp": net.denoiser(None), "field": field.wrap(mixture.denoiser(None, flow), flow)}


def measured_profile(denoiser: core.Denoiser, mixture: gmm.GaussianMixture, flow: bool, setting: Setting,
                     seed: int = 100) -> ErrorProfile:
    """VRG's calibration of ``denoiser`` on ``profile_samples`` held-out mixture draws (seed ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    x0 = mixture.sample(setting.profile_samples, g)
    return measure_error_profile(denoiser, x0, profile_grid(setting.grid_points, flow), g, flow=flow)


def independent_error(denoiser: core.Denoiser, mixture: gmm.GaussianMixture, sigma: float, flow: bool, n: int,
                      seed: int) -> tuple[float, float]:
    """x0-MSE per dim of ``denoiser`` at one level from fresh draws and fresh noise: (mean, standard error of it)."""
    g = torch.Generator().manual_seed(seed)
    x0 = mixture.sample(n, g)
    level = torch.full((n,), sigma, dtype=F64)
    x = core.noise_to(x0, torch.randn(x0.shape, generator=g, dtype=F64), level, flow)
    per_sample = (denoiser(x, level) - x0).square().mean(-1)
    return per_sample.mean().item(), per_sample.std().item() / math.sqrt(n)


def chosen_profile(flow: bool, amplitude: float = 0.1, knee: float = 0.5, points: int = 64) -> ErrorProfile:
    """A realistic x0-error profile ``mse_x0 = A²·σ²/(σ² + knee²)`` (VE σ): eps-MSE flat ``A²/knee²`` below the knee,
    falling like 1/σ² above it (the shape of :class:`gmm.ErrorField`), on the calibration grid."""
    grid = profile_grid(points, flow)
    ve = core.ve_sigma(grid, flow).clamp_max(1e8)
    return ErrorProfile(grid, amplitude**2 * ve**2 / (ve**2 + knee**2), flow)


def with_random_error(denoiser: core.Denoiser, profile: ErrorProfile, generator: torch.Generator) -> core.Denoiser:
    """``D(x, σ) + √mse_x0(σ)·N(0, I)``, a fresh draw every call: independent zero-mean error, VRG's error model."""

    def noisy(x: Tensor, sigma: Tensor) -> Tensor:
        scale = core.append_dims(profile.mse_x0(sigma).sqrt().to(x), x.ndim)
        return denoiser(x, sigma) + scale * torch.randn(x.shape, generator=generator, dtype=x.dtype)

    return noisy


# ---------------------------------------------------------------------------------------------------------------------
# Metrics


def sliced_w2(a: Tensor, b: Tensor, projections: int = 128, seed: int = 1234) -> float:
    """Sliced Wasserstein-2 between two equal-size point sets: √(mean over fixed random unit directions of W2²)."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(a.shape[1], projections, generator=g, dtype=F64)
    directions /= directions.norm(dim=0, keepdim=True)
    pa, pb = (a.to(F64) @ directions).sort(0).values, (b.to(F64) @ directions).sort(0).values
    return (pa - pb).square().mean().sqrt().item()


def sample_metrics(x: Tensor, reference: Tensor, truth: Tensor, mixture: gmm.GaussianMixture, flow: bool,
                   projections: int) -> dict[str, float]:
    """NLL per dim under the data, per-dim MSE to the reference solution, sliced W2 to true samples."""
    return {"nll": -mixture.log_prob(x, 0.0, flow=flow).mean().item() / mixture.dim,
            "err": (x - reference).square().mean().item(),
            "sw2": sliced_w2(x, truth, projections)}


def _mean_std(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=F64)
    return t.mean().item(), (t.std().item() if len(values) > 1 else 0.0)


# ---------------------------------------------------------------------------------------------------------------------
# Tables


def profile_check_rows(setting: Setting = QUICK, levels: int = 6,
                       denoisers: dict[bool, dict[str, core.Denoiser]] | None = None) -> list[dict]:
    """Measured profile vs independently measured error at ``levels`` grid points, per family and denoiser.

    ``rel_se`` is the standard error of the ratio: both estimates average the same per-sample quantity over the same
    count, so it is ``√2·se/mean`` of the independent one; ``z = (ratio - 1)/rel_se``.
    """
    mixture, rows = make_mixture(), []
    for flow in (False, True):
        models = denoisers[flow] if denoisers is not None else imperfect_denoisers(mixture, flow, setting)
        grid = profile_grid(setting.grid_points, flow)
        picks = torch.linspace(0, len(grid) - 1, levels).round().long().tolist()
        for name, denoiser in models.items():
            profile = measured_profile(denoiser, mixture, flow, setting)
            for i in picks:
                sigma = grid[i].item()
                mean, se = independent_error(denoiser, mixture, sigma, flow, setting.profile_samples, seed=200 + i)
                ratio, rel_se = profile.mse[i].item() / mean, math.sqrt(2) * se / mean
                rows.append({"family": "flow" if flow else "eps", "denoiser": name, "sigma": sigma,
                             "measured": profile.mse[i].item(), "independent": mean, "ratio": ratio, "rel_se": rel_se,
                             "z": (ratio - 1) / rel_se})
    return rows


def cpe_rows(profiles: dict[bool, ErrorProfile], label: str = "mlp") -> list[dict]:
    """CPE of each base schedule at 10 and 20 steps before and after ``optimize_sigmas`` with ``profiles[flow]``."""
    rows = []
    for flow, profile in profiles.items():
        for base in CPE_BASES[flow]:
            for steps in STEP_COUNTS:
                sigmas = base_schedule(base, steps)
                before = cumulative_error(sigmas, profile).item()
                after = cumulative_error(optimize_sigmas(sigmas, profile), profile).item()
                rows.append({"family": "flow" if flow else "eps", "profile": label, "base": base, "steps": steps,
                             "cpe_base": before, "cpe_vrg": after, "ratio": after / before})
    return rows


def _run_case(clean: core.Denoiser, make: Callable[[int], core.Denoiser], profile: ErrorProfile, mixture: gmm.GaussianMixture,
              flow: bool, seed: int, setting: Setting) -> list[dict]:
    """One seed of one denoiser: base vs VRG for every base schedule and step count; ``make(seed)`` gives the sampler's
    denoiser (the same random-error stream for base and VRG)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(setting.samples, mixture.dim, generator=g, dtype=F64)
    truth = mixture.sample(setting.samples, torch.Generator().manual_seed(10_000 + seed))
    rows, references = [], {}
    for base in BASES[flow]:
        top = base_schedule(base, STEP_COUNTS[0])[0]
        start = core.noise_to(torch.zeros_like(noise), noise, top, flow)
        if top.item() not in references:  # flow bases share s = 1
            references[top.item()] = ddim(clean, start, reference_schedule(top.item(), setting.ref_steps, flow), flow)
        reference = references[top.item()]
        rows.append({"base": base, "steps": setting.ref_steps, "variant": "reference", "cpe": float("nan"),
                     **sample_metrics(reference, reference, truth, mixture, flow, setting.projections), "disc": 0.0})
        for steps in STEP_COUNTS:
            sigmas = base_schedule(base, steps)
            for variant, levels in (("base", sigmas), ("vrg", optimize_sigmas(sigmas, profile))):
                sampler_denoiser = make(seed)
                x = ddim(sampler_denoiser, start, levels, flow)
                clean_x = x if sampler_denoiser is clean else ddim(clean, start, levels, flow)
                rows.append({"base": base, "steps": steps, "variant": variant, "cpe": cumulative_error(levels, profile).item(),
                             **sample_metrics(x, reference, truth, mixture, flow, setting.projections),
                             "disc": (clean_x - reference).square().mean().item()})
    return rows


def sample_rows(setting: Setting = QUICK, mlps: dict[bool, core.Denoiser] | None = None,
                mlp_profiles: dict[bool, ErrorProfile] | None = None) -> list[dict]:
    """Sample quality of base vs VRG schedules (mean ± std over seeds, and VRG/base of the means), per family/denoiser.

    Denoisers: "mlp" (the trained net; VRG uses its measured profile; reference: the net itself, 500-step DDIM) and
    "exact+noise" (exact D* plus independent error of :func:`chosen_profile`; VRG uses that profile; reference: D*).
    Also returns the true-vs-true sliced-W2 floor as a "truth" row.
    """
    mixture, out = make_mixture(), []
    for flow in (False, True):
        exact = mixture.denoiser(None, flow)
        mlp = mlps[flow] if mlps is not None else imperfect_denoisers(mixture, flow, setting)["mlp"]
        mlp_profile = mlp_profiles[flow] if mlp_profiles is not None else measured_profile(mlp, mixture, flow, setting)
        chosen = chosen_profile(flow)
        cases = {"mlp": (mlp, lambda s, d=mlp: d, mlp_profile),
                 "exact+noise": (exact, lambda s, c=chosen, e=exact:
                                 with_random_error(e, c, torch.Generator().manual_seed(50 + s)), chosen)}
        for name, (clean, make, profile) in cases.items():
            per_seed = [_run_case(clean, make, profile, mixture, flow, seed, setting) for seed in setting.seeds]
            out += _aggregate(per_seed, "flow" if flow else "eps", name)
        floor = [sliced_w2(mixture.sample(setting.samples, torch.Generator().manual_seed(20_000 + s)),
                           mixture.sample(setting.samples, torch.Generator().manual_seed(10_000 + s)), setting.projections)
                 for s in setting.seeds]
        out.append({"family": "flow" if flow else "eps", "denoiser": "truth", "variant": "true-vs-true",
                    "sw2": _mean_std(floor)[0], "sw2_std": _mean_std(floor)[1],
                    "nll": -mixture.log_prob(mixture.sample(setting.samples, torch.Generator().manual_seed(7)), 0.0)
                    .mean().item() / mixture.dim})
    return out


def _aggregate(per_seed: list[list[dict]], family: str, denoiser: str) -> list[dict]:
    """Mean ± std over seeds per (base, steps, variant), plus ``*_ratio`` = VRG/base of the means on the VRG rows."""
    rows = []
    for k, first in enumerate(per_seed[0]):
        row = {"family": family, "denoiser": denoiser, **{key: first[key] for key in ("base", "steps", "variant")}}
        for metric in ("cpe", "nll", "err", "disc", "sw2"):
            row[metric], row[metric + "_std"] = _mean_std([seed_rows[k][metric] for seed_rows in per_seed])
        rows.append(row)
    for row, previous in zip(rows[1:], rows[:-1]):
        if row["variant"] == "vrg":
            for metric in ("cpe", "err", "disc", "sw2"):
                row[metric + "_ratio"] = row[metric] / previous[metric]
            row["nll_diff"] = row["nll"] - previous["nll"]
    return rows


def run(setting: Setting = QUICK) -> dict[str, list[dict]]:
    """All three tables, training each MLP and measuring each profile once."""
    mixture = make_mixture()
    models = {flow: imperfect_denoisers(mixture, flow, setting) for flow in (False, True)}
    profiles = {flow: measured_profile(models[flow]["mlp"], mixture, flow, setting) for flow in (False, True)}
    return {"profile_check": profile_check_rows(setting, denoisers=models),
            "cpe": cpe_rows(profiles) + cpe_rows({flow: chosen_profile(flow) for flow in (False, True)}, "chosen"),
            "samples": sample_rows(setting, {flow: models[flow]["mlp"] for flow in (False, True)}, profiles)}


if __name__ == "__main__":
    for title, rows in run(FULL if "--full" in sys.argv else QUICK).items():
        print(f"\n### {title}\n\n{markdown_table(rows)}")

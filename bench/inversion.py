"""DDIM-inversion reconstruction error on the analytic testbed (exact denoiser, cfg 1): the baseline's step-count trend."""

from __future__ import annotations

import torch

from samplers import core
from samplers.inversion import ddim, reconstruction_error

from .kit import schedule
from .testbeds import gmm

STEP_COUNTS = (10, 20, 50, 100)


def levels(steps: int, flow: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The ascending levels to invert along for a ``steps``-step :func:`schedule`, and the same levels back down to 0."""
    up = core.inversion_sigmas(schedule(steps, flow), flow=flow)
    return up, torch.cat([up.flip(0)[:-1], up.new_zeros(1)])


def invert_and_reconstruct(denoiser: core.Denoiser, x0: torch.Tensor, steps: int, flow: bool,
                           eval_at: str = "current", denoiser_back: core.Denoiser | None = None) -> torch.Tensor:
    """Invert ``x0`` up the inversion levels of a ``steps``-step schedule, then walk the same levels back down (with
    ``denoiser_back`` if given: e.g. another guidance scale)."""
    up, down = levels(steps, flow)
    return ddim(denoiser_back or denoiser, ddim(denoiser, x0, up, flow, eval_at), down, flow)


def reconstruction_table(samples: int = 256, seed: int = 0) -> list[dict]:
    """Mean reconstruction MSE (± std over samples) per parametrisation, evaluation convention and step count."""
    mixture = gmm.make_mixture(dim=16, n_classes=3, components_per_class=2, seed=seed)
    x0 = mixture.sample(samples, torch.Generator().manual_seed(seed + 1), cls=1)
    rows = []
    for flow in (False, True):
        denoiser = mixture.denoiser(cls=1, flow=flow)
        for eval_at in ("current", "next"):
            for steps in STEP_COUNTS:
                mse = reconstruction_error(x0, invert_and_reconstruct(denoiser, x0, steps, flow, eval_at))
                rows.append({"family": "flow" if flow else "eps", "eval_at": eval_at, "steps": steps,
                             "mse": mse.mean().item(), "std": mse.std().item()})
    return rows

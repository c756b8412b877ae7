"""What every benchmark shares: the test schedules, a model that counts its network evaluations, Markdown tables."""

from __future__ import annotations

import torch
from torch import Tensor

from samplers import core


def karras(steps: int, sigma_min: float = 0.03, sigma_max: float = 14.6, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022 (eq. 5) levels from ``sigma_max`` to ``sigma_min``, then 0, in float64."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def schedule(steps: int, flow: bool) -> torch.Tensor:
    """Descending levels ending in 0: Karras (σ 14.6 → 0.03, ρ 7) for VE, uniform for flow (ComfyUI's defaults' shapes)."""
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64) if flow else karras(steps)


class Counted:
    """A cond/uncond pair (and optionally its conditional half) that counts network evaluations per sample (cond and
    uncond: 1 each) and records the state and level of every pair call."""

    def __init__(self, pair: core.PairDenoiser, cond: core.Denoiser | None = None):
        self.pair_model, self.cond_model, self.evals, self.states = pair, cond, 0, []

    def pair(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        self.evals += 2
        self.states.append((x, sigma))
        return self.pair_model(x, sigma)

    def cond(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.evals += 1
        return self.cond_model(x, sigma)


def markdown_table(rows: list[dict]) -> str:
    """Rows as a Markdown table (floats to 4 significant digits), columns in first-seen order."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return "\n".join(lines + ["| " + " | ".join(cell(row.get(k, "")) for k in keys) + " |" for row in rows])

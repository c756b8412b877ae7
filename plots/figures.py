"""The plots the pack's nodes draw, built from the tensors the nodes measured (no ComfyUI import): each figure says which
data goes on which axis, and ``tests/unit/test_plot.py`` checks what each draws against what it was given."""

from __future__ import annotations

import torch

from .line import UI_KEY, Plot, line_plot


def omega_figure(omega: torch.Tensor, distilled: bool = False) -> Plot:
    """POLARIS ω ``[steps, B]`` against the inversion step, one line per sample (at most four); says so when the model is
    guidance-distilled (ω ≡ 1)."""
    steps = list(range(omega.shape[0]))
    series = {f"sample {b}": (steps, omega[:, b].tolist()) for b in range(min(4, omega.shape[1]))}
    title = (f"guidance-distilled model: omega = 1, plain inversion ({len(steps)} steps)" if distilled else
             f"POLARIS omega per step ({len(steps)} steps, mean {float(omega.mean()):.3g})")
    return line_plot(series, title, "inversion step", "omega", log_y=False)


def noise_shift_figure(scheduled: list[float], plain: list[float], guided: list[float], title: str) -> Plot:
    """The scheduled noise level at every model call against the level the latent showed, plain and guided."""
    return line_plot({"scheduled sigma": (range(len(scheduled)), scheduled),
                      "estimated, plain": (range(len(plain)), plain),
                      "estimated, guided": (range(len(guided)), guided)}, title, "model call", "sigma")


def calibration_figure(sigmas: torch.Tensor, readings: torch.Tensor, error: float) -> Plot:
    """A noise estimator's mean reading ``readings`` at each true level ``sigmas`` against the true level, on log axes
    (x: log10 σ; y: σ on a log axis), over the whole range calibrated."""
    levels = torch.log10(sigmas).tolist()
    return line_plot({"true sigma": (levels, sigmas.tolist()), "estimated sigma": (levels, readings.tolist())},
                     f"Noise estimator: RMS log error {error:.3f} (fresh noise)", "log10 true sigma", "sigma")


def diffier_figures(plain_gap: torch.Tensor, corrected_gap: torch.Tensor, weights: torch.Tensor, cfg: float,
                    iterations: int, damping: float) -> tuple[Plot, Plot, dict]:
    """DiffIER Gap Meter's two plots: the per-step gap (``[steps - 1]`` each, plain CFG and DiffIER) and DiffIER's cfg
    weight per step (``[steps]``) against the flat cfg; and the UI output that shows both on the node."""
    step_axis = list(range(1, len(plain_gap) + 1))
    gap = line_plot({"plain cfg": (step_axis, plain_gap.tolist()), f"DiffIER K={iterations}": (step_axis,
                                                                                                corrected_gap.tolist())},
                    f"Gap per step (x0 drift), cfg {cfg:g}: total {float(plain_gap.sum()):.4g} plain", "step",
                    "mean sq. x0 change")
    steps = range(len(weights))
    weight = line_plot({"cfg": (steps, [cfg] * len(weights)), "DiffIER weight (batch mean)": (steps, weights.tolist())},
                       f"DiffIER cfg weight per step (K={iterations}, damping {damping:g})", "step", "weight",
                       log_y=False)
    return gap, weight, {UI_KEY: gap.ui[UI_KEY] + weight.ui[UI_KEY]}

"""POLARIS against the inversion baselines on the analytic testbed: reconstruction MSE after invert → denoise.

Baselines (docs/evaluation.md#baselines-and-peers, docs/methods.md#polaris), all deterministic DDIM/Euler on the same levels and
the same x0:

* ``standard``: inversion at cfg 1, reconstruction at the user's cfg (the common recipe);
* ``cfg w → w``: both passes at the user's cfg;
* ``cfg 1 → 1``: no guidance at all (reconstructs best, but applies no prompt);
* ``FlipSigmas + euler``: the standard recipe with the model evaluated at the current level, as ComfyUI users run it;
* ``fixed mean ω``: both passes at the mean of POLARIS' own ω per sample: separates "per-step ω" from "less guidance".

Denoisers: the exact class-conditional pair, and the same pair with independent smooth errors on cond and uncond
(``gmm.perturbed_pair``), which CFG amplifies as it does in real models.
"""

from __future__ import annotations

import statistics

import torch

from samplers import core
from samplers.inversion import STANDARD_EVAL_AT, reconstruction_error
from samplers.polaris import polaris_denoise, polaris_invert

from . import kit
from .inversion import invert_and_reconstruct, levels
from .testbeds import digits, gmm
from .testbeds.common import psnr

STEP_COUNTS = (10, 20, 50)
CFG = 5.0
PERTURBATION = 0.05


def polaris_round_trip(pair: core.PairDenoiser, x0: torch.Tensor, steps: int, flow: bool, **options) -> tuple:
    """POLARIS inversion then time-aligned replay; returns the reconstruction and the trace."""
    z, trace = polaris_invert(pair, x0, levels(steps, flow)[0], flow, **options)
    return polaris_denoise(pair, z, trace), trace


def cfg_round_trip(pair: core.PairDenoiser, x0: torch.Tensor, steps: int, flow: bool, invert_cfg, denoise_cfg,
                   eval_at: str | None = None) -> torch.Tensor:
    """DDIM inversion at ``invert_cfg``, reconstruction at ``denoise_cfg`` (floats or per-sample ``[B]`` tensors); the
    model evaluated at ``eval_at``, by default where the papers' standard recipe evaluates it (``STANDARD_EVAL_AT``)."""
    eval_at = eval_at or STANDARD_EVAL_AT[flow]
    return invert_and_reconstruct(core.guided(pair, invert_cfg), x0, steps, flow, eval_at, core.guided(pair, denoise_cfg))


def reconstructions(pair: core.PairDenoiser, x0: torch.Tensor, steps: int, flow: bool, cfg: float = CFG) -> tuple[dict, float]:
    """Every method's reconstruction of ``x0`` (one pair, one step count), and POLARIS' mean ω."""
    polaris, trace = polaris_round_trip(pair, x0, steps, flow)
    mean_omega = trace.omega.mean(0)
    out = {"POLARIS": polaris,
           "POLARIS dynamic": polaris_round_trip(pair, x0, steps, flow, solver="dynamic")[0],
           "POLARIS, eval at next level": polaris_round_trip(pair, x0, steps, flow, eval_at="next")[0],
           f"standard (cfg 1 → {cfg:g})": cfg_round_trip(pair, x0, steps, flow, 1.0, cfg),
           f"FlipSigmas + euler (cfg 1 → {cfg:g})": cfg_round_trip(pair, x0, steps, flow, 1.0, cfg, "current"),
           f"cfg {cfg:g} → {cfg:g}": cfg_round_trip(pair, x0, steps, flow, cfg, cfg),
           "cfg 1 → 1": cfg_round_trip(pair, x0, steps, flow, 1.0, 1.0),
           "fixed mean ω (control)": cfg_round_trip(pair, x0, steps, flow, mean_omega, mean_omega, "current")}
    if flow:
        out["POLARIS eps-space"] = polaris_round_trip(pair, x0, steps, flow, space="eps")[0]
    return out, trace.omega.mean().item()


def method_errors(pair: core.PairDenoiser, x0: torch.Tensor, steps: int, flow: bool, cfg: float = CFG) -> dict:
    """Mean reconstruction MSE of every method, and POLARIS' mean ω."""
    out, mean_omega = reconstructions(pair, x0, steps, flow, cfg)
    return {**{name: reconstruction_error(x0, rec).mean().item() for name, rec in out.items()}, "mean ω": mean_omega}


def reconstruction_rows(seeds: tuple[int, ...] = (0, 1, 2), samples: int = 128, steps: tuple[int, ...] = STEP_COUNTS,
                        cfg: float = CFG) -> list[dict]:
    """One row per (family, denoiser, method, steps): mean and std over seeds (a seed draws the mixture and x0)."""
    runs: dict[tuple, list[float]] = {}
    for seed in seeds:
        mixture = gmm.make_mixture(dim=16, n_classes=3, components_per_class=2, seed=seed)
        x0 = mixture.sample(samples, torch.Generator().manual_seed(seed + 100), cls=1)
        for flow in (False, True):
            exact = mixture.pair_denoiser(1, flow)
            pairs = {"exact": exact, "perturbed": gmm.perturbed_pair(exact, 16, seed, PERTURBATION, flow)}
            for denoiser, pair in pairs.items():
                for n in steps:
                    for method, value in method_errors(pair, x0, n, flow, cfg).items():
                        runs.setdefault(("flow" if flow else "eps", denoiser, method, n), []).append(value)
    return [{"family": family, "denoiser": f"{denoiser} denoiser", "metric": "reconstruction MSE", "method": method,
             "steps": n, "mse": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
             "seeds": len(values)} for (family, denoiser, method, n), values in runs.items()]


def digits_rows(cfg: float = 3.0, steps: tuple[int, ...] = STEP_COUNTS, parts: int = 3) -> list[dict]:
    """Testbed 2: reconstruction PSNR (dB, higher is better) of the held-out digits, each with its own label as the
    prompt, for every method of :func:`method_errors`; mean ± std over ``parts`` disjoint thirds of the held-out split."""
    split = digits.load_digits_split()
    runs: dict[tuple, list[float]] = {}
    for flow in (False, True):
        model = digits.train_or_load_denoiser(flow)
        for part in range(parts):
            x0, labels = (t[part::parts] for t in (split.test_x.double(), split.test_y))
            pair = model.pair_denoiser(labels)
            for n in steps:
                with torch.no_grad():
                    out, mean_omega = reconstructions(pair, x0, n, flow, cfg)
                values = {**{name: psnr(rec, x0).mean().item() for name, rec in out.items()}, "mean ω": mean_omega}
                for method, value in values.items():
                    runs.setdefault(("flow" if flow else "eps", method, n), []).append(value)
    return [{"family": family, "denoiser": "digits model", "metric": "PSNR dB, held-out thirds", "method": method,
             "steps": n, "mse": statistics.mean(values), "std": statistics.stdev(values), "seeds": len(values)}
            for (family, method, n), values in runs.items()]


def reconstruction_table(rows: list[dict]) -> str:
    """Rows of :func:`reconstruction_rows` or :func:`digits_rows` as Markdown: one table per family and denoiser under
    its title, methods down, step counts across, ``mean ± std over seeds`` in each cell (``mean ω`` alone)."""
    steps = sorted({r["steps"] for r in rows})
    blocks = []
    for family, denoiser in dict.fromkeys((r["family"], r["denoiser"]) for r in rows):
        block = [r for r in rows if r["family"] == family and r["denoiser"] == denoiser]
        table = []
        for method in dict.fromkeys(r["method"] for r in block):
            cells = {r["steps"]: r for r in block if r["method"] == method}
            fmt = "{mse:.3g}" if method == "mean ω" else "{mse:.3g} ± {std:.2g}"
            table.append({"method": method} | {f"{n} steps": fmt.format(**cells[n]) for n in steps})
        title = f"**{family}, {denoiser}** ({block[0]['metric']}, mean ± std over {block[0]['seeds']} seeds)"
        blocks.append(f"{title}\n\n{kit.markdown_table(table)}\n")
    return "\n".join(blocks)


if __name__ == "__main__":
    print(reconstruction_table(reconstruction_rows()))
    print(reconstruction_table(digits_rows()))

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


def mixture_rows(samples: int = 256, seed: int = 0) -> list[dict]:
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


def eval_at_rows(patches_per_class: int = 3, digit_parts: int = 3) -> list[dict]:
    """Testbeds 2 and 4 at cfg 1: reconstruction PSNR (dB) of DDIM inversion then denoising, with the model evaluated
    at the current and at the next level (``samplers.inversion``'s ``eval_at``), per family and step count; the
    evidence behind ``EVAL_AT_DEFAULT`` and ``AUTO_EVAL_AT``. ``diff``: current minus next, mean ± standard error over
    the held-out images (testbed 4: ``patches_per_class`` held-out patches a class; testbed 2: the held-out digits, whose
    ``digit_parts`` disjoint parts give the spread)."""
    from .testbeds import common, digits, patches

    rows = []
    split = digits.load_digits_split()
    for flow in (False, True):
        model = digits.train_or_load_denoiser(flow)
        for steps in STEP_COUNTS[:3]:
            parts = {}
            for eval_at in ("current", "next"):
                with torch.no_grad():
                    parts[eval_at] = torch.stack([common.psnr(invert_and_reconstruct(
                        model.denoiser(y), x.double(), steps, flow, eval_at), x.double()).mean() for x, y in (
                        (split.test_x[k::digit_parts], split.test_y[k::digit_parts]) for k in range(digit_parts))])
            rows.append(_eval_at_row("2: digits", flow, steps, parts["current"], parts["next"], len(split.test_y)))
    data = patches.load_patch_data()
    x0, labels = patches.heldout_patches(data, patches_per_class)
    for flow in (False, True):
        model = patches.train_or_load_denoiser(flow, data)
        for steps in STEP_COUNTS[:2]:
            current, following = (patches.reconstruction_psnr(model, x0.double(), labels, steps, 1.0, eval_at)
                                  for eval_at in ("current", "next"))
            rows.append(_eval_at_row("4: photo patches", flow, steps, current, following, len(x0)))
    return rows


def _eval_at_row(testbed: str, flow: bool, steps: int, current: torch.Tensor, following: torch.Tensor, n: int) -> dict:
    """One row of :func:`eval_at_rows`: both means and their paired difference ± its standard error."""
    diff = current - following
    return {"testbed": testbed, "family": "flow" if flow else "eps", "steps": steps, "current": current.mean().item(),
            "next": following.mean().item(), "diff": diff.mean().item(),
            "se": (diff.std() / len(diff) ** 0.5).item(), "images": n}


if __name__ == "__main__":
    for row in eval_at_rows():
        print(f"| {row['testbed']} | {row['family']} | {row['steps']} | {row['current']:.1f} | {row['next']:.1f} | "
              f"{row['diff']:+.1f} ± {row['se']:.1f} | {row['images']} |", flush=True)

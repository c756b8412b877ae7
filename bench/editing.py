"""Editing on testbed 4 (``bench/testbed4.py``): invert a held-out patch of class A with the class-A label, denoise with
class B at the user's cfg, and measure the trade-off every inversion method makes between changing what was asked and
keeping the rest.

Edit success is the patch classifier's accuracy for B (``patches.label_accuracy``); preservation is PSNR (dB) and SSIM
(Wang et al. 2004, "Image quality assessment: from error visibility to structural similarity", eq. 13; scikit-image's
``structural_similarity``, 7×7 window, data range 2) to the source patch. Reconstruction PSNR alone says nothing about
edits: a method that copies its input wins it and never edits.

Every method spends the same model calls a patch (NFE, cond and uncond 1 each; :func:`steps_at`): POLARIS's
``4·steps`` (both branches on the way up and down), the others their own steps at that budget. Methods, each with its
strength knob where it has one (a curve in the plot):

* **DDIM inversion** at cfg 1 with the A label, ``eval_at`` current or next (``samplers.inversion``), then Euler at cfg w
  with B. On the EPS twin ComfyUI's FlipSigmas + euler walks the same levels as ``eval_at`` current, so it is listed on
  flow only (where its top level is s = 1, not 0.9999).
* **Unsampler** (ComfyUI_Noise, EPS): cfg w with A up, cfg w with B down.
* **RF-Inversion** (Rout et al. 2024, arXiv 2410.10792, eqs. 8 and 15; flow only): the null model's controlled forward
  ODE (γ), the controlled reverse with B at cfg w, pulled towards the source for the first quarter (η: the knob).
* **POLARIS** (arXiv 2512.00369): the least-squares ω of the A pair, replayed with the B pair; ``blend`` β adds
  ``β·(cfg - 1)`` to ω (β 0: the replay, which ignores the cfg; β 1: the cfg re-applied). β is the knob.
* **POLARIS + reference controller**: POLARIS at blend β 1 with RF-Inversion's pull towards the source on the first
  quarter of the steps (``samplers.polaris.reference_controller``, strength η: the knob).
* **sample B from noise**: no inversion, a reference for what an unconstrained class-B picture scores.

The same methods also reconstruct (B = A at cfg 1, where a guided step costs one call, so the recipes that invert at cfg
1 get twice POLARIS's steps) in a second table.

Seed ``k`` edits the ``k``-th disjoint part of the held-out patches (:func:`edit_pairs`); table cells are mean ± std over
seeds (``testbed4.Tally``). :func:`headline` reads the success-vs-PSNR Pareto front of each twin and cfg.

``python -m bench.editing [--quick] [--out DIR]`` prints the tables and writes ``editing_eps.png`` / ``editing_flow.png``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from samplers import core
from samplers.inversion import ddim
from samplers.polaris import polaris_denoise, polaris_invert

from . import peers
from .inversion import levels
from .kit import Counted, markdown_table, schedule
from .testbed4 import FULL as TESTBED_FULL
from .testbed4 import QUICK as TESTBED_QUICK
from .testbed4 import Tally, Testbed, counters, family, guided_at, load_testbed, pair_at, printable, start_state
from .testbeds import patches
from .testbeds.common import psnr

OUT = Path(__file__).resolve().parent / "out"


@dataclass(frozen=True)
class Setting:
    """Sizes of one run (``patches`` per seed) and the testbed-4 models (``testbed``)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    patches: int = 20
    steps: int = 10
    scales: tuple[float, ...] = (3.0, 7.0)
    rf_gammas: tuple[float, ...] = (0.5, 1.0)
    rf_etas: tuple[float, ...] = (0.0, 0.5, 0.9)
    blends: tuple[float, ...] = (0.0, 0.5, 1.0)
    controller_etas: tuple[float, ...] = (0.5, 0.9)
    controller_blend: float = 1.0
    reconstruction_steps: tuple[int, ...] = (10,)
    testbed: object = TESTBED_FULL


FULL = Setting()
QUICK = Setting(patches=10, steps=3, rf_gammas=(0.5,), rf_etas=(0.0, 0.9), blends=(0.0, 1.0), controller_etas=(0.9,),
                reconstruction_steps=(3,), testbed=TESTBED_QUICK)
"""CI smoke: testbed 4's tiny quick models, a handful of patches."""


def steps_at(budget: int, calls_up: int, calls_down: int) -> int:
    """The most steps whose inversion (``calls_up`` NFE a step) and denoising (``calls_down``) fit in ``budget`` NFE."""
    return max(1, budget // (calls_up + calls_down))


def edit_pairs(data: patches.PatchData, count: int, seeds: tuple[int, ...]) -> Iterator[tuple[int, Tensor, Tensor, Tensor]]:
    """Per seed: ``(seed, x0, A, B)``, the seed's disjoint part of the held-out patches (``patches.heldout_patches``),
    their classes A and a target class B ≠ A for each, cycling through the other nine classes so that every (A, B)
    offset occurs equally often over the patches and seeds."""
    per_class = -(-count * len(seeds) // patches.N_CLASSES)
    held_x, held_labels = patches.heldout_patches(data, per_class)
    n = len(seeds)
    for k, seed in enumerate(seeds):
        x0, a = held_x[k::n][:count].double(), held_labels[k::n][:count]
        offset = 1 + (torch.arange(len(a)) + k * count) % (patches.N_CLASSES - 1)
        yield seed, x0, a, (a + offset) % patches.N_CLASSES


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Per-image SSIM ``[B]`` of ``[B, C, H, W]`` images in [-1, 1] (scikit-image, data range 2, channels averaged)."""
    from skimage.metrics import structural_similarity

    return torch.tensor([structural_similarity(x.numpy(), y.numpy(), channel_axis=0, data_range=2.0)
                         for x, y in zip(a.double().clamp(-1, 1), b.double().clamp(-1, 1))], dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------------------
# The methods



@dataclass
class Method:
    """One inversion method: how it inverts (once a seed, shared by every cfg and knob value), how it denoises, its knob
    and its values, and its role."""

    name: str
    invert: Callable[[Counted, Counted], object]
    edit: Callable[[object, Counted, float, float], Tensor]
    knob: str = ""
    values: tuple[float, ...] = (0.0,)
    role: str = "peer"
    per_cfg_inversion: bool = False


def methods(x0: Tensor, noise: Tensor, setting: Setting, flow: bool, down: int = 2) -> list[Method]:
    """Every method of the module doc at equal NFE (``4·steps`` a patch) for ``x0`` on one twin; ``down`` is the NFE of
    a guided denoising step (1 at cfg 1, where the cheaper recipes get more steps)."""
    budget = 4 * setting.steps
    n3 = steps_at(budget, 1, down)  # cfg-1 inversion, cfg-w denoising
    sigmas3 = schedule(n3, flow)
    up3, down3 = levels(n3, flow)

    def ddim_method(eval_at: str) -> Method:
        return Method(f"DDIM inversion (eval_at {eval_at})", lambda a, null: ddim(a.cond, x0, up3, flow, eval_at),
                      lambda z, b, w, _: ddim(guided_at(b, w), z, down3, flow), role="baseline")

    out = [ddim_method("current"), ddim_method("next")]
    if flow:
        out.append(Method("FlipSigmas + euler", lambda a, null: peers.flip_sigmas_euler(a.cond, x0, sigmas3, flow),
                          lambda z, b, w, _: ddim(guided_at(b, w), z, sigmas3, flow)))
        for gamma in setting.rf_gammas:
            out.append(Method(f"RF-Inversion (γ {gamma:g})",
                              lambda a, null, g=gamma: peers.rf_inversion(null.cond, x0, sigmas3, noise, g),
                              lambda z, b, w, eta: peers.rf_inversion_reverse(guided_at(b, w), z, sigmas3, x0, eta),
                              "η", setting.rf_etas))
    else:
        sigmas4 = schedule(steps_at(budget, down, down), flow)
        out.append(Method("Unsampler (cfg w both ways)", lambda a, null, w: peers.unsampler(pair_at(a, w), x0, sigmas4, w),
                          lambda z, b, w, _: ddim(guided_at(b, w), z, sigmas4, flow), per_cfg_inversion=True))
    up = levels(steps_at(budget, 2, 2), flow)[0]
    polaris = lambda a, null: polaris_invert(a.pair, x0, up, flow, eval_at="current")  # noqa: E731
    out.append(Method("POLARIS", polaris, lambda zt, b, w, beta: polaris_denoise(b.pair, zt[0], zt[1], cfg=w, blend=beta),
                      "blend β", setting.blends, role="ours"))
    beta = setting.controller_blend
    out.append(Method(f"POLARIS + reference controller (β {beta:g})", polaris,
                      lambda zt, b, w, eta: polaris_denoise(b.pair, zt[0], zt[1], cfg=w, blend=beta, reference=x0, eta=eta),
                      "η", setting.controller_etas, role="ours"))
    top = sigmas3[0]
    out.append(Method("sample B from noise (no inversion)", lambda a, null: start_state(noise, top, flow),
                      lambda z, b, w, _: ddim(guided_at(b, w), z, sigmas3, flow), role="reference"))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The run


def edit_rows(testbed: Testbed, setting: Setting, reconstruct: bool = False) -> list[dict]:
    """Success (accuracy for B), PSNR and SSIM to the source, mean ± std over seeds, per twin, cfg, method and knob
    value; ``nfe`` is counted (inversion and denoising together, a patch). ``reconstruct``: B = A at cfg 1, every
    method at its own equal-NFE steps for each of ``reconstruction_steps`` (the ``POLARIS steps`` column)."""
    tally = Tally()
    runs = [(replace(setting, steps=n), (1.0,)) for n in setting.reconstruction_steps] if reconstruct else [
        (setting, setting.scales)]
    for flow in (False, True):
        model = testbed.models[flow]
        for seed, x0, a, b in edit_pairs(testbed.data, setting.patches, setting.seeds):
            b = a if reconstruct else b
            noise = patches.initial_noise(len(x0), 1000 + seed)
            null_denoiser = model.denoiser(None)
            for sized, scales in runs:
                for method in methods(x0, noise, sized, flow, down=1 if reconstruct else 2):
                    if reconstruct and method.role == "reference":
                        continue
                    inverted: dict[float | None, tuple[object, int]] = {}
                    for scale in scales:
                        key = scale if method.per_cfg_inversion else None
                        if key not in inverted:
                            counted_a = counters(model, a)
                            null = Counted(core.conditional_pair(null_denoiser), null_denoiser)
                            state = (method.invert(counted_a, null, scale) if method.per_cfg_inversion
                                     else method.invert(counted_a, null))
                            inverted[key] = (state, counted_a.evals + null.evals)
                        state, up_evals = inverted[key]
                        for value in (method.values[:1] if reconstruct and method.knob == "blend β" else method.values):
                            counted_b = counters(model, b)
                            x = method.edit(state, counted_b, scale, value).float()
                            identity = {"family": family(flow), "cfg": scale, "method": method.name, "role": method.role,
                                        "knob": f"{method.knob} {value:g}" if method.knob else "",
                                        "nfe": up_evals + counted_b.evals}
                            if reconstruct:
                                identity = {"family": family(flow), "POLARIS steps": sized.steps} | identity
                            tally.add(identity, success=patches.label_accuracy(testbed.classifier, x, b),
                                      psnr=psnr(x, x0).mean(), ssim=ssim(x, x0).mean())
    return tally.rows()


def pareto_front(points: list[dict]) -> list[dict]:
    """The rows no other row beats on both success and PSNR (ties kept), by ascending success."""
    front = [p for p in points if not any(q["success"] >= p["success"] and q["psnr"] >= p["psnr"]
                                          and (q["success"] > p["success"] or q["psnr"] > p["psnr"]) for q in points)]
    return sorted(front, key=lambda p: (p["success"], -p["psnr"]))


def _label(row: dict) -> str:
    return f"{row['method']}{', ' + row['knob'] if row['knob'] else ''}"


def headline(rows: list[dict]) -> list[dict]:
    """Per twin and cfg, the success-vs-PSNR Pareto front over every edit method (the reference row left out): its
    points by ascending success, the method holding the widest stretch of success along it ("dominates": a front
    point holds the success range from the previous point's to its own, where it has the best PSNR), and the best PSNR
    among edits that reach half success."""
    out = []
    for fam in dict.fromkeys(r["family"] for r in rows):
        for scale in dict.fromkeys(r["cfg"] for r in rows):
            group = [r for r in rows if r["family"] == fam and r["cfg"] == scale and r["role"] != "reference"]
            if not group:
                continue
            front = pareto_front(group)
            edges = [0.0] + [p["success"] for p in front]  # front point i holds success (edges[i], edges[i + 1]]
            held: dict[str, list[tuple[float, float]]] = {}
            for i, p in enumerate(front):
                held.setdefault(p["method"], []).append((edges[i], edges[i + 1]))
            leader = max(held, key=lambda m: sum(b - a for a, b in held[m]))
            edits = [r for r in group if r["success"] >= 0.5]
            best = max(edits, key=lambda r: r["psnr"]) if edits else None
            out.append({"family": fam, "cfg": scale,
                        "front (success, PSNR dB; success ↑)": " → ".join(
                            f"{_label(p)} ({p['success']:.2f} ± {p['success ±']:.2f}, {p['psnr']:.1f} ± {p['psnr ±']:.1f})"
                            for p in front),
                        "dominates": f"{leader} (success {min(a for a, _ in held[leader]):.2f}–"
                                     f"{max(b for _, b in held[leader]):.2f})",
                        "best PSNR at success ≥ 0.5": (f"{_label(best)}: {best['psnr']:.1f} ± {best['psnr ±']:.1f} dB, "
                                                       f"success {best['success']:.2f} ± {best['success ±']:.2f}")
                        if best else "none reaches 0.5"})
    return out


def table(rows: list[dict]) -> list[dict]:
    """The rows as printed: each metric as ``mean ± std`` over seeds."""
    out = []
    for r in printable(rows):
        cells = {k: v for k, v in r.items() if k not in ("success", "psnr", "ssim") and not k.endswith("±")}
        for metric, digits in (("success", 2), ("psnr", 1), ("ssim", 3)):
            cells[metric] = f"{r[metric]:.{digits}f} ± {r[metric + ' ±']:.{digits}f}"
        out.append(cells)
    return out


def plot(rows: list[dict], out_dir: Path) -> list[Path]:
    """Success against PSNR, one PNG a twin (a panel a cfg): each method a curve over its knob with seed-std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for fam in dict.fromkeys(r["family"] for r in rows):
        scales = list(dict.fromkeys(r["cfg"] for r in rows if r["family"] == fam))
        fig, axes = plt.subplots(1, len(scales), figsize=(6.2 * len(scales), 4.6), squeeze=False)
        for ax, scale in zip(axes[0], scales):
            group = [r for r in rows if r["family"] == fam and r["cfg"] == scale]
            for i, name in enumerate(dict.fromkeys(r["method"] for r in group)):
                curve = [r for r in group if r["method"] == name]
                ax.errorbar([r["psnr"] for r in curve], [r["success"] for r in curve],
                            xerr=[r["psnr ±"] for r in curve], yerr=[r["success ±"] for r in curve],
                            marker="osD^vP*X"[i % 8], linestyle=("-", "--", ":", "-.")[i % 4], capsize=2,
                            label=name + (f" ({curve[0]['knob'].split()[0]} {', '.join(r['knob'].split()[-1] for r in curve)})"
                                          if curve[0]["knob"] else ""))
            ax.set(title=f"{fam} twin, cfg {scale:g}", xlabel="preservation: PSNR to the source (dB)",
                   ylabel="edit success: classifier accuracy for B", ylim=(-0.05, 1.05))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="best")
        fig.suptitle(f"Testbed 4 editing (A → B), {fam}: up and to the right is better; mean ± std over seeds", fontsize=10)
        fig.tight_layout()
        path = out_dir / f"editing_{fam}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def run(setting: Setting = FULL) -> tuple[list[dict], list[dict]]:
    """The edit rows and the reconstruction rows (:func:`edit_rows`) on the testbed of ``setting``."""
    testbed = load_testbed(setting.testbed)
    return edit_rows(testbed, setting), edit_rows(testbed, setting, reconstruct=True)


def report_section(quick: bool, out_dir: Path) -> tuple[str, str, str]:
    """(title, command, body) of the report's editing section; writes the plots into ``out_dir``."""
    setting = QUICK if quick else FULL
    began, cpu = time.perf_counter(), time.process_time()
    rows, reconstruction = run(setting)
    paths = plot(rows, out_dir)
    body = (("Quick mode: tiny models trained in seconds; the numbers only show the pipeline runs.\n\n" if quick else "")
            + f"Held-out patches of class A inverted with the A label and denoised with a class B ≠ A; {setting.patches} "
            f"patches a seed, seeds {', '.join(map(str, setting.seeds))}, mean ± std over seeds; every method at "
            f"{4 * setting.steps} NFE a patch (POLARIS {setting.steps} steps). Success: the classifier's accuracy for B; "
            "PSNR and SSIM to the source. Plots: " + ", ".join(f"[{p.name}]({p.name})" for p in paths) + ".\n\n"
            "### Headline: the success-vs-PSNR front\n\n" + markdown_table(headline(rows)) +
            "\n\n### Every method\n\n" + markdown_table(table(rows)) +
            "\n\n### Reconstruction at equal NFE (B = A, cfg 1; success: accuracy for A)\n\n" +
            markdown_table(table(reconstruction)) + f"\n\n({time.perf_counter() - began:.0f} s, "
            f"{time.process_time() - cpu:.0f} s CPU)\n")
    return "Testbed 4: editing (invert A, denoise B)", "python -m bench.editing" + (" --quick" if quick else ""), body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and patch counts (CI smoke test)")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the plots")
    parser.add_argument("--patches", type=int, help="patches a seed (default: the setting's)")
    args = parser.parse_args()
    setting = QUICK if args.quick else FULL
    if args.patches:
        setting = replace(setting, patches=args.patches)
    began, cpu = time.perf_counter(), time.process_time()
    rows, reconstruction = run(setting)
    print(f"### Headline\n\n{markdown_table(headline(rows))}\n\n### Every method\n\n{markdown_table(table(rows))}\n\n"
          f"### Reconstruction at equal NFE\n\n{markdown_table(table(reconstruction))}")
    for path in plot(rows, args.out):
        print(f"wrote {path}")
    print(f"\nrun time {time.perf_counter() - began:.0f} s, {time.process_time() - cpu:.0f} s CPU")


if __name__ == "__main__":
    main()

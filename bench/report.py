"""``python -m bench [--quick]``: every method against its baselines and peers on the three testbeds (docs/evaluation.md), written
to ``bench/out/REPORT.md`` with PNG plots beside it.

Testbed 1 is the analytic Gaussian mixture (``bench/testbeds/gmm.py``), testbed 2 the digits models
(``bench/testbeds/digits.py``; trained once and cached, skipped in quick mode), testbed 3 the tiny SD1.5 checkpoint in
an in-process ComfyUI for cost (``bench/cost.py``). The quick mode runs small settings of everything else, for CI.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch

from plots.line import render
from samplers import core
from samplers.nag import estimate_sigma, nag_guided
from samplers.vrg import optimize_sigmas

from . import diffier, editing, nag, polaris, testbed4, vrg
from .kit import markdown_table
from .testbeds import gmm

OUT = Path(__file__).resolve().parent / "out"


@dataclasses.dataclass(frozen=True)
class Mode:
    name: str
    polaris_samples: int
    polaris_steps: tuple[int, ...]
    digits: bool
    nag: nag.Setting
    diffier: diffier.Setting
    vrg: vrg.Setting


QUICK = Mode("quick", 16, (10,), False, nag.Setting(samples=100, ref_steps=50, scales=(3.0,), mlp_steps=100),
             diffier.Setting(samples=100, ref_steps=50, scales=(1.5, 5.0, 12.0), mlp_steps=100),
             dataclasses.replace(vrg.QUICK, samples=500, seeds=(0, 1, 2)))
FULL = Mode("full", 128, polaris.STEP_COUNTS, True, nag.QUICK, diffier.FULL, vrg.FULL)


def section(title: str, command: str, body: str) -> str:
    return f"## {title}\n\nReproduce: `{command}`.\n\n{body}\n"


def full_flag(mode: Mode) -> str:
    """The flag that makes a section's own command run the full mode's settings."""
    return " --full" if mode is FULL else ""


def polaris_section(mode: Mode) -> str:
    rows = polaris.reconstruction_rows(samples=mode.polaris_samples, steps=mode.polaris_steps)
    body = ("Testbed 1: reconstruction MSE after invert → denoise (lower is better).\n\n" + polaris.reconstruction_table(rows))
    if mode.digits:
        body += ("\nTestbed 2: reconstruction PSNR in dB of the 297 held-out digits, each prompted with its own label, "
                 "cfg 3 (higher is better).\n\n" + polaris.reconstruction_table(polaris.digits_rows()))
    else:
        body += "\nTestbed 2 (digits PSNR) runs in the full mode only (it trains two models once, minutes on a CPU).\n"
    return section("POLARIS inversion", "python -m bench.polaris", body)


def nag_section(mode: Mode) -> str:
    body = ("Testbed 1: error to a high-accuracy solution from the same noise, sliced W2, the noise shift at the last calls "
            "(estimated σ / scheduled σ), and ratios to plain CFG at the same steps; `evals` counts network evaluations "
            "a sample (NFE). Variants: `cfg` plain CFG at the same steps, `cfg_nfe` plain CFG given the same NFE (more steps), "
            "`nag_fixed` / `nag_adaptive` the guidance in its two modes.\n\n" + markdown_table(nag.run(mode.nag)))
    if mode.digits:
        setting = nag.EstimatorSetting(dims=(1024,), strengths=(0.1, 1.0))
        body += ("\n### Estimator mode (the default) at d = 1024\n\nClassifier-based guidance with the exact noise "
                 "posterior (`estimator`, the oracle) and with the pack's learned estimator (`learned estimator`, trained "
                 "as the node trains it) against plain CFG, the stand-in modes and the gap-closing rule, on models reading "
                 "σ as (1+κ)σ; error to a fine exact solve, as a ratio to plain CFG on the same seed (EPS; `python -m "
                 "bench.nag --estimator --flow` for flow).\n\n" + markdown_table(nag.run_estimator(setting)))
    return section("Noise Awareness Guidance", "python -m bench.nag; python -m bench.nag --estimator", body)


def diffier_section(mode: Mode) -> str:
    tables = diffier.run(mode.diffier)
    body = ("Testbed 1: sliced W2 and gap over cfg, DiffIER (reconstructed from the paper's abstract) against plain CFG at "
            "equal steps and at equal NFE. Variants: `cfg` plain CFG at the same steps, `cfg_nfe` plain CFG given the same NFE, "
            "`C` the pack's DiffIER (closed-form weight), `A` a fixed-point correction of the next state (the reading that "
            "lost), `_half` with damping 0.5.\n\n### Summary over cfg\n\n" + markdown_table(tables["summary"]) +
            "\n### Sweep\n\n" + markdown_table(tables["sweep"]))
    if mode.digits:
        body += ("\n### Testbed 2: digits\n\nFréchet distance to the training digits in the classifier's features (lower "
                 "is better) and label accuracy of 2000 samples, 10 steps.\n\n" + markdown_table(diffier.digits_rows()))
    return section("DiffIER", "python -m bench.diffier" + full_flag(mode), body)


def testbed4_plots(rows: list[dict], out: Path) -> list[Path]:
    """Testbed 4, ours against the baselines and peers: quality vs NFE for POLARIS (cfg 1), VRG and the schedule search
    (every fixed schedule and VRG on each), and DiffIER's FD over cfg at equal NFE, one PNG a method and twin."""
    views = (("POLARIS inversion", "nfe", lambda r: r["setting"].endswith("cfg 1"), "NFE per sample"),
             ("VRG", "nfe", lambda r: True, "NFE per sample"),
             ("schedule search", "nfe", lambda r: True, "NFE per sample"),
             ("DiffIER", "cfg", lambda r: True, "cfg (equal NFE per cfg)"))
    paths = []
    for method, x_key, keep, x_label in views:
        metric = testbed4.PRIMARY[method][0]
        for family in ("eps", "flow"):
            points: dict[str, list[tuple[float, float]]] = {}
            for r in rows:
                if r["method"] == method and r["family"] == family and r["role"] != "floor" and keep(r):
                    x = r["nfe"] if x_key == "nfe" else float(r["setting"].removeprefix("cfg "))
                    label = f"{r['variant']} [{r['role']}]".replace("→", "->")  # the plot font has no arrow
                    points.setdefault(label, []).append((x, r[metric]))
            series = {label: tuple(zip(*sorted(pairs))) for label, pairs in points.items()}
            better = "higher" if metric == "psnr" else "lower"
            title = f"Testbed 4, {family}: {method}, {metric} ({better} is better)"
            image = render(series, title, x_label, metric, metric != "psnr", size=(900, 560))
            paths.append(save_png(image, out / f"testbed4_{method.split()[0].lower()}_{family}.png"))
    return paths


def testbed4_section(mode: Mode, out: Path) -> str:
    """Every method against its baseline and the best peers on testbed 4 (``bench/testbed4.py``), with its plots."""
    rows = testbed4.run(quick=mode is QUICK)
    plots = testbed4_plots(rows, out)
    lost = testbed4.losses(rows)
    body = (("Quick mode: tiny models trained in seconds; the numbers only show the pipeline runs.\n\n" if mode is QUICK
             else "") + "A class-conditional U-Net (1.77 M weights, EDM preconditioning, EPS and flow twins) on 32×32 RGB "
            "patches of scikit-image's photos (d = 3072, 10 classes); mean ± std over seeds, every variant from the same "
            "noise; peers at equal NFE. Plots: " + ", ".join(f"[{p.name}]({p.name})" for p in plots) + ".\n\n"
            "### Headline: our best variant vs the best baseline or peer\n\n" + markdown_table(testbed4.headline(rows)) +
            f"\n### Where we lose ({len(lost)} rows: every baseline or peer ahead of our best variant)\n\n" +
            (markdown_table(lost) if lost else "nowhere\n"))
    for method in testbed4.PRIMARY:
        body += f"\n### {method}\n\n" + markdown_table(testbed4.printable([r for r in rows if r["method"] == method]))
    return section("Testbed 4: every method against its peers", "python -m bench.testbed4" + (" --quick" if mode is QUICK
                                                                                               else ""), body)


def vrg_section(mode: Mode) -> str:
    tables = vrg.run(mode.vrg)
    body = "".join(f"### {name}\n\n{markdown_table(rows)}\n" for name, rows in tables.items())
    return section("VRG schedules", "python -m bench.vrg" + full_flag(mode), "Testbed 1.\n\n" + body)


def cost_section(mode: Mode) -> str:
    """Testbed 3 in a child process: it imports ComfyUI, whose top-level ``nodes`` must not meet the pack's ``nodes``."""
    from . import cost

    with tempfile.TemporaryDirectory() as tmp:
        rows_file = Path(tmp) / "cost.json"
        command = [sys.executable, "-m", "bench.cost", "--json", str(rows_file)] + (["--quick"] if mode.name == "quick" else [])
        subprocess.run(command, cwd=Path(__file__).resolve().parents[1], check=True, capture_output=True, text=True)
        rows = json.loads(rows_file.read_text())
    body = ("Testbed 3: the tiny SD1.5 checkpoint in an in-process ComfyUI, 64×64 px, CPU, one torch thread. NFE counted "
            "exactly (rows a sample; cond and uncond batched in one call count 2); time as the median ratio to the "
            "baseline in the same process with a bootstrap 90% interval (absolute times hold for this machine only; "
            "on a shared 2-core machine the interval is ±5–10%, so 'met' on a 2–3% target can flip between runs).\n\n"
            + cost.cost_table(rows))
    return section("Cost against the plain KSampler", "python -m bench.cost", body)


# ---------------------------------------------------------------------------------------------------------------------
# Plots


def save_png(image: torch.Tensor, path: Path) -> Path:
    from PIL import Image

    Image.fromarray((image[0].numpy() * 255).round().astype("uint8")).save(path)
    return path


def plot_omega(out: Path) -> Path:
    mixture = gmm.make_mixture(dim=16, n_classes=3, components_per_class=2, seed=0)
    x0 = mixture.sample(4, torch.Generator().manual_seed(1), cls=1)
    _, trace = polaris.polaris_round_trip(mixture.pair_denoiser(1, False), x0, 20, False)
    steps = list(range(trace.steps))
    series = {f"sample {b}": (steps, trace.omega[:, b].tolist()) for b in range(4)}
    return save_png(render(series, "POLARIS omega per inversion step (testbed 1, EPS, 20 steps)", "step", "omega", False),
                    out / "polaris_omega.png")


def plot_vrg(out: Path) -> list[Path]:
    profile = vrg.chosen_profile(False)
    base = vrg.base_schedule("karras", 20)
    optimised = optimize_sigmas(base, profile)
    steps = list(range(20))
    schedules = render({"karras": (steps, base[:-1].tolist()), "karras + VRG": (steps, optimised[:-1].tolist())},
                       "VRG on karras, 20 steps (testbed 1 profile)", "step", "sigma")
    errors = render({"mse_x0": (torch.log10(profile.sigmas).tolist(), profile.mse.tolist())},
                    "Error profile (testbed 1, EPS)", "log10 sigma", "mse_x0")
    return [save_png(schedules, out / "vrg_schedules.png"), save_png(errors, out / "vrg_error_profile.png")]


def plot_noise_shift(out: Path) -> Path:
    """The σ the state shows over the scheduled σ (population estimate ``sqrt(mean σ̂²)``), along plain and guided runs
    of a noise-level-miscalibrated model, beside the exact model's own run (the estimator's floor below the data scale)."""
    mixture = gmm.make_mixture(dim=16, n_classes=3, components_per_class=2, seed=0)
    exact = mixture.pair_denoiser(1)
    pair = gmm.miscalibrated(exact, -0.3)
    cond = lambda x, s: pair(x, s)[0]  # noqa: E731
    profile = nag.profile_of(mixture.denoiser(1), mixture, False)
    sigmas = nag.schedule(10, False)
    start = torch.randn(500, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigmas[0]
    series = {}
    for label, denoiser in (("exact model", core.guided(exact, 1.0)), ("miscalibrated, plain", core.guided(pair, 1.0)),
                            ("miscalibrated, guided", nag_guided(pair, cond, 1.0, 0.5, mode="fixed", window=nag.window(False)))):
        ratios, x = [], start
        for i in range(10):
            level = sigmas[i].expand(len(x))
            estimated = estimate_sigma(x, mixture.denoiser(1)(x, level), level, profile)
            ratios.append(estimated.pow(2).mean().sqrt().item() / sigmas[i].item())
            x = core.ddim_step(x, denoiser(x, level), sigmas[i], sigmas[i + 1])
        series[label] = (list(range(10)), ratios)
    return save_png(render(series, "Noise shift: estimated / scheduled sigma (testbed 1, EPS, 10 steps)", "step",
                           "ratio", False), out / "noise_shift.png")


def plot_quality_vs_nfe(out: Path) -> Path:
    mixture = gmm.make_mixture(dim=16, n_classes=3, components_per_class=2, seed=0)
    x0 = mixture.sample(64, torch.Generator().manual_seed(1), cls=1)
    pair, steps, series = mixture.pair_denoiser(1, False), (5, 10, 20, 50), {}
    methods: dict[str, Callable] = {
        "POLARIS": lambda n: polaris.polaris_round_trip(pair, x0, n, False)[0],
        "standard (cfg 1 -> 5)": lambda n: polaris.cfg_round_trip(pair, x0, n, False, 1.0, 5.0),
        "cfg 5 -> 5": lambda n: polaris.cfg_round_trip(pair, x0, n, False, 5.0, 5.0),
        "cfg 1 -> 1": lambda n: polaris.cfg_round_trip(pair, x0, n, False, 1.0, 1.0)}
    for name, method in methods.items():
        series[name] = ([4 * n for n in steps], [(method(n) - x0).pow(2).mean().item() for n in steps])
    return save_png(render(series, "Inversion: reconstruction MSE vs NFE (invert + denoise, 2 per step each)",
                           "NFE per sample", "MSE"), out / "quality_vs_nfe.png")


# ---------------------------------------------------------------------------------------------------------------------


def write_report(mode: Mode, out: Path = OUT, cost: bool = True) -> Path:
    """Run every section, write ``REPORT.md`` and the plots into ``out``; return the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    began, timings, sections = time.perf_counter(), {}, []
    runs: list[tuple[str, Callable[[Mode], str]]] = [("POLARIS", polaris_section), ("Noise Awareness Guidance", nag_section),
                                                     ("DiffIER", diffier_section), ("VRG", vrg_section),
                                                     ("testbed 4", lambda m: testbed4_section(m, out)),
                                                     ("editing", lambda m: section(*editing.report_section(m is QUICK, out)))]
    if cost:
        runs.append(("cost", cost_section))
    for name, run in runs:
        print(f"bench ({mode.name}): {name} …", file=sys.stderr, flush=True)  # the full mode runs for many minutes
        started = time.perf_counter()
        sections.append(run(mode))
        timings[name] = time.perf_counter() - started
        print(f"bench ({mode.name}): {name} done in {timings[name]:.0f} s", file=sys.stderr, flush=True)
    plots = [plot_omega(out), *plot_vrg(out), plot_noise_shift(out), plot_quality_vs_nfe(out)]
    header = [f"# Error-Control Samplers: benchmark report ({mode.name} mode)", "",
              f"{date.today().isoformat()}, {platform.machine()} CPU ×{torch.get_num_threads()} threads, "
              f"torch {torch.__version__}; {time.perf_counter() - began:.0f} s in all "
              f"({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())}).", "",
              "Every table compares a method with its baselines on the same seeds; std is over seeds. "
              "Plots: " + ", ".join(f"[{p.name}]({p.name})" for p in plots) + ".", ""]
    report = out / "REPORT.md"
    report.write_text("\n".join(header) + "\n" + "\n".join(sections))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small settings, testbed 2 skipped (CI smoke, < 3 min)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--no-cost", action="store_true", help="skip testbed 3 (no ComfyUI needed)")
    args = parser.parse_args()
    print(write_report(QUICK if args.quick else FULL, args.out, cost=not args.no_cost))


if __name__ == "__main__":
    main()

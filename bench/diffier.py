"""DiffIER (docs/methods.md#diffier, reconstructed from the paper's abstract) on the analytic testbed
(docs/evaluation.md#testbed-1-analytic-mixture): the training-inference gap under CFG, and the candidate per-step reductions
against plain CFG at equal model cost.

Class-conditional sampling (class 1 of the d = 16, 3-class mixture) with CFG at scales 1–12, 10 DDIM/Euler steps (Karras
for EPS, uniform s for flow), the same starting noise for every variant. Imperfect models, each a cond/uncond pair:

* ``field``: the exact denoisers plus independent smooth error fields (``gmm.perturbed_pair``, amplitude 0.15): CFG
  amplifies the difference of the two errors, as with real models;
* ``mlp``: the small trained MLP with label dropout (natural errors).

Variants (``evals``: network evaluations per sample, cond and uncond 1 each):

* ``cfg``: plain CFG, 10 steps; ``cfg_nfe``: plain CFG with as many steps as the evaluations of ``A`` allow;
* ``A``: reading A, :func:`fixed_point`, K = 1 fixed-point iteration moving the next state towards eq. R's consistency,
  damping λ = 1 (``A_half``: λ = 0.5);
* ``C``: reading C, :func:`samplers.diffier.diffier`: a per-step, per-sample guidance weight ``ω ∈ [1, w]`` in closed
  form (eq. W: the weight whose prediction agrees best with the guided prediction at the step's next state), K = 1
  iteration, λ = 1 (``C_half``: λ = 0.5); 4 evaluations a step, like ``A``. Run at every cfg and on both families
  (``min_cfg`` 1): the method itself, whereas the sampler's default iterates on EPS/V only (``samplers.diffier.MIN_CFG``).

Reading B (gradient descent on x through the model) is left out: it needs the model's Jacobian, which ComfyUI's samplers do
not have without autograd through the UNet, several times the cost of A.

Metrics, mean over seeds: ``gap``, the accumulated excess NLL per dim of the sampler's states under the exact forward
marginal ``p_σ(x | c)``, Σ over steps of |mean NLL(states) - mean NLL(true forward samples at the same σ)| (the testbed's
ground truth of the gap); ``drift``, the model-only diagnostic :func:`samplers.diffier.prediction_drift` summed over
steps; ``err``, per-dim MSE to a ``ref_steps`` solution of the same guided ODE with the same model from the same noise;
``sw2``, sliced W2 to true class-1 samples; ``precision``, mean exact Bayes ``p(c = 1 | x0)``.

``python -m bench.diffier`` runs ``QUICK`` (400 samples, a few minutes on one core); ``--full`` the reported setting
(1000 samples, 200-step references; ~12 min on one core).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from samplers import core
from samplers.diffier import diffier, prediction_drift
from samplers.inversion import ddim

from .kit import Counted, markdown_table, schedule
from .testbeds import digits, gmm
from .testbeds.common import frechet_distance
from .vrg import sliced_w2

F64 = torch.float64
CLASS = 1


@dataclass(frozen=True)
class Setting:
    samples: int = 400
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 10
    ref_steps: int = 100
    scales: tuple[float, ...] = (1.0, 1.5, 3.0, 5.0, 8.0, 12.0)
    amplitude: float = 0.15
    mlp_steps: int = 600
    iterations: int = 1


QUICK = Setting()
FULL = Setting(samples=1000, ref_steps=200)


def make_mixture() -> gmm.GaussianMixture:
    return gmm.make_mixture(dim=16, n_classes=3, components_per_class=2, seed=0)


def models(mixture: gmm.GaussianMixture, flow: bool, setting: Setting) -> dict[str, core.PairDenoiser]:
    field = gmm.perturbed_pair(mixture.pair_denoiser(CLASS, flow), mixture.dim, seed=1, amplitude=setting.amplitude, flow=flow)
    net = gmm.train_mlp_denoiser(mixture, flow=flow, steps=setting.mlp_steps, batch=256, seed=0)
    return {"field": field, "mlp": net.pair_denoiser(CLASS)}


class Recorder:
    """A k-diffusion step callback keeping each step's state, level and prediction."""

    def __init__(self):
        self.states, self.levels, self.predictions = [], [], []

    def __call__(self, step: dict) -> None:
        self.states.append(step["x"])
        self.levels.append(float(step["sigma"]))
        self.predictions.append(step["denoised"])


def fixed_point(denoiser: core.Denoiser, x: Tensor, sigmas: Tensor, iterations: int, damping: float, flow: bool = False,
                callback: Callable[[dict], None] | None = None) -> Tensor:
    """Reading A: after each DDIM step, ``iterations`` damped fixed-point iterations moving the state itself,
    ``x' ← x' + λ·(a(σ')·D_w(x', σ') + σ'·ε̂ - x')`` (eq. R with x' free, ε̂ the step's noise); the last step plain."""
    ones = x.new_ones(x.shape[0])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i] * ones, sigmas[i + 1] * ones
        denoised = denoiser(x, sigma)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        eps = core.eps_from_denoised(x, denoised, sigma, flow)
        x_next = core.ddim_step(x, denoised, sigma, sigma_next, flow)
        for _ in range(iterations if sigmas[i + 1] > 0 else 0):
            x_next = x_next + damping * (core.noise_to(denoiser(x_next, sigma_next), eps, sigma_next, flow) - x_next)
        x = x_next
    return x


def excess_nll(recorder: Recorder, mixture: gmm.GaussianMixture, truth: Tensor, flow: bool, seed: int) -> float:
    """Σ over steps after the first of |mean NLL per dim of the states - that of true forward samples| under p_σ(x | c)."""
    g, total = torch.Generator().manual_seed(30_000 + seed), 0.0
    for x, sigma in zip(recorder.states[1:], recorder.levels[1:]):
        forward = core.noise_to(truth, torch.randn(truth.shape, generator=g, dtype=F64), torch.tensor(sigma, dtype=F64), flow)
        nll = [-mixture.log_prob(v, sigma, CLASS, flow).mean().item() / mixture.dim for v in (x, forward)]
        total += abs(nll[0] - nll[1])
    return total


def _case(pair: core.PairDenoiser, mixture: gmm.GaussianMixture, flow: bool, scale: float, seed: int,
          setting: Setting) -> list[dict]:
    noise = torch.randn(setting.samples, mixture.dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
    truth = mixture.sample(setting.samples, torch.Generator().manual_seed(10_000 + seed), CLASS)
    levels = schedule(setting.steps, flow)
    start = core.noise_to(torch.zeros_like(noise), noise, levels[0], flow)
    reference = ddim(core.guided(pair, scale), start, schedule(setting.ref_steps, flow), flow)
    k = setting.iterations
    nfe_steps = setting.steps + (setting.steps - 1) * k
    runs = {
        "cfg": lambda m, r: ddim(core.guided(m, scale), start, levels, flow, callback=r),
        "cfg_nfe": lambda m, r: ddim(core.guided(m, scale), start, schedule(nfe_steps, flow), flow, callback=r),
        "A": lambda m, r: fixed_point(core.guided(m, scale), start, levels, k, 1.0, flow, r),
        "A_half": lambda m, r: fixed_point(core.guided(m, scale), start, levels, k, 0.5, flow, r),
        "C": lambda m, r: diffier(m, start, levels, scale, k, 1.0, flow, r, min_cfg=1.0)[0],
        "C_half": lambda m, r: diffier(m, start, levels, scale, k, 0.5, flow, r, min_cfg=1.0)[0],
    }
    rows = []
    for variant, run_variant in runs.items():
        model, recorder = Counted(pair), Recorder()
        x = run_variant(model.pair, recorder)
        rows.append({"variant": variant, "evals": float(model.evals),
                     "gap": excess_nll(recorder, mixture, truth, flow, seed),
                     "drift": prediction_drift(recorder.predictions).mean(-1).sum().item(),
                     "err": (x - reference).square().mean().item(), "sw2": sliced_w2(x, truth),
                     "precision": mixture.class_posterior(x)[:, CLASS].mean().item()})
    return rows


METRICS = ("gap", "drift", "err", "sw2", "precision")


def sweep_rows(setting: Setting = QUICK) -> list[dict]:
    """Per family, model, cfg scale and variant: the metrics, mean over seeds (``sw2_std``: their std)."""
    mixture, out = make_mixture(), []
    for flow in (False, True):
        for name, pair in models(mixture, flow, setting).items():
            for scale in setting.scales:
                per_seed = [_case(pair, mixture, flow, scale, seed, setting) for seed in setting.seeds]
                for k, first in enumerate(per_seed[0]):
                    row = {"family": "flow" if flow else "eps", "model": name, "cfg": scale, "variant": first["variant"],
                           "evals": first["evals"]}
                    for metric in METRICS:
                        values = torch.tensor([seed_rows[k][metric] for seed_rows in per_seed], dtype=F64)
                        row[metric] = values.mean().item()
                    row["sw2_std"] = torch.tensor([seed_rows[k]["sw2"] for seed_rows in per_seed], dtype=F64).std().item()
                    out.append(row)
    return out


def summary_rows(sweep: list[dict], lowest: float = 1.5) -> list[dict]:
    """Per family, model and variant over cfg ≥ ``lowest``: best sw2 and its cfg, worst sw2, their ratio (the spread
    across cfg), and the cfg where the gap and the drift are smallest (over every cfg of the sweep)."""
    out = []
    keys = dict.fromkeys((r["family"], r["model"], r["variant"]) for r in sweep)
    for family, model, variant in keys:
        rows = [r for r in sweep if (r["family"], r["model"], r["variant"]) == (family, model, variant)]
        ranged = [r for r in rows if r["cfg"] >= lowest]
        best, worst = min(ranged, key=lambda r: r["sw2"]), max(ranged, key=lambda r: r["sw2"])
        out.append({"family": family, "model": model, "variant": variant, "evals": rows[0]["evals"],
                    "best_sw2": best["sw2"], "cfg_best_sw2": best["cfg"], "worst_sw2": worst["sw2"],
                    "spread": worst["sw2"] / best["sw2"],
                    "cfg_min_gap": min(rows, key=lambda r: r["gap"])["cfg"],
                    "cfg_min_drift": min(rows, key=lambda r: r["drift"])["cfg"],
                    "cfg_best_sw2_all": min(rows, key=lambda r: r["sw2"])["cfg"]})
    return out


def digits_rows(scales: tuple[float, ...] = (1.5, 3.0, 5.0, 8.0, 12.0), samples: int = 2000, steps: int = 10,
                seeds: tuple[int, ...] = (0, 1, 2)) -> list[dict]:
    """Testbed 2: Fréchet distance (classifier features, against the training digits) and label accuracy of ``samples``
    digits (balanced labels) for plain CFG at ``steps``, plain CFG given DiffIER's NFE, and DiffIER (K = 1), per cfg;
    mean ± std over seeds (same starting noise across methods within a seed)."""
    split, classifier = digits.load_digits_split(), digits.train_or_load_classifier()
    real = digits.embed(classifier, split.train_x)
    labels = digits.balanced_labels(samples)
    nfe_steps = 2 * steps - 1  # DiffIER K = 1: 2 evaluations a step but the last: 2(2N - 1) NFE = plain CFG at 2N - 1 steps
    rows = []
    for flow in (False, True):
        model = digits.train_or_load_denoiser(flow)
        pair = model.pair_denoiser(labels)
        for scale in scales:
            runs: dict[str, list[tuple[float, float]]] = {}
            for seed in seeds:
                for variant, n in (("cfg", steps), ("cfg_nfe", nfe_steps), ("diffier", steps)):
                    sigmas = digits.sampling_schedule(n, flow)
                    noise = torch.randn(samples, digits.DIM, generator=torch.Generator().manual_seed(seed), dtype=F64)
                    x = noise * (1.0 if flow else sigmas[0])
                    with torch.no_grad():
                        if variant == "diffier":
                            out = diffier(pair, x, sigmas, scale, iterations=1, flow=flow, min_cfg=1.0)[0]
                        else:
                            out = ddim(core.guided(pair, scale), x, sigmas, flow)
                    out = out.float()
                    runs.setdefault(variant, []).append((frechet_distance(digits.embed(classifier, out), real),
                                                         digits.label_accuracy(classifier, out, labels)))
            for variant, values in runs.items():
                fd, accuracy = torch.tensor(values, dtype=F64).T
                rows.append({"family": "flow" if flow else "eps", "cfg": scale, "variant": variant,
                             "fd": fd.mean().item(), "fd_std": fd.std().item(), "accuracy": accuracy.mean().item(),
                             "accuracy_std": accuracy.std().item(), "seeds": len(seeds)})
    return rows


def run(setting: Setting = QUICK) -> dict[str, list[dict]]:
    sweep = sweep_rows(setting)
    return {"sweep": sweep, "summary": summary_rows(sweep)}


if __name__ == "__main__":
    full = "--full" in sys.argv
    tables = run(FULL if full else QUICK) | ({"testbed 2: digits": digits_rows()} if full else {})
    for title, rows in tables.items():
        print(f"\n### {title}\n\n{markdown_table(rows)}")

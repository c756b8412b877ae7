"""Testbed 4 (docs/evaluation.md#testbed-4-photo-patches): every method of the pack against its baseline and the best peers a
ComfyUI user would pick, on the class-conditional U-Net of 32×32 RGB photo patches (``bench/testbeds/patches.py``, d = 3072), EPS
and flow twins.

Each table is mean ± std over seeds (a seed draws the starting noise, or picks a disjoint part of the held-out patches);
within a seed every variant starts from the same noise. NFE (network evaluations per sample, cond and uncond 1 each) is
counted with :class:`bench.kit.Counted` or, where stated, by construction.

1. **POLARIS inversion** (:func:`inversion_rows`): PSNR of held-out patches after invert → denoise at the same steps,
   against standard DDIM inversion (cfg 1 → w), DDIM at w → w, ComfyUI's FlipSigmas + euler, ComfyUI_Noise's Unsampler
   (EPS) and RF-Inversion with its controlled reverse (flow). "guidance" is the scale the denoising pass applied
   (POLARIS: the mean of its recorded ω). At cfg 1 an extra row gives DDIM POLARIS's NFE (twice the steps).
2. **VRG** (:func:`schedule_rows`): the error profile measured on training patches (``measure_error_profile``), then
   each base schedule and VRG on it, sampled at cfg 1; RMS error to a fine solve from the same noise and level, FD.
3. **DiffIER** (:func:`guidance_rows`): alone and stacked on APG and on CFG-Zero* (:func:`composed_pair`), against plain
   CFG at the same steps and at DiffIER's NFE, APG, CFG-Zero*, RescaleCFG and CFGNorm at DiffIER's NFE; FD (and its
   held-out floor), precision/recall, classifier accuracy, RMS error to a fine solve of the plain-CFG ODE.
2b. **Schedule search** (:func:`schedule_search_rows`): ``samplers.schedule_search.choose_schedule`` over the bases of
   2. and VRG on each, on a noise bank of its own, against every one of them on each seed's fresh noise (never seen by
   the search); RMS error to the fine solve from the highest first level.
4. **Noise Awareness Guidance** (:func:`noise_guidance_rows`): mode ``estimator`` with the pack's learned estimator
   against plain sampling, on the model and on the model reading σ as 0.8σ; RMS error to the fine solve of the exact
   model. The estimator adds no model call, so every variant has the same NFE (by construction).

``python -m bench.testbed4 [--quick] [--pictures DIR]`` prints the tables, :func:`headline` and where we lose.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from samplers import core
from samplers.diffier import diffier
from samplers.inversion import STANDARD_EVAL_AT, ddim
from samplers.nag import nag_guided
from samplers.noise_estimator import NoiseEstimator, calibration, load_estimator, log_error, save_estimator, train_noise_estimator
from samplers.polaris import polaris_denoise, polaris_invert
from samplers.schedule_search import VRG_SUFFIX, choose_schedule, with_vrg
from samplers.vrg import ErrorProfile, cumulative_error, measure_error_profile, optimize_sigmas

from . import peers
from .inversion import invert_and_reconstruct, levels
from .kit import Counted, karras, markdown_table, schedule
from .testbeds import gmm, patches
from .testbeds.common import CACHE_DIR, frechet_distance, psnr
from .vrg import profile_grid, reference_schedule

F64 = torch.float64
VE_RANGE = (0.03, 14.6)
"""The EPS twin's sampling range (``bench.kit.karras``), where the SD1.5 tables (AYS, GITS, beta) are mapped."""
FLOW_TABLE = torch.arange(1, 1001, dtype=F64) / 1000
"""ComfyUI's ``ModelSamplingDiscreteFlow`` levels at shift 1 (``s = t/1000``): the table ``beta`` rounds onto."""
PRIMARY = {"POLARIS inversion": ("psnr", 1.0), "VRG": ("error", -1.0), "schedule search": ("error", -1.0),
           "DiffIER": ("fd", -1.0),
           "Noise Awareness Guidance": ("error", -1.0)}
"""Each method's headline metric and its direction (+1: higher is better)."""


@dataclass(frozen=True)
class Setting:
    """Sizes of one run (counts are per seed) and the models to use."""

    seeds: tuple[int, ...] = (0, 1, 2)
    inversion_patches: int = 10
    inversion_steps: tuple[int, ...] = (10, 20)
    inversion_cfg: float = 4.0
    profile_patches: int = 100
    profile_points: int = 32
    samples: int = 30
    schedule_steps: tuple[int, ...] = (10, 20)
    search_bank: int = 32
    guidance_samples: int = 30
    error_samples: int = 10
    guidance_scales: tuple[float, ...] = (5.0, 12.0)
    guidance_steps: int = 10
    noise_scales: tuple[float, ...] = (1.0, 3.0)
    noise_strengths: tuple[float, ...] = (0.1, 1.0)
    noise_steps: int = 10
    kappas: tuple[float, ...] = (-0.1, -0.2, -0.3)
    estimator_iterations: int = 1500
    fine_steps: int = 100
    denoiser_options: tuple[tuple[str, object], ...] = ()
    classifier_options: tuple[tuple[str, object], ...] = ()
    cache_dir: str | None = None


FULL = Setting()
QUICK = Setting(inversion_patches=3, inversion_steps=(3,), profile_patches=10, profile_points=6, samples=4,
                schedule_steps=(3,), search_bank=2, guidance_samples=10, error_samples=3, guidance_scales=(5.0,),
                guidance_steps=3,
                noise_scales=(3.0,), noise_steps=3, estimator_iterations=20, fine_steps=6,
                denoiser_options=(("steps", 30), ("width", 16), ("batch", 8)),
                classifier_options=(("steps", 30), ("width", 8), ("features", 16)),
                cache_dir=str(CACHE_DIR / "testbed4_quick"))
"""CI smoke test: tiny models trained in seconds into their own cache folder, a handful of samples."""


@dataclass
class Testbed:
    """The data, both twins (key: flow), the classifier, its features of the training reference, and a cache of fine
    solves shared by the tables."""

    setting: Setting
    data: patches.PatchData
    models: dict[bool, patches.PatchUNet]
    classifier: patches.PatchClassifier
    real_features: Tensor
    references: dict = field(default_factory=dict)


def load_testbed(setting: Setting) -> Testbed:
    """Train or load (``patches.train_or_load_*``, cached) both twins and the classifier of ``setting``."""
    data = patches.load_patch_data()
    models = {flow: patches.train_or_load_denoiser(flow, data, setting.cache_dir, **dict(setting.denoiser_options))
              for flow in (False, True)}
    classifier = patches.train_or_load_classifier(data, setting.cache_dir, **dict(setting.classifier_options))
    return Testbed(setting, data, models, classifier, patches.embed(classifier, patches.train_reference(data)[0]))


# ---------------------------------------------------------------------------------------------------------------------
# Shared pieces


def family(flow: bool) -> str:
    """The twin's name in the tables."""
    return "flow" if flow else "eps"


def start_state(noise: Tensor, top: Tensor | float, flow: bool) -> Tensor:
    """ComfyUI's noise scaling of an empty latent at the first level: ``a(σ)·0 + σ·ε = σ·ε`` (either parametrisation)."""
    return core.noise_to(torch.zeros_like(noise), noise, torch.as_tensor(top, dtype=noise.dtype), flow)


def counters(model: patches.PatchUNet, labels: Tensor) -> Counted:
    """The model's cond/uncond pair for ``labels`` and its conditional half, counting evaluations."""
    return Counted(model.pair_denoiser(labels), model.denoiser(labels))


def pair_at(counted: Counted, scale: float) -> core.PairDenoiser:
    """The pair to guide at ``scale``: at 1 the conditional half alone (one evaluation, as ComfyUI skips the uncond)."""
    return counted.pair if scale != 1 else core.conditional_pair(counted.cond)


def guided_at(counted: Counted, scale: float) -> core.Denoiser:
    """Plain CFG at ``scale`` (the conditional model at 1)."""
    return core.guided(pair_at(counted, scale), scale)


def fine_solve(testbed: Testbed, flow: bool, scale: float, seed: int, n: int, top: float | None = None) -> Tensor:
    """The reference end point: plain CFG at ``scale`` of the (unwrapped) model for :func:`patches.balanced_labels`,
    from :func:`start_state` of the first ``n`` of :func:`patches.initial_noise` of ``seed`` at level ``top`` (default:
    the bench's), ``fine_steps`` Euler steps of ``bench.vrg.reference_schedule`` (Karras to 0.002 / uniform s); cached."""
    top = float(schedule(1, flow)[0]) if top is None else top
    key = (flow, scale, seed, n, round(top, 4))  # mapped tables reach the same top up to float round-off
    if key not in testbed.references:
        denoiser = patches.guided_denoiser(testbed.models[flow], patches.balanced_labels(n), scale)
        start = start_state(patches.initial_noise(n, seed), top, flow)
        testbed.references[key] = ddim(denoiser, start, reference_schedule(top, testbed.setting.fine_steps, flow), flow)
    return testbed.references[key]


class Tally:
    """Per-seed values of every (row identity, metric); :meth:`rows` gives mean and std over seeds per row."""

    def __init__(self):
        self.values: dict[tuple, dict[str, list[float]]] = {}

    def add(self, identity: dict, **metrics: float | Tensor) -> None:
        slot = self.values.setdefault(tuple(identity.items()), {})
        for name, value in metrics.items():
            slot.setdefault(name, []).append(float(value))

    def rows(self) -> list[dict]:
        """One dict a row: the identity, ``metric`` and ``metric ±`` (std over seeds), ``seeds``, and ``_per_seed``."""
        out = []
        for identity, metrics in self.values.items():
            row = dict(identity)
            for name, values in metrics.items():
                t = torch.tensor(values, dtype=F64)
                row[name], row[f"{name} ±"] = t.mean().item(), (t.std().item() if len(values) > 1 else 0.0)
            row["seeds"] = len(next(iter(metrics.values())))
            row["_per_seed"] = metrics
            out.append(row)
        return out


# ---------------------------------------------------------------------------------------------------------------------
# 1. POLARIS inversion

Recipe = Callable[[Counted, Counted], tuple[Tensor, Tensor | float]]
"""An invert → denoise recipe: (the labelled model, the null-prompt model) → (reconstruction, guidance applied)."""


def inversion_recipes(x0: Tensor, noise: Tensor, steps: int, scale: float, flow: bool) -> dict[str, tuple[str, Recipe]]:
    """Every invert → denoise recipe at ``steps`` and the user's cfg ``scale``, by name: (role, recipe).

    POLARIS (arXiv 2512.00369) replays its own ω (the user's cfg unused, as the authors); "+ blend" adds ``cfg - 1``
    (docs/methods.md#polaris-choices, for edits). Standard: DDIM inversion at cfg 1 (diffusers' evaluation point for EPS,
    ``STANDARD_EVAL_AT``), denoising at cfg w. FlipSigmas + euler: the same as ComfyUI runs it (model at the current level).
    Unsampler: ComfyUI_Noise's node, both ways at cfg w (EPS only). RF-Inversion (Rout et al. 2024): the null-prompt model's
    controlled forward ODE to ``noise`` (γ 0.5), then the controlled reverse ODE towards x0 (η 0.9, first quarter).
    """
    sigmas = schedule(steps, flow)

    def polaris(m: Counted, blend: float) -> tuple[Tensor, Tensor]:
        z, trace = polaris_invert(m.pair, x0, levels(steps, flow)[0], flow)
        return polaris_denoise(m.pair, z, trace, cfg=scale, blend=blend), trace.omega.mean(0) + blend * (scale - 1)

    def ddim_back(m: Counted, z: Tensor) -> Tensor:
        return ddim(guided_at(m, scale), z, sigmas, flow)

    recipes: dict[str, tuple[str, Recipe]] = {"POLARIS": ("ours", lambda m, n: polaris(m, 0.0))}
    if scale != 1:
        recipes["POLARIS + blend (ω + cfg - 1)"] = ("ours", lambda m, n: polaris(m, 1.0))
    recipes[f"standard DDIM (cfg 1 → {scale:g})"] = ("baseline", lambda m, n: (invert_and_reconstruct(
        guided_at(m, 1.0), x0, steps, flow, STANDARD_EVAL_AT[flow], guided_at(m, scale)), scale))
    if scale == 1:
        recipes[f"DDIM cfg 1 → 1, {2 * steps} steps (POLARIS's NFE)"] = ("baseline", lambda m, n: (invert_and_reconstruct(
            m.cond, x0, 2 * steps, flow, STANDARD_EVAL_AT[flow]), 1.0))
    else:
        recipes[f"DDIM (cfg {scale:g} → {scale:g})"] = ("baseline", lambda m, n: (invert_and_reconstruct(
            guided_at(m, scale), x0, steps, flow, STANDARD_EVAL_AT[flow]), scale))
    recipes[f"FlipSigmas + euler (cfg 1 → {scale:g})"] = ("peer", lambda m, n: (ddim_back(
        m, peers.flip_sigmas_euler(m.cond, x0, sigmas, flow)), scale))
    if not flow:
        recipes[f"Unsampler (cfg {scale:g} → {scale:g})"] = ("peer", lambda m, n: (ddim_back(
            m, peers.unsampler(pair_at(m, scale), x0, sigmas, scale)), scale))
    else:
        recipes[f"RF-Inversion (γ {peers.RF_GAMMA:g}, η {peers.RF_ETA:g}, cfg {scale:g})"] = ("peer", lambda m, n: (
            peers.rf_inversion_reverse(guided_at(m, scale), peers.rf_inversion(n.cond, x0, sigmas, noise), sigmas, x0),
            scale))
    return recipes


def inversion_rows(testbed: Testbed) -> list[dict]:
    """Reconstruction PSNR (dB) and guidance applied of every recipe, per twin, steps and cfg (1 and the user's);
    seed ``k`` inverts the ``k``-th disjoint part of the held-out patches (one patch a class when it has 10)."""
    s, tally = testbed.setting, Tally()
    count = len(s.seeds)
    held_x, held_labels = patches.heldout_patches(testbed.data, -(-s.inversion_patches * count // patches.N_CLASSES))
    for flow in (False, True):
        model = testbed.models[flow]
        for k, seed in enumerate(s.seeds):
            x0, labels = held_x[k::count][:s.inversion_patches].double(), held_labels[k::count][:s.inversion_patches]
            noise = patches.initial_noise(len(x0), 1000 + seed)
            for steps in s.inversion_steps:
                for scale in (1.0, s.inversion_cfg):
                    for name, (role, recipe) in inversion_recipes(x0, noise, steps, scale, flow).items():
                        m, null = counters(model, labels), Counted(core.conditional_pair(model.denoiser(None)),
                                                                   model.denoiser(None))
                        reconstruction, guidance = recipe(m, null)
                        identity = {"method": "POLARIS inversion", "family": family(flow),
                                    "setting": f"{steps} steps, cfg {scale:g}", "variant": name, "role": role,
                                    "nfe": m.evals + null.evals}
                        tally.add(identity, psnr=psnr(reconstruction, x0).mean(),
                                  guidance=torch.as_tensor(guidance, dtype=F64).mean())
    return tally.rows()


# ---------------------------------------------------------------------------------------------------------------------
# 2. VRG


def base_schedules(steps: int, flow: bool) -> dict[str, Tensor]:
    """The base schedules VRG is applied to, by name. EPS: Karras (the bench's default), and the SD1.5 tables a ComfyUI
    user picks, AYS (SD1), GITS (coeff 1.2) and beta over SD1.5's discrete levels, each moved from SD1.5's σ range
    0.0292…14.61 to the twin's 0.03…14.6 (``peers.map_sigma_range``). Flow: uniform s (the default), Karras on
    ComfyUI's flow range 0.001…1, beta over ComfyUI's flow levels ``t/1000``, and OptimalSteps' FLUX table as it is
    (already in s, 0.9968…0.001, inside the range the twin was trained on)."""
    if flow:
        return {"uniform (default)": schedule(steps, True), "karras": karras(steps, 0.001, 1.0),
                "beta": peers.beta_schedule(FLOW_TABLE, steps), "OptimalSteps (FLUX)": peers.optimal_steps("FLUX", steps)}
    mapped = lambda sigmas: peers.map_sigma_range(sigmas, VE_RANGE)  # noqa: E731
    return {"karras (default)": schedule(steps, False), "AYS (SD1, mapped)": mapped(peers.align_your_steps("SD1", steps)),
            "GITS (mapped)": mapped(peers.gits(steps)),
            "beta (SD1.5 levels, mapped)": peers.beta_schedule(mapped(peers.discrete_sigmas()), steps)}


def error_profile(testbed: Testbed, flow: bool) -> ErrorProfile:
    """VRG's calibration of the conditional twin on ``profile_patches`` training patches with their own labels (the
    guidance it samples with: cfg 1), on ``bench.vrg.profile_grid`` (EPS σ 0.002…80, flow s 0.001…1), seed 100."""
    s = testbed.setting
    x0, labels = patches.train_reference(testbed.data, -(-s.profile_patches // patches.N_CLASSES))
    return measure_error_profile(testbed.models[flow].denoiser(labels), x0.double(), profile_grid(s.profile_points, flow),
                                 torch.Generator().manual_seed(100), flow=flow)


def sample_metrics(testbed: Testbed, x: Tensor, labels: Tensor) -> dict[str, float]:
    """FD to the training reference in the classifier's features, k-NN precision/recall against as many real patches,
    and the classifier's accuracy on the requested labels."""
    features = patches.embed(testbed.classifier, x.float())
    precision, recall = patches.precision_recall(testbed.real_features[:len(x)], features)
    return {"fd": frechet_distance(features, testbed.real_features), "precision": precision, "recall": recall,
            "accuracy": patches.label_accuracy(testbed.classifier, x.float(), labels)}


def floor_row(testbed: Testbed, method: str, n: int) -> dict:
    """The real-vs-real FD floor at ``n`` samples (``patches.fd_floor``)."""
    value = patches.fd_floor(testbed.classifier, testbed.data, max(1, n // patches.N_CLASSES))
    return {"method": method, "family": "both", "setting": f"{n} samples", "variant": "held-out real patches (FD floor)",
            "role": "floor", "fd": value}


def schedule_rows(testbed: Testbed) -> list[dict]:
    """Per twin, step count and base: the base schedule and VRG on it (``optimize_sigmas`` with the measured profile),
    sampled by Euler at cfg 1 from the same noise; RMS error to the fine solve from the same state, FD, CPE."""
    s, tally = testbed.setting, Tally()
    labels = patches.balanced_labels(s.samples)
    for flow in (False, True):
        profile, denoiser = error_profile(testbed, flow), testbed.models[flow].denoiser(labels)
        for steps in s.schedule_steps:
            for base, sigmas in base_schedules(steps, flow).items():
                variants = {"baseline": (base, sigmas), "ours": (f"VRG({base})", optimize_sigmas(sigmas, profile))}
                for seed in s.seeds:
                    reference = fine_solve(testbed, flow, 1.0, seed, s.samples, float(sigmas[0]))
                    start, errors = start_state(patches.initial_noise(s.samples, seed), sigmas[0], flow), {}
                    for role, (variant, levels_) in variants.items():
                        x = ddim(denoiser, start, levels_, flow)
                        errors[role] = patches.solve_error(x, reference).mean()
                        identity = {"method": "VRG", "family": family(flow), "setting": f"{steps} steps",
                                    "variant": variant, "role": role, "nfe": len(levels_) - 1,
                                    "cpe": cumulative_error(levels_, profile).item()}
                        extra = {"error / base": errors["ours"] / errors["baseline"]} if role == "ours" else {}
                        tally.add(identity, error=errors[role], **sample_metrics(testbed, x, labels), **extra)
    return tally.rows() + [floor_row(testbed, "VRG", s.samples)]


def schedule_search_rows(testbed: Testbed) -> list[dict]:
    """Per twin, step count and seed: ``choose_schedule`` (Euler, cfg 1) over :func:`base_schedules` and VRG on each
    (the measured profile), on ``search_bank`` noise samples of seed ``500 + seed``; then the pick ("ours"), every base
    ("peer") and VRG on each ("baseline") from the seed's own ``samples`` noise, which the search never saw. RMS error
    to the fine solve from the highest first level (the search's own reference); the pick's name per seed is in
    ``_picks``."""
    s, tally, picks = testbed.setting, Tally(), {}
    labels, bank_labels = patches.balanced_labels(s.samples), patches.balanced_labels(s.search_bank)
    for flow in (False, True):
        profile, model = error_profile(testbed, flow), testbed.models[flow]
        for steps in s.schedule_steps:
            bases = base_schedules(steps, flow)
            named, top = with_vrg(bases, profile), max(float(sigmas[0]) for sigmas in bases.values())
            for seed in s.seeds:
                bank = patches.initial_noise(s.search_bank, 500 + seed)
                choice = choose_schedule(model.denoiser(bank_labels), bank, bases, flow, profile)
                picks.setdefault((family(flow), f"{steps} steps"), []).append(choice.name)
                reference, noise = fine_solve(testbed, flow, 1.0, seed, s.samples, top), patches.initial_noise(s.samples, seed)
                for variant, sigmas in {"schedule search": choice.sigmas, **named}.items():
                    role = "ours" if variant == "schedule search" else "baseline" if variant.endswith(VRG_SUFFIX) else "peer"
                    x = ddim(model.denoiser(labels), start_state(noise, sigmas[0], flow), sigmas, flow)
                    tally.add({"method": "schedule search", "family": family(flow), "setting": f"{steps} steps",
                               "variant": variant, "role": role, "nfe": steps}, error=patches.solve_error(x, reference).mean())
    rows = tally.rows()
    for row in rows:
        row["picked"] = "; ".join(picks[(row["family"], row["setting"])]) if row["role"] == "ours" else ""
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# 3. DiffIER

Sampler = Callable[[core.PairDenoiser, Tensor], Tensor]
"""A guided sampler: (cond/uncond pair, starting state) → samples."""

Peer = Callable[[core.PairDenoiser], core.Denoiser]
"""A user's CFG function as a factory: (cond/uncond pair) → its guided denoiser (``bench.peers.apg``, ...)."""


def composed_pair(pair: core.PairDenoiser, peer: Peer, scale: float) -> core.PairDenoiser:
    """The pair DiffIER re-weights when a user's CFG function is patched in, as ``nodes.comfy_seam.sampler_pair_denoiser``
    builds it in ComfyUI: ``(D_c, Ũ)`` with ``Ũ = (w·D_c - D_peer)/(w - 1)`` (``samplers.core.effective_uncond``,
    ``scale`` = w ≠ 1), so the CFG mix of the pair at ω = w is the peer's guided prediction and at ω = 1 the conditional
    model; DiffIER's eq. W moves ω along ``D_c - Ũ`` between them.

    The peer is built once, on the model pair's output of the current call, and sees every model call in order (DiffIER's
    look-ahead calls too), so its state (APG's momentum, CFG-Zero*'s call count) advances as the patched model's does in
    ComfyUI: build a fresh composed pair for every run. One model call per call, as the peer alone.
    """
    current: list[tuple[Tensor, Tensor]] = []
    guided = peer(lambda x, sigma: current[-1])

    def composed(x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        current[:] = [pair(x, sigma)]
        cond = current[-1][0]
        return cond, core.effective_uncond(cond, guided(x, sigma), scale)

    return composed


def guidance_recipes(steps: int, scale: float, flow: bool) -> dict[str, tuple[str, Sampler]]:
    """DiffIER (K = 1, λ = 1: 2·(2N - 1) NFE at N steps; on both twins, though the sampler's default iterates on EPS/V
    only, ``samplers.diffier.MIN_CFG``), DiffIER stacked on APG and on CFG-Zero* (:func:`composed_pair`, as in ComfyUI)
    and the alternatives at its NFE, by name: (role, sampler).

    Plain CFG at N steps (equal steps) and at 2N - 1 steps (equal NFE); APG (arXiv 2410.02416, the paper's η 0 and
    momentum -0.5, ComfyUI's norm threshold 5), CFG-Zero* (arXiv 2503.18886, ComfyUI's form; on flow its zero-init
    first call is free, so it gets one more step), RescaleCFG (φ 0.7) and CFGNorm, each by Euler at 2N - 1 steps. Under
    DiffIER CFG-Zero* is ComfyUI's node, which has no zero-init (DiffIER needs ``D_c`` at every call anyway).
    The peers hold state: each sampler builds a fresh one.
    """
    budget = 2 * steps - 1
    euler = lambda n: (lambda denoiser, x: ddim(denoiser, x, schedule(n, flow), flow))  # noqa: E731
    at_budget = euler(budget)
    ours = lambda pair, x: diffier(pair, x, schedule(steps, flow), scale, 1, flow=flow, min_cfg=1.0)[0]  # noqa: E731
    apg = lambda pair: peers.apg(pair, scale, eta=0.0, momentum=-0.5)  # noqa: E731
    zero_star = lambda zero_init: lambda pair: peers.cfg_zero_star(pair, scale, flow, zero_init)  # noqa: E731
    return {
        "DiffIER (K 1)": ("ours", ours),
        "DiffIER (K 1) + APG": ("ours", lambda pair, x: ours(composed_pair(pair, apg, scale), x)),
        "DiffIER (K 1) + CFG-Zero*": ("ours", lambda pair, x: ours(composed_pair(pair, zero_star(0), scale), x)),
        f"CFG, {steps} steps": ("baseline", lambda pair, x: euler(steps)(core.guided(pair, scale), x)),
        f"CFG, {budget} steps": ("baseline", lambda pair, x: at_budget(core.guided(pair, scale), x)),
        "APG (η 0, β -0.5)": ("peer", lambda pair, x: at_budget(apg(pair), x)),
        "CFG-Zero*": ("peer", lambda pair, x: euler(budget + int(flow))(zero_star(None)(pair), x)),
        "RescaleCFG (φ 0.7)": ("peer", lambda pair, x: at_budget(peers.rescale_cfg(pair, scale, flow=flow), x)),
        "CFGNorm": ("peer", lambda pair, x: at_budget(peers.cfg_norm(pair, scale), x)),
    }


def guidance_rows(testbed: Testbed) -> list[dict]:
    """Per twin and cfg: every recipe of :func:`guidance_recipes` on ``guidance_samples`` balanced labels a seed; FD,
    precision/recall, accuracy, and the RMS error of the first ``error_samples`` to the plain-CFG fine solve."""
    s, tally = testbed.setting, Tally()
    labels, m = patches.balanced_labels(s.guidance_samples), s.error_samples
    for flow in (False, True):
        for seed in s.seeds:
            start = start_state(patches.initial_noise(s.guidance_samples, seed), schedule(1, flow)[0], flow)
            for scale in s.guidance_scales:
                reference = fine_solve(testbed, flow, scale, seed, m)
                for name, (role, sampler) in guidance_recipes(s.guidance_steps, scale, flow).items():
                    counted = counters(testbed.models[flow], labels)
                    x = sampler(counted.pair, start)
                    identity = {"method": "DiffIER", "family": family(flow), "setting": f"cfg {scale:g}",
                                "variant": name, "role": role, "nfe": counted.evals}
                    tally.add(identity, **sample_metrics(testbed, x, labels),
                              error=patches.solve_error(x[:m], reference).mean())
    return tally.rows() + [floor_row(testbed, "DiffIER", s.guidance_samples)]


# ---------------------------------------------------------------------------------------------------------------------
# 4. Noise Awareness Guidance


def noise_estimator(testbed: Testbed, flow: bool) -> NoiseEstimator:
    """The pack's learned noise-level estimator (``train_noise_estimator``, as the training node fits it) on 2000
    training patches, over the twin's training range (EPS σ 0.002…80, flow s 0.001…0.999), ``estimator_iterations``
    iterations, seed 0; cached beside the twins (keyed by the data, the iterations and the twin)."""
    s = testbed.setting
    key = f"testbed4:{testbed.data.digest()}:{s.estimator_iterations}:{family(flow)}"
    path = Path(s.cache_dir or CACHE_DIR) / f"testbed4_noise_estimator_{family(flow)}.safetensors"
    cached = load_estimator(path) if path.exists() else None
    if cached is not None and cached.record["model"] == key:
        return cached
    x0 = patches.train_reference(testbed.data, 200)[0]
    sigma_range = (0.001, 0.999) if flow else (0.002, 80.0)
    estimator = train_noise_estimator(x0, sigma_range, flow, s.estimator_iterations, seed=0)[0]
    probe = torch.tensor([0.05, 0.2, 0.5, 0.8] if flow else [0.05, 0.3, 1.0, 5.0])
    estimator.record.update(model=key, pack_version="", log_error=log_error(estimator, calibration(estimator, x0[:200], probe),
                                                                          probe))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_estimator(estimator, path)
    return estimator


def noise_guidance_rows(testbed: Testbed) -> list[dict]:
    """Per twin, model (itself; reading σ as (1+κ)σ, ``gmm.miscalibrated``) and cfg: plain sampling and Noise Awareness
    Guidance in mode ``estimator`` at each strength (at every level its cap allows, ``samplers.nag.LEVEL_CAP``), Euler at
    ``noise_steps`` from the same noise; RMS error to the fine solve of the exact model, and its ratio to plain on the
    same seed."""
    s, tally = testbed.setting, Tally()
    labels = patches.balanced_labels(s.samples)
    for flow in (False, True):
        estimator, model = noise_estimator(testbed, flow), testbed.models[flow]
        kappas = {"model": 0.0} | {f"reads σ as {1 + kappa:g}σ": kappa for kappa in s.kappas}
        for seed in s.seeds:
            start = start_state(patches.initial_noise(s.samples, seed), schedule(1, flow)[0], flow)
            for scale in s.noise_scales:
                reference = fine_solve(testbed, flow, scale, seed, s.samples)
                for model_name, kappa in kappas.items():
                    m = counters(model, labels)
                    pair, cond = (gmm.miscalibrated(d, kappa, flow) if kappa else d for d in (pair_at(m, scale), m.cond))
                    variants = {"plain": ("baseline", core.guided(pair, scale))} | {
                        f"estimator w {w:g}": ("ours", nag_guided(pair, cond, scale, w, mode="estimator",
                                                                 estimator=estimator, flow=flow))
                        for w in s.noise_strengths}
                    errors = {}
                    for name, (role, denoiser) in variants.items():
                        x = ddim(denoiser, start, schedule(s.noise_steps, flow), flow)
                        errors[name] = patches.solve_error(x, reference).mean()
                        identity = {"method": "Noise Awareness Guidance", "family": family(flow),
                                    "setting": f"{model_name}, cfg {scale:g}", "variant": name, "role": role,
                                    "nfe": s.noise_steps * (1 if scale == 1 else 2)}
                        tally.add(identity, error=errors[name], **{"error / plain": errors[name] / errors["plain"]})
    return tally.rows()


# ---------------------------------------------------------------------------------------------------------------------
# The run, the headline and the pictures


def run(quick: bool = False, setting: Setting | None = None) -> list[dict]:
    """Every table's rows (``bench.kit.markdown_table`` after :func:`printable`): :data:`QUICK` or :data:`FULL` unless
    ``setting`` is given."""
    testbed = load_testbed(setting or (QUICK if quick else FULL))
    return (inversion_rows(testbed) + schedule_rows(testbed) + schedule_search_rows(testbed) + guidance_rows(testbed)
            + noise_guidance_rows(testbed))


def _best(rows: list[dict], metric: str, sign: float) -> dict:
    """The row best on ``metric`` in direction ``sign`` (+1: higher is better)."""
    return max(rows, key=lambda r: sign * r[metric])


def _groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """The compared rows by (method, twin, setting); the FD floors left out."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["role"] != "floor":
            out.setdefault((r["method"], r["family"], r["setting"]), []).append(r)
    return out


def compare(ours: dict, peer: dict, method: str, tie_band: float = 0.01) -> dict:
    """``ours`` against ``peer`` on the method's :data:`PRIMARY` metric: ``Δ`` = ours - peer per seed (signed so > 0
    means ours is better), mean ± std; "win" / "loss" when every seed agrees and the mean gap exceeds ``tie_band`` of
    the peer's value, else "tie"."""
    metric, sign = PRIMARY[method]
    delta = sign * (torch.tensor(ours["_per_seed"][metric], dtype=F64) - torch.tensor(peer["_per_seed"][metric], dtype=F64))
    clear = delta.mean().abs() > tie_band * abs(peer[metric])
    verdict = "win" if clear and (delta > 0).all() else "loss" if clear and (delta < 0).all() else "tie"
    return {"method": method, "family": ours["family"], "setting": ours["setting"], "metric": metric,
            "ours": ours["variant"], "ours value": ours[metric], "peer": peer["variant"], "peer value": peer[metric],
            "Δ (> 0: ours better)": delta.mean().item(), "Δ ±": delta.std().item() if len(delta) > 1 else 0.0,
            "verdict": verdict}


def headline(rows: list[dict], tie_band: float = 0.01) -> list[dict]:
    """Per method, twin and setting: our best variant against the best baseline or peer (:func:`compare`)."""
    out = []
    for (method, _, _), group in _groups(rows).items():
        metric, sign = PRIMARY[method]
        ours = _best([r for r in group if r["role"] == "ours"], metric, sign)
        peer = _best([r for r in group if r["role"] != "ours"], metric, sign)
        out.append(compare(ours, peer, method, tie_band))
    return out


def losses(rows: list[dict], tie_band: float = 0.01) -> list[dict]:
    """Every baseline or peer that beats our best variant of its group on the mean (:func:`compare`; any verdict)."""
    out = []
    for (method, _, _), group in _groups(rows).items():
        metric, sign = PRIMARY[method]
        ours = _best([r for r in group if r["role"] == "ours"], metric, sign)
        out += [compare(ours, peer, method, tie_band) for peer in group
                if peer["role"] != "ours" and sign * peer[metric] > sign * ours[metric]]
    return out


def printable(rows: list[dict]) -> list[dict]:
    """The rows without their per-seed values, for ``bench.kit.markdown_table``."""
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def _grid(rows: dict[str, Tensor], title: str, path: Path) -> Path:
    """A labelled PNG: one row of patches per entry of ``rows`` (its name on the left; column c is class c), ``title``
    on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(v) for v in rows.values())
    height = len(rows) * 0.95 + 0.7  # inches: 0.95 a row, 0.7 for the title and the class names
    fig, axes = plt.subplots(len(rows), columns, figsize=(columns * 0.9 + 2.2, height), squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c in range(columns):
            axes[r, c].axis("off")
            if c < len(images):
                axes[r, c].imshow(((images[c].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy(),
                                  interpolation="nearest")
        axes[r, 0].text(-0.15, 0.5, name, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=7)
    for c, photo in enumerate(patches.PHOTOS[:columns]):
        axes[0, c].set_title(photo[:12], fontsize=6)
    fig.suptitle(title, fontsize=9, y=1 - 0.1 / height, va="top")
    fig.subplots_adjust(left=0.27, right=0.99, top=1 - 0.6 / height, bottom=0.01, wspace=0.05, hspace=0.08)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _inversion_picture(testbed: Testbed, out_dir: Path, steps: int, scale: float) -> Path:
    """Held-out patches (one a class), POLARIS, the standard recipe and the best inversion peer, both twins."""
    x0, labels = (t.double() if t.is_floating_point() else t for t in patches.heldout_patches(testbed.data, 1))
    rows = {}
    for flow in (False, True):
        model = testbed.models[flow]
        results = {}
        for name, (role, recipe) in inversion_recipes(x0, patches.initial_noise(len(x0), 1000), steps, scale, flow).items():
            null = Counted(core.conditional_pair(model.denoiser(None)), model.denoiser(None))
            results[name] = (role, recipe(counters(model, labels), null)[0])
        best_peer = max((n for n, (role, _) in results.items() if role == "peer"),
                        key=lambda n: psnr(results[n][1], x0).mean().item())
        rows[f"{family(flow)}: held-out"] = x0
        for name in ("POLARIS", f"standard DDIM (cfg 1 → {scale:g})", best_peer):
            label = f"{name} (its ω, not cfg {scale:g})" if name == "POLARIS" else name  # it replays ω ≈ 0.7-0.9
            rows[f"{family(flow)}: {label}\nPSNR {psnr(results[name][1], x0).mean().item():.1f} dB"] = results[name][1]
    return _grid(rows, f"Invert → denoise, {steps} steps, user cfg {scale:g} (testbed 4, seed 0)",
                 out_dir / "testbed4_inversion.png")


def _guidance_picture(testbed: Testbed, out_dir: Path, steps: int, scale: float) -> Path:
    """One sample a class at cfg ``scale``: every recipe of :func:`guidance_recipes`, both twins, seed 0."""
    labels, rows = patches.balanced_labels(patches.N_CLASSES), {}
    for flow in (False, True):
        start = start_state(patches.initial_noise(len(labels), 0), schedule(1, flow)[0], flow)
        for name, (_, sampler) in guidance_recipes(steps, scale, flow).items():
            rows[f"{family(flow)}: {name}"] = sampler(testbed.models[flow].pair_denoiser(labels), start)
    return _grid(rows, f"Samples at cfg {scale:g}: DiffIER ({steps} steps) vs plain CFG and the peers at its NFE (seed 0)",
                 out_dir / f"testbed4_guidance_cfg{scale:g}.png")


def _schedule_picture(testbed: Testbed, out_dir: Path, steps: int) -> Path:
    """One sample a class at cfg 1: the fine solve, the default base schedule and VRG on it, both twins, seed 0."""
    labels, rows = patches.balanced_labels(patches.N_CLASSES), {}
    for flow in (False, True):
        denoiser, profile = testbed.models[flow].denoiser(labels), error_profile(testbed, flow)
        base = schedule(steps, flow)
        start = start_state(patches.initial_noise(len(labels), 0), base[0], flow)
        reference = fine_solve(testbed, flow, 1.0, 0, len(labels))
        rows[f"{family(flow)}: fine solve ({testbed.setting.fine_steps} steps)"] = reference
        for name, sigmas in (("default base", base), ("VRG(default base)", optimize_sigmas(base, profile))):
            x = ddim(denoiser, start, sigmas, flow)
            rows[f"{family(flow)}: {name}\nRMS error {patches.solve_error(x, reference).mean().item():.4f}"] = x
    return _grid(rows, f"VRG vs its base schedule, {steps} Euler steps, cfg 1 (seed 0)", out_dir / "testbed4_vrg.png")


def demo_pictures(out_dir: str | Path, setting: Setting = FULL, steps: int = 10) -> list[Path]:
    """Labelled PNG grids of real patches: POLARIS reconstructions beside the standard recipe's and the best inversion
    peer's (cfg ``inversion_cfg``); samples at cfg 3 and 9, plain CFG vs DiffIER and the guidance peers at its NFE; VRG
    vs its base; all at ``steps`` steps. Returns the paths."""
    testbed, out_dir = load_testbed(setting), Path(out_dir)
    return [_inversion_picture(testbed, out_dir, steps, setting.inversion_cfg),
            *(_guidance_picture(testbed, out_dir, steps, scale) for scale in (3.0, 9.0)),
            _schedule_picture(testbed, out_dir, steps)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and sample counts (CI smoke test)")
    parser.add_argument("--pictures", metavar="DIR", help="also write the demo pictures into DIR")
    args = parser.parse_args()
    began = time.perf_counter()
    rows = run(args.quick)
    for method in PRIMARY:
        print(f"\n### {method}\n\n{markdown_table(printable([r for r in rows if r['method'] == method]))}")
    top = headline(rows)
    print(f"\n### Headline: ours vs the best peer\n\n{markdown_table(top)}")
    lost = losses(rows)
    print(f"\n### Where we lose: every baseline or peer ahead of our best variant on the mean ({len(lost)})\n\n"
          f"{markdown_table(lost) if lost else 'nowhere'}")
    print(f"\nrun time {time.perf_counter() - began:.0f} s")
    if args.pictures:
        for path in demo_pictures(args.pictures, QUICK if args.quick else FULL):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()

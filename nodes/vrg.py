"""VRG, Variance-Reduction Guidance (arXiv 2510.21792): calibrate a model's error profile once, then sample on the σ
schedule that minimises the variance of the accumulated error. Math in ``samplers/vrg.py``.

VRG Calibrate also runs the schedule search (``samplers/schedule_search.py``): for each step count asked for, every
scheduler of the host that applies to the model and the AYS / GITS / OptimalSteps tables of its family, each with and
without VRG, are measured against a fine solve from the same noise, and the lowest is stored with the profile.

The ``vrg`` scheduler in every scheduler dropdown hands out that stored choice for the profile that travels with the
MODEL (attached by VRG Calibrate or VRG Load Profile), or else the newest profile in ``models/vrg_profiles`` calibrated
for a model with the same noise schedule; with no stored choice for the step count it optimises the stored base (or
``normal``) with VRG and says so in the log; with no profile at all it stops with an error that says what to run.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from ..plots.line import Plot, line_plot
from ..samplers.core import check_sigmas
from ..samplers.schedule_search import DEFAULT_BANK, ScheduleChoice, choose_schedule, measured_vrg, stored_base, stored_schedule
from ..samplers.vrg import ErrorProfile, cumulative_error, default_sigma_grid, measure_error_profile, optimize_sigmas
from . import types
from .comfy_seam import (
    EXPERT,
    PACK_VERSION,
    aliases,
    attached_profile,
    check_clean_latent,
    check_made_for,
    interruptible_progress,
    io,
    model_fingerprint,
    model_is_flow,
    sampler_names,
    sampling_fingerprint,
    schedule,
    scheduler_names,
    scheduler_sigmas,
    sigma_range,
    table_schedules,
    with_guided_denoiser,
    with_profile,
)

CATEGORY = "sampling/error_control/vrg"
SCHEDULER_NAME = "vrg"
BASE_SCHEDULER = "normal"

types.register_folder(types.PROFILE_FOLDER)


def check_profile(profile: ErrorProfile, model_patcher, node: str) -> None:
    """The profile must be for the model's parametrisation and family; another model's weights are worth a visible
    warning only. The schedule is re-derived from the model's own σ table at each use, so another shift still applies."""
    check_made_for(profile.model, profile.flow, model_patcher, node, "profile", "calibrated for",
                   "Calibrate this model with 'VRG Calibrate'.")


def base_sigmas(model_patcher, scheduler: str, steps: int, denoise: float, node: str) -> torch.Tensor:
    """The base schedule as BasicScheduler builds it; not 'vrg' itself."""
    if scheduler == SCHEDULER_NAME:
        raise ValueError(f"{node}: input 'scheduler' is the base schedule VRG improves; pick one other than 'vrg'.")
    return scheduler_sigmas(model_patcher, scheduler, steps, denoise, node)


def schedule_plot(base: torch.Tensor, optimised: torch.Tensor, profile: ErrorProfile, note: str) -> Plot:
    steps = list(range(len(base) - 1))
    title = (f"VRG: CPE {float(cumulative_error(base, profile)):.4g} -> {float(cumulative_error(optimised, profile)):.4g}"
             f" ({note})")
    return line_plot({"base sigma": (steps, base[:-1].tolist()), "VRG sigma": (steps, optimised[:-1].tolist())},
                     title, "step", "sigma")


def profile_plot(profile: ErrorProfile) -> Plot:
    return line_plot({"mse_x0": (torch.log10(profile.sigmas).tolist(), profile.mse.tolist())},
                     f"VRG error profile ({'flow' if profile.flow else 'EPS/V'}, {len(profile.sigmas)} levels)",
                     "log10 sigma", "mse_x0")


def search_plot(choices: dict[int, ScheduleChoice]) -> Plot:
    """Every candidate's measured error against the step count, one line a candidate."""
    steps = sorted(choices)
    names = list(choices[steps[0]].errors)
    series = {name: (steps, [choices[n].errors.get(name, float("nan")) for n in steps]) for name in names}
    picks = ", ".join(f"{n}: {choices[n].name}" for n in steps)
    return line_plot(series, f"Schedule search, error to a fine solve (picked {picks})", "steps", "mean squared error")


STOCHASTIC = ("ancestral", "sde", "ddpm", "lcm", "seeds", "sa_solver", "cfg_pp", "adaptive")
"""Parts of the names of KSampler samplers with no single fine solve for a given noise (or their own guidance hooks)."""


def deterministic_twin(sampler_name: str) -> str:
    """The deterministic sampler the search measures for ``sampler_name``: itself, or the name without its stochastic
    suffix where the host has it (``dpmpp_2m_sde`` → ``dpmpp_2m``), else ``euler``."""
    if not any(part in sampler_name for part in STOCHASTIC):
        return sampler_name
    for suffix in ("_ancestral", "_sde_gpu", "_sde"):
        twin = sampler_name.removesuffix(suffix)
        if twin != sampler_name and twin in sampler_names() and not any(part in twin for part in STOCHASTIC):
            return twin
    return "euler"


def parse_steps(text: str, node: str) -> list[int]:
    """Step counts from a list like "10, 20, 30" (each 2–1000, repeats dropped; blank: none), or a ValueError saying
    what to write."""
    if not text.strip():
        return []
    parts = [part.strip() for part in text.replace(";", ",").split(",") if part.strip()]
    if not parts or not all(part.isdigit() and 2 <= int(part) <= 1000 for part in parts):
        raise ValueError(f"{node}: input 'search_steps' must list step counts from 2 to 1000 separated by commas, e.g. "
                         f"'10, 20, 30'; got {text!r}.")
    return list(dict.fromkeys(int(part) for part in parts))


def search_candidates(model, steps: int) -> dict[str, torch.Tensor]:
    """Every host scheduler (not 'vrg') that gives this model a full ``steps``-step schedule, and the family's tables;
    a schedule equal to an earlier one is measured once, under the earlier name."""
    found = {}
    for name in scheduler_names():
        if name != SCHEDULER_NAME:
            try:
                found[name] = scheduler_sigmas(model, name, steps, 1.0, "VRG Calibrate")
            except Exception as e:  # noqa: BLE001 (another pack's scheduler may fail in any way on this model)
                logging.info(f"VRG Calibrate: scheduler {name!r} does not apply to this model ({e}); not searched.")
    found.update(table_schedules(model, steps))
    usable = {}
    for name, sigmas in found.items():
        full = len(sigmas) == steps + 1 and sigmas[-1] == 0 and bool((sigmas.diff() < 0).all())
        same = next((other for other, kept in usable.items() if torch.equal(kept, sigmas.double())), None)
        if full and same is None:
            usable[name] = sigmas.double()
        else:
            why = f"the same as {same!r}" if full else f"no {steps}-step schedule ending at 0"
            logging.info(f"VRG Calibrate: scheduler {name!r} gives {why}; not searched.")
    return usable


class VRGCalibrate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ErrorControlVRGCalibrate",
            **aliases("schedule", "sigmas", "calibration", "variance reduction"),
            display_name="VRG Calibrate (measure error profile)",
            category=CATEGORY,
            description="Variance-Reduction Guidance, step 1 (once per model): measures the model's x0 prediction error "
                        "at each noise level on your clean latents, then searches the schedule: for each step count, "
                        "every scheduler that applies to the model (plus AYS / GITS / OptimalSteps where the family has "
                        "tables), each with and without VRG, sampled with your sampler from the same noise and measured "
                        "against a fine solve; the lowest error wins. Everything is saved to models/vrg_profiles. The "
                        "MODEL output carries it, so a KSampler fed from it gets the winner from the 'vrg' scheduler. "
                        "A stochastic sampler (ancestral, SDE) is searched with its deterministic twin "
                        "(euler_ancestral → euler, dpmpp_2m_sde → dpmpp_2m, else euler).",
            is_output_node=True,
            inputs=[
                io.Model.Input("model"),
                io.Latent.Input("latent", tooltip="Clean latents (VAE-encoded images of the kind you generate); 4–16 "
                                                  "is plenty, batch them with 'Repeat Latent Batch' or 'Latent Batch'."),
                io.Conditioning.Input("positive", tooltip="The conditioning to calibrate under; an empty prompt is the "
                                                          "usual choice."),
                io.Conditioning.Input("negative", optional=True, tooltip="Only used when cfg > 1."),
                io.Float.Input("cfg", default=1.0, min=1.0, max=30.0, step=0.1,
                               tooltip="Guidance to calibrate under (1 = the plain model; tested 1–8)."),
                io.Int.Input("grid_points", default=64, min=8, max=256,
                             tooltip="Noise levels measured, log-spaced over the model's σ range (tested 32–128).", **EXPERT),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the noise added to the clean latents (one shared bank for all levels)."),
                io.String.Input("profile_name", default="vrg_profile",
                                tooltip="File name in models/vrg_profiles (letters, digits, '_', '-', '.')."),
                io.Combo.Input("sampler_name", options=sampler_names(), default="euler", optional=True,
                               tooltip="The KSampler sampler you will use: the schedule search samples with it."),
                io.String.Input("search_steps", default="", optional=True,
                                tooltip="Step counts to search a schedule for, e.g. '10, 20, 30' (blank: calibrate "
                                        "only). Each costs about 2 × (schedulers) × steps + 8 × steps model calls per "
                                        "noise sample. The sigmas output is the first one's choice."),
                io.Int.Input("search_bank", default=DEFAULT_BANK, min=1, max=256, optional=True,
                             tooltip="Noise samples each schedule is measured on (32: the pick agreed across seeds "
                                     "on the analytic testbeds; on testbed 4's flow twin at 10 steps it did not, so "
                                     "give flow at few steps more; fewer is faster and noisier).", **EXPERT),
            ],
            outputs=[io.Model.Output(display_name="model"), types.VRG_PROFILE.Output(display_name="profile"),
                     io.Image.Output(display_name="plot"), io.Sigmas.Output(display_name="sigmas"),
                     io.Image.Output(display_name="search plot")],
        )

    @classmethod
    def execute(cls, model, latent, positive, cfg, grid_points, seed, profile_name, sampler_name="euler",
                search_steps="", search_bank=DEFAULT_BANK, negative=None) -> io.NodeOutput:
        node = "VRG Calibrate"
        target = types.new_file(types.PROFILE_FOLDER, profile_name, node, "profile_name")
        samples = latent["samples"]
        check_clean_latent(model, samples, node, "VAE-encoded images (a batch of 4–16)")
        steps_list, flow, twin = parse_steps(search_steps, node), model_is_flow(model), deterministic_twin(sampler_name)
        candidates = {steps: search_candidates(model, steps) for steps in steps_list}
        grid = default_sigma_grid(*sigma_range(model), grid_points, flow)
        result, progress = {}, interruptible_progress(grid_points + SEARCH_UNITS * len(steps_list))

        def measure(denoiser, x0, sampler):
            generator = torch.Generator(device="cpu").manual_seed(seed)
            profile = measure_error_profile(denoiser, x0, grid, generator, flow=flow, batch_size=4, callback=progress)
            noise = torch.randn((search_bank, *x0.shape[1:]), generator=generator).to(x0)
            for k, steps in enumerate(steps_list):
                on_run = lambda done, total, k=k: progress(grid_points + round(SEARCH_UNITS * (k + done / total)))  # noqa: E731
                result[steps] = choose_schedule(denoiser, noise, candidates[steps], flow, profile, sampler, batch_size=4,
                                                callback=on_run)
            result["profile"] = profile

        with_guided_denoiser(model, positive, negative if negative is not None else positive, cfg, samples, seed, measure,
                             sampler_name=twin)
        choices = {steps: result[steps] for steps in steps_list}
        if not choices:
            return cls.profile_only(model, result["profile"], cfg, target)
        for steps, choice in choices.items():
            logging.info(f"{node}: {steps} steps with {twin}: picked {choice.name} ({choice.model_calls} model calls); "
                         + ", ".join(f"{k} {v:.4g}" for k, v in sorted(choice.errors.items(), key=lambda kv: kv[1])))
        profile = stamped(result["profile"], model, cfg, {str(n): c.record(twin, search_bank) for n, c in choices.items()})
        profile.save(target)
        plot, searched = profile_plot(profile), search_plot(choices)
        return io.NodeOutput(with_profile(model, profile), profile, plot.image, choices[steps_list[0]].sigmas.float(),
                             searched.image, ui=plot.ui)

    @classmethod
    def profile_only(cls, model, measured: ErrorProfile, cfg: float, target) -> io.NodeOutput:
        """No search asked for: the profile alone; ``sigmas`` is VRG on ``normal`` at 20 steps, the plot the CPE's."""
        profile = stamped(measured, model, cfg, {})
        profile.save(target)
        base = scheduler_sigmas(model, BASE_SCHEDULER, 20, 1.0, "VRG Calibrate")
        optimised = optimize_sigmas(base, profile)
        plot, predicted = profile_plot(profile), schedule_plot(base, optimised, profile, "CPE prediction, no search")
        return io.NodeOutput(with_profile(model, profile), profile, plot.image, optimised.float(), predicted.image,
                             ui=plot.ui)


class VRGLoadProfile(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ErrorControlVRGLoadProfile",
            **aliases("schedule", "calibration", "profile"),
            display_name="VRG Load Profile",
            category=CATEGORY,
            description="Loads an error profile saved by VRG Calibrate and attaches it to the MODEL for the 'vrg' "
                        "scheduler; also outputs it for VRG Scheduler / VRG Optimize Sigmas.",
            inputs=[io.Model.Input("model"),
                    io.Combo.Input("profile_name", options=types.list_files(types.PROFILE_FOLDER),
                                   tooltip="A file in models/vrg_profiles.")],
            outputs=[io.Model.Output(display_name="model"), types.VRG_PROFILE.Output(display_name="profile"),
                     io.Image.Output(display_name="plot")],
        )

    @classmethod
    def execute(cls, model, profile_name) -> io.NodeOutput:
        node = "VRG Load Profile"
        profile = types.load(types.PROFILE_FOLDER, profile_name, node, "profile_name", ErrorProfile.load)
        check_profile(profile, model, node)
        plot = profile_plot(profile)
        return io.NodeOutput(with_profile(model, profile), profile, plot.image, ui=plot.ui)


SEARCH_UNITS = 100
"""Progress-bar units of each step count's search (after one unit a calibration level)."""

def stamped(profile: ErrorProfile, model, cfg: float, schedules: dict) -> ErrorProfile:
    """The measured profile with what it was made for and the search's results."""
    return dataclasses.replace(profile, model=model_fingerprint(model), pack_version=PACK_VERSION,
                               conditioning=f"given conditioning, cfg {cfg:g}", schedules=schedules)


TRUST_REGION = dict(default=0.01, min=0.0, max=0.2, step=0.001,
                    tooltip="Trust region of each step's ᾱ ratio (the paper's lp; tested 0.005–0.05). 0 returns the "
                            "base schedule; large values give schedules with huge jumps.")


class VRGScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ErrorControlVRGScheduler",
            **aliases("schedule", "sigmas", "scheduler", "variance reduction"),
            display_name="VRG Scheduler",
            category=CATEGORY,
            description="Variance-Reduction Guidance, step 2: a base schedule re-spaced to minimise the variance of the "
                        "accumulated prediction error, from the model's calibrated error profile. Zero extra model calls. "
                        "Where VRG Calibrate's schedule search measured VRG worse than this base, the base is kept; the "
                        "plot says whether that was measured or is the CPE's prediction.",
            inputs=[io.Model.Input("model"), types.VRG_PROFILE.Input("profile"),
                    io.Combo.Input("scheduler", options=[n for n in scheduler_names() if n != SCHEDULER_NAME],
                                   default=BASE_SCHEDULER, tooltip="The base schedule VRG re-spaces."),
                    io.Int.Input("steps", default=20, min=1, max=10000,
                                 tooltip="Sampling steps, as in BasicScheduler (tested 10-50)."),
                    io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                                   tooltip="As in BasicScheduler: below 1 keeps the last steps of a longer schedule."),
                    io.Float.Input("lp", **TRUST_REGION, **EXPERT),
                    io.Boolean.Input("fix_sigma_max", default=True,
                                     tooltip="Keep the first level (matters for img2img and denoise < 1).", **EXPERT)],
            outputs=[io.Sigmas.Output(display_name="sigmas"), io.Image.Output(display_name="plot")],
        )

    @classmethod
    def execute(cls, model, profile, scheduler, steps, denoise, lp, fix_sigma_max) -> io.NodeOutput:
        check_profile(profile, model, "VRG Scheduler")
        base = base_sigmas(model, scheduler, steps, denoise, "VRG Scheduler")
        optimised, note = measured_vrg(base, profile, lp=lp, fix_sigma_max=fix_sigma_max)
        plot = schedule_plot(base, optimised, profile, note)
        return io.NodeOutput(optimised, plot.image, ui=plot.ui)


class VRGOptimizeSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ErrorControlVRGOptimizeSigmas",
            **aliases("schedule", "sigmas", "align your steps", "variance reduction"),
            display_name="VRG Optimize Sigmas",
            category=CATEGORY,
            description="Re-spaces any SIGMAS (from any scheduler node) with Variance-Reduction Guidance: same length, "
                        "same last value, strictly decreasing. Where VRG Calibrate's schedule search measured VRG worse "
                        "than these very SIGMAS, they come back unchanged; the plot says which.",
            inputs=[types.VRG_PROFILE.Input("profile"), io.Sigmas.Input("sigmas"), io.Float.Input("lp", **TRUST_REGION, **EXPERT),
                    io.Boolean.Input("fix_sigma_max", default=True, tooltip="Keep the first level.", **EXPERT)],
            outputs=[io.Sigmas.Output(display_name="sigmas"), io.Image.Output(display_name="plot")],
        )

    @classmethod
    def execute(cls, profile, sigmas, lp, fix_sigma_max) -> io.NodeOutput:
        check_sigmas(sigmas, "VRG Optimize Sigmas", "sigmas")
        optimised, note = measured_vrg(sigmas.cpu(), profile, lp=lp, fix_sigma_max=fix_sigma_max)
        plot = schedule_plot(sigmas.cpu(), optimised, profile, note)
        return io.NodeOutput(optimised, plot.image, ui=plot.ui)


PROFILES_READ: dict[str, tuple[tuple[int, int], ErrorProfile | None]] = {}
"""Profiles read from disk by path, with the (mtime, size) they were read at: a file is read again only when it changes."""


def read_profile(path: Path) -> tuple[int, ErrorProfile | None]:
    """The modification time (ns) of ``path`` and its profile (None for a damaged file), read once per change of the file."""
    stat = path.stat()
    key = (stat.st_mtime_ns, stat.st_size)
    if PROFILES_READ.get(str(path), (None,))[0] != key:
        try:
            profile = ErrorProfile.load(path)
        except ValueError:
            profile = None  # a damaged file must not block sampling with the good ones
        PROFILES_READ[str(path)] = (key, profile)
    return stat.st_mtime_ns, PROFILES_READ[str(path)][1]


def newest_profile_for(model_sampling) -> tuple[str, ErrorProfile] | None:
    """The newest profile on disk calibrated for a model with this noise schedule, with its file name, if any."""
    wanted = sampling_fingerprint(model_sampling)
    candidates = []
    for name in types.list_files(types.PROFILE_FOLDER):
        try:
            path = types.resolve(types.PROFILE_FOLDER, name, "vrg scheduler", "profile")
        except ValueError:
            continue  # a link out of the folder
        modified, profile = read_profile(path)
        if profile is not None and wanted in profile.model:
            candidates.append((modified, name, profile))
    return max(candidates, key=lambda c: c[:2])[1:] if candidates else None


def vrg_scheduler(model_sampling, steps: int) -> torch.Tensor:
    """The ``vrg`` entry of the scheduler dropdowns: the schedule search's choice for ``steps`` stored with the MODEL's
    attached profile (VRG Calibrate / VRG Load Profile, checked against the weights there), else with the newest
    profile on disk for this noise schedule; ComfyUI hands a scheduler only the model's sampling object, not its
    weights, so that fallback cannot tell fine-tunes of one base apart: it says in the log which file it used and how
    to be sure. No model call: the choice was measured at calibration. With no choice stored for ``steps`` (or one
    made for another noise schedule), :func:`fallback_schedule`."""
    profile = attached_profile(model_sampling)
    if profile is None:
        found = newest_profile_for(model_sampling)
        if found is None:
            raise ValueError("scheduler 'vrg': no VRG error profile for this model. Run 'VRG Calibrate' once (its MODEL "
                             "output carries the profile), or load one with 'VRG Load Profile' and feed its MODEL to the "
                             "sampler.")
        name, profile = found
        logging.warning(f"scheduler 'vrg': using models/{types.PROFILE_FOLDER}/{name} ({profile.model}), the newest "
                        "profile for this noise schedule; the scheduler cannot see the weights. Feed the MODEL through "
                        "'VRG Load Profile' to have the profile checked against them.")
    stored = stored_schedule(profile, steps)
    if stored is not None and sampling_fingerprint(model_sampling) in profile.model:
        return stored[1]
    return fallback_schedule(model_sampling, profile, steps)


def fallback_schedule(model_sampling, profile: ErrorProfile, steps: int) -> torch.Tensor:
    """VRG on the base the search picked at the nearest stored step count (a host scheduler; else ``normal``), logged."""
    base = stored_base(profile, steps)
    base = base if base in scheduler_names() and base != SCHEDULER_NAME else BASE_SCHEDULER
    stored = ", ".join(sorted(profile.schedules, key=int)) or "none"
    logging.warning(f"scheduler 'vrg': no schedule search stored for {steps} steps on this noise schedule (stored: "
                    f"{stored}); using VRG on '{base}'. Add {steps} to VRG Calibrate's 'search_steps' to measure it.")
    return optimize_sigmas(schedule(model_sampling, base, steps), profile)


NODES = [VRGCalibrate, VRGLoadProfile, VRGScheduler, VRGOptimizeSigmas]
REGISTRATIONS = {"schedulers": {SCHEDULER_NAME: vrg_scheduler}}

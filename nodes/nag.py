"""Noise Awareness Guidance (arXiv 2510.12497): a MODEL patch for any sampler, a GUIDER for SamplerCustomAdvanced, a
Noise Shift Meter, and the noise-level estimator of the classifier-based form (train, load). Math in ``samplers/nag.py``
and ``samplers/noise_estimator.py``.

The guidance runs as a post-CFG function, so it stacks with other model patches (FreeU, RescaleCFG, ...): its extra model
call at σ_u is the step's conditional model with the step's model options, patches included
(``comfy_seam.conditional_model``). The default mode, ``estimator``, needs a noise estimator (no model call); the
adaptive mode, and the meter without an estimator, use the VRG error profile given as input, or the one the MODEL
carries (VRG Calibrate / VRG Load Profile attach it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..plots.figures import calibration_figure, noise_shift_figure
from ..plots.line import Plot
from ..samplers.nag import estimate_sigma, nag_denoise
from ..samplers.noise_estimator import (
    NoiseEstimator,
    calibration,
    load_estimator,
    log_error,
    save_estimator,
    train_noise_estimator,
)
from ..samplers.vrg import ErrorProfile
from . import types
from .comfy_seam import (
    EXPERT,
    PACK_VERSION,
    aliases,
    cfg_guider,
    check_clean_latent,
    conditional_model,
    interruptible_progress,
    io,
    is_flow,
    ksampler_sigmas,
    latent_format_fingerprint,
    model_device,
    model_fingerprint,
    model_is_flow,
    model_profile,
    percent_window,
    recorded_ksampler_run,
    sampler_names,
    sampler_space,
    scheduler_names,
    sigma_range,
    step_model_sampling,
    with_post_cfg,
)
from .vrg import check_profile

CATEGORY = "sampling/error_control/noise_awareness_guidance"
MODES = ["estimator", "adaptive", "fixed"]
ESTIMATOR_FIX = ("Train one on VAE-encoded images with 'Train Noise Estimator (Noise Awareness Guidance)', or load one "
                 "with 'Load Noise Estimator (Noise Awareness Guidance)'")

types.register_folder(types.ESTIMATOR_FOLDER)


def guidance_inputs() -> list:
    """The inputs every Noise Awareness Guidance node shares, with their tested ranges."""
    return [
        io.Float.Input("strength", default=0.1, min=0.0, max=5.0, step=0.01,
                       tooltip="w, the guidance strength; 0 is plain sampling. estimator mode: 0.1 (tested 0.1–1; "
                               "0.1 stays within 3% of plain sampling on a model without noise shift). fixed/adaptive: "
                               "keep w·(1 − e^(−2δ)) around 0.05–0.15 (tested 0.3–1.0)."),
        io.Combo.Input("mode", options=MODES, default="estimator",
                       tooltip="estimator (default): guidance along the gradient of a learned noise-level estimator, "
                               "the paper's classifier-based form; needs the 'estimator' input. fixed: compares with "
                               "the model's own score at σ·e^δ. adaptive: at the noise level the latent actually shows "
                               "(needs a VRG error profile). fixed and adaptive can harm a model without noise shift "
                               "(fixed at w 0.5: 1.6x the error of plain CFG on the 1024-d testbed): check your model "
                               "with the Noise Shift Meter first."),
        io.Float.Input("delta", default=0.15, min=0.0, max=1.0, step=0.01,
                       tooltip="δ: fixed mode's log step up in σ, adaptive mode's floor (tested 0.1–0.2 fixed, 0–0.1 "
                               "adaptive); unused by the estimator mode.", **EXPERT),
        io.Float.Input("start_percent", default=0.5, min=0.0, max=1.0, step=0.01,
                       tooltip="Guide from this point of sampling on (0 = first step; tested 0.3–0.7). Early steps "
                               "overshoot and have little noise shift. The estimator mode also never guides above the "
                               "data's scale (σ 1; flow s 0.5), where it measured up to 1.4x plain's error.", **EXPERT),
        io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Guide up to this point of sampling (1 = last step; tested 1.0).", **EXPERT),
        types.NOISE_ESTIMATOR.Input("estimator", optional=True,
                                   tooltip="A noise-level estimator for this model's latents (Train Noise Estimator / "
                                           "Load Noise Estimator), for the estimator mode."),
        types.VRG_PROFILE.Input("profile", optional=True,
                               tooltip="The model's VRG error profile (VRG Calibrate / VRG Load Profile) for the adaptive "
                                       "mode; without it, the profile the MODEL carries."),
    ]


def resolve_profile(model_patcher, profile: ErrorProfile | None, needed: bool, node: str, why: str):
    """The profile to use (input, else the MODEL's), checked against the model; an error naming ``why`` if ``needed``
    and there is none."""
    profile = profile or model_profile(model_patcher)
    if profile is None and needed:
        raise ValueError(f"{node}: input 'profile': {why} needs the model's VRG error profile. Connect one from "
                         "'VRG Calibrate' or 'VRG Load Profile', or feed the MODEL through one of them.")
    if profile is not None:
        check_profile(profile, model_patcher, node)
    return profile


def check_estimator(estimator: NoiseEstimator, model_patcher, node: str) -> None:
    """An estimator reads one latent format in one parametrisation: another is refused, naming both."""
    flow, latent_format = model_is_flow(model_patcher), latent_format_fingerprint(model_patcher)
    if estimator.flow != flow:
        raise ValueError(f"{node}: input 'estimator' was trained for {'a flow' if estimator.flow else 'an EPS/V'} model, "
                         f"but this model is {'flow' if flow else 'EPS/V'}. {ESTIMATOR_FIX} for this model.")
    if estimator.latent_format != latent_format:
        raise ValueError(f"{node}: input 'estimator' was trained on {estimator.latent_format} latents, but this model's "
                         f"are {latent_format}. {ESTIMATOR_FIX} for this model.")


def wrong_mode(node: str, mode: str) -> str:
    return f"{node}: input 'mode' must be one of {MODES}, got {mode!r}."


def missing_estimator(node: str) -> str:
    return (f"{node}: input 'estimator': mode 'estimator' (the default) needs a noise-level estimator, and none is "
            f"connected. {ESTIMATOR_FIX}, and connect it; or pick mode 'fixed' (training-free, one extra model call a "
            "guided step).")


def check_guidance(node: str, strength: float, mode: str, delta: float, start_percent: float, end_percent: float,
                   estimator: NoiseEstimator | None) -> None:
    if mode not in MODES:
        raise ValueError(wrong_mode(node, mode))
    if not strength >= 0:
        raise ValueError(f"{node}: input 'strength' must be >= 0 (0 disables the guidance), got {strength}.")
    if mode == "estimator" and estimator is None and strength > 0:
        raise ValueError(missing_estimator(node))
    if mode == "fixed" and delta <= 0 and strength > 0:
        raise ValueError(f"{node}: input 'delta' must be > 0 in mode 'fixed' (σ_u = σ·e^δ equals σ at 0, a no-op "
                         "that still costs a model call); use 0.1–0.2.")
    if not 0 <= start_percent < end_percent <= 1:
        raise ValueError(f"{node}: inputs 'start_percent' ({start_percent}) and 'end_percent' ({end_percent}) must "
                         "satisfy 0 <= start < end <= 1; e.g. 0.5 and 1.0 guide the second half of sampling.")


def guidance_function(strength: float, mode: str, delta: float, start_percent: float, end_percent: float,
                      profile: ErrorProfile | None, estimator: NoiseEstimator | None):
    """A ComfyUI post-CFG function applying :func:`samplers.nag.nag_denoise` to the step's guided prediction."""

    def post_cfg(args: dict) -> torch.Tensor:
        model_sampling = step_model_sampling(args)
        window = percent_window(model_sampling, start_percent, end_percent)
        return nag_denoise(conditional_model(args), args["input"], args["sigma"], args["denoised"], args["cond_denoised"],
                           strength, mode, delta, profile, is_flow(model_sampling), window, estimator)

    return post_cfg


def patched(model, node: str, strength: float, mode: str, delta: float, start_percent: float, end_percent: float,
            estimator: NoiseEstimator | None = None, profile: ErrorProfile | None = None):
    """The MODEL with the guidance as a post-CFG function, after every input is checked."""
    check_guidance(node, strength, mode, delta, start_percent, end_percent, estimator)
    if estimator is not None:
        check_estimator(estimator, model, node)
    profile = resolve_profile(model, profile, mode == "adaptive", node, "mode 'adaptive'")
    return with_post_cfg(model, guidance_function(strength, mode, delta, start_percent, end_percent, profile, estimator))


NOT_CONNECTED = object()
"""What :meth:`GuidanceNode.validate_inputs` receives for an input that has no link: ComfyUI leaves it out there, and
passes a linked one as None (its value is not known before the run)."""


class GuidanceNode(io.ComfyNode):
    """A node with the guidance inputs (:func:`guidance_inputs`), called ``TITLE`` in its messages."""

    TITLE = "Noise Awareness Guidance"

    @classmethod
    def validate_inputs(cls, mode: str | None = None, estimator: object = NOT_CONNECTED) -> bool | str:
        """ComfyUI's check before the run: a bare node in mode 'estimator' (the default) with no estimator connected is
        refused there, with the message on the node, instead of failing after Run. (ComfyUI skips its own check of the
        inputs named here, so the mode's options are checked too; a linked mode is known only when the node runs.)"""
        if mode is not None and mode not in MODES:
            return wrong_mode(cls.TITLE, mode)
        if mode == "estimator" and estimator is NOT_CONNECTED:
            return missing_estimator(cls.TITLE)
        return True


class NoiseAwarenessGuidance(GuidanceNode):
    TITLE = "Noise Awareness Guidance (model patch)"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ErrorControlNoiseAwarenessGuidance",
            **aliases("NoiseAware", "noise shift", "noise awareness", "exposure bias"),
            display_name="Noise Awareness Guidance (model patch)",
            category=CATEGORY,
            description="Noise Awareness Guidance: steers each step's latent back to the noise level the schedule "
                        "expects. The default mode, 'estimator' (the paper's classifier-based form, no extra model call), "
                        "needs a noise estimator trained once per model family: connect Train Noise Estimator or Load "
                        "Noise Estimator; without one the prompt is refused before it runs. Mode 'fixed' is training-free "
                        "(the model's own score at a slightly higher noise level, +1 model call per guided step). Works "
                        "in the plain KSampler and stacks with other model patches.",
            inputs=[io.Model.Input("model"), *guidance_inputs()],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, **guidance) -> io.NodeOutput:
        return io.NodeOutput(patched(model, cls.TITLE, **guidance))


class NoiseAwarenessGuider(GuidanceNode):
    TITLE = "Noise Awareness Guidance (guider)"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ErrorControlNoiseAwarenessGuider",
            **aliases("NoiseAware guider", "noise shift", "noise awareness", "guider"),
            display_name="Noise Awareness Guidance (guider)",
            category=CATEGORY,
            description="Classifier-free guidance plus Noise Awareness Guidance, as a GUIDER for SamplerCustomAdvanced. "
                        "The default mode, 'estimator', needs a noise estimator connected (Train / Load Noise "
                        "Estimator); mode 'fixed' is training-free.",
            inputs=[io.Model.Input("model"), io.Conditioning.Input("positive"), io.Conditioning.Input("negative"),
                    io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                                   tooltip="Classifier-free guidance scale (tested 1–8)."),
                    *guidance_inputs()],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, model, positive, negative, cfg, **guidance) -> io.NodeOutput:
        guided = patched(model, cls.TITLE, **guidance)
        return io.NodeOutput(cfg_guider(guided, positive, negative, cfg))


LevelReader = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(x, conditional prediction, σ) -> [B]``: the noise level a latent shows."""


def level_reader(estimator: NoiseEstimator | None, profile: ErrorProfile | None) -> LevelReader:
    """The estimator's reading (against data), else the residual against the model's own error profile."""
    if estimator is not None:
        return lambda x, denoised, sigma: estimator.estimate(x)
    return lambda x, denoised, sigma: estimate_sigma(x, denoised, sigma, profile)


def recorded_run(model, read_level: LevelReader, latent: dict, seed: int, steps: int, cfg: float, sampler_name: str,
                 scheduler: str, positive, negative, node: str) -> tuple[list, list]:
    """One KSampler pass that records, at every model call, the scheduled level and the RMS over the batch of the level
    the latent shows (``read_level``)."""
    scheduled, estimated = [], []

    def record(args: dict) -> torch.Tensor:
        sigma = args["sigma"]
        scheduled.append(sigma[0])
        estimated.append(read_level(args["input"], args["cond_denoised"], sigma).float().square().mean().sqrt())
        return args["denoised"]

    recorder = with_post_cfg(model, record)
    sigmas = ksampler_sigmas(recorder, sampler_name, scheduler, steps)
    recorded_ksampler_run(recorder, latent, seed, sampler_name, sigmas, cfg, positive, negative, node)
    return torch.stack(scheduled).tolist(), torch.stack(estimated).tolist()


class NoiseShiftMeter(GuidanceNode):
    TITLE = "Noise Shift Meter"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ErrorControlNoiseShiftMeter",
            **aliases("NoiseAware meter", "noise shift", "noise level", "diagnostic"),
            display_name="Noise Shift Meter (Noise Awareness Guidance)",
            category=CATEGORY,
            description="Runs the same KSampler pass twice, plain and with Noise Awareness Guidance, and plots the "
                        "scheduled noise level against the level the latent actually shows at every step: the "
                        "noise-shift analysis of the paper, for your model. The level is read by the noise estimator "
                        "when one is connected (measured against data), else from the model's residual against its "
                        "VRG error profile (measured against the model itself, blind to its own miscalibration). "
                        "Readings are reliable where σ is at least the latent's own scale. The default mode, 'estimator', "
                        "needs the estimator connected.",
            is_output_node=True,
            inputs=[io.Model.Input("model"), io.Conditioning.Input("positive"), io.Conditioning.Input("negative"),
                    io.Latent.Input("latent_image"),
                    io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                                 tooltip="Seed of the starting noise, the same for the plain and the guided pass."),
                    io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Sampling steps (tested 4–30)."),
                    io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                                   tooltip="Classifier-free guidance scale (tested 1–8)."),
                    io.Combo.Input("sampler_name", options=sampler_names(), default="euler",
                                   tooltip="The sampler to measure (tested euler, dpmpp_2m)."),
                    io.Combo.Input("scheduler", options=scheduler_names(), default="normal",
                                   tooltip="The schedule to measure (tested normal, karras)."),
                    *guidance_inputs()],
            outputs=[io.Image.Output(display_name="plot")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler,
                **guidance) -> io.NodeOutput:
        node = cls.TITLE
        estimator = guidance.get("estimator")
        guided = patched(model, node, **guidance)
        profile = None if estimator is not None else resolve_profile(
            model, guidance.get("profile"), True, node, "the noise-level reading (without an 'estimator')")
        run = dict(read_level=level_reader(estimator, profile), latent=latent_image, seed=seed, steps=steps, cfg=cfg,
                   sampler_name=sampler_name, scheduler=scheduler, positive=positive, negative=negative, node=node)
        scheduled, plain = recorded_run(model, **run)
        _, with_guidance = recorded_run(guided, **run)
        title = (f"Noise shift ({'noise estimator' if estimator is not None else 'VRG profile'}): {sampler_name}/"
                 f"{scheduler}, {steps} steps, cfg {cfg:g}, w={guidance['strength']:g} ({guidance['mode']})")
        plot = noise_shift_figure(scheduled, plain, with_guidance, title)
        return io.NodeOutput(plot.image, ui=plot.ui)


def calibration_plot(estimator: NoiseEstimator, x0: torch.Tensor) -> tuple[float, Plot]:
    """The estimator's reading against the true level on the training latents with fresh noise, and its RMS log error."""
    sigmas = torch.logspace(*(math.log10(level) for level in estimator.sigma_range), 12)
    readings = calibration(estimator, x0, sigmas)
    error = log_error(estimator, readings, sigmas)
    return error, calibration_figure(sigmas, readings.mean(1), error)


class TrainNoiseEstimator(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ErrorControlTrainNoiseEstimator",
            **aliases("NoiseAware train noise estimator", "noise shift", "noise level", "noise awareness"),
            display_name="Train Noise Estimator (Noise Awareness Guidance)",
            category=CATEGORY,
            description="Noise Awareness Guidance, classifier-based form: trains a tiny noise-level estimator p(σ|x) "
                        "on your clean latents, noised to every level of the model's schedule, and saves it to "
                        f"models/{types.ESTIMATOR_FOLDER}. Once per model family and VAE; a minute or two on a CPU at "
                        "64×64 latents, seconds on a GPU.",
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="The model to guide: gives the latent format, noise levels and device."),
                io.Latent.Input("latent", tooltip="Clean latents (VAE-encoded images of the kind you generate; 4–16 "
                                                  "is plenty, more varied is better)."),
                io.Int.Input("iterations", default=1500, min=10, max=100000,
                             tooltip="Training steps (tested 1000–3000)."),
                io.Int.Input("batch_size", default=32, min=1, max=512,
                             tooltip="Noisy crops per step (tested 32).", **EXPERT),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the network's start, the crops and the noise."),
                io.String.Input("estimator_name", default="noise_estimator",
                                tooltip=f"File name in models/{types.ESTIMATOR_FOLDER} (letters, digits, '_', '-', '.')."),
            ],
            outputs=[types.NOISE_ESTIMATOR.Output(display_name="estimator"), io.Image.Output(display_name="plot")],
        )

    @classmethod
    def execute(cls, model, latent, iterations, batch_size, seed, estimator_name) -> io.NodeOutput:
        node = "Train Noise Estimator"
        target = types.new_file(types.ESTIMATOR_FOLDER, estimator_name, node, "estimator_name")
        check_clean_latent(model, latent["samples"], node, "VAE-encoded images (a batch of 4–16)")
        x0 = sampler_space(model, latent["samples"])
        estimator, _ = train_noise_estimator(x0, sigma_range(model), model_is_flow(model), iterations, batch_size, seed,
                                             latent_format_fingerprint(model), model_device(model),
                                             interruptible_progress(iterations))
        error, plot = calibration_plot(estimator, x0)
        estimator.record.update(log_error=error, model=model_fingerprint(model), pack_version=PACK_VERSION)
        save_estimator(estimator, target)
        return io.NodeOutput(estimator, plot.image, ui=plot.ui)


class LoadNoiseEstimator(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ErrorControlLoadNoiseEstimator",
            **aliases("NoiseAware load noise estimator", "noise shift", "noise level"),
            display_name="Load Noise Estimator (Noise Awareness Guidance)",
            category=CATEGORY,
            description="Loads a noise-level estimator saved by 'Train Noise Estimator' for Noise Awareness Guidance's "
                        "estimator mode, checked against the MODEL's latent format.",
            inputs=[io.Model.Input("model"),
                    io.Combo.Input("estimator_name", options=types.list_files(types.ESTIMATOR_FOLDER),
                                   tooltip=f"A file in models/{types.ESTIMATOR_FOLDER}.")],
            outputs=[types.NOISE_ESTIMATOR.Output(display_name="estimator")],
        )

    @classmethod
    def execute(cls, model, estimator_name) -> io.NodeOutput:
        node = "Load Noise Estimator"
        estimator = types.load(types.ESTIMATOR_FOLDER, estimator_name, node, "estimator_name", load_estimator)
        check_estimator(estimator, model, node)
        return io.NodeOutput(estimator)


NODES = [NoiseAwarenessGuidance, NoiseAwarenessGuider, NoiseShiftMeter, TrainNoiseEstimator, LoadNoiseEstimator]

"""POLARIS (arXiv 2512.00369): DDIM inversion with a per-step least-squares guidance scale ω, recorded in a trace and
replayed at the same σ when denoising. Math in ``samplers/polaris.py``.

Two ways to use it:

* **KSampler-style**: POLARIS Inversion (image latent → inverted latent + trace) → POLARIS Denoise (trace → latent),
  with the source prompt to reconstruct or an edited prompt to edit.
* **SamplerCustomAdvanced**: the POLARIS Inversion sampler (with CFGGuider, DisableNoise and the ascending levels of
  Inversion Sigmas) writes its trace to ``models/polaris_traces``; POLARIS Load Trace → POLARIS Replay (GUIDER) and
  POLARIS Trace Sigmas → SamplerCustomAdvanced with euler and DisableNoise denoise it.
"""

from __future__ import annotations

import dataclasses

import torch

from ..plots.figures import omega_figure
from ..samplers.core import cfg_mix, check_sigmas, conditional_pair, inversion_sigmas
from ..samplers.inversion import check_eval_at, ddim
from ..samplers.polaris import SOLVERS, SPACES, PolarisTrace, Replay, polaris_invert, reference_controller
from . import types
from .comfy_seam import (
    EXPERT,
    PACK_VERSION,
    MixingGuider,
    aliases,
    cfg_guider,
    check_clean_latent,
    check_made_for,
    guidance_distilled,
    io,
    ksampler,
    latent_of_state,
    model_fingerprint,
    model_is_flow,
    sample_with,
    sampler_call,
    sampler_denoiser,
    sampler_model_patcher,
    sampler_pair_denoiser,
    sampler_space,
    scheduler_names,
    scheduler_sigmas,
    step_callback,
)
from .inversion import EVAL_AT_INPUT, validate_eval_at

CATEGORY = "sampling/error_control/polaris"
types.register_folder(types.TRACE_FOLDER)

SOLVER_HELP = {"least_squares": "the paper's projection-orthogonal least squares",
               "dynamic": "the incremental update of the authors' code",
               "fixed": "ω stays at omega_start: plain CFG inversion, for comparison"}
INVERSION_OPTIONS = [
    io.Combo.Input("solver", options=list(SOLVERS), default="least_squares",
                   tooltip="How ω is chosen at each step: " + "; ".join(f"{k}: {v}" for k, v in SOLVER_HELP.items())
                           + ". least_squares reconstructs best on the testbed.", **EXPERT),
    EVAL_AT_INPUT,
    io.Combo.Input("space", options=list(SPACES), default="v",
                   tooltip="What the least squares compares between steps: v = the velocity (x - D)/sigma that Euler "
                           "integrates (best for flow models, identical to eps for EPS/V models), or eps.", **EXPERT),
    io.Float.Input("omega_start", default=1.0, min=0.0, max=15.0, step=0.1,
                   tooltip="omega of the first step (the paper: 1), and of every step for solver 'fixed'.", **EXPERT),
]


DISTILLED = {"solver": "fixed", "omega_start": 1.0}
"""POLARIS on a guidance-distilled model (Flux-dev): the conditional model alone, ω ≡ 1, i.e. plain DDIM inversion."""
DISTILLED_NOTE = ("On a guidance-distilled model (Flux-dev: cfg 1 + FluxGuidance) there is no negative branch for omega "
                  "to weigh: it inverts with the conditional model alone, omega = 1 (plain DDIM inversion, one call a "
                  "step), and the plot says so.")


def check_trace(trace: PolarisTrace, model_patcher, node: str) -> None:
    """The trace must be for this model's parametrisation and family; other weights are worth a warning only. A trace
    replays at its own recorded levels, so another shift (or Flux resolution) of the same model still reconstructs."""
    check_made_for(trace.model, trace.flow, model_patcher, node, "trace", "made with",
                   "Invert the image with this model.")


def inversion_sampler(options: dict, node: str, result: dict):
    """A k-diffusion sampler function running POLARIS inversion; the trace lands in ``result["trace"]``."""

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **_):
        run, patcher = sampler_call(model, x, sigmas, extra_args, callback, node, ascending=True), sampler_model_patcher(model)
        if guidance_distilled(patcher):  # no negative branch for ω to weigh: plain inversion, one call a step
            pair, chosen = conditional_pair(run.denoiser), {**options, **DISTILLED}
        else:
            pair, chosen = sampler_pair_denoiser(model, extra_args, node), options
        z, trace = polaris_invert(pair, x, sigmas.to(x.device), run.flow, callback=run.on_step, **chosen)
        result["trace"] = dataclasses.replace(trace, model=model_fingerprint(patcher), pack_version=PACK_VERSION)
        return z

    return sample


def inversion_options(solver: str, eval_at: str, space: str, omega_start: float, node: str) -> dict:
    check_eval_at(eval_at, node)
    if solver not in SOLVERS or space not in SPACES:
        raise ValueError(f"{node}: inputs 'solver'/'space' must be one of {SOLVERS}/{SPACES}, got {solver!r}/{space!r}.")
    return {"solver": solver, "eval_at": eval_at, "space": space, "omega_start": omega_start}


class PolarisInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ErrorControlPolarisInversion",
            **aliases("inversion", "unsampler", "invert image", "reconstruct", "edit"),
            display_name="POLARIS Inversion",
            category=CATEGORY,
            description="Inverts an image latent to the noise that regenerates it (POLARIS, arXiv 2512.00369): DDIM "
                        "inversion with a per-step guidance scale omega solved by least squares, recorded in a trace. "
                        "Same model calls as CFG inversion. Denoise the result with POLARIS Denoise. " + DISTILLED_NOTE,
            inputs=[
                io.Model.Input("model"),
                io.Conditioning.Input("positive", tooltip="A prompt that describes the image."),
                io.Conditioning.Input("negative", tooltip="The negative prompt (usually empty)."),
                io.Latent.Input("latent", tooltip="The VAE-encoded image(s) to invert."),
                io.Int.Input("steps", default=50, min=1, max=1000, tooltip="Inversion steps (the paper: 50; tested 10-100)."),
                io.Combo.Input("scheduler", options=scheduler_names(), default="normal",
                               tooltip="The schedule to invert along, as in KSampler (tested: normal, karras, simple)."),
                *INVERSION_OPTIONS,
                io.Sigmas.Input("sigmas", optional=True,
                                tooltip="A descending schedule to use instead of steps and scheduler."),
            ],
            outputs=[io.Latent.Output(display_name="inverted_latent"), types.POLARIS_TRACE.Output(display_name="trace"),
                     io.Image.Output(display_name="omega_plot")],
        )

    @classmethod
    def validate_inputs(cls, eval_at: str | None = None) -> bool | str:
        return validate_eval_at(eval_at, "POLARIS Inversion")

    @classmethod
    def execute(cls, model, positive, negative, latent, steps, scheduler, solver, eval_at, space, omega_start,
                sigmas=None) -> io.NodeOutput:
        node = "POLARIS Inversion"
        options = inversion_options(solver, eval_at, space, omega_start, node)
        check_clean_latent(model, latent["samples"], node, "a VAE Encode of the image to invert")
        if sigmas is None:
            sigmas = scheduler_sigmas(model, scheduler, steps, 1.0, node)
        check_sigmas(sigmas, node, "sigmas")
        up = inversion_sigmas(sigmas.cpu(), flow=model_is_flow(model))
        result: dict = {}
        inverted = sample_with(cfg_guider(model, positive, negative, 1.0), latent["samples"], up,
                               inversion_sampler(options, node, result))
        trace = result["trace"]
        plot = omega_figure(trace.omega, guidance_distilled(model))
        return io.NodeOutput({"samples": inverted}, trace, plot.image, ui=plot.ui)


class PolarisInversionSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ErrorControlPolarisInversionSampler",
            **aliases("inversion", "unsampler", "invert"),
            display_name="POLARIS Inversion (sampler)",
            category=CATEGORY,
            description="POLARIS inversion as a SAMPLER for SamplerCustomAdvanced (with CFGGuider, DisableNoise and the "
                        "inversion_sigmas of 'Inversion Sigmas'). The trace is saved to models/polaris_traces under "
                        "trace_name; load it with POLARIS Load Trace. " + DISTILLED_NOTE,
            inputs=[*INVERSION_OPTIONS,
                    io.String.Input("trace_name", default="polaris_trace",
                                    tooltip="File name in models/polaris_traces (letters, digits, '_', '-', '.').")],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def validate_inputs(cls, eval_at: str | None = None) -> bool | str:
        return validate_eval_at(eval_at, "POLARIS Inversion (sampler)")

    @classmethod
    def execute(cls, solver, eval_at, space, omega_start, trace_name) -> io.NodeOutput:
        node = "POLARIS Inversion (sampler)"
        options = inversion_options(solver, eval_at, space, omega_start, node)
        target = types.new_file(types.TRACE_FOLDER, trace_name, node, "trace_name")

        def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **_):
            result: dict = {}
            z = inversion_sampler(options, node, result)(model, x, sigmas, extra_args, callback, disable)
            result["trace"].save(target)
            return z

        return io.NodeOutput(ksampler(sample))


REPLAY_INPUTS = [
    io.Model.Input("model"),
    io.Conditioning.Input("positive", tooltip="The source prompt, or an edit."),
    io.Conditioning.Input("negative"),
    types.POLARIS_TRACE.Input("trace", tooltip="From POLARIS Inversion or POLARIS Load Trace."),
    io.Float.Input("cfg", default=7.0, min=1.0, max=30.0, step=0.1,
                   tooltip="Your cfg; only used with blend > 0 (POLARIS' own omega replaces cfg in a reconstruction)."),
    io.Float.Input("blend", default=0.0, min=0.0, max=1.0, step=0.05,
                   tooltip="For edits: omega + blend*(cfg - 1). 0 reconstructs; 0.1-0.3 lets an edited prompt act "
                           "more strongly at some cost in fidelity."),
]


def replay_guider(model, positive, negative, trace: PolarisTrace, cfg: float, blend: float, node: str) -> MixingGuider:
    """A guider that combines positive and negative with the trace's ω at the σ being sampled (time-aligned)."""
    check_trace(trace, model, node)

    def check(x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != tuple(trace.latent.shape[1:]):
            raise ValueError(f"{node}: the latent has shape {tuple(x.shape)}, the trace was made for "
                             f"{tuple(trace.latent.shape)}. Replay the inverted latent of the same trace.")

    replay = Replay(trace, cfg, blend, node)

    def mix(cond: torch.Tensor, uncond: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return cfg_mix(cond, uncond, replay.omega(sigma, cond.shape[0]).to(cond))

    # a trace of ω ≡ 1 (a guidance-distilled model's) replayed without blend needs no negative prediction
    conditional_only = bool((trace.omega == 1).all()) and blend * (cfg - 1) == 0
    guider = MixingGuider(model, mix, check, conditional_only, before=replay.reset, after=replay.check)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider


class PolarisReplay(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ErrorControlPolarisReplay",
            **aliases("inversion", "reconstruct", "edit", "guider"),
            display_name="POLARIS Replay (guider)",
            category=CATEGORY,
            description="A GUIDER for SamplerCustomAdvanced that combines positive and negative with the omega recorded "
                        "by POLARIS inversion at the same sigma. Sample with euler, DisableNoise, the trace's sigmas "
                        "(POLARIS Trace Sigmas) and the inverted latent.",
            inputs=REPLAY_INPUTS,
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, model, positive, negative, trace, cfg, blend) -> io.NodeOutput:
        return io.NodeOutput(replay_guider(model, positive, negative, trace, cfg, blend, "POLARIS Replay (guider)"))


class PolarisDenoise(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ErrorControlPolarisDenoise",
            **aliases("inversion", "reconstruct", "edit"),
            display_name="POLARIS Denoise",
            category=CATEGORY,
            description="Denoises the latent a POLARIS inversion made, replaying its omega step by step: with the source "
                        "prompt it reconstructs the image, with an edited prompt it edits it and keeps the rest.",
            inputs=REPLAY_INPUTS + [
                io.Latent.Input("reference", optional=True,
                                tooltip="Optional: the source image's latent (the one you inverted). With "
                                        "reference_strength > 0 the first quarter of the steps is pulled towards it "
                                        "(RF-Inversion's controller): closer to the source, weaker edits."),
                io.Float.Input("reference_strength", default=0.0, min=0.0, max=1.0, step=0.05, optional=True,
                               tooltip="eta of the pull towards 'reference' (0: off; RF-Inversion uses 0.9). On testbed "
                                       "4 at 0.9: flow reconstruction 24.4 dB vs RF-Inversion's 21.7 at equal model "
                                       "calls; in edits level with RF-Inversion at cfg 3, behind it at cfg 7."),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, model, positive, negative, trace, cfg, blend, reference=None,
                reference_strength: float = 0.0) -> io.NodeOutput:
        node = "POLARIS Denoise"
        guider = replay_guider(model, positive, negative, trace, cfg, blend, node)
        if reference is not None and tuple(reference["samples"].shape) != tuple(trace.latent.shape):
            raise ValueError(f"{node}: 'reference' has shape {tuple(reference['samples'].shape)}, the trace was made for "
                             f"{tuple(trace.latent.shape)}. Connect the latent you inverted.")

        def from_trace(model_k, x, sigmas, extra_args=None, callback=None, disable=None, **_):
            # Start from the inverted state itself: ComfyUI's noise scaling of a LATENT would alter it for flow models.
            denoiser = sampler_denoiser(model_k, extra_args)
            if reference is not None:
                denoiser = reference_controller(denoiser, sampler_space(model, reference["samples"]).to(x),
                                                reference_strength, sigmas)
            return ddim(denoiser, trace.latent.to(x), sigmas, trace.flow, callback=step_callback(callback))

        samples = sample_with(guider, torch.zeros(trace.latent.shape), trace.replay_sigmas(), from_trace)
        return io.NodeOutput({"samples": samples})


class PolarisTraceSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ErrorControlPolarisTraceSigmas",
            **aliases("inversion", "sigmas", "reconstruct"),
            display_name="POLARIS Trace Sigmas",
            category=CATEGORY,
            description="The descending sigmas that undo a POLARIS inversion step by step, for SamplerCustomAdvanced "
                        "with POLARIS Replay.",
            inputs=[types.POLARIS_TRACE.Input("trace")],
            outputs=[io.Sigmas.Output()],
        )

    @classmethod
    def execute(cls, trace) -> io.NodeOutput:
        return io.NodeOutput(trace.replay_sigmas().float())


class PolarisSaveTrace(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ErrorControlPolarisSaveTrace",
            **aliases("inversion", "trace", "save"),
            display_name="POLARIS Save Trace",
            category=CATEGORY,
            description="Saves a POLARIS trace (sigmas, omega per step, the inverted latent) to models/polaris_traces as "
                        "safetensors, to reuse or share an inversion.",
            is_output_node=True,
            inputs=[types.POLARIS_TRACE.Input("trace"),
                    io.String.Input("trace_name", default="polaris_trace",
                                    tooltip="File name in models/polaris_traces (letters, digits, '_', '-', '.').")],
            outputs=[],
        )

    @classmethod
    def execute(cls, trace, trace_name) -> io.NodeOutput:
        trace.save(types.new_file(types.TRACE_FOLDER, trace_name, "POLARIS Save Trace", "trace_name"))
        return io.NodeOutput()


class PolarisLoadTrace(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ErrorControlPolarisLoadTrace",
            **aliases("inversion", "trace", "load"),
            display_name="POLARIS Load Trace",
            category=CATEGORY,
            description="Loads a trace saved by POLARIS Save Trace or the POLARIS Inversion sampler, checked against "
                        "the MODEL it will be replayed with.",
            inputs=[io.Model.Input("model"),
                    io.Combo.Input("trace_name", options=types.list_files(types.TRACE_FOLDER),
                                   tooltip="A file in models/polaris_traces.")],
            outputs=[types.POLARIS_TRACE.Output(display_name="trace"), io.Latent.Output(display_name="inverted_latent"),
                     io.Image.Output(display_name="omega_plot")],
        )

    @classmethod
    def execute(cls, model, trace_name) -> io.NodeOutput:
        node = "POLARIS Load Trace"
        trace = types.load(types.TRACE_FOLDER, trace_name, node, "trace_name", PolarisTrace.load)
        check_trace(trace, model, node)
        plot = omega_figure(trace.omega)
        latent = latent_of_state(model, trace.sigmas[-1:].float(), trace.latent.float())
        return io.NodeOutput(trace, {"samples": latent}, plot.image, ui=plot.ui)


NODES = [PolarisInversion, PolarisDenoise, PolarisInversionSampler, PolarisReplay, PolarisTraceSigmas, PolarisSaveTrace,
         PolarisLoadTrace]

"""DDIM inversion, the baseline every inversion method is measured against, as a SAMPLER for SamplerCustomAdvanced.

Recipe: VAE Encode → SamplerCustomAdvanced(DisableNoise, CFGGuider, **DDIM Inversion**, Inversion Sigmas.inversion_sigmas)
→ noisy latent → SamplerCustomAdvanced(DisableNoise, CFGGuider, euler, Inversion Sigmas.sampling_sigmas) → reconstruction.
"""

from __future__ import annotations

from ..samplers.core import check_sigmas, inversion_sigmas
from ..samplers.inversion import EVAL_AT_CHOICES, EVAL_AT_DEFAULT, EVAL_AT_HELP, check_eval_at, ddim
from .comfy_seam import (
    EXPERT,
    aliases,
    io,
    ksampler,
    model_is_flow,
    sampler_call,
)

CATEGORY = "sampling/error_control/inversion"
SAMPLER_NAME = "ddim_inversion"
SAMPLER_LABEL = "DDIM Inversion (sampler ddim_inversion)"
EVAL_AT_INPUT = io.Combo.Input("eval_at", options=list(EVAL_AT_CHOICES), default=EVAL_AT_DEFAULT, tooltip=EVAL_AT_HELP,
                               **EXPERT)
"""The one ``eval_at`` input of DDIM Inversion and the POLARIS inversion nodes (values: samplers/inversion.py)."""


def validate_eval_at(eval_at: str | None, node: str) -> bool | str:
    """A node's ``validate_inputs`` for ``eval_at``. ComfyUI checks a combo value against its options unless the node's
    ``validate_inputs`` takes that input (both hosts' ``execution.validate_inputs``); this check also accepts the long
    labels of older saved workflows, which ``samplers.inversion.resolve_eval_at`` maps to what they meant. A linked
    input arrives as ``None`` here and is checked when the node runs."""
    if eval_at is None:
        return True
    try:
        check_eval_at(eval_at, node)
    except ValueError as e:
        return str(e)
    return True


def sample_ddim_inversion(model, x, sigmas, extra_args=None, callback=None, disable=None, eval_at: str = EVAL_AT_DEFAULT,
                          **_):
    """k-diffusion sampler function: deterministic DDIM inversion along ascending ``sigmas`` (samplers.inversion.ddim)."""
    run = sampler_call(model, x, sigmas, extra_args, callback, SAMPLER_LABEL, ascending=True)
    return ddim(run.denoiser, x, sigmas, run.flow, eval_at, run.on_step)


class DDIMInversionSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ErrorControlDDIMInversionSampler",
            **aliases("inversion", "unsampler", "invert", "ddim inverse", "flip sigmas"),
            display_name="DDIM Inversion (sampler)",
            category=CATEGORY,
            description="Deterministic DDIM inversion: walks a clean latent up an ascending σ schedule to the noise that "
                        "regenerates it. Use with DisableNoise and the inversion_sigmas of 'Inversion Sigmas' in "
                        "SamplerCustomAdvanced; works for EPS, V-prediction and flow models.",
            inputs=[EVAL_AT_INPUT],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def validate_inputs(cls, eval_at: str | None = None) -> bool | str:
        return validate_eval_at(eval_at, "DDIM Inversion (sampler)")

    @classmethod
    def execute(cls, eval_at: str) -> io.NodeOutput:
        check_eval_at(eval_at, "DDIM Inversion (sampler)")
        return io.NodeOutput(ksampler(sample_ddim_inversion, {"eval_at": eval_at}))


class InversionSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ErrorControlInversionSigmas",
            **aliases("inversion", "unsampler", "flip sigmas", "reverse sigmas"),
            display_name="Inversion Sigmas",
            category=CATEGORY,
            description="From one descending schedule, the ascending levels to invert along and the matching descending "
                        "levels to sample back with. Like FlipSigmas, but for flow models the top level stays below 1 "
                        "(at σ = 1 ComfyUI would divide the latent by zero) and both passes use the same levels.",
            inputs=[io.Model.Input("model"), io.Sigmas.Input("sigmas", tooltip="A scheduler's output, e.g. BasicScheduler.")],
            outputs=[io.Sigmas.Output("inversion_sigmas", display_name="inversion_sigmas"),
                     io.Sigmas.Output("sampling_sigmas", display_name="sampling_sigmas")],
        )

    @classmethod
    def execute(cls, model, sigmas) -> io.NodeOutput:
        check_sigmas(sigmas, "Inversion Sigmas", "sigmas")
        upward = inversion_sigmas(sigmas, flow=model_is_flow(model))
        downward = upward.flip(0).clone()
        downward[-1] = sigmas[-1]
        return io.NodeOutput(upward, downward)


NODES = [DDIMInversionSampler, InversionSigmas]
REGISTRATIONS = {"samplers": {SAMPLER_NAME: sample_ddim_inversion}}

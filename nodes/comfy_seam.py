"""The one seam to ComfyUI: every reach into its internals that the nodes need lives here (the wrapped model a sampler
receives, ``model_sampling``, ``model_options``, model patches, guiders, the profile a MODEL carries, the node API's
newer arguments), turned into the plain callables and tensors of ``samplers/``. When ComfyUI changes, this file changes;
``tests/unit/test_seam.py`` keeps the other node files from reaching around it."""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass

import comfy.model_management
import comfy.model_sampling
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import ComfyExtension, io  # noqa: F401 (re-exported: node files import ComfyUI only here)
from torch import Tensor

from ..samplers.artefact import PACK_VERSION  # noqa: F401 (the node files take it from here)
from ..samplers.core import Denoiser, PairDenoiser, check_sigmas, effective_uncond


def newer_api(cls: type, **kwargs) -> dict:
    """The keyword arguments of ``kwargs`` that ``cls`` takes on this host. Today's node API (``advanced`` inputs and
    ``search_aliases``, ComfyUI 0.33) is left out where the io classes lack it, so the same schema loads on 0.3.75."""
    accepted = inspect.signature(cls).parameters
    return {name: value for name, value in kwargs.items() if name in accepted}


EXPERT = newer_api(io.Float.Input, advanced=True)
"""``**EXPERT`` marks an input as an expert setting, which the frontend folds away (where the host supports it)."""


def aliases(*words: str) -> dict:
    """``**aliases(...)`` in a schema: the words the node search also finds the node by (where the host supports it)."""
    return newer_api(io.Schema, search_aliases=list(words))


def is_flow(model_sampling: object) -> bool:
    """True for CONST (rectified-flow) models, whose state is ``(1-σ)·x0 + σ·ε``; EPS and V models sample in VE space."""
    return isinstance(model_sampling, comfy.model_sampling.CONST)


def sampler_model_patcher(model) -> object:
    """The MODEL (ModelPatcher) behind the wrapped model a k-diffusion-style sampler function receives from ComfyUI."""
    return model.inner_model.model_patcher


def sampler_model_sampling(model) -> object:
    """The ``model_sampling`` of the model a k-diffusion-style sampler function receives from ComfyUI."""
    return sampler_model_patcher(model).get_model_object("model_sampling")


def sampler_cfg(model) -> float:
    """The cfg of the guider that drives the wrapped model a sampler function receives (1 for BasicGuider)."""
    return float(model.inner_model.cfg)


def sampler_denoiser(model, extra_args: dict | None) -> Denoiser:
    """``D(x, σ)`` from the wrapped model a sampler function receives (guidance, patches and masks already applied)."""
    extra_args = extra_args or {}
    return lambda x, sigma: model(x, sigma, **extra_args)


def step_callback(callback: Callable[[dict], None] | None) -> Callable[[dict], None]:
    """Forward k-diffusion's step dict to ComfyUI (progress bar, previews) and stop at once when the user interrupts."""

    def on_step(step: dict) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if callback is not None:
            callback(step)

    return on_step


@dataclass(frozen=True)
class SamplerCall:
    """What a k-diffusion sampler function of the pack works with, once its arguments are checked: the model's
    parametrisation, ``D(x, σ)`` of the wrapped model, and the step callback (progress, previews, interruption)."""

    flow: bool
    denoiser: Denoiser
    on_step: Callable[[dict], None]


def sampler_call(model, x: Tensor, sigmas: Tensor, extra_args: dict | None, callback: Callable[[dict], None] | None,
                 node: str, ascending: bool = False) -> SamplerCall:
    """The preamble every sampler function of the pack shares: ``sigmas`` checked (descending, or ``ascending`` for an
    inversion), the latent checked against the model, then :class:`SamplerCall`. Errors name ``node``."""
    check_sigmas(sigmas, node, "sigmas", ascending=ascending)
    check_sampler_latent(model, x, node)
    return SamplerCall(is_flow(sampler_model_sampling(model)), sampler_denoiser(model, extra_args), step_callback(callback))


def interruptible_progress(total: int) -> Callable[..., None]:
    """A ``callback(done, ...)`` for the pack's own long loops (calibration, training): it moves a ComfyUI progress bar
    of ``total`` steps and stops at once when the user interrupts."""
    progress = comfy.utils.ProgressBar(total)

    def on_step(done: int, *_) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        progress.update_absolute(done, total)

    return on_step


def model_is_flow(model_patcher) -> bool:
    """:func:`is_flow` for a MODEL input of a node."""
    return is_flow(model_patcher.get_model_object("model_sampling"))


def schedule(model_sampling, scheduler: str, steps: int) -> Tensor:
    """ComfyUI's ``scheduler`` over ``steps`` for a model's sampling object (as a scheduler handler receives it), on CPU."""
    return comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps).cpu()


def scheduler_sigmas(model_patcher, scheduler: str, steps: int, denoise: float, node: str) -> Tensor:
    """A schedule as BasicScheduler builds it (``denoise < 1`` keeps the last ``steps`` levels of a longer one), on CPU."""
    if steps < 1:
        raise ValueError(f"{node}: input 'steps' must be >= 1, got {steps}.")
    if not 0 < denoise <= 1:
        raise ValueError(f"{node}: input 'denoise' must be in (0, 1], got {denoise}.")
    return schedule(model_patcher.get_model_object("model_sampling"), scheduler, int(steps / denoise))[-(steps + 1):]


def sigma_range(model_patcher) -> tuple[float, float]:
    """The model's smallest and largest noise level in its own parametrisation (a flow model's top capped at 1)."""
    model_sampling = model_patcher.get_model_object("model_sampling")
    top = float(model_sampling.sigma_max)
    return float(model_sampling.sigma_min), min(top, 1.0) if is_flow(model_sampling) else top


def composed_uncond(cond: Tensor, uncond: Tensor, guided: Tensor | None, scale: float) -> Tensor:
    """The unconditional half of the pair a method re-weights: the model's own ``uncond`` where the guider's combination
    is plain CFG (``guided`` None) or its scale is 1, else the one that reproduces the user's ``guided`` prediction at
    ``scale`` (:func:`samplers.core.effective_uncond`), so their CFG function and post-CFG patches keep acting."""
    return uncond if guided is None or scale == 1 else effective_uncond(cond, guided, scale)


def sampler_pair_denoiser(model, extra_args: dict | None, node: str) -> PairDenoiser:
    """``D(x, σ) -> (D_cond, D_uncond)`` from the wrapped model a sampler function receives: one batched call of the
    guider with the uncond always computed, recorded by a post-CFG function that runs after the user's own and passes
    the guided prediction through. The user's CFG function and post-CFG patches stay in place; where there are any,
    ``D_uncond`` is :func:`composed_uncond`, so the method's own mix of the pair still carries them.

    Needs a guider with a negative prompt (CFGGuider, KSampler).
    """
    extra_args = dict(extra_args or {})
    options = dict(extra_args.get("model_options", {}))
    post_cfg = options.get("sampler_post_cfg_function", [])
    plain = "sampler_cfg_function" not in options and not post_cfg
    captured: dict = {}

    def record(args: dict) -> Tensor:
        if args.get("uncond") is None:
            raise ValueError(f"{node}: needs the negative prompt's prediction too. Use CFGGuider (positive and "
                             "negative) or a KSampler-style node, not BasicGuider.")
        cond = args["cond_denoised"]
        captured["pair"] = (cond, composed_uncond(cond, args["uncond_denoised"], None if plain else args["denoised"],
                                                  args["cond_scale"]))
        return args["denoised"]

    options.update(sampler_post_cfg_function=[*post_cfg, record], disable_cfg1_optimization=True)
    extra_args["model_options"] = options

    def pair(x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        model(x, sigma, **extra_args)
        if "pair" not in captured:
            raise ValueError(f"{node}: the guider did not combine a positive and a negative prediction. Use CFGGuider.")
        keep_source = inpainting_blend(model, extra_args, sigma)
        return tuple(keep_source(prediction) for prediction in captured.pop("pair"))

    return pair


def inpainting_blend(model, extra_args: dict, sigma: Tensor) -> Callable[[Tensor], Tensor]:
    """What KSampler's inpainting does to the guided prediction, for a prediction the pack combines itself: where the
    latent's ``noise_mask`` (after the model's own mask function, if any) is 0, the source latent is kept."""
    mask = extra_args.get("denoise_mask")
    if mask is None:
        return lambda prediction: prediction
    mask_function = extra_args.get("model_options", {}).get("denoise_mask_function")
    if mask_function is not None:
        mask = mask_function(sigma, mask, extra_options={"model": model.inner_model, "sigmas": model.sigmas})
    return lambda prediction: prediction * mask + model.latent_image * (1.0 - mask)


def latent_of_state(model_patcher, sigma: Tensor, state: Tensor) -> Tensor:
    """The LATENT samples that SamplerCustomAdvanced (DisableNoise, first level ``sigma``) turns back into the sampler
    state ``state``: ComfyUI scales a LATENT by the first level for flow models, so that scaling is undone here."""
    model_sampling = model_patcher.get_model_object("model_sampling")
    return model_patcher.model.process_latent_out(model_sampling.inverse_noise_scaling(sigma, state))


class MixingGuider(comfy.samplers.CFGGuider):
    """A CFGGuider whose combination of cond and uncond is a method's own ``mix(cond, uncond, sigma) -> denoised``.

    The user's CFG function (RescaleCFG, another pack's) is folded into ``uncond`` (:func:`composed_uncond`) and their
    post-CFG patches act on the result, as after ComfyUI's own CFG. ``check(x)`` vets the latent first;
    ``conditional_only`` skips the negative branch (a mix that is the conditional prediction: one model call a step);
    ``before()`` and ``after()`` run around each sampling run (``after`` only when it completed), e.g. to check once
    what the steps recorded on the device.
    """

    def __init__(self, model_patcher, mix: Callable[[Tensor, Tensor, Tensor], Tensor],
                 check: Callable[[Tensor], None] | None = None, conditional_only: bool = False,
                 before: Callable[[], None] | None = None, after: Callable[[], None] | None = None):
        super().__init__(model_patcher)
        self.mix, self.check, self.conditional_only = mix, check, conditional_only
        self.before, self.after = before, after

    def sample(self, *args, **kwargs):
        if self.before is not None:
            self.before()
        samples = super().sample(*args, **kwargs)
        if self.after is not None:
            self.after()
        return samples

    def predict_noise(self, x, timestep, model_options={}, seed=None, **_):  # noqa: B006 (the host's signature)
        if self.check is not None:
            self.check(x)
        if self.conditional_only:  # as ComfyUI's cfg 1
            return comfy.samplers.sampling_function(self.inner_model, x, timestep, None, self.conds.get("positive"), 1.0,
                                                    model_options=model_options, seed=seed)
        user_cfg = model_options.get("sampler_cfg_function")

        def combine(args: dict) -> Tensor:
            cond = args["cond_denoised"]
            guided = None if user_cfg is None else args["input"] - user_cfg(args)
            return args["input"] - self.mix(cond, composed_uncond(cond, args["uncond_denoised"], guided,
                                                                  args["cond_scale"]), args["sigma"])

        options = {**model_options, "sampler_cfg_function": combine, "disable_cfg1_optimization": True}
        return comfy.samplers.sampling_function(self.inner_model, x, timestep, self.conds.get("negative"),
                                                self.conds.get("positive"), self.cfg, model_options=options, seed=seed)


def with_post_cfg(model_patcher, function: Callable[[dict], Tensor]):
    """A clone of the MODEL with ``function`` appended to its post-CFG functions (after the user's own)."""
    clone = model_patcher.clone()
    clone.set_model_sampler_post_cfg_function(function)
    return clone


def conditional_model(args: dict) -> Denoiser:
    """``D_c(x, σ)`` inside a post-CFG function: the step's positive conditioning on the step's model, with the step's
    model options (patches included)."""
    model, options, cond = args["model"], args["model_options"], args["cond"]
    return lambda x, sigma: comfy.samplers.calc_cond_batch(model, [cond], x, sigma, options)[0]


def step_model_sampling(args: dict) -> object:
    """The ``model_sampling`` of the model a post-CFG function's step runs."""
    return args["model"].model_sampling


def percent_window(model_sampling, start_percent: float, end_percent: float) -> tuple[float, float]:
    """The σ range ``(low, high)`` between two points of sampling (ComfyUI's start/end percent)."""
    return model_sampling.percent_to_sigma(end_percent), model_sampling.percent_to_sigma(start_percent)


def cfg_guider(model_patcher, positive, negative, cfg: float) -> comfy.samplers.CFGGuider:
    """ComfyUI's own CFGGuider, as KSampler builds it."""
    guider = comfy.samplers.CFGGuider(model_patcher)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider


def sample_with(guider: comfy.samplers.CFGGuider, latent: Tensor, sigmas: Tensor, sampler_function: Callable,
                preview: bool = True, seed: int = 0) -> Tensor:
    """Run a k-diffusion-style ``sampler_function`` inside ComfyUI's own sampling setup: the model loaded by the host's
    model management, conditioning prepared, the model's patches applied, zero noise added to ``latent`` (a LATENT's
    samples). With ``preview`` the step callbacks drive a progress bar and latent previews. Returns the LATENT samples
    as SamplerCustomAdvanced would.
    """
    callback = latent_preview.prepare_callback(guider.model_patcher, len(sigmas) - 1) if preview else None
    samples = guider.sample(torch.zeros_like(latent), latent, ksampler(sampler_function), sigmas,
                            callback=callback, disable_pbar=not preview, seed=seed)
    return samples.to(comfy.model_management.intermediate_device())


class _DenoiserModel:
    """The wrapped model as a k-diffusion sampler function calls it, answering with ``denoiser`` (so a wrapper around it
    sees every call); every other attribute (``inner_model``, ...) is the wrapped model's."""

    def __init__(self, denoiser: Denoiser, model):
        self.denoiser, self.model = denoiser, model

    def __call__(self, x: Tensor, sigma: Tensor, **_) -> Tensor:
        return self.denoiser(x, sigma)

    def __getattr__(self, name: str):
        return getattr(self.model, name)


def host_sampler(sampler_name: str, model, extra_args: dict | None) -> Callable[[Denoiser, Tensor, Tensor], Tensor]:
    """ComfyUI's KSampler sampler ``sampler_name`` as ``(D, x, sigmas) -> x`` over the wrapped model a sampler function
    receives, with float32 levels on ``x``'s device as ComfyUI passes them, no progress bar of its own."""
    ksampler = comfy.samplers.sampler_object(sampler_name)

    def run(denoiser: Denoiser, x: Tensor, sigmas: Tensor) -> Tensor:
        return ksampler.sampler_function(_DenoiserModel(denoiser, model), x, sigmas.to(x.device, torch.float32),
                                         extra_args=dict(extra_args or {}), callback=None, disable=True,
                                         **ksampler.extra_options)

    return run


def ksampler_sigmas(model_patcher, sampler_name: str, scheduler: str, steps: int) -> Tensor:
    """The levels KSampler itself runs for ``sampler_name`` and ``scheduler`` at full denoise (the host's own
    computation, with its extra level for the samplers that drop the penultimate one)."""
    ksampler = comfy.samplers.KSampler(model_patcher, steps=steps, device=model_patcher.load_device, sampler=sampler_name,
                                       scheduler=scheduler, denoise=1.0, model_options=model_patcher.model_options)
    return ksampler.sigmas


def recorded_ksampler_run(model_patcher, latent: dict, seed: int, sampler: str | Callable, sigmas: Tensor, cfg: float,
                          positive, negative, node: str, record: Callable[[Tensor], None] | None = None) -> Tensor:
    """One pass of KSampler (the host's sampler ``sampler`` by name, or a k-diffusion sampler function) on ``latent`` as
    the user's KSampler would run it: seeded noise for its ``batch_index``, its inpainting ``noise_mask`` honoured,
    progress bar, latent previews and interruption as in any sampler node. ``record(denoised)`` sees each step's
    clean prediction. Returns the LATENT samples."""
    samples = comfy.sample.fix_empty_latent_channels(model_patcher, latent["samples"])
    check_latent_fits(model_patcher, samples, node, "latent_image")
    noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))
    preview = latent_preview.prepare_callback(model_patcher, len(sigmas) - 1)

    def on_step(step: int, denoised: Tensor, x: Tensor, total: int) -> None:
        if record is not None:
            record(denoised)
        preview(step, denoised, x, total)

    chosen = comfy.samplers.sampler_object(sampler) if isinstance(sampler, str) else ksampler(sampler)
    return comfy.sample.sample_custom(model_patcher, noise, cfg, chosen, sigmas, positive, negative, samples,
                                      noise_mask=latent.get("noise_mask"), callback=on_step, disable_pbar=True, seed=seed)


def with_guided_denoiser(model_patcher, positive, negative, cfg: float, latent: Tensor, seed: int,
                         work: Callable[..., None], sampler_name: str | None = None) -> None:
    """Run ``work(D, x0)`` inside ComfyUI's own sampling setup (:func:`sample_with`, cfg applied); ``x0`` is ``latent``
    in the model's latent space. With ``sampler_name`` it runs ``work(D, x0, sampler)``, ``sampler`` being
    :func:`host_sampler`.

    The measurement runs as the sampler of a zero-step-size schedule ``[0, 0]``, at which ComfyUI's noise scaling leaves
    the latent as it is for every model family.
    """
    def sampler_function(model, x, sigmas, extra_args=None, callback=None, disable=None, **_):
        sampler = () if sampler_name is None else (host_sampler(sampler_name, model, extra_args),)
        work(sampler_denoiser(model, extra_args), x, *sampler)
        return x

    sample_with(cfg_guider(model_patcher, positive, negative, cfg), latent, torch.zeros(2), sampler_function, False, seed)


def sampler_names() -> list[str]:
    """The KSampler's sampler names on this host."""
    return list(comfy.samplers.KSampler.SAMPLERS)


def scheduler_names() -> list[str]:
    """The KSampler's scheduler names on this host (the pack's own once registered)."""
    return list(comfy.samplers.SCHEDULER_NAMES)


def ksampler(sampler_function: Callable, options: dict | None = None) -> object:
    """The host's SAMPLER for a k-diffusion sampler function, called with ``options`` as keyword arguments."""
    return comfy.samplers.KSAMPLER(sampler_function, options or {})


TABLE_SCHEDULERS = {"AYS": ("nodes_align_your_steps", "AlignYourStepsScheduler", {"SD15": "SD1", "SDXL": "SDXL"}),
                    "GITS": ("nodes_gits", "GITSScheduler", {"SD15": 1.20}),
                    "OptimalSteps": ("nodes_optimalsteps", "OptimalStepsScheduler",
                                     {"Flux": "FLUX", "WAN21": "Wan", "WAN22": "Wan", "Chroma": "Chroma"})}
"""ComfyUI's table schedulers (comfy_extras node, first argument per model family: the supported-model class, else the
model class, so that SDXL's smaller classes such as KOALA or SSD-1B count as SDXL) a family has a table for."""


def table_schedules(model_patcher, steps: int) -> dict[str, Tensor]:
    """The AYS / GITS / OptimalSteps schedules ComfyUI's own nodes give for this model's family at ``steps``, by name."""
    out, names = {}, (model_family(model_patcher), type(model_patcher.model).__name__)
    for name, (module, node, families) in TABLE_SCHEDULERS.items():
        table = next((families[n] for n in names if n in families), None)
        if table is not None:
            result = getattr(importlib.import_module(f"comfy_extras.{module}"), node).execute(table, steps, 1.0)
            out[f"{name} ({table})"] = (result.result if hasattr(result, "result") else result)[0].cpu()
    return out


def sampling_fingerprint(model_sampling) -> str:
    """What a profile's σ levels depend on: the sampling class and its σ table (or shift), as a short hash."""
    parts = [type(model_sampling).__name__, f"{float(model_sampling.sigma_min):.6g}", f"{float(model_sampling.sigma_max):.6g}"]
    table = getattr(model_sampling, "sigmas", None)
    if isinstance(table, torch.Tensor):
        parts.append(hashlib.sha256(table.detach().float().cpu().numpy().tobytes()).hexdigest()[:16])
    return "sampling:" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def weights_fingerprint(model_patcher) -> str:
    """A cheap identity of the weights: shapes and sums of the first tensors of the state dict (patches not applied)."""
    digest = hashlib.sha256(type(model_patcher.model).__name__.encode())
    for index, (key, value) in enumerate(sorted(model_patcher.model.state_dict().items())):
        if index >= 8:
            break
        digest.update(f"{key}{tuple(value.shape)}{float(value.detach().float().sum()):.6e}".encode())
    return "weights:" + digest.hexdigest()[:16]


FAMILY_TAG = "family:"


def model_family(model_patcher) -> str:
    """The model family as ComfyUI's detection named it: its supported-model class (SD15, SDXL, SD3, Flux, WAN21_T2V, ...)."""
    return type(model_patcher.model.model_config).__name__


def model_fingerprint(model_patcher) -> str:
    """What an artefact made with this MODEL records: its sampling and weights fingerprints and its family."""
    return (f"{sampling_fingerprint(model_patcher.get_model_object('model_sampling'))} {weights_fingerprint(model_patcher)} "
            f"{FAMILY_TAG}{model_family(model_patcher)}")


PROFILE_ATTRIBUTE = "error_control_vrg_profile"


def with_profile(model_patcher, profile):
    """A clone of the MODEL that carries a VRG error ``profile`` for the ``vrg`` scheduler and Noise Awareness Guidance.
    It rides on a copy of the model's sampling object, because that object is all ComfyUI hands a scheduler."""
    patched = model_patcher.clone()
    model_sampling = copy.copy(patched.get_model_object("model_sampling"))
    setattr(model_sampling, PROFILE_ATTRIBUTE, profile)
    patched.add_object_patch("model_sampling", model_sampling)
    return patched


def attached_profile(model_sampling):
    """The profile :func:`with_profile` attached to the sampling object a scheduler receives, or None."""
    return getattr(model_sampling, PROFILE_ATTRIBUTE, None)


def model_profile(model_patcher):
    """The profile :func:`with_profile` attached to a MODEL, or None."""
    return attached_profile(model_patcher.get_model_object("model_sampling"))


def check_made_for(made_for: str, made_flow: bool, model_patcher, node: str, input_name: str, made: str, remake: str
                   ) -> None:
    """An artefact against the MODEL it is used with. ``made_for`` is its :func:`model_fingerprint`, ``made_flow`` its
    parametrisation, ``made`` how it came about ("made with", "calibrated for"), ``remake`` what to do instead.
    Another parametrisation or family is refused, naming both; other weights of the same family get a warning only.
    Files from before families were recorded carry none and are checked by parametrisation alone."""
    flow = model_is_flow(model_patcher)
    if made_flow != flow:
        raise ValueError(f"{node}: input '{input_name}' was {made} {'a flow' if made_flow else 'an EPS/V'} model, but this "
                         f"model is {'flow' if flow else 'EPS/V'}. {remake}")
    family = model_family(model_patcher)
    made_family = next((part.removeprefix(FAMILY_TAG) for part in made_for.split() if part.startswith(FAMILY_TAG)), family)
    if made_family != family:
        raise ValueError(f"{node}: input '{input_name}' was {made} a {made_family} model, but this model is {family}. "
                         f"{remake}")
    if weights_fingerprint(model_patcher) not in made_for:
        logging.warning(f"{node}: input '{input_name}' was {made} other weights of the {family} family ({made_for}); "
                        f"it still applies, but the result is best with this model's own. {remake}")


def check_latent_fits(model_patcher, samples: Tensor, node: str, input_name: str) -> None:
    """A latent must have the channels and dimensions of this model's latent space (4-channel SD1/SDXL images,
    16-channel SD3/Flux images, 16-channel Wan video ``[B, C, T, H, W]``); else a ValueError naming both and the fix.
    (ComfyUI's own sampling resizes an all-zero latent's channels first: ``comfy.sample.fix_empty_latent_channels``.)"""
    latent_format = model_patcher.get_model_object("latent_format")
    channels, dims = latent_format.latent_channels, getattr(latent_format, "latent_dimensions", 2)
    if samples.ndim == dims + 2 and samples.shape[1] == channels:
        return
    kind = {4: "image", 5: "video"}.get(samples.ndim, f"{samples.ndim}-D")
    got = f"{samples.shape[1]}-channel {kind}" if samples.ndim >= 2 else kind
    wanted = "video [B, C, T, H, W]" if dims == 3 else "image [B, C, H, W]"
    raise ValueError(f"{node}: input '{input_name}' is a {got} latent {tuple(samples.shape)}, but this "
                     f"{model_family(model_patcher)} model takes {channels}-channel {wanted} latents. Encode with this "
                     "model's VAE (VAE Encode), or start from this family's empty latent node.")


def latent_format_fingerprint(model_patcher) -> str:
    """What a latent's numbers mean: ComfyUI's latent format class, channels, scale and shift (a VAE's latent space as
    the model reads it)."""
    latent_format = model_patcher.get_model_object("latent_format")
    shift = getattr(latent_format, "shift_factor", 0.0) or 0.0
    return (f"{type(latent_format).__name__} {latent_format.latent_channels}ch scale {latent_format.scale_factor:.6g} "
            f"shift {shift:.6g}")


def sampler_space(model_patcher, samples: Tensor) -> Tensor:
    """Latents as the sampler sees them (the latent format's scale and shift applied): the space a model's states live in."""
    return model_patcher.model.process_latent_in(samples)


def model_device(model_patcher) -> torch.device:
    """The device ComfyUI runs this model on (a GPU where there is one)."""
    return torch.device(model_patcher.load_device)


def check_clean_latent(model_patcher, samples: Tensor, node: str, source: str) -> None:
    """Clean latents to invert or calibrate on: not empty (``source`` says what to connect), finite, this model's."""
    if samples.numel() == 0:
        raise ValueError(f"{node}: input 'latent' is empty. Connect {source}.")
    if not torch.isfinite(samples).all():
        raise ValueError(f"{node}: input 'latent' contains NaN/inf. Re-encode the images.")
    check_latent_fits(model_patcher, samples, node, "latent")


def check_sampler_latent(model, x: Tensor, node: str) -> None:
    """:func:`check_latent_fits` for the latent a k-diffusion-style sampler function receives."""
    check_latent_fits(sampler_model_patcher(model), x, node, "latent_image")


def guidance_distilled(model_patcher) -> bool:
    """Whether the model takes its guidance strength as an input (Flux-dev: FluxGuidance) instead of a negative prompt."""
    params = getattr(model_patcher.model.diffusion_model, "params", None)
    return bool(getattr(params, "guidance_embed", False))

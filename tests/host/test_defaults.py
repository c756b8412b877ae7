"""Every node of the pack with its default settings, in the simplest graph it fits, inside a real ComfyUI: it runs, or
ComfyUI refuses the prompt before running it (the node's ``validate_inputs``), with the node's own message.

The graph is built from ``/object_info``: every widget at its default, every required link from the plainest source
(the tiny checkpoint, two prompts, an encoded image or an empty latent, BasicScheduler's sigmas, and the pack's own
node that makes a profile or trace, itself at its defaults), optional links left open, and the output consumed as a
user would (a MODEL by a KSampler, a GUIDER, SAMPLER or SIGMAS by SamplerCustomAdvanced). An inversion sampler gets
rising sigmas and a clean latent, a replay its trace's sigmas; a Load node the file its writer node just made."""

import pytest

from tools.api_graphs import api_node, base_graph, ksampler, sampler_custom_advanced
from tools.comfy_host import PromptRejected

PACK = "sampling/error_control"
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
NODES = ["ErrorControlDDIMInversionSampler", "ErrorControlInversionSigmas", "ErrorControlDiffIERSampler",
         "ErrorControlDiffIERGapMeter", "ErrorControlNoiseAwarenessGuidance", "ErrorControlNoiseAwarenessGuider",
         "ErrorControlNoiseShiftMeter", "ErrorControlTrainNoiseEstimator", "ErrorControlLoadNoiseEstimator",
         "ErrorControlPolarisInversion", "ErrorControlPolarisDenoise", "ErrorControlPolarisInversionSampler",
         "ErrorControlPolarisReplay", "ErrorControlPolarisTraceSigmas", "ErrorControlPolarisSaveTrace",
         "ErrorControlPolarisLoadTrace", "ErrorControlVRGCalibrate", "ErrorControlVRGLoadProfile",
         "ErrorControlVRGScheduler", "ErrorControlVRGOptimizeSigmas"]
REFUSED = {node: rf"{title}: input 'estimator': mode 'estimator' \(the default\) needs a noise-level estimator, and "
                 r"none is connected\. Train one .* or pick mode 'fixed'"
           for node, title in [("ErrorControlNoiseAwarenessGuidance", r"Noise Awareness Guidance \(model patch\)"),
                               ("ErrorControlNoiseAwarenessGuider", r"Noise Awareness Guidance \(guider\)"),
                               ("ErrorControlNoiseShiftMeter", "Noise Shift Meter")]}
"""The nodes whose defaults need a trained estimator: refused before the run, saying what to connect."""
MADE_BY = {"VRG_PROFILE": ("ErrorControlVRGCalibrate", 1), "POLARIS_TRACE": ("ErrorControlPolarisInversion", 1)}
WRITERS = {"ErrorControlLoadNoiseEstimator": "ErrorControlTrainNoiseEstimator",
           "ErrorControlPolarisLoadTrace": "ErrorControlPolarisSaveTrace",
           "ErrorControlVRGLoadProfile": "ErrorControlVRGCalibrate"}
INVERSION_SAMPLERS = {"ErrorControlDDIMInversionSampler", "ErrorControlPolarisInversionSampler"}


def base() -> dict:
    """The tiny checkpoint, a prompt and a negative one, an empty latent, the encoded example image (``latent``), and
    the other plain sources."""
    return {
        **base_graph(encoded_image=True),
        "schedule": api_node("BasicScheduler", model=["ckpt", 0], scheduler="normal", steps=20, denoise=1.0),
        "nonoise": api_node("DisableNoise"),
        "noise": api_node("RandomNoise", noise_seed=0),
        "euler": api_node("KSamplerSelect", sampler_name="euler"),
        "cfg_guider": api_node("CFGGuider", model=["ckpt", 0], positive=["pos", 0], negative=["neg", 0], cfg=8.0),
    }


def kind(spec: list) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def default(spec: list):
    """A widget's default as the frontend sets it: its default, else a combo's first option."""
    options = spec[0] if isinstance(spec[0], list) else spec[1].get("options") if len(spec) > 1 else None
    if len(spec) > 1 and "default" in spec[1]:
        return spec[1]["default"]
    return options[0] if options else None


def source(graph: dict, info: dict, link_type: str, name: str) -> list:
    """The plainest output of ``link_type`` for an input called ``name``."""
    if link_type in MADE_BY:
        maker, slot = MADE_BY[link_type]
        return [add(graph, info, maker), slot]
    plain = {"MODEL": ["ckpt", 0], "CONDITIONING": ["neg" if name == "negative" else "pos", 0], "SIGMAS": ["schedule", 0],
             "LATENT": ["latent" if name == "latent" else "empty", 0]}
    return plain[link_type]


def add(graph: dict, info: dict, node: str) -> str:
    """``node`` in ``graph`` with every widget at its default and every required link from :func:`source`."""
    if node in graph:
        return node
    inputs = {}
    for name, spec in info[node]["input"]["required"].items():
        inputs[name] = default(spec) if kind(spec) in WIDGETS else source(graph, info, kind(spec), name)
    for name, spec in info[node]["input"].get("optional", {}).items():
        if kind(spec) in WIDGETS and default(spec) is not None:
            inputs[name] = default(spec)
    graph[node] = {"class_type": node, "inputs": inputs}
    return node


def sample(graph: dict, guider: list, sampler: list, sigmas: list, noise: str = "noise", latent: list | None = None
           ) -> None:
    graph["sample"] = sampler_custom_advanced([noise, 0], guider, sampler, sigmas, latent or ["empty", 0])
    consume(graph, "LATENT", ["sample", 0])


CONSUMED = {"IMAGE", "LATENT", "MODEL", "GUIDER", "SAMPLER", "SIGMAS", "NOISE_AWARENESS_ESTIMATOR"}


def consume(graph: dict, output_type: str, output: list, info: dict | None = None) -> None:
    """Use ``output`` (of a type in :data:`CONSUMED`) as a user would, through to a preview."""
    if output_type == "NOISE_AWARENESS_ESTIMATOR":  # guides a KSampler in the default mode
        add(graph, info, "ErrorControlNoiseAwarenessGuidance")
        graph["ErrorControlNoiseAwarenessGuidance"]["inputs"]["estimator"] = output
        consume(graph, "MODEL", ["ErrorControlNoiseAwarenessGuidance", 0])
    elif output_type == "IMAGE":
        graph["preview"] = {"class_type": "PreviewImage", "inputs": {"images": output}}
    elif output_type == "LATENT":
        graph["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": output, "vae": ["ckpt", 2]}}
        consume(graph, "IMAGE", ["decode", 0])
    elif output_type == "MODEL":
        graph["ksampler"] = ksampler(output, ["pos", 0], ["neg", 0], ["empty", 0], seed=0, steps=20, cfg=8.0)
        consume(graph, "LATENT", ["ksampler", 0])
    elif output_type == "GUIDER":
        sample(graph, output, ["euler", 0], ["schedule", 0])
    elif output_type == "SAMPLER":
        sample(graph, ["cfg_guider", 0], output, ["schedule", 0])
    elif output_type == "SIGMAS":
        sample(graph, ["cfg_guider", 0], ["euler", 0], output)


def simplest_graph(info: dict, node: str) -> dict:
    graph = base()
    add(graph, info, node)
    outputs = info[node]["output"]
    if node in INVERSION_SAMPLERS:  # rising sigmas from a clean latent, no noise added
        graph["levels"] = {"class_type": "ErrorControlInversionSigmas", "inputs": {"model": ["ckpt", 0],
                                                                                   "sigmas": ["schedule", 0]}}
        sample(graph, ["cfg_guider", 0], [node, 0], ["levels", 0], "nonoise", ["latent", 0])
    elif node == "ErrorControlPolarisReplay":  # the trace's own sigmas from its inverted latent
        trace = graph[node]["inputs"]["trace"]
        graph["trace_sigmas"] = {"class_type": "ErrorControlPolarisTraceSigmas", "inputs": {"trace": trace}}
        sample(graph, [node, 0], ["euler", 0], ["trace_sigmas", 0], "nonoise", [trace[0], 0])
    elif not info[node]["output_node"]:
        slot = next(slot for slot, output_type in enumerate(outputs) if output_type in CONSUMED)
        consume(graph, outputs[slot], [node, slot], info)
    return graph


@pytest.mark.parametrize("node", NODES)
def test_every_node_runs_with_its_defaults_or_is_refused_before_the_run(comfy, node):
    info = comfy.object_info()
    assert {name for name, i in info.items() if i["category"].startswith(PACK)} == set(NODES)  # none left out
    if node in WRITERS:  # a Load node lists the files its writer node makes
        comfy.run(simplest_graph(info, WRITERS[node]))
        info = comfy.object_info()
    graph = simplest_graph(info, node)
    if node in REFUSED:
        with pytest.raises(PromptRejected, match=REFUSED[node]) as refused:
            comfy.queue(graph)
        assert list(refused.value.error["node_errors"]) == [node]  # on the node itself, before anything ran
        return
    assert comfy.run(graph, timeout=600)["status"]["status_str"] == "success"

"""Workflows saved before ``eval_at`` had short values still validate, run and mean what they meant on each host.

The two files under ``legacy_workflows/`` are the example workflows as the pack shipped them with the long labels
(``auto (next for EPS/V, current for flow)`` on DDIM Inversion, ``current level (ComfyUI, FlipSigmas + euler)`` on
POLARIS Inversion). ComfyUI rejects a combo value outside the options at validation unless the node's
``validate_inputs`` takes the input; each test runs the old file as the UI would queue it, then the same graph with the
short value the label maps to, and the two must give the same pixels (and the other value other pixels).
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.comfy_host import PromptRejected
from tools.ui_to_api import tiny_api_graph

LEGACY = Path(__file__).resolve().parent / "legacy_workflows"
CASES = [("ddim_inversion_reconstruct.json", "ErrorControlDDIMInversionSampler",
          "auto (next for EPS/V, current for flow)", "next"),  # the tiny checkpoint is SD1.5: EPS
         ("polaris_reconstruct.json", "ErrorControlPolarisInversion",
          "current level (ComfyUI, FlipSigmas + euler)", "current")]


def pixels(paths: list[Path]) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted(paths, key=lambda p: p.name)]


def with_eval_at(graph: dict, node_type: str, value: str) -> dict:
    """The graph with ``eval_at`` of every ``node_type`` node set to ``value`` (and the old value asserted there)."""
    out = json.loads(json.dumps(graph))
    nodes = [node for node in out.values() if node["class_type"] == node_type]
    assert nodes, f"no {node_type} in the graph"
    for node in nodes:
        node["inputs"]["eval_at"] = value
    return out


@pytest.mark.parametrize("name, node_type, label, meaning", CASES, ids=[c[0] for c in CASES])
def test_a_workflow_with_the_old_long_label_runs_and_means_the_same(comfy, name, node_type, label, meaning):
    saved = json.loads((LEGACY / name).read_text())
    assert label in {v for node in saved["nodes"] if node["type"] == node_type for v in node["widgets_values"]}
    object_info = comfy.object_info()
    assert label not in object_info[node_type]["input"]["required"]["eval_at"][1]["options"]  # a hidden alias
    graph = tiny_api_graph(saved, object_info)
    assert {node["inputs"]["eval_at"] for node in graph.values() if node["class_type"] == node_type} == {label}
    old = pixels(comfy.output_images(comfy.run(graph)))
    new = pixels(comfy.output_images(comfy.run(with_eval_at(graph, node_type, meaning))))
    assert old and len(old) == len(new)
    for a, b in zip(old, new, strict=True):
        np.testing.assert_array_equal(a, b)
    other = pixels(comfy.output_images(comfy.run(with_eval_at(graph, node_type, "next" if meaning == "current" else "current"))))
    assert any(not np.array_equal(a, b) for a, b in zip(old, other, strict=True))  # the label decides the picture


OUTPUTS = {"SaveImage", "PreviewImage", "SaveLatent"}


def without_other_outputs(graph: dict, node_type: str) -> dict:
    """The graph less its output nodes that do not depend on a ``node_type`` node: ComfyUI runs the outputs that
    validate and drops the others, so an output beside the rejected node would let the prompt through."""
    def depends(node_id: str) -> bool:
        node = graph[node_id]
        return node["class_type"] == node_type or any(
            depends(v[0]) for v in node["inputs"].values() if isinstance(v, list))

    return {k: v for k, v in graph.items() if v["class_type"] not in OUTPUTS or depends(k)}


def test_an_unknown_eval_at_is_rejected_with_the_node_and_the_choices(comfy):
    saved = json.loads((LEGACY / CASES[0][0]).read_text())
    graph = with_eval_at(tiny_api_graph(saved, comfy.object_info()), CASES[0][1], "halfway")
    graph = without_other_outputs(graph, CASES[0][1])
    with pytest.raises(PromptRejected, match=r"DDIM Inversion \(sampler\): input 'eval_at' must be one of "
                                             r"\['auto', 'current', 'next'\], got 'halfway'"):
        comfy.run(graph)

"""The plots the nodes send to the frontend (their UI output, as plots/line.py builds it), checked against the data the
node had inside a real ComfyUI. The figures themselves are checked value by value in tests/unit/test_plot.py; here the
nodes whose plots are built in their own node file (VRG) and the estimator's whole-range plot."""

import math

import pytest
from safetensors.torch import load_file

from tools.api_graphs import api_node, base_graph

UI_KEY = "error_control_plot"


def clean_latents() -> dict:
    """The tiny checkpoint, an empty prompt (``text``), the example image encoded twice (``batch``)."""
    graph = base_graph({"text": ""}, empty_latent=False, encoded_image=True)
    graph["batch"] = api_node("RepeatLatentBatch", samples=["latent", 0], amount=2)
    return graph


def series(history: dict, node: str) -> dict[str, tuple[list, list]]:
    """The plotted series of a node's (first) plot, by label."""
    spec = history["outputs"][node][UI_KEY][0]
    return {s["label"]: (s["x"], s["y"]) for s in spec["series"]}


def test_the_vrg_profile_plot_draws_the_saved_profile(comfy):
    graph = clean_latents()
    graph["calibrate"] = {"class_type": "ErrorControlVRGCalibrate", "inputs": {
        "model": ["ckpt", 0], "latent": ["batch", 0], "positive": ["text", 0], "cfg": 1.0, "grid_points": 8, "seed": 0,
        "profile_name": "plot_check"}}
    plotted = series(comfy.run(graph), "calibrate")["mse_x0"]
    saved = load_file(comfy.base_dir / "models" / "vrg_profiles" / "plot_check.safetensors")
    assert plotted[0] == pytest.approx(saved["sigmas"].log10().tolist(), rel=1e-6)
    assert plotted[1] == pytest.approx(saved["mse_x0"].tolist(), rel=1e-6)


def test_the_estimator_plot_shows_both_curves_over_the_models_whole_sigma_range(comfy):
    graph = clean_latents()
    graph["train"] = {"class_type": "ErrorControlTrainNoiseEstimator", "inputs": {
        "model": ["ckpt", 0], "latent": ["batch", 0], "iterations": 40, "batch_size": 8, "seed": 0,
        "estimator_name": "plot_check"}}
    curves = series(comfy.run(graph), "train")
    assert set(curves) == {"true sigma", "estimated sigma"}
    levels, true = curves["true sigma"]
    assert levels == pytest.approx([math.log10(s) for s in true], abs=1e-6)  # x: log10 of the true level, y: the level
    assert min(true) == pytest.approx(0.0292, rel=0.01) and max(true) == pytest.approx(14.6, rel=0.01)  # SD1.5's range
    assert curves["estimated sigma"][0] == levels
    assert all(y is not None and y > 0 for y in curves["estimated sigma"][1])  # every level drawn, none floored

"""The pack's methods compose with the user's own guidance patches instead of dropping them: DiffIER, POLARIS Replay and
Noise Awareness Guidance stacked on ComfyUI's RescaleCFG (a CFG function), CFGNorm and CFG-Zero* (post-CFG patches) and
another pack's CFG function (the test pack's ``ErrorControlTestCFGFunction``).
Each patch must still change the result, and with no patch the result is the pack's own (the other host tests)."""

import pytest
import torch

from tools.api_graphs import base_graph, ksampler, model_of, save_latent

USER_PATCHES = {
    "none": None,
    "RescaleCFG": {"class_type": "RescaleCFG", "inputs": {"multiplier": 1.0}},
    "CFGNorm": {"class_type": "CFGNorm", "inputs": {"strength": 0.8}},
    "CFGZeroStar": {"class_type": "CFGZeroStar", "inputs": {}},
    "another pack's CFG function": {"class_type": "ErrorControlTestCFGFunction", "inputs": {"damping": 0.8}},
}
CFG = 6.0


def sampled(model: list, sampler: str) -> dict:
    return ksampler(model, ["pos", 0], ["neg", 0], ["empty", 0], seed=7, steps=6, cfg=CFG, sampler_name=sampler)


def method_graph(method: str, patch: dict | None, prefix: str) -> dict:
    """``method`` on the tiny checkpoint's model, optionally patched by the user's node (a prompt, a negative, an empty
    latent, the encoded example image), its latent saved as ``prefix``."""
    graph = base_graph(encoded_image=True, patch=patch, patch_id="user")
    model = model_of(graph, "user")
    if method == "diffier":
        graph["out"] = sampled(model, "diffier")
    elif method == "nag":
        graph["nag"] = {"class_type": "ErrorControlNoiseAwarenessGuidance", "inputs": {
            "model": model, "strength": 0.5, "mode": "fixed", "delta": 0.15, "start_percent": 0.0, "end_percent": 1.0}}
        graph["out"] = sampled(["nag", 0], "euler")
    else:  # POLARIS: the trace of an unpatched inversion, replayed by the (patched) model at the user's cfg with blend
        conds = {"positive": ["pos", 0], "negative": ["neg", 0]}
        graph["invert"] = {"class_type": "ErrorControlPolarisInversion", "inputs": {
            "model": ["ckpt", 0], **conds, "latent": ["latent", 0], "steps": 6, "scheduler": "normal",
            "solver": "least_squares", "eval_at": "current", "space": "v",
            "omega_start": 1.0}}
        graph["out"] = {"class_type": "ErrorControlPolarisDenoise", "inputs": {
            "model": model, **conds, "trace": ["invert", 1], "cfg": CFG, "blend": 0.2}}
    graph["save"] = save_latent(["out", 0], prefix)
    return graph


@pytest.mark.parametrize("method", ["diffier", "polaris_replay", "nag"])
def test_the_users_guidance_patches_still_act_under_each_method(comfy, method):
    latents = {}
    for name, patch in USER_PATCHES.items():
        prefix = f"compose_{method}_{name}"
        latents[name] = comfy.output_latents(comfy.run(method_graph(method, patch, prefix)))[prefix]
        assert torch.isfinite(latents[name]).all()
    alone = latents["none"]
    for name in USER_PATCHES:
        if name != "none":
            change = float((latents[name] - alone).square().mean() / alone.square().mean())
            print(f"{method} + {name}: relative change {change:.3g}")
            # the same graph without the patch is bit-identical run to run (test_reliability), so any change is the
            # patch acting; a method that dropped it would give exactly the unpatched latent
            assert change > 0, f"{name} no longer acts under {method}"

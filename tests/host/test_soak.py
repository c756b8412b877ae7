"""Soak: 200 prompts mixing every method in one server; all succeed and the server's memory stops growing after warm-up.

Marked ``slow`` (minutes on 2 CPU cores): ``make soak`` runs it, and so does CI in its full mode (``CI_FULL=1 .ci/run``).
"""

import itertools
from pathlib import Path

import pytest

from tools.api_graphs import base_graph, ksampler, save_latent

PROMPTS = 200
WARMUP = 40
EVAL_CURRENT = "current"


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def base(seed: int) -> dict:
    """The tiny checkpoint, the encoded example image, a prompt of its own per seed and an empty negative."""
    return base_graph({"text": f"a photo {seed}", "empty": ""}, empty_latent=False, encoded_image=True)


def sampled(model: list, sampler: str = "euler", scheduler: str = "normal", seed: int = 0) -> dict:
    return ksampler(model, ["text", 0], ["empty", 0], ["latent", 0], seed=seed, steps=3, sampler_name=sampler,
                    scheduler=scheduler)


def save(source: str) -> dict:
    return save_latent([source, 0], "soak")


def polaris(seed: int) -> dict:
    graph = base(seed)
    graph["invert"] = {"class_type": "ErrorControlPolarisInversion", "inputs": {
        "model": ["ckpt", 0], "positive": ["text", 0], "negative": ["empty", 0], "latent": ["latent", 0], "steps": 3,
        "scheduler": "normal", "solver": "least_squares", "eval_at": EVAL_CURRENT, "space": "v", "omega_start": 1.0}}
    graph["denoise"] = {"class_type": "ErrorControlPolarisDenoise", "inputs": {
        "model": ["ckpt", 0], "positive": ["text", 0], "negative": ["empty", 0], "trace": ["invert", 1], "cfg": 7.0,
        "blend": 0.1}}
    return {**graph, "out": save("denoise")}


def nag(seed: int) -> dict:
    graph = base(seed)
    graph["patch"] = {"class_type": "ErrorControlNoiseAwarenessGuidance", "inputs": {
        "model": ["ckpt", 0], "strength": 0.5, "mode": "fixed", "delta": 0.15, "start_percent": 0.5, "end_percent": 1.0}}
    return {**graph, "k": sampled(["patch", 0], seed=seed), "out": save("k")}


def diffier(seed: int) -> dict:
    return {**base(seed), "k": sampled(["ckpt", 0], "diffier", seed=seed), "out": save("k")}


def vrg(seed: int) -> dict:
    graph = base(seed)
    graph["calibrate"] = {"class_type": "ErrorControlVRGCalibrate", "inputs": {
        "model": ["ckpt", 0], "latent": ["latent", 0], "positive": ["empty", 0], "cfg": 1.0, "grid_points": 8,
        "seed": seed, "profile_name": "soak_profile"}}
    return {**graph, "k": sampled(["calibrate", 0], scheduler="vrg", seed=seed), "out": save("k")}


def ddim(seed: int) -> dict:
    return {**base(seed), "k": sampled(["ckpt", 0], "euler", "karras", seed=seed), "out": save("k")}


@pytest.mark.slow
def test_200_mixed_prompts_succeed_and_memory_stops_growing(comfy):
    pid = comfy.process.pid
    rss = []
    for i, build in zip(range(PROMPTS), itertools.cycle([polaris, nag, diffier, vrg, ddim])):
        assert comfy.run(build(i))["status"]["status_str"] == "success", (i, build.__name__)
        rss.append(rss_kib(pid))
    after_warmup, end = rss[WARMUP - 1], rss[-1]
    print(f"RSS after warm-up {after_warmup / 1024:.0f} MiB, at the end {end / 1024:.0f} MiB "
          f"({100 * (end / after_warmup - 1):+.1f} %), peak {max(rss) / 1024:.0f} MiB")
    assert end < 1.05 * after_warmup, (after_warmup, end)
    profiles = list((comfy.base_dir / "models" / "vrg_profiles").glob("soak_profile*"))
    assert [p.name for p in profiles] == ["soak_profile.safetensors"]  # rewritten in place, no temp files left

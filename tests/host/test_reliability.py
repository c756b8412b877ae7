"""Bad input never hurts the user's ComfyUI: every case ends in a clear error naming the node, the input and the fix,
nothing is half-written, and the server answers the next prompt. Also interrupts, determinism and coexistence with
another pack's dropdown names."""

import json
import subprocess
import time
from pathlib import Path

import pytest
import requests
import torch
from safetensors.torch import save_file

from tools.api_graphs import (
    PARAMETRISATION_PATCHES,
    PHOTO_PROMPTS,
    api_node,
    base_graph,
    ksampler,
    sampler_custom_advanced,
    save_latent,
    txt2img,
)
from tools.comfy_host import CACHE, PromptFailed, PromptRejected, comfy_env

REPO = Path(__file__).resolve().parents[2]
EVAL_CURRENT = "current"
TRACE, PROFILE = "reliability_trace", "reliability_profile"
EPS_SAMPLING = {"class_type": "ModelSamplingDiscrete", "inputs": {"sampling": "eps", "zsnr": False}}


def graph(family: str = "eps", **nodes: dict) -> dict:
    """Tiny checkpoint (as ``family``: its parametrisation patch, or ModelSamplingDiscrete eps, as ``model``), the
    encoded example image, a prompt, an empty negative, a 4-step schedule, plus ``nodes``."""
    base = base_graph(PHOTO_PROMPTS, empty_latent=False, encoded_image=True,
                      patch=PARAMETRISATION_PATCHES[family] or EPS_SAMPLING, patch_id="model")
    base["schedule"] = api_node("BasicScheduler", model=["model", 0], scheduler="normal", steps=4, denoise=1.0)
    for node in nodes.values():
        node.setdefault("inputs", {})
    return {**base, **nodes}


def saved(source: str) -> dict:
    return save_latent([source, 0], "reliability")


def preview_image(source: str, output: int) -> dict:
    return {"class_type": "PreviewImage", "inputs": {"images": [source, output]}}


def inversion(**inputs) -> dict:
    return {"class_type": "ErrorControlPolarisInversion", "inputs": {
        "model": ["model", 0], "positive": ["text", 0], "negative": ["empty", 0], "latent": ["latent", 0], "steps": 3,
        "scheduler": "normal", "solver": "least_squares", "eval_at": EVAL_CURRENT, "space": "v", "omega_start": 1.0,
        **inputs}}


def calibrate(**inputs) -> dict:
    return {"class_type": "ErrorControlVRGCalibrate", "inputs": {
        "model": ["model", 0], "latent": ["latent", 0], "positive": ["empty", 0], "cfg": 1.0, "grid_points": 8, "seed": 0,
        "profile_name": PROFILE, **inputs}}


def load_trace(name: str) -> dict:
    return {"class_type": "ErrorControlPolarisLoadTrace", "inputs": {"model": ["model", 0], "trace_name": name}}


def load_profile(name: str) -> dict:
    return {"class_type": "ErrorControlVRGLoadProfile", "inputs": {"model": ["model", 0], "profile_name": name}}


def denoise(trace: list) -> dict:
    return {"class_type": "ErrorControlPolarisDenoise", "inputs": {
        "model": ["model", 0], "positive": ["text", 0], "negative": ["empty", 0], "trace": trace, "cfg": 7.0, "blend": 0.0}}


def replay_on(latent: list) -> dict:
    """POLARIS Replay + SamplerCustomAdvanced on ``latent`` with a fresh 3-step trace."""
    return {
        "invert": inversion(),
        "guider": {"class_type": "ErrorControlPolarisReplay", "inputs": {
            "model": ["model", 0], "positive": ["text", 0], "negative": ["empty", 0], "trace": ["invert", 1], "cfg": 7.0,
            "blend": 0.0}},
        "levels": {"class_type": "ErrorControlPolarisTraceSigmas", "inputs": {"trace": ["invert", 1]}},
        "nonoise": {"class_type": "DisableNoise"},
        "euler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "sample": sampler_custom_advanced(["nonoise", 0], ["guider", 0], ["euler", 0], ["levels", 0], latent),
        "out": saved("sample")}


def nag_patch(**inputs) -> dict:
    return {"class_type": "ErrorControlNoiseAwarenessGuidance", "inputs": {
        "model": ["model", 0], "strength": 0.5, "mode": "fixed", "delta": 0.15, "start_percent": 0.5, "end_percent": 1.0,
        **inputs}}


def sampled(model: list, **inputs) -> dict:
    return ksampler(model, ["text", 0], ["empty", 0], ["latent", 0], **{"seed": 1, "steps": 3, **inputs})


def vrg_scheduler(**inputs) -> dict:
    return {"class_type": "ErrorControlVRGScheduler", "inputs": {
        "model": ["model", 0], "profile": ["profile", 1], "scheduler": "normal", "steps": 10, "denoise": 1.0, "lp": 0.01,
        "fix_sigma_max": True, **inputs}}


def flipped() -> dict:
    return {"class_type": "FlipSigmas", "inputs": {"sigmas": ["schedule", 0]}}


def split_last() -> dict:  # the last level of a 4-step schedule alone: a schedule of 0 steps
    return {"class_type": "SplitSigmas", "inputs": {"sigmas": ["schedule", 0], "step": 4}}


def latent_file(name: str) -> dict:
    return {"class_type": "LoadLatent", "inputs": {"latent": name}}


# (id, graph, exception, message): every message names the node and the input and says what to do.
MATRIX = [
    ("steps below 1", graph(invert=inversion(steps=0), out=saved("invert")), PromptRejected,
     r"ErrorControlPolarisInversion invert: Value 0 smaller than min of 1: steps"),
    ("huge step count", graph(invert=inversion(steps=100000), out=saved("invert")), PromptRejected,
     r"Value 100000 bigger than max of 1000: steps"),
    ("huge VRG step count", graph(profile=load_profile(f"{PROFILE}.safetensors"), s=vrg_scheduler(steps=20000),
                                  out=preview_image("s", 1)), PromptRejected,
     r"Value 20000 bigger than max of 10000: steps"),
    ("cfg below range", graph(c=calibrate(cfg=0.5), out=preview_image("c", 2)),
     PromptRejected, r"Value 0.5 smaller than min of 1.0: cfg"),
    ("strength below range", graph(p=nag_patch(strength=-1.0), k=sampled(["p", 0]), out=saved("k")), PromptRejected,
     r"Value -1.0 smaller than min of 0.0: strength"),
    ("omega_start above range", graph(invert=inversion(omega_start=16.0), out=saved("invert")), PromptRejected,
     r"Value 16.0 bigger than max of 15.0: omega_start"),
    ("blend above range", graph(invert=inversion(), d={**denoise(["invert", 1]), "inputs": {
        **denoise(["invert", 1])["inputs"], "blend": 2.0}}, out=saved("d")), PromptRejected,
     r"Value 2.0 bigger than max of 1.0: blend"),
    ("ascending sigmas into Inversion Sigmas", graph(f=flipped(), s={"class_type": "ErrorControlInversionSigmas", "inputs": {
        "model": ["model", 0], "sigmas": ["f", 0]}}, out={"class_type": "PreviewAny", "inputs": {"source": ["s", 0]}}),
     PromptFailed, r"Inversion Sigmas: input 'sigmas' must be strictly descending; use a scheduler's output"),
    ("ascending sigmas into POLARIS Inversion", graph(f=flipped(), invert=inversion(sigmas=["f", 0]), out=saved("invert")),
     PromptFailed, r"POLARIS Inversion: input 'sigmas' must be strictly descending"),
    ("a schedule of zero steps", graph(s=split_last(), invert=inversion(sigmas=["s", 1]), out=saved("invert")),
     PromptFailed, r"POLARIS Inversion: input 'sigmas' must be a 1-D schedule with at least 2 values.*steps >= 1"),
    ("ascending sigmas into VRG Optimize Sigmas", graph(profile=load_profile(f"{PROFILE}.safetensors"), f=flipped(), o={
        "class_type": "ErrorControlVRGOptimizeSigmas", "inputs": {"profile": ["profile", 1], "sigmas": ["f", 0], "lp": 0.01,
                                                                  "fix_sigma_max": True}},
        out=preview_image("o", 1)), PromptFailed,
     r"VRG Optimize Sigmas.*'sigmas' must be strictly descending"),
    ("ddim_inversion in a plain KSampler", graph(k=sampled(["model", 0], sampler_name="ddim_inversion"), out=saved("k")),
     PromptFailed, r"DDIM Inversion \(sampler ddim_inversion\): input 'sigmas' must be strictly ascending; connect the "
                   r"schedule through FlipSigmas"),
    ("descending sigmas into the POLARIS inversion sampler", graph(
        g={"class_type": "CFGGuider", "inputs": {"model": ["model", 0], "positive": ["text", 0], "negative": ["empty", 0],
                                                 "cfg": 1.0}},
        i={"class_type": "ErrorControlPolarisInversionSampler", "inputs": {
            "solver": "least_squares", "eval_at": EVAL_CURRENT, "space": "v", "omega_start": 1.0, "trace_name": "never"}},
        n={"class_type": "DisableNoise"},
        s=sampler_custom_advanced(["n", 0], ["g", 0], ["i", 0], ["schedule", 0], ["latent", 0]),
        out=saved("s")), PromptFailed, r"POLARIS Inversion \(sampler\): input 'sigmas' must be strictly ascending"),
    ("VRG scheduler on its own output", graph(profile=load_profile(f"{PROFILE}.safetensors"), s=vrg_scheduler(scheduler="vrg"),
                                              out=preview_image("s", 1)),
     PromptFailed, r"VRG Scheduler: input 'scheduler' is the base schedule VRG improves; pick one other than 'vrg'"),
    ("VRG scheduler with denoise 0", graph(profile=load_profile(f"{PROFILE}.safetensors"), s=vrg_scheduler(denoise=0.0),
                                           out=preview_image("s", 1)),
     PromptFailed, r"VRG Scheduler: input 'denoise' must be in \(0, 1\]"),
    ("empty window", graph(p=nag_patch(start_percent=0.8, end_percent=0.2), k=sampled(["p", 0]), out=saved("k")),
     PromptFailed, r"Noise Awareness Guidance \(model patch\): inputs 'start_percent' \(0.8\) and 'end_percent' \(0.2\) must"),
    ("adaptive mode without a profile", graph(p=nag_patch(mode="adaptive"), k=sampled(["p", 0]), out=saved("k")),
     PromptFailed, r"Noise Awareness Guidance \(model patch\): input 'profile'.*VRG Calibrate"),
    ("replay on another batch", graph(b={"class_type": "RepeatLatentBatch", "inputs": {"samples": ["latent", 0], "amount": 2}},
                                      **replay_on(["b", 0])),
     PromptFailed, r"POLARIS Replay \(guider\): the latent batch has 2 samples but the trace was made for 1. Replay with"),
    ("replay on another size", graph(e={"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 128,
                                                                                    "batch_size": 1}}, **replay_on(["e", 0])),
     PromptFailed, r"POLARIS Replay \(guider\): the latent has shape \(1, 4, 16, 8\), the trace was made for \(1, 4, 8, 8\)"),
    ("a flow trace on an EPS model", graph(t=load_trace(f"{TRACE}_flow.safetensors"), d=denoise(["t", 0]), out=saved("d")),
     PromptFailed, r"POLARIS Load Trace: input 'trace' was made with a flow model, but this model is EPS/V"),
    ("an EPS profile on a flow model", graph(profile=load_profile(f"{PROFILE}.safetensors"), s=vrg_scheduler(),
                                             out=preview_image("s", 1), family="flow"),
     PromptFailed, r"VRG Load Profile: input 'profile' was calibrated for an EPS/V model, but this model is flow"),
    ("an EPS trace on a flow model", graph(t=load_trace(f"{TRACE}.safetensors"), d=denoise(["t", 0]), out=saved("d"),
                                           family="flow"),
     PromptFailed, r"POLARIS Load Trace: input 'trace' was made with an EPS/V model, but this model is flow"),
    ("empty calibration batch", graph(l=latent_file("zero.latent"), c=calibrate(latent=["l", 0]),
                                      out=preview_image("c", 2)),
     PromptFailed, r"VRG Calibrate: input 'latent' is empty. Connect VAE-encoded images"),
    ("NaN latent into calibration", graph(l=latent_file("nan.latent"), c=calibrate(latent=["l", 0]),
                                          out=preview_image("c", 2)),
     PromptFailed, r"VRG Calibrate: input 'latent' contains NaN/inf. Re-encode the images"),
    ("NaN latent into POLARIS", graph(l=latent_file("nan.latent"), invert=inversion(latent=["l", 0]), out=saved("invert")),
     PromptFailed, r"POLARIS Inversion: input 'latent' contains NaN/inf. Re-encode the image"),
    ("zero-size latent into POLARIS", graph(l=latent_file("zero.latent"), invert=inversion(latent=["l", 0]),
                                            out=saved("invert")),
     PromptFailed, r"POLARIS Inversion: input 'latent' is empty"),
    ("trace name with ..", graph(invert=inversion(), s={"class_type": "ErrorControlPolarisSaveTrace", "inputs": {
        "trace": ["invert", 1], "trace_name": "../escape"}}), PromptFailed,
     r"POLARIS Save Trace: input 'trace_name' must be a plain file name"),
    ("absolute trace name", graph(invert=inversion(), s={"class_type": "ErrorControlPolarisSaveTrace", "inputs": {
        "trace": ["invert", 1], "trace_name": "/tmp/escape"}}), PromptFailed,
     r"POLARIS Save Trace: input 'trace_name' must be a plain file name"),
    ("profile name with ..", graph(c=calibrate(profile_name="../../escape"),
                                   out=preview_image("c", 2)), PromptFailed,
     r"VRG Calibrate: input 'profile_name' must be a plain file name"),
    ("loading a trace through ..", graph(t=load_trace("../vrg_profiles/x.safetensors"), d=denoise(["t", 0]),
                                         out=saved("d")),
     PromptFailed, r"POLARIS Load Trace: input 'trace_name': no file '../vrg_profiles/x.safetensors' in models/polaris_traces"),
    ("a symlinked trace pointing outside", graph(t=load_trace("outside.safetensors"), d=denoise(["t", 0]), out=saved("d")),
     PromptFailed, r"POLARIS Load Trace: input 'trace_name': no file 'outside.safetensors' in models/polaris_traces"),
    ("a symlinked profile pointing outside", graph(profile=load_profile("outside.safetensors"), s=vrg_scheduler(),
                                                   out=preview_image("s", 1)),
     PromptFailed, r"VRG Load Profile: input 'profile_name': no file 'outside.safetensors' in models/vrg_profiles"),
    ("a truncated trace", graph(t=load_trace("truncated.safetensors"), d=denoise(["t", 0]), out=saved("d")), PromptFailed,
     r"POLARIS Load Trace: input 'trace_name': PolarisTrace.load: .*truncated.safetensors is not a readable safetensors file"),
    ("a pickle named .safetensors", graph(t=load_trace("pickled.safetensors"), d=denoise(["t", 0]), out=saved("d")),
     PromptFailed, r"POLARIS Load Trace: input 'trace_name': PolarisTrace.load: .*pickled.safetensors is not a readable"),
    ("a profile where a trace belongs", graph(t=load_trace("a_profile.safetensors"), d=denoise(["t", 0]), out=saved("d")),
     PromptFailed, r"a_profile.safetensors is a safetensors file but not a POLARIS trace. Choose a trace written by"),
    ("a corrupt profile", graph(profile=load_profile("corrupt.safetensors"), s=vrg_scheduler(),
                                out=preview_image("s", 1)), PromptFailed,
     r"VRG Load Profile: input 'profile_name': ErrorProfile.load: .*corrupt.safetensors is not a readable safetensors file"),
    ("the inversion sampler with BasicGuider", graph(
        g={"class_type": "BasicGuider", "inputs": {"model": ["model", 0], "conditioning": ["text", 0]}},
        i={"class_type": "ErrorControlPolarisInversionSampler", "inputs": {
            "solver": "least_squares", "eval_at": EVAL_CURRENT, "space": "v", "omega_start": 1.0, "trace_name": "never"}},
        n={"class_type": "DisableNoise"},
        levels={"class_type": "ErrorControlInversionSigmas", "inputs": {"model": ["model", 0], "sigmas": ["schedule", 0]}},
        s=sampler_custom_advanced(["n", 0], ["g", 0], ["i", 0], ["levels", 0], ["latent", 0]),
        out=saved("s")), PromptFailed, r"POLARIS Inversion \(sampler\): needs the negative prompt's prediction too. Use "
                                         r"CFGGuider"),
]


@pytest.fixture(scope="module")
def artefacts(comfy):
    """A real trace (EPS and flow) and profile, and the broken files and links the matrix loads."""
    comfy.run(graph(invert=inversion(), s={"class_type": "ErrorControlPolarisSaveTrace", "inputs": {
        "trace": ["invert", 1], "trace_name": TRACE}}))
    comfy.run(graph(invert=inversion(), s={"class_type": "ErrorControlPolarisSaveTrace", "inputs": {
        "trace": ["invert", 1], "trace_name": f"{TRACE}_flow"}}, family="flow"))
    comfy.run(graph(c=calibrate(), out=preview_image("c", 2)))
    models = comfy.base_dir / "models"
    traces, profiles, outside = models / "polaris_traces", models / "vrg_profiles", comfy.base_dir / "outside"
    outside.mkdir(exist_ok=True)
    good = (traces / f"{TRACE}.safetensors").read_bytes()
    (outside / "secret.safetensors").write_bytes(good)
    for folder in (traces, profiles):
        link = folder / "outside.safetensors"
        if not link.exists():
            link.symlink_to(outside / "secret.safetensors")
    (traces / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    torch.save({"sigmas": torch.ones(3)}, traces / "pickled.safetensors")
    (traces / "a_profile.safetensors").write_bytes((profiles / f"{PROFILE}.safetensors").read_bytes())
    (profiles / "corrupt.safetensors").write_bytes(b"\x00" * 64)
    inputs = comfy.base_dir / "input"
    save_file({"latent_tensor": torch.zeros(0, 4, 8, 8)}, str(inputs / "zero.latent"))
    save_file({"latent_tensor": torch.full((1, 4, 8, 8), float("nan"))}, str(inputs / "nan.latent"))
    return traces, profiles


@pytest.mark.parametrize("case, api_graph, error, message", MATRIX, ids=[case[0] for case in MATRIX])
def test_bad_input_gives_a_clear_error_and_the_server_keeps_serving(comfy, artefacts, case, api_graph, error, message):
    traces, profiles = artefacts
    files_before = {p.name for p in traces.iterdir()} | {p.name for p in profiles.iterdir()}
    comfy.refused(api_graph, error, message)
    assert {p.name for p in traces.iterdir()} | {p.name for p in profiles.iterdir()} == files_before  # nothing written
    assert comfy.output_images(comfy.run(txt2img(steps=1, prefix="after_bad_input")))


def test_the_matrix_has_at_least_30_cases():
    assert len(MATRIX) >= 30 and len({case[0] for case in MATRIX}) == len(MATRIX)


def run_and_interrupt(comfy, api_graph: dict, after: float = 1.0) -> float:
    """Queue, interrupt ``after`` seconds into the run, return how long the interrupt took to end the prompt."""
    prompt_id = comfy.queue(api_graph)
    deadline = time.monotonic() + 60
    while not comfy.get("/queue").json()["queue_running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(after)
    began = time.monotonic()
    comfy.interrupt()
    status = comfy.wait(prompt_id, timeout=60)["status"]
    assert "execution_interrupted" in [event for event, _ in status["messages"]], status
    return time.monotonic() - began


@pytest.mark.parametrize("what", ["POLARIS inversion", "VRG calibration", "noise estimator training"])
def test_an_interrupt_stops_within_moments_and_leaves_no_file(comfy, artefacts, what):
    traces, profiles = artefacts
    if what == "noise estimator training":
        api = graph(t={"class_type": "ErrorControlTrainNoiseEstimator", "inputs": {
            "model": ["model", 0], "latent": ["latent", 0], "iterations": 100000, "batch_size": 8, "seed": 0,
            "estimator_name": "interrupted"}}, out=preview_image("t", 1))
        folder = comfy.base_dir / "models" / "noise_awareness_estimators"
        folder.mkdir(parents=True, exist_ok=True)
    elif what == "POLARIS inversion":
        api = graph(invert=inversion(steps=1000), s={"class_type": "ErrorControlPolarisSaveTrace", "inputs": {
            "trace": ["invert", 1], "trace_name": "interrupted"}})
        folder = traces
    else:
        api = graph(b={"class_type": "RepeatLatentBatch", "inputs": {"samples": ["latent", 0], "amount": 16}},
                    c=calibrate(latent=["b", 0], grid_points=256, profile_name="interrupted"),
                    out=preview_image("c", 2))
        folder = profiles
    before = {p.name for p in folder.iterdir()}
    seconds = run_and_interrupt(comfy, api)
    assert seconds < 10, seconds  # one model call of the tiny model takes well under a second
    assert {p.name for p in folder.iterdir()} == before  # no trace/profile/estimator, no temp file
    assert comfy.output_images(comfy.run(txt2img(steps=1, prefix="after_interrupt")))


def test_the_same_prompt_twice_gives_bit_identical_latents(comfy):
    def run(prefix: str) -> dict:
        api = graph(invert=inversion(steps=5), d=denoise(["invert", 1]), p=nag_patch(), k=sampled(["p", 0]),
                    o1=save_latent(["invert", 0], f"{prefix}_inv"), o2=save_latent(["d", 0], f"{prefix}_den"),
                    o3=save_latent(["k", 0], f"{prefix}_nag"))
        # Empty ComfyUI's output cache and unload the model, so the second run computes everything again
        requests.post(comfy.url + "/free", json={"free_memory": True, "unload_models": True}, timeout=10).raise_for_status()
        time.sleep(1.0)
        return comfy.output_latents(comfy.run(api))

    first, second = run("det_a"), run("det_b")
    for part in ("inv", "den", "nag"):
        a, b = first[f"det_a_{part}"], second[f"det_b_{part}"]
        assert torch.isfinite(a).all() and torch.equal(a, b), part


CHILD = """
import importlib.util, json, sys
sys.path.insert(0, {repo!r})
from tools.comfy_host import import_comfy
import_comfy()
import comfy.samplers
# another pack that appends its own names first, as many do
comfy.samplers.KSAMPLER_NAMES.append("other_pack_sampler")
comfy.samplers.SAMPLER_NAMES.append("other_pack_sampler")
comfy.samplers.SCHEDULER_NAMES.append("other_pack_scheduler")
for name in ("error_control_first", "error_control_second"):  # the pack imported twice (a reload)
    spec = importlib.util.spec_from_file_location(name, {init!r}, submodule_search_locations=[{repo!r}])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
print(json.dumps({{"samplers": list(comfy.samplers.KSampler.SAMPLERS), "schedulers": list(comfy.samplers.KSampler.SCHEDULERS)}}))
"""


def test_dropdown_names_survive_a_second_import_beside_another_pack(comfy):
    script = CHILD.format(repo=str(REPO), init=str(REPO / "__init__.py"))
    done = subprocess.run([str(comfy.host.python), "-c", script], capture_output=True, text=True, timeout=300,
                          env=comfy_env(comfy.host, CACHE / "python"))
    assert done.returncode == 0, done.stderr[-2000:]
    names = json.loads(done.stdout.strip().splitlines()[-1])
    for ours in ("ddim_inversion",):
        assert names["samplers"].count(ours) == 1
    assert names["samplers"].count("other_pack_sampler") == 1
    assert names["schedulers"].count("vrg") == 1 and names["schedulers"].count("other_pack_scheduler") == 1
    assert names["samplers"][0] == "euler" and names["schedulers"][0] == "simple"

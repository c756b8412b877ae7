"""bench/peers.py against ComfyUI's own code, run in each host's interpreter (one child process a host, no server):
the table schedulers and the beta scheduler give the same σ, and RescaleCFG, CFGNorm, CFGZeroStar and APG, applied
through ComfyUI's ``sampling_function`` to fixed random cond/uncond predictions, give the same x̂0 as ours."""

import functools
import json
import subprocess

import pytest
import torch

from bench import peers
from tools.comfy_host import CACHE, REPO, Host, comfy_env, hosts_to_test

TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}
SCHEDULES = {"ays": [("SD1", 10), ("SD1", 7), ("SDXL", 10), ("SDXL", 25)], "gits": [2, 10, 20, 30],
             "optimal": [("FLUX", 10), ("FLUX", 6), ("Wan", 20), ("Wan", 32)], "beta": [10, 20, 37]}
SCALE = 6.0

CHILD = r"""
import json, sys
sys.path.insert(0, {repo!r})
from tools.comfy_host import import_comfy
import_comfy()
import torch
import comfy.model_patcher, comfy.model_sampling, comfy.samplers
from comfy_extras import nodes_align_your_steps, nodes_apg, nodes_cfg, nodes_gits, nodes_model_advanced, nodes_optimalsteps

schedules = json.loads({schedules!r})


def output(node_output):
    return node_output[0] if isinstance(node_output, tuple) else node_output.result[0]


out = {{"ays": [output(nodes_align_your_steps.AlignYourStepsScheduler.execute(f, n, 1.0)).tolist() for f, n in schedules["ays"]],
       "gits": [output(nodes_gits.GITSScheduler.execute(1.20, n, 1.0)).tolist() for n in schedules["gits"]],
       "optimal": [output(nodes_optimalsteps.OptimalStepsScheduler.execute(f, n, 1.0)).tolist()
                   for f, n in schedules["optimal"]]}}
discrete = comfy.model_sampling.ModelSamplingDiscrete()
out["discrete"] = discrete.sigmas.tolist()
out["beta"] = [comfy.samplers.beta_scheduler(discrete, n).tolist() for n in schedules["beta"]]


class Patched:
    # what a node's patch touches of a MODEL: clone, the sampler hooks (ComfyUI's own methods), model_sampling
    set_model_sampler_cfg_function = comfy.model_patcher.ModelPatcher.set_model_sampler_cfg_function
    set_model_sampler_post_cfg_function = comfy.model_patcher.ModelPatcher.set_model_sampler_post_cfg_function
    set_model_sampler_pre_cfg_function = comfy.model_patcher.ModelPatcher.set_model_sampler_pre_cfg_function

    def __init__(self, flow):
        self.model_options = {{}}
        self.sampling = comfy.model_sampling.CONST() if flow else comfy.model_sampling.EPS()

    def clone(self):
        return self

    def get_model_object(self, name):
        return self.sampling


g = torch.Generator().manual_seed(0)
steps = [{{"x": torch.randn(2, 4, 5, 5, generator=g, dtype=torch.float64),
           "cond": torch.randn(2, 4, 5, 5, generator=g, dtype=torch.float64),
           "uncond": torch.randn(2, 4, 5, 5, generator=g, dtype=torch.float64)}} for _ in range(3)]
levels = {{False: [[3.0, 0.7], [1.5, 0.4], [0.5, 0.1]], True: [[0.9, 0.7], [0.6, 0.4], [0.3, 0.1]]}}
patches = {{"rescale_cfg": lambda m: nodes_model_advanced.RescaleCFG().patch(m, 0.7),
           "cfg_norm": lambda m: nodes_cfg.CFGNorm.execute(m, strength=0.8),
           "cfg_zero_star": lambda m: nodes_cfg.CFGZeroStar.execute(m),
           "apg": lambda m: nodes_apg.APG.execute(m, eta=0.3, norm_threshold=5.0, momentum=-0.5)}}
out["inputs"] = [{{k: v.tolist() for k, v in step.items()}} for step in steps]
out["levels"] = {{str(flow).lower(): value for flow, value in levels.items()}}
for name, patch in patches.items():
    for flow in (False, True):
        model = output(patch(Patched(flow)))
        results = []
        for step, sigma in zip(steps, levels[flow]):
            options = {{**model.model_options, "sampler_calc_cond_batch_function": lambda args, s=step: [s["cond"], s["uncond"]]}}
            results.append(comfy.samplers.sampling_function(None, step["x"], torch.tensor(sigma, dtype=torch.float64),
                                                            ["uncond"], ["cond"], {scale}, options).tolist())
        out[f"{{name}}_{{str(flow).lower()}}"] = results
print(json.dumps(out))
"""


@functools.cache
def comfy_outputs(host: Host) -> dict:
    """Everything ComfyUI computes for these tests, from one child process of ``host``'s interpreter."""
    script = CHILD.format(repo=str(REPO), schedules=json.dumps(SCHEDULES), scale=SCALE)
    done = subprocess.run([str(host.python), "-c", script], capture_output=True, text=True, timeout=120,
                          env=comfy_env(host, CACHE / "python"))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


HOSTS = pytest.mark.parametrize("host", hosts_to_test(), ids=lambda host: host.id)


def close(ours: torch.Tensor, theirs: list) -> None:
    torch.testing.assert_close(ours.double(), torch.tensor(theirs, dtype=torch.float64), **TOLERANCE)


@HOSTS
def test_table_and_beta_schedules_match_comfyui(host):
    theirs = comfy_outputs(host)
    for (family, steps), sigmas in zip(SCHEDULES["ays"], theirs["ays"]):
        close(peers.align_your_steps(family, steps), sigmas)
    for steps, sigmas in zip(SCHEDULES["gits"], theirs["gits"]):
        close(peers.gits(steps), sigmas)
    for (family, steps), sigmas in zip(SCHEDULES["optimal"], theirs["optimal"]):
        close(peers.optimal_steps(family, steps), sigmas)
    close(peers.discrete_sigmas(), theirs["discrete"])
    for steps, sigmas in zip(SCHEDULES["beta"], theirs["beta"]):
        close(peers.beta_schedule(peers.discrete_sigmas(), steps), sigmas)


def rescale_cfg_as_host(host: Host, flow: bool):
    """ComfyUI 0.3.75's RescaleCFG applies the VE v-conversion to flow models as well; 0.33.0 rescales them in x̂0."""
    return lambda pair, scale: peers.rescale_cfg(pair, scale, 0.7, flow and host.version != "0.3.75")


GUIDANCE = {
    "rescale_cfg": rescale_cfg_as_host,
    "cfg_norm": lambda host, flow: lambda pair, scale: peers.cfg_norm(pair, scale, strength=0.8),
    "cfg_zero_star": lambda host, flow: lambda pair, scale: peers.cfg_zero_star(pair, scale, flow, zero_init_steps=0),
    # ComfyUI's APG node at cfg w is the paper's APG at w + 1 (bench/peers.py, apg)
    "apg": lambda host, flow: lambda pair, scale: peers.apg(pair, scale + 1, eta=0.3, norm_threshold=5.0, momentum=-0.5),
}


@HOSTS
@pytest.mark.parametrize("flow", [False, True], ids=["eps", "flow"])
@pytest.mark.parametrize("name", list(GUIDANCE))
def test_guidance_peers_match_comfyui_over_three_steps(host, name, flow):
    theirs = comfy_outputs(host)
    steps = [{k: torch.tensor(v, dtype=torch.float64) for k, v in step.items()} for step in theirs["inputs"]]
    calls = iter(steps)
    denoiser = GUIDANCE[name](host, flow)(lambda x, sigma: (lambda s: (s["cond"], s["uncond"]))(next(calls)), SCALE)
    for step, sigma, expected in zip(steps, theirs["levels"][str(flow).lower()], theirs[f"{name}_{str(flow).lower()}"]):
        close(denoiser(step["x"], torch.tensor(sigma, dtype=torch.float64)), expected)

"""No host read per step in the sampling loops of ``samplers/`` (docs/contributing.md#rules-of-the-code): on CUDA a read of a
device tensor (``.item()``, ``float()``, ``bool()``, ``.tolist()``, ``.cpu()``) stalls the host until the GPU catches up, every
step.

Every read is counted through a torch function mode while a loop runs at two step counts: the count must not grow with
the steps. (A read before or after the loop, e.g. one NaN check at the end, is fine.) Noise Awareness Guidance decides
per call whether to call the model at all (its σ window): exactly one read a call, none more (adaptive mode included)."""

import pytest
import torch
from torch.overrides import TorchFunctionMode

from bench.inversion import levels
from samplers import diffier, inversion, nag, polaris, vrg

READS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu"}


class HostReads(TorchFunctionMode):
    """Counts the reads of tensor values by the host (and moves to the CPU) while active."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        to_cpu = name == "to" and any(str(a) == "cpu" for a in (*args[1:], *kwargs.values()))
        self.count += name in READS or to_cpu
        return func(*args, **kwargs)


def reads(run) -> int:
    with HostReads() as counter:
        run()
    return counter.count


@pytest.mark.parametrize("flow", [False, True])
def test_inversion_polaris_and_diffier_loops_read_nothing_per_step(mixture, x0, flow):
    pair = mixture.pair_denoiser(1, flow)

    def loops(steps: int) -> dict[str, int]:
        up, down = levels(steps, flow)
        _, trace = polaris.polaris_invert(pair, x0, up, flow)
        return {"ddim inversion": reads(lambda: inversion.ddim(mixture.denoiser(1, flow), x0, up, flow)),
                "polaris inversion": reads(lambda: polaris.polaris_invert(pair, x0, up, flow)),
                "polaris denoise": reads(lambda: polaris.polaris_denoise(pair, trace.latent, trace, cfg=3.0, blend=0.2)),
                "diffier": reads(lambda: diffier.diffier(pair, trace.latent, down, 4.0, iterations=2, flow=flow))}

    few, many = loops(4), loops(16)
    assert few == many, (few, many)


def test_vrg_calibration_reads_nothing_per_level(mixture, x0):
    def calibrate(points: int) -> int:
        grid = vrg.default_sigma_grid(0.03, 14.6, points, False)
        return reads(lambda: vrg.measure_error_profile(mixture.denoiser(1, False), x0, grid,
                                                       torch.Generator().manual_seed(0)))

    assert calibrate(4) == calibrate(16)


@pytest.mark.parametrize("mode", ["fixed", "adaptive"])
def test_noise_awareness_guidance_reads_once_a_call_to_decide_on_its_window(mixture, x0, mode):
    denoiser = mixture.denoiser(1, False)
    profile = vrg.measure_error_profile(denoiser, x0, vrg.default_sigma_grid(0.03, 14.6, 8, False),
                                        torch.Generator().manual_seed(0))
    sigma = torch.full((x0.shape[0],), 0.8, dtype=x0.dtype)
    x = x0 + sigma[:, None] * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=x0.dtype)
    denoised = denoiser(x, sigma)
    profile.mse_x0(sigma)  # the table moves to the device once; that is not per call
    count = reads(lambda: nag.nag_denoise(denoiser, x, sigma, denoised, denoised, 0.5, mode, 0.15, profile))
    assert count == 1

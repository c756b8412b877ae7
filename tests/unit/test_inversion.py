"""DDIM inversion baseline (samplers.inversion) on the analytic testbed, EPS/VE and flow."""

import pytest
import torch

from bench.inversion import invert_and_reconstruct
from bench.kit import schedule as descending
from bench.testbeds import gmm
from samplers import core
from samplers.inversion import ddim, reconstruction_error

FLOWS = [False, True]


@pytest.fixture(scope="module")
def mixture():
    return gmm.make_mixture(dim=16, n_classes=3, components_per_class=2, seed=0)


@pytest.mark.parametrize("flow", FLOWS)
def test_inversion_is_exact_when_the_prediction_is_exact(flow):
    # A denoiser that always predicts the true x0 (data = one point) makes every ε̂ exact: no approximate-noise error.
    x0 = torch.randn(8, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    oracle = lambda x, sigma: x0  # noqa: E731
    up = core.inversion_sigmas(descending(10, flow), flow=flow)
    z = ddim(oracle, x0, up, flow)
    eps = core.eps_from_denoised(z, x0, up[-1].expand(8), flow)
    torch.testing.assert_close(z, core.noise_to(x0, eps, up[-1], flow), rtol=0, atol=1e-10)
    torch.testing.assert_close(invert_and_reconstruct(oracle, x0, 10, flow), x0, rtol=0, atol=1e-9)


@pytest.mark.parametrize("flow", FLOWS)
@pytest.mark.parametrize("eval_at", ["current", "next"])
def test_reconstruction_error_falls_as_steps_rise(mixture, flow, eval_at):
    x0 = mixture.sample(64, torch.Generator().manual_seed(2), cls=1)
    denoiser = mixture.denoiser(cls=1, flow=flow)
    errors = [reconstruction_error(x0, invert_and_reconstruct(denoiser, x0, n, flow, eval_at)).mean().item()
              for n in (10, 20, 50, 100)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    # DDIM is a first-order scheme: the state error falls like 1/N, so its square falls ~100x over 10x the steps.
    # Asking for 10x leaves room for the pre-asymptotic regime while still failing a zeroth-order (non-converging) walk.
    assert errors[-1] < errors[0] / 10, errors


def test_descending_walk_is_comfyuis_euler(mixture):
    # The denoising direction of ddim() is exactly ComfyUI's euler sampler (x += (σ' - σ)·(x - D)/σ).
    denoiser = mixture.denoiser(cls=0)
    sigmas = descending(8, flow=False)
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * sigmas[0]
    euler = x.clone()
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        d = (euler - denoiser(euler, sigma.expand(4))) / sigma
        euler = euler + (sigma_next - sigma) * d
    torch.testing.assert_close(ddim(denoiser, x, sigmas), euler, rtol=0, atol=1e-10)


def test_callback_sees_every_step_in_order(mixture):
    steps = []
    ddim(mixture.denoiser(), torch.zeros(2, 16, dtype=torch.float64), descending(5, False),
         callback=lambda step: steps.append((step["i"], float(step["sigma"]))))
    assert [i for i, _ in steps] == list(range(5))
    assert [s for _, s in steps] == pytest.approx(descending(5, False)[:-1].tolist())


def test_a_non_finite_state_names_the_step_and_sigma():
    sigmas = descending(4, flow=False)
    poisoned = lambda x, sigma: torch.where(sigma[:, None] < 0.05, torch.full_like(x, float("nan")), x * 0)  # noqa: E731
    with pytest.raises(ValueError, match=r"NaN/inf at step 4 \(σ 0\.03"):
        ddim(poisoned, torch.zeros(1, 16, dtype=torch.float64), sigmas)


@pytest.mark.parametrize("flow, same_as", [(False, "next"), (True, "current")])
def test_auto_picks_the_convention_of_each_family(mixture, flow, same_as):
    x0 = mixture.sample(4, torch.Generator().manual_seed(6), cls=2)
    denoiser = mixture.denoiser(cls=2, flow=flow)
    torch.testing.assert_close(invert_and_reconstruct(denoiser, x0, 10, flow, "auto"),
                               invert_and_reconstruct(denoiser, x0, 10, flow, same_as), rtol=0, atol=0)

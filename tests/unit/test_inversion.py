"""DDIM inversion baseline (samplers.inversion) on the analytic testbed, EPS/VE and flow."""

import pytest
import torch

from bench.inversion import invert_and_reconstruct
from bench.kit import schedule as descending
from bench.testbeds import gmm
from samplers import core
from samplers.inversion import (
    AUTO_EVAL_AT,
    EVAL_AT_CHOICES,
    EVAL_AT_DEFAULT,
    LEGACY_EVAL_AT,
    ddim,
    reconstruction_error,
    resolve_eval_at,
)

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


@pytest.mark.parametrize("flow", FLOWS)
def test_auto_is_the_convention_that_measured_best_and_the_default_is_current(mixture, flow):
    x0 = mixture.sample(4, torch.Generator().manual_seed(6), cls=2)
    denoiser = mixture.denoiser(cls=2, flow=flow)
    assert AUTO_EVAL_AT[flow] == "current" and EVAL_AT_DEFAULT == "current"  # testbeds 2 and 4 (bench.inversion)
    torch.testing.assert_close(invert_and_reconstruct(denoiser, x0, 10, flow, "auto"),
                               invert_and_reconstruct(denoiser, x0, 10, flow, "current"), rtol=0, atol=0)


@pytest.mark.parametrize("flow", FLOWS)
def test_the_resolver_maps_short_values_and_every_old_long_label_to_what_it_meant(flow):
    assert EVAL_AT_CHOICES == ("auto", "current", "next")
    assert resolve_eval_at("current", flow) == "current" and resolve_eval_at("next", flow) == "next"
    assert resolve_eval_at("auto", flow) == AUTO_EVAL_AT[flow]
    meant = {"auto (next for EPS/V, current for flow)": "current" if flow else "next",
             "current level (FlipSigmas + euler)": "current",
             "current level (ComfyUI, FlipSigmas + euler)": "current",
             "next level (diffusers DDIMInverse)": "next"}
    assert set(LEGACY_EVAL_AT) == set(meant)
    for label, level in meant.items():
        assert resolve_eval_at(label, flow) == level, label


@pytest.mark.parametrize("flow", FLOWS)
def test_an_old_label_inverts_exactly_as_the_value_it_meant(mixture, flow):
    x0 = mixture.sample(4, torch.Generator().manual_seed(7), cls=0)
    up = core.inversion_sigmas(descending(8, flow), flow=flow)
    denoiser = mixture.denoiser(cls=0, flow=flow)
    old = ddim(denoiser, x0, up, flow, "auto (next for EPS/V, current for flow)")
    torch.testing.assert_close(old, ddim(denoiser, x0, up, flow, "current" if flow else "next"), rtol=0, atol=0)
    assert not torch.equal(old, ddim(denoiser, x0, up, flow, "next" if flow else "current"))


def test_an_unknown_eval_at_names_the_node_and_the_choices():
    with pytest.raises(ValueError, match=r"POLARIS Inversion: input 'eval_at' must be one of "
                                         r"\['auto', 'current', 'next'\], got 'halfway'"):
        resolve_eval_at("halfway", False, "POLARIS Inversion")

"""The analytic testbed's exact denoiser and densities, checked by Monte Carlo and against the VE/flow mapping."""

import pytest
import torch

from bench.testbeds import gmm
from samplers import core


@pytest.fixture(scope="module")
def mixture():
    return gmm.make_mixture(dim=4, n_classes=2, components_per_class=2, seed=3)


@pytest.mark.parametrize("flow, sigma", [(False, 0.5), (False, 2.0), (True, 0.3), (True, 0.7)])
@pytest.mark.parametrize("cls", [None, 1])
def test_exact_denoiser_matches_importance_sampling(mixture, flow, sigma, cls):
    # E[x0 | x] = Σ w_i x0_i / Σ w_i with x0_i from the prior and w_i = N(x; a·x0_i, σ²I): self-normalised importance
    # sampling. Its error is judged against its own standard error (delta method), at 5 standard errors.
    g = torch.Generator().manual_seed(11)
    prior = mixture.sample(400_000, g, cls=cls)
    sigma_t = torch.tensor(sigma, dtype=torch.float64)
    states = core.noise_to(mixture.sample(3, g, cls=cls), torch.randn(3, mixture.dim, generator=g, dtype=torch.float64),
                           sigma_t, flow)
    exact = mixture.denoiser(cls, flow)(states, sigma_t.expand(3))
    a = core.alpha(sigma_t, flow)
    for x, d in zip(states, exact):
        log_w = -((x - a * prior) ** 2).sum(-1) / (2 * sigma**2)
        w = (log_w - log_w.max()).exp()
        w = w / w.sum()
        estimate = (w[:, None] * prior).sum(0)
        std_error = ((w[:, None] ** 2) * (prior - estimate) ** 2).sum(0).sqrt()
        assert ((estimate - d).abs() <= 5 * std_error + 1e-12).all(), (estimate, d, std_error)


@pytest.mark.parametrize("flow", [False, True])
def test_forward_marginal_moments_and_density(mixture, flow):
    g = torch.Generator().manual_seed(5)
    sigma = torch.tensor(0.4, dtype=torch.float64)
    n = 200_000
    x0 = mixture.sample(n, g, cls=0)
    x = core.noise_to(x0, torch.randn(n, mixture.dim, generator=g, dtype=torch.float64), sigma, flow)
    assert torch.isfinite(mixture.log_prob(x, sigma, cls=0, flow=flow)).all()
    a = core.alpha(sigma, flow)
    component_means = a * mixture.means[mixture.labels == 0]
    expected_mean = component_means.mean(0)  # equal weights inside the class
    std_error = x.std(0) / n**0.5
    assert ((x.mean(0) - expected_mean).abs() < 5 * std_error).all()
    # log_prob against torch.distributions for a one-component class
    single = gmm.GaussianMixture(mixture.means[:1], mixture.stds[:1], torch.ones(1, dtype=torch.float64),
                                 torch.zeros(1, dtype=torch.long))
    reference = torch.distributions.Normal(a * single.means[0], (a**2 * single.stds[0] ** 2 + sigma**2).sqrt())
    torch.testing.assert_close(single.log_prob(x[:100], sigma, flow=flow), reference.log_prob(x[:100]).sum(-1))


def test_flow_denoiser_is_the_ve_denoiser_through_the_mapping(mixture):
    g = torch.Generator().manual_seed(2)
    s = torch.tensor([0.1, 0.4, 0.8, 0.95], dtype=torch.float64)
    x = core.noise_to(mixture.sample(4, g), torch.randn(4, mixture.dim, generator=g, dtype=torch.float64), s, flow=True)
    x_ve, sigma_ve = core.flow_to_ve(x, s)
    torch.testing.assert_close(mixture.denoiser(flow=True)(x, s), mixture.denoiser()(x_ve, sigma_ve), rtol=1e-12, atol=1e-12)


def test_denoiser_limits_and_class_posterior(mixture):
    g = torch.Generator().manual_seed(4)
    x0 = mixture.sample(6, g, cls=1)
    torch.testing.assert_close(mixture.denoiser()(x0, torch.zeros(6, dtype=torch.float64)), x0)  # σ = 0: x itself
    pure_noise = mixture.denoiser(flow=True)(torch.randn(6, mixture.dim, generator=g, dtype=torch.float64),
                                             torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(pure_noise, (mixture.weights[:, None] * mixture.means).sum(0).expand(6, -1))  # s = 1: prior mean
    posterior = mixture.class_posterior(x0)
    torch.testing.assert_close(posterior.sum(-1), torch.ones(6, dtype=torch.float64))
    assert (posterior.argmax(-1) == 1).all()  # means 3 apart per unit of std: draws sit with their class


def test_mlp_denoiser_is_imperfect_deterministic_and_cached(tmp_path):
    from bench.testbeds.mlp import train_mlp_denoiser

    mixture = gmm.make_mixture(dim=8, n_classes=2, components_per_class=2, seed=1)
    net = train_mlp_denoiser(mixture, steps=300, seed=7, cache=tmp_path / "mlp.safetensors")
    g = torch.Generator().manual_seed(8)
    x0 = mixture.sample(4000, g, cls=0)
    sigma = torch.full((4000,), 1.0, dtype=torch.float64)
    x = x0 + sigma[:, None] * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    mse_net = ((net.denoiser(0)(x, sigma) - x0) ** 2).mean()
    mse_exact = ((mixture.denoiser(0)(x, sigma) - x0) ** 2).mean()
    # The exact posterior mean is the MSE optimum: any other denoiser is worse; a trained one beats predicting the mean.
    assert mse_exact < mse_net < ((x0 - x0.mean(0)) ** 2).mean()
    d_c, d_u = net.pair_denoiser(0)(x[:5], sigma[:5])
    torch.testing.assert_close(d_c, net.denoiser(0)(x[:5], sigma[:5]))
    torch.testing.assert_close(d_u, net.denoiser(None)(x[:5], sigma[:5]))
    again = train_mlp_denoiser(mixture, steps=300, seed=7)
    cached = train_mlp_denoiser(mixture, steps=300, seed=7, cache=tmp_path / "mlp.safetensors")
    for other in (again, cached):
        torch.testing.assert_close(other.denoiser(0)(x[:5], sigma[:5]), net.denoiser(0)(x[:5], sigma[:5]), rtol=0, atol=0)

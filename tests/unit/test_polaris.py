"""POLARIS (samplers.polaris) on the analytic testbed: the least squares, the trace, time-aligned replay, the targets."""

import dataclasses
import json

import pytest
import torch

from bench.inversion import levels
from bench.polaris import cfg_round_trip, polaris_round_trip
from bench.testbeds import gmm
from samplers import core, polaris
from samplers.inversion import ddim, reconstruction_error, resolve_eval_at

FLOWS = [False, True]


def objective(d_u, d_c, omega):
    return (d_u + omega * (d_c - d_u)).pow(2).sum(-1)


def test_least_squares_omega_is_the_minimum_of_a_brute_force_scan_and_leaves_an_orthogonal_residual():
    g = torch.Generator().manual_seed(0)
    d_u = torch.randn(6, 4, 8, generator=g, dtype=torch.float64)
    d_c = d_u + 0.3 * torch.randn(6, 4, 8, generator=g, dtype=torch.float64) - 0.2 * d_u  # optimum inside (0, 15)
    omega = polaris.least_squares_omega(d_u, d_c)
    scan = torch.linspace(0, 15, 150001, dtype=torch.float64)
    for b in range(6):
        u, c = d_u[b].flatten(), d_c[b].flatten()
        values = objective(u[None], c[None], scan[:, None])
        assert 0 < omega[b] < 15
        assert abs(float(omega[b]) - float(scan[values.argmin()])) <= 1e-4
        assert objective(u, c, omega[b]) <= values.min()
        residual = u + omega[b] * (c - u)
        assert abs(float(residual @ (c - u))) <= 1e-12 * float(residual.norm() * (c - u).norm())


def test_least_squares_omega_is_per_sample():
    g = torch.Generator().manual_seed(1)
    d_u, d_c = torch.randn(2, 3, 16, generator=g, dtype=torch.float64)
    d_c = 0.5 * d_u + 0.3 * d_c  # optima inside (0, 15), different per sample
    batch = polaris.least_squares_omega(d_u, d_c)
    alone = torch.cat([polaris.least_squares_omega(d_u[i:i + 1], d_c[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, alone, rtol=0, atol=0)
    assert batch.unique().numel() == 3


def test_least_squares_omega_clamps_and_keeps_one_without_a_direction():
    d_u = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    d_c = torch.tensor([[2.0, 0.0], [0.95, 0.0], [1.0, 2.0]], dtype=torch.float64)
    # optima -1 (clamped to 0) and 0.05/0.05² = 20 (clamped to 15); no direction: ω = 1
    assert polaris.least_squares_omega(d_u, d_c).tolist() == [0.0, 15.0, 1.0]


@pytest.mark.parametrize("flow", FLOWS)
@pytest.mark.parametrize("eval_at", ["current", "next"])
def test_a_fixed_omega_is_exactly_plain_cfg_ddim_inversion(mixture, x0, flow, eval_at):
    pair = mixture.pair_denoiser(1, flow)
    up, _ = levels(20, flow)
    z, trace = polaris.polaris_invert(pair, x0, up, flow, solver="fixed", omega_start=3.5, eval_at=eval_at)
    assert torch.equal(z, ddim(core.guided(pair, 3.5), x0, up, flow, eval_at))
    assert torch.equal(trace.omega, torch.full((20, 64), 3.5, dtype=torch.float64))


@pytest.mark.parametrize("flow", FLOWS)
def test_the_trace_records_omega_one_first_then_per_sample_values_in_range(mixture, x0, flow):
    _, trace = polaris_round_trip(mixture.pair_denoiser(1, flow), x0, 20, flow)
    assert trace.omega.shape == (20, 64)
    assert torch.equal(trace.omega[0], torch.ones(64, dtype=torch.float64))
    assert (trace.omega >= 0).all() and (trace.omega <= 15).all()
    assert trace.omega[1:].std(1).min() > 0  # each sample gets its own ω
    assert torch.equal(trace.latent, polaris.polaris_invert(mixture.pair_denoiser(1, flow), x0, levels(20, flow)[0], flow)[0])


def test_velocity_and_eps_spaces_agree_for_eps_models(mixture, x0):
    pair, up = mixture.pair_denoiser(1, False), levels(10, False)[0]
    _, eps_trace = polaris.polaris_invert(pair, x0, up, space="eps")
    _, v_trace = polaris.polaris_invert(pair, x0, up, space="v")
    torch.testing.assert_close(eps_trace.omega, v_trace.omega, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("flow", FLOWS)
def test_replay_is_time_aligned(mixture, x0, flow):
    pair = mixture.pair_denoiser(1, flow)
    reconstruction, trace = polaris_round_trip(pair, x0, 20, flow)
    down, replay = trace.replay_sigmas(), polaris.Replay(trace)
    for j in range(trace.steps):  # denoising step j mirrors inversion step N-1-j
        assert torch.equal(replay.omega(down[j : j + 1], 64), trace.omega[trace.steps - 1 - j])
    replay.check()
    aligned = reconstruction_error(x0, reconstruction).mean()
    reversed_trace = dataclasses.replace(trace, omega=trace.omega.flip(0))
    misaligned = reconstruction_error(x0, polaris.polaris_denoise(pair, trace.latent, reversed_trace)).mean()
    assert aligned < 0.5 * misaligned, (float(aligned), float(misaligned))


def test_replay_refuses_levels_and_batches_the_trace_does_not_have(mixture, x0):
    _, trace = polaris_round_trip(mixture.pair_denoiser(1, False), x0, 10, False)
    replay = polaris.Replay(trace)
    replay.omega(trace.sigmas[-1:], 64)
    replay.omega(torch.tensor([0.5]), 64)  # looked up without a host read; the run's check says so afterwards
    replay.omega(trace.sigmas[1:2], 64)
    with pytest.raises(ValueError, match=r"σ = 0\.5.*not a level of the trace.*POLARIS Trace Sigmas"):
        replay.check()
    replay.check()  # each check covers the lookups since the last one
    with pytest.raises(ValueError, match="batch has 2 samples but the trace was made for 64"):
        replay.omega(trace.sigmas[-1:], 2)


@pytest.mark.parametrize("flow", FLOWS)
@pytest.mark.parametrize("denoiser", ["exact", "perturbed"])
def test_polaris_reconstructs_better_than_the_standard_and_the_cfg_recipes(mixture, x0, flow, denoiser):
    """The issue's target: below 'cfg 1 → 5' and 'cfg 5 → 5' at 10, 20, 50 steps; ≤ 0.5× the standard from 20."""
    pair = mixture.pair_denoiser(1, flow)
    if denoiser == "perturbed":
        pair = gmm.perturbed_pair(pair, 16, 0, 0.05, flow)
    for steps in (10, 20, 50):
        ours = reconstruction_error(x0, polaris_round_trip(pair, x0, steps, flow)[0]).mean()
        standard = reconstruction_error(x0, cfg_round_trip(pair, x0, steps, flow, 1.0, 5.0)).mean()
        both = reconstruction_error(x0, cfg_round_trip(pair, x0, steps, flow, 5.0, 5.0)).mean()
        assert ours < both < standard or ours < standard < both, (steps, float(ours), float(standard), float(both))
        if steps >= 20:
            assert ours <= 0.5 * standard, (steps, float(ours), float(standard))


def test_the_trace_round_trips_through_a_file(mixture, x0, tmp_path):
    _, trace = polaris_round_trip(mixture.pair_denoiser(1, True), x0, 10, True)
    trace = dataclasses.replace(trace, model="sampling:abc weights:def", pack_version="0.2.0")
    trace.save(tmp_path / "t.safetensors")
    loaded = polaris.PolarisTrace.load(tmp_path / "t.safetensors")
    for name in ("sigmas", "omega", "latent"):
        assert torch.equal(getattr(loaded, name), getattr(trace, name)), name
    for name in ("flow", "space", "eval_at", "solver", "model", "pack_version"):
        assert getattr(loaded, name) == getattr(trace, name), name
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]


def _write(path, tensors, record, fmt=polaris.TRACE_FORMAT):
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": fmt.name, "format_version": fmt.version, "record": record})


@pytest.mark.parametrize("case", ["pickle", "empty", "profile", "bad json", "omega shape", "nan"])
def test_foreign_or_damaged_traces_are_refused(tmp_path, case):
    path = tmp_path / "bad.safetensors"
    good = '{"flow": false, "space": "v", "eval_at": "current", "solver": "least_squares", "model": "", "pack_version": ""}'
    tensors = {"sigmas": torch.tensor([0.1, 1.0, 2.0], dtype=torch.float64), "omega": torch.ones(2, 1),
               "latent": torch.zeros(1, 4)}
    if case == "pickle":
        torch.save(tensors, path)
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "profile":  # a real artefact of another kind
        from samplers.vrg import PROFILE_FORMAT
        _write(path, {"sigmas": tensors["sigmas"], "mse_x0": tensors["sigmas"].clone()}, good, PROFILE_FORMAT)
    elif case == "bad json":
        _write(path, tensors, "{flow")
    elif case == "omega shape":
        _write(path, {**tensors, "omega": torch.ones(3, 1)}, good)
    else:
        _write(path, {**tensors, "omega": torch.tensor([[1.0], [float("nan")]])}, good)
    with pytest.raises(ValueError, match="bad.safetensors"):
        polaris.PolarisTrace.load(path)


@pytest.mark.parametrize("flow, label, meant", [
    (False, "auto (next for EPS/V, current for flow)", "next"), (True, "auto (next for EPS/V, current for flow)", "current"),
    (False, "current level (ComfyUI, FlipSigmas + euler)", "current"), (True, "next level (diffusers DDIMInverse)", "next")])
def test_a_trace_recorded_with_an_old_long_label_loads_as_what_it_meant(tmp_path, flow, label, meant):
    path = tmp_path / "old.safetensors"
    record = json.dumps({"flow": flow, "space": "v", "eval_at": label, "solver": "least_squares", "model": "",
                         "pack_version": ""})
    _write(path, {"sigmas": torch.tensor([0.1, 1.0, 2.0], dtype=torch.float64), "omega": torch.ones(2, 1),
                  "latent": torch.zeros(1, 4)}, record)
    assert polaris.PolarisTrace.load(path).eval_at == meant


@pytest.mark.parametrize("flow", FLOWS)
def test_polaris_resolves_eval_at_with_the_one_resolver(mixture, x0, flow):
    up = levels(6, flow)[0]
    for value in ("auto", "auto (next for EPS/V, current for flow)", "next level (diffusers DDIMInverse)"):
        z, trace = polaris.polaris_invert(mixture.pair_denoiser(1, flow), x0, up, flow, eval_at=value)
        assert trace.eval_at == resolve_eval_at(value, flow), value
        assert torch.equal(z, polaris.polaris_invert(mixture.pair_denoiser(1, flow), x0, up, flow,
                                                     eval_at=trace.eval_at)[0]), value


def test_nan_in_the_latent_is_named_by_step(mixture):
    x0 = torch.full((2, 16), float("nan"), dtype=torch.float64)
    with pytest.raises(ValueError, match=r"POLARIS inversion: the latent became NaN/inf at step 1"):
        polaris.polaris_invert(mixture.pair_denoiser(1, False), x0, levels(5, False)[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_latents_invert_without_overflow(mixture, x0, dtype):
    """Inner products over a latent run in float32: half precision would overflow ‖d‖² of a large latent."""
    big = x0.repeat(1, 256).to(dtype) * 8  # 4096 values a sample, squares summing past float16's 65504

    def pair(x, sigma):  # posterior means of N(0, 1) data, the uncond one shrunk a little more
        shrink = (1 / (1 + sigma**2))[:, None].to(x.dtype)
        return x * shrink, x * shrink * 0.9

    z, trace = polaris.polaris_invert(pair, big, levels(5, False)[0].to(dtype))
    assert z.dtype == dtype and torch.isfinite(z).all()
    assert torch.isfinite(trace.omega).all() and (trace.omega[1:] != 1).any()


@pytest.mark.parametrize("flow", FLOWS)
def test_the_reference_controller_pulls_the_first_quarter_of_the_steps(mixture, x0, flow):
    trace = polaris.polaris_invert(mixture.pair_denoiser(1, flow), x0, levels(10, flow)[0], flow)[1]
    sigmas, seen = trace.replay_sigmas(), []

    def recording(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        seen.append(float(sigma[0]))
        return torch.zeros_like(x)

    reference = torch.ones_like(x0)
    controlled = polaris.reference_controller(recording, reference, 0.9, sigmas)
    pulled = [bool((controlled(x0, sigma.expand(len(x0))) == 0.9).all()) for sigma in sigmas[:-1]]
    assert pulled == [True] * 3 + [False] * 7  # ⌈0.25·10⌉ steps, as RF-Inversion's i < τ
    assert seen == [float(s) for s in sigmas[:-1]]
    assert polaris.reference_controller(recording, reference, 0.0, sigmas) is recording
    everywhere = polaris.polaris_denoise(mixture.pair_denoiser(1, flow), trace.latent, trace, reference=reference, eta=1.0,
                                         stop=1.0)
    assert torch.allclose(everywhere, reference)  # η 1 on every step: x̂0 is the reference, so the walk lands on it


def test_the_reference_controller_at_omega_one_is_rf_inversions_reverse_pass(mixture, x0):
    from bench import peers

    cond = mixture.denoiser(1, True)
    trace = polaris.polaris_invert(core.conditional_pair(cond), x0, levels(8, True)[0], True)[1]
    assert (trace.omega == 1).all()
    reference = mixture.sample(64, torch.Generator().manual_seed(9), cls=1)
    ours = polaris.polaris_denoise(core.conditional_pair(cond), trace.latent, trace, reference=reference, eta=0.7)
    theirs = peers.rf_inversion_reverse(cond, trace.latent, trace.replay_sigmas(), reference, eta=0.7)
    assert torch.allclose(ours, theirs, atol=1e-12)
    plain = polaris.polaris_denoise(core.conditional_pair(cond), trace.latent, trace)
    assert (ours - reference).pow(2).mean() < (plain - reference).pow(2).mean()

"""bench/testbed4.py: equal NFE of the compared recipes, DiffIER stacked on a peer (``composed_pair``), the base
schedules, the headline's verdicts, and a smoke run of every table and the pictures on fresh (untrained or few-step)
tiny networks, so the file runs in seconds."""

import math

import pytest
import torch

from bench import peers
from bench import testbed4 as t4
from bench.kit import Counted
from bench.testbeds import gmm, patches
from samplers import core
from samplers.diffier import diffier
from samplers.inversion import ddim


@pytest.fixture(scope="module")
def mixture() -> gmm.GaussianMixture:
    return gmm.make_mixture(dim=16, n_classes=3, components_per_class=2, seed=0)


def _counted(mixture: gmm.GaussianMixture, flow: bool) -> tuple[Counted, Counted]:
    null = mixture.denoiser(None, flow)
    return (Counted(mixture.pair_denoiser(1, flow), mixture.denoiser(1, flow)),
            Counted(core.conditional_pair(null), null))


@pytest.mark.parametrize("flow", [False, True])
def test_inversion_recipes_count_cfg1_as_one_call_a_step_and_reconstruct(mixture, flow):
    steps, scale = 6, 4.0
    x0 = mixture.sample(8, torch.Generator().manual_seed(0), cls=1)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = {1.0: {"POLARIS": 4, "standard DDIM (cfg 1 → 1)": 2, "DDIM cfg 1 → 1, 12 steps (POLARIS's NFE)": 4,
                      "FlipSigmas + euler (cfg 1 → 1)": 2, "Unsampler (cfg 1 → 1)": 2,
                      "RF-Inversion (γ 0.5, η 0.9, cfg 1)": 2},
                scale: {"POLARIS": 4, "POLARIS + blend (ω + cfg - 1)": 4, "standard DDIM (cfg 1 → 4)": 3,
                        "DDIM (cfg 4 → 4)": 4, "FlipSigmas + euler (cfg 1 → 4)": 3, "Unsampler (cfg 4 → 4)": 4,
                        "RF-Inversion (γ 0.5, η 0.9, cfg 4)": 3}}
    guidance = {}
    for w in (1.0, scale):
        recipes = t4.inversion_recipes(x0, noise, steps, w, flow)
        assert ("RF-Inversion" in " ".join(recipes)) == flow and ("Unsampler" in " ".join(recipes)) != flow
        for name, (_, recipe) in recipes.items():
            m, null = _counted(mixture, flow)
            x, applied = recipe(m, null)
            assert m.evals + null.evals == expected[w][name] * steps, name
            assert torch.isfinite(x).all() and x.shape == x0.shape
            guidance[w, name] = torch.as_tensor(applied, dtype=torch.float64).mean().item()
        assert {role for role, _ in recipes.values()} == {"ours", "baseline", "peer"}
    assert guidance[scale, "POLARIS + blend (ω + cfg - 1)"] == pytest.approx(guidance[scale, "POLARIS"] + scale - 1)
    assert guidance[scale, "standard DDIM (cfg 1 → 4)"] == scale


@pytest.mark.parametrize("flow", [False, True])
def test_guidance_peers_get_diffier_nfe(mixture, flow):
    steps = 5
    x = core.noise_to(torch.zeros(6, 16, dtype=torch.float64), torch.randn(6, 16, generator=torch.Generator().manual_seed(2),
                                                                            dtype=torch.float64), t4.schedule(1, flow)[0], flow)
    evals = {}
    for name, (_, sampler) in t4.guidance_recipes(steps, 7.5, flow).items():
        counted = Counted(mixture.pair_denoiser(1, flow))
        assert torch.isfinite(sampler(counted.pair, x)).all()
        evals[name] = counted.evals
    budget = 2 * (2 * steps - 1)
    assert evals.pop(f"CFG, {steps} steps") == 2 * steps
    assert set(evals.values()) == {budget}, evals


@pytest.mark.parametrize("flow", [False, True])
@pytest.mark.parametrize("steps", [10, 20])
def test_base_schedules_are_descending_comfy_sigmas_in_the_twins_range(flow, steps):
    top = 1.0 if flow else t4.VE_RANGE[1]
    for name, sigmas in t4.base_schedules(steps, flow).items():
        assert sigmas[-1] == 0 and (sigmas.diff() < 0).all(), name
        assert len(sigmas) - 1 == steps or name.startswith("beta"), name
        assert sigmas[0] <= top + 1e-9 and sigmas[0] >= (0.99 if flow else 14.59), name
        assert sigmas[-2] >= (1e-3 - 1e-9 if flow else t4.VE_RANGE[0] - 1e-9), name


def _row(variant: str, role: str, values: list[float], method: str = "VRG", metric: str = "error") -> dict:
    return {"method": method, "family": "eps", "setting": "10 steps", "variant": variant, "role": role,
            metric: sum(values) / len(values), "_per_seed": {metric: values}}


def test_headline_takes_the_best_of_each_side_in_the_metrics_direction():
    rows = [_row("base a", "baseline", [1.0, 1.1, 1.2]), _row("base b", "peer", [0.9, 0.95, 1.0]),
            _row("VRG(a)", "ours", [0.8, 0.9, 0.7]), _row("VRG(b)", "ours", [0.85, 0.9, 0.95])]
    (top,) = t4.headline(rows)
    assert (top["ours"], top["peer"], top["verdict"]) == ("VRG(a)", "base b", "win")
    assert top["Δ (> 0: ours better)"] == pytest.approx(0.15)
    assert not t4.losses(rows)
    psnr = [_row("POLARIS", "ours", [20.0, 21.0, 22.0], "POLARIS inversion", "psnr"),
            _row("standard", "baseline", [21.0, 22.0, 23.0], "POLARIS inversion", "psnr"),
            _row("flip", "peer", [20.5, 21.5, 21.3], "POLARIS inversion", "psnr"),
            _row("worse", "peer", [19.0, 20.0, 21.0], "POLARIS inversion", "psnr")]
    assert t4.headline(psnr)[0]["verdict"] == "loss"
    assert [(r["peer"], r["verdict"]) for r in t4.losses(psnr)] == [("standard", "loss"), ("flip", "tie")]
    mixed = [_row("ours", "ours", [1.0, 2.0, 1.0]), _row("peer", "peer", [1.1, 1.0, 1.2])]
    assert t4.headline(mixed)[0]["verdict"] == "tie"
    tiny = [_row("ours", "ours", [1.0, 1.0, 1.0]), _row("peer", "peer", [1.001, 1.001, 1.001])]
    assert t4.headline(tiny)[0]["verdict"] == "tie"


def test_tally_gives_mean_and_std_over_seeds():
    tally = t4.Tally()
    for value in (1.0, 2.0, 3.0):
        tally.add({"variant": "a"}, error=value)
    (row,) = tally.rows()
    assert (row["error"], row["error ±"], row["seeds"]) == (2.0, 1.0, 3)
    assert "_per_seed" not in t4.printable([row])[0]


TINY = t4.Setting(seeds=(0, 1), inversion_patches=2, inversion_steps=(2,), profile_patches=10, profile_points=4,
                  samples=4, schedule_steps=(2,), guidance_samples=4, error_samples=2, guidance_scales=(5.0,),
                  guidance_steps=2, noise_scales=(1.0, 3.0), noise_steps=2, estimator_iterations=3, fine_steps=3)


@pytest.fixture(scope="module")
def testbed(tmp_path_factory) -> t4.Testbed:
    """Fresh seeded width-8 twins and classifier (no training)."""
    data = patches.load_patch_data()
    torch.manual_seed(0)
    models = {flow: patches.PatchUNet(0.5, flow, width=8).eval() for flow in (False, True)}
    classifier = patches.PatchClassifier(4, 8).eval()
    setting = t4.Setting(**{**TINY.__dict__, "cache_dir": str(tmp_path_factory.mktemp("cache"))})
    return t4.Testbed(setting, data, models, classifier, patches.embed(classifier, patches.train_reference(data, 2)[0]))


def _groups(rows: list[dict]) -> dict:
    out = {}
    for r in rows:
        if r["role"] != "floor":
            out.setdefault((r["family"], r["setting"]), []).append(r)
    return out


def test_every_table_compares_at_equal_nfe_over_the_seeds(testbed):
    for rows in (t4.schedule_rows(testbed), t4.noise_guidance_rows(testbed)):
        for key, group in _groups(rows).items():
            assert len({r["nfe"] for r in group}) == 1, key
            assert {r["role"] for r in group} == {"ours", "baseline"} and all(r["seeds"] == 2 for r in group)
            assert all(math.isfinite(r["error"]) for r in group)
    plain = [r for r in rows if r["variant"] == "plain"]
    assert plain and all(r["error / plain"] == 1.0 for r in plain)
    guidance = t4.guidance_rows(testbed)
    for key, group in _groups(guidance).items():
        assert {r["nfe"] for r in group if r["variant"] != "CFG, 2 steps"} == {2 * (2 * 2 - 1)}, key
    assert [r["role"] for r in guidance].count("floor") == 1
    inversion = t4.inversion_rows(testbed)
    assert {r["setting"] for r in inversion} == {"2 steps, cfg 1", "2 steps, cfg 4"}
    assert all(math.isfinite(r["psnr"]) for r in inversion)
    assert {h["method"] for h in t4.headline(inversion + guidance)} == {"POLARIS inversion", "DiffIER"}


def test_fine_solve_is_cached_per_level(testbed):
    a = t4.fine_solve(testbed, False, 1.0, 0, 2)
    assert t4.fine_solve(testbed, False, 1.0, 0, 2) is a
    assert t4.fine_solve(testbed, False, 1.0, 0, 2, t4.VE_RANGE[1] + 1e-9) is a  # a mapped table's round-off
    assert t4.fine_solve(testbed, True, 1.0, 0, 2, 0.9968) is not t4.fine_solve(testbed, True, 1.0, 0, 2)


def test_demo_pictures_write_one_labelled_png_each(tmp_path):
    setting = t4.Setting(**{**TINY.__dict__, "cache_dir": str(tmp_path / "cache"),
                            "denoiser_options": (("steps", 1), ("width", 8)),
                            "classifier_options": (("steps", 1), ("width", 4), ("features", 8))})
    paths = t4.demo_pictures(tmp_path / "png", setting, steps=2)
    assert [p.name for p in paths] == ["testbed4_inversion.png", "testbed4_guidance_cfg3.png",
                                       "testbed4_guidance_cfg9.png", "testbed4_vrg.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)


def _pair_and_start(mixture: gmm.GaussianMixture, flow: bool) -> tuple[core.PairDenoiser, torch.Tensor]:
    noise = torch.randn(6, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return mixture.pair_denoiser(1, flow), t4.start_state(noise, t4.schedule(1, flow)[0], flow)


@pytest.mark.parametrize("flow", [False, True])
def test_composed_pair_with_plain_cfg_is_diffier_alone(mixture, flow):
    pair, x = _pair_and_start(mixture, flow)
    sigmas, scale = t4.schedule(5, flow), 7.5
    alone, omega = diffier(pair, x, sigmas, scale, 1, flow=flow, min_cfg=1.0)
    stacked, omega_stacked = diffier(t4.composed_pair(pair, lambda p: core.guided(p, scale), scale), x, sigmas, scale,
                                     1, flow=flow, min_cfg=1.0)
    assert (omega[:-1] < scale).any()  # the iteration moved ω, so the comparison reaches eq. W
    torch.testing.assert_close(stacked, alone, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(omega_stacked, omega, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("flow", [False, True])
def test_composed_pair_at_cfg_is_the_stateful_peer_call_by_call(mixture, flow):
    """At ω = cfg the stacked pair's mix is APG's prediction (momentum carried over calls) with D_c unchanged; DiffIER
    at K = 0 on it is APG's Euler run."""
    pair, x = _pair_and_start(mixture, flow)
    sigmas, scale = t4.schedule(4, flow), 7.5
    apg = lambda p: peers.apg(p, scale, eta=0.0, momentum=-0.5)  # noqa: E731
    stacked, alone = t4.composed_pair(pair, apg, scale), apg(pair)
    for sigma in sigmas[:-1]:
        level = sigma.expand(len(x))
        cond, uncond = stacked(x, level)
        torch.testing.assert_close(core.cfg_mix(cond, uncond, scale), alone(x, level), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(cond, pair(x, level)[0])
    assert not torch.allclose(core.cfg_mix(cond, uncond, scale), core.cfg_mix(*pair(x, level), scale))
    run = diffier(t4.composed_pair(pair, apg, scale), x, sigmas, scale, 0, flow=flow)[0]
    torch.testing.assert_close(run, ddim(apg(pair), x, sigmas, flow), rtol=1e-10, atol=1e-10)

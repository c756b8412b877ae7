"""bench/editing.py: equal model calls of every edit method, the A → B pairs, SSIM, the success-vs-PSNR front and the
headline read from it, and a smoke run of the whole table and its plots on fresh tiny networks (seconds)."""

import math

import pytest
import torch

from bench import editing
from bench import testbed4 as t4
from bench.testbeds import patches


def test_edit_pairs_are_disjoint_held_out_patches_with_a_different_target_class():
    data = patches.load_patch_data()
    seen, offsets = [], []
    for _, x0, a, b in editing.edit_pairs(data, 9, (0, 1, 2)):
        assert len(x0) == 9 and x0.dtype == torch.float64
        assert (a != b).all() and ((b >= 0) & (b < patches.N_CLASSES)).all()
        offsets += ((b - a) % patches.N_CLASSES).tolist()
        seen.append(x0.flatten(1))
    every = torch.cat(seen)
    assert len(torch.unique(every, dim=0)) == len(every)  # no patch edited twice
    assert sorted(set(offsets)) == list(range(1, patches.N_CLASSES)) and len(set(offsets.count(o) for o in set(offsets))) == 1


def test_ssim_is_one_for_the_same_image_and_lower_for_noise():
    x = patches.heldout_patches(patches.load_patch_data(), 1)[0][:3].double()
    assert torch.allclose(editing.ssim(x, x), torch.ones(3, dtype=torch.float64))
    noisy = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert (editing.ssim(noisy, x) < 0.9).all()


def _row(method: str, success: float, psnr: float, knob: str = "", role: str = "peer", cfg: float = 3.0) -> dict:
    return {"family": "eps", "cfg": cfg, "method": method, "role": role, "knob": knob, "success": success,
            "success ±": 0.01, "psnr": psnr, "psnr ±": 0.1, "ssim": 0.5, "ssim ±": 0.0}


def test_front_and_headline_name_the_method_holding_most_of_the_front():
    rows = [_row("A", 0.1, 30.0), _row("A", 0.2, 20.0),  # A's second point is beaten by B's first
            _row("B", 0.3, 25.0, "η 0"), _row("B", 0.6, 22.0, "η 0.5"), _row("B", 0.9, 15.0, "η 0.9"),
            _row("C", 0.7, 14.0), _row("noise", 1.0, 5.0, role="reference")]
    front = editing.pareto_front([r for r in rows if r["role"] != "reference"])
    assert [(r["method"], r["success"]) for r in front] == [("A", 0.1), ("B", 0.3), ("B", 0.6), ("B", 0.9)]
    (top,) = editing.headline(rows)
    assert top["dominates"] == "B (success 0.10–0.90)"  # A holds 0–0.1, B the rest
    assert top["best PSNR at success ≥ 0.5"].startswith("B, η 0.5: 22.0 ± 0.1 dB")
    assert "noise" not in top["front (success, PSNR dB; success ↑)"]
    (none,) = editing.headline([_row("A", 0.1, 30.0)])
    assert none["best PSNR at success ≥ 0.5"] == "none reaches 0.5"


@pytest.mark.parametrize("steps", [3, 10])
def test_steps_at_spends_the_budget_without_passing_it(steps):
    budget = 4 * steps
    for up, down in ((1, 2), (2, 2)):
        n = editing.steps_at(budget, up, down)
        assert n * (up + down) <= budget < (n + 1) * (up + down)


@pytest.fixture(scope="module")
def testbed(tmp_path_factory) -> t4.Testbed:
    """Fresh seeded width-8 twins and a width-4 classifier: untrained, so the run takes seconds."""
    torch.manual_seed(0)
    twins = {flow: patches.PatchUNet(0.5, flow, width=8).eval() for flow in (False, True)}
    return t4.Testbed(t4.Setting(cache_dir=str(tmp_path_factory.mktemp("cache"))), patches.load_patch_data(), twins,
                      patches.PatchClassifier(4, 8).eval(), torch.zeros(1, 8))


def test_every_edit_method_spends_the_same_model_calls_and_the_plots_are_written(testbed, tmp_path):
    setting = editing.Setting(seeds=(0, 1), patches=4, steps=3, rf_gammas=(0.5,), rf_etas=(0.0, 0.9), blends=(0.0, 1.0),
                              controller_etas=(0.9,), reconstruction_steps=(3,))
    rows = editing.edit_rows(testbed, setting)
    for fam in ("eps", "flow"):
        for scale in setting.scales:
            group = [r for r in rows if r["family"] == fam and r["cfg"] == scale and r["role"] != "reference"]
            assert {r["nfe"] for r in group} == {4 * setting.steps}, (fam, scale)
            assert all(r["seeds"] == 2 and all(math.isfinite(r[m]) for m in ("success", "psnr", "ssim")) for r in group)
            names = {r["method"] for r in group}
            assert ("RF-Inversion (γ 0.5)" in names) == (fam == "flow")
            assert ("Unsampler (cfg w both ways)" in names) == (fam == "eps")
            assert {r["knob"] for r in group if r["method"] == "POLARIS"} == {"blend β 0", "blend β 1"}
    for fam in ("eps", "flow"):  # β 0 replays ω and ignores the cfg
        replay = [r["psnr"] for r in rows if r["family"] == fam and r["method"] == "POLARIS" and r["knob"] == "blend β 0"]
        assert len(replay) == 2 and replay[0] == replay[1]
    assert {r["knob"] for r in rows if r["method"] == "POLARIS + reference controller (β 1)"} == {"η 0.9"}
    assert len(editing.headline(rows)) == 2 * len(setting.scales)
    reconstruction = editing.edit_rows(testbed, setting, reconstruct=True)  # cfg 1: a guided step costs one call
    assert {(r["cfg"], r["POLARIS steps"], r["nfe"]) for r in reconstruction} == {(1.0, 3, 12)}
    assert {r["role"] for r in reconstruction} == {"baseline", "peer", "ours"}
    assert {r["knob"] for r in reconstruction if r["method"] == "POLARIS"} == {"blend β 0"}
    paths = editing.plot(rows, tmp_path)
    assert [p.name for p in paths] == ["editing_eps.png", "editing_flow.png"] and all(p.stat().st_size > 20_000 for p in paths)

"""bench/cost.py (testbed 3) in quick mode: the table's structure and the exact, machine-independent NFE facts.

The measurement runs in a child process (``python -m bench.cost --quick --json``): it imports ComfyUI, whose top-level
``nodes`` must not meet the pack's ``nodes`` package in the pytest process. No timing is asserted here (bench only).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import peers
from bench.cost import cost_table

REPO = Path(__file__).parents[2]
KEYS = {"method", "baseline", "nfe_method", "nfe_baseline", "nfe_ratio", "time_ratio", "ci_low", "ci_high", "runs", "target",
        "met"}
QUICK_REPEATS = 3


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[dict]:
    """The rows of one quick run, and its printed table checked on the way."""
    out = tmp_path_factory.mktemp("cost") / "rows.json"
    done = subprocess.run([sys.executable, "-m", "bench.cost", "--quick", "--json", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "| method | baseline |" in done.stdout
    return json.loads(out.read_text())


def row_of(rows: list[dict], prefix: str) -> dict:
    found = [row for row in rows if row["method"].startswith(prefix)]
    assert len(found) == 1, [row["method"] for row in rows]
    return found[0]


def test_rows_have_the_table_structure(rows):
    for prefix in ("POLARIS Inversion", "POLARIS Denoise", "Noise Awareness Guidance patch (fixed",
                   "Noise Awareness Guidance patch (estimator", "VRG"):
        row_of(rows, prefix)
    for row in rows:
        assert KEYS <= set(row), row
        assert row["runs"] == QUICK_REPEATS
        assert row["nfe_method"] > 0 and row["nfe_baseline"] > 0
        assert row["nfe_ratio"] == row["nfe_method"] / row["nfe_baseline"]
        assert 0 < row["ci_low"] <= row["time_ratio"] <= row["ci_high"]
        assert isinstance(row["met"], bool) and row["target"]
    table = cost_table(rows).splitlines()
    assert table[0].startswith("| method | baseline |")
    assert len([line for line in table if line.startswith("| ")]) == len(rows) + 1


def test_polaris_vrg_and_estimator_guidance_cost_no_extra_model_call(rows):
    for prefix in ("POLARIS Inversion", "POLARIS Denoise", "VRG", "Noise Awareness Guidance patch (estimator"):
        row = row_of(rows, prefix)
        assert row["nfe_ratio"] == 1.0, row
        assert row["calls_method"] == row["calls_baseline"], row


def test_noise_awareness_guidance_adds_one_conditional_call_per_step_in_its_window(rows):
    row = row_of(rows, "Noise Awareness Guidance patch (fixed")
    details = row["details"]
    steps, sigmas = details["steps"], details["sigmas"]
    assert len(sigmas) == steps + 1 and sigmas[-1] == 0
    # the window's top is the level at start_percent of the model's timesteps (its bottom, at end_percent 1, is σ = 0)
    assert details["end_percent"] == 1.0
    top = float(peers.sigma_at(peers.discrete_sigmas(), torch.tensor((1 - details["start_percent"]) * 999)))
    guided = sum(1 for sigma in sigmas[:-1] if 0 < sigma <= top)
    assert 0 < guided < steps  # the default window guides part of the schedule
    # plain CFG: cond and uncond a step (2 rows, batched into one call where memory allows); guidance: one more call, of
    # the conditional alone (1 row), per guided step
    assert row["nfe_baseline"] == 2 * steps and row["nfe_method"] == 2 * steps + guided
    assert row["calls_method"] - row["calls_baseline"] == guided
    assert row["nfe_ratio"] == (2 * steps + guided) / (2 * steps)

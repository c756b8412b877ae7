"""`python -m bench --quick` from this checkout writes the report and its plots: the structure is checked, not the numbers."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ["POLARIS inversion", "Noise Awareness Guidance", "DiffIER", "VRG schedules",
            "Testbed 4: every method against its peers", "Testbed 4: editing (invert A, denoise B)",
            "Cost against the plain KSampler"]
PLOTS = ["polaris_omega.png", "vrg_schedules.png", "vrg_error_profile.png", "noise_shift.png", "quality_vs_nfe.png"]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip().endswith("REPORT.md")
    return out / "REPORT.md"


def test_the_report_has_every_section_with_a_command_and_a_table(report):
    text = report.read_text()
    assert text.startswith("# Error-Control Samplers: benchmark report (quick mode)")
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings == SECTIONS
    for body in re.split(r"^## .+$", text, flags=re.M)[1:]:
        assert re.search(r"Reproduce: `python -m bench\.\w+", body)
        assert re.search(r"^\|.+\|\n\|(---\|)+\n(\|.+\|\n)+", body, re.M), body[:300]


BASELINE_ROWS = {  # per section: table cells of the method and of its baselines
    "POLARIS inversion": ["| POLARIS |", "| standard (cfg 1 → 5) |", "| FlipSigmas + euler (cfg 1 → 5) |", "| cfg 5 → 5 |",
                          "| cfg 1 → 1 |"],
    "Noise Awareness Guidance": ["| nag_fixed |", "| nag_adaptive |", "| cfg |", "| cfg_nfe |"],
    "DiffIER": ["| C |", "| cfg |", "| cfg_nfe |"],
    "VRG schedules": ["| karras |", "| normal |"],
    "Testbed 4: every method against its peers": [
        "| POLARIS |", "| FlipSigmas + euler (cfg 1 → 1) |", "| Unsampler (cfg 1 → 1) |", "| RF-Inversion", "| APG",
        "| CFG-Zero* |", "| RescaleCFG", "| CFGNorm |", "| AYS (SD1, mapped) |", "| OptimalSteps (FLUX) |",
        "| estimator w 0.1 |", "### Headline", "### Where we lose"],
    "Testbed 4: editing (invert A, denoise B)": [
        "| POLARIS | ours | blend β 0 |", "| DDIM inversion (eval_at current) |", "| DDIM inversion (eval_at next) |",
        "| FlipSigmas + euler |", "| Unsampler (cfg w both ways) |", "| RF-Inversion (γ 0.5) |", "### Headline"],
    "Cost against the plain KSampler": ["POLARIS Inversion", "POLARIS Denoise", "Noise Awareness Guidance", "VRG", "DiffIER",
                                        "KSampler euler"],
}


def test_every_method_is_compared_with_its_baseline(report):
    sections = dict(zip(re.findall(r"^## (.+)$", report.read_text(), re.M),
                        re.split(r"^## .+$", report.read_text(), flags=re.M)[1:]))
    for title, cells in BASELINE_ROWS.items():
        for cell in cells:
            assert cell in sections[title], (title, cell)


def test_the_plots_are_written_and_linked(report):
    text = report.read_text()
    for name in PLOTS:
        assert f"]({name})" in text
        with Image.open(report.parent / name) as image:
            assert image.format == "PNG" and image.size == (640, 400)
            assert len(image.convert("RGB").getcolors(1 << 16) or []) > 10  # lines and text, not a blank canvas


def test_testbed4_plots_show_ours_and_the_peers(report):
    text = report.read_text()
    for method in ("polaris", "vrg", "diffier"):
        for family in ("eps", "flow"):
            name = f"testbed4_{method}_{family}.png"
            assert f"]({name})" in text
            with Image.open(report.parent / name) as image:
                assert len(image.convert("RGB").getcolors(1 << 16) or []) > 10
    for family in ("eps", "flow"):
        name = f"editing_{family}.png"
        assert f"]({name})" in text
        with Image.open(report.parent / name) as image:
            assert len(image.convert("RGB").getcolors(1 << 16) or []) > 10

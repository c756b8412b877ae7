"""The bench's Markdown tables: bench.kit.markdown_table lays out any rows; the POLARIS and cost tables build on it
with their own cells, titles and notes."""

from bench import cost, kit, polaris


def test_markdown_table_takes_columns_in_first_seen_order_and_floats_to_four_digits():
    rows = [{"method": "a", "mse": 0.123456}, {"method": "b", "steps": 5, "mse": 12345.0}]
    assert kit.markdown_table(rows) == ("| method | mse | steps |\n|---|---|---|\n"
                                        "| a | 0.1235 |  |\n| b | 1.234e+04 | 5 |")


def test_reconstruction_table_puts_steps_across_and_one_titled_table_per_family_and_denoiser():
    row = {"metric": "MSE", "seeds": 3, "std": 0.25}
    rows = [{**row, "family": "eps", "denoiser": "exact", "method": m, "steps": n, "mse": mse}
            for m, n, mse in (("ddim", 10, 0.5), ("ddim", 5, 2.0), ("mean ω", 10, 1.5), ("mean ω", 5, 1.25))]
    rows.append({**row, "family": "flow", "denoiser": "exact", "method": "ddim", "steps": 5, "mse": 1.0})
    rows.append({**row, "family": "flow", "denoiser": "exact", "method": "ddim", "steps": 10, "mse": 0.125})
    assert polaris.reconstruction_table(rows) == (
        "**eps, exact** (MSE, mean ± std over 3 seeds)\n\n"
        "| method | 5 steps | 10 steps |\n|---|---|---|\n| ddim | 2 ± 0.25 | 0.5 ± 0.25 |\n| mean ω | 1.25 | 1.5 |\n\n"
        "**flow, exact** (MSE, mean ± std over 3 seeds)\n\n"
        "| method | 5 steps | 10 steps |\n|---|---|---|\n| ddim | 1 ± 0.25 | 0.125 ± 0.25 |\n")


def test_cost_table_formats_each_measurement_and_adds_the_notes_of_its_details():
    row = {"method": "VRG", "baseline": "normal", "nfe_method": 16.0, "nfe_baseline": 16.0, "nfe_ratio": 1.0,
           "time_ratio": 1.0125, "ci_low": 0.9875, "ci_high": 1.05, "runs": 3, "target": "time ≤ 1.03", "met": True,
           "calls_method": 8, "calls_baseline": 8, "median_ms_method": 101.0, "median_ms_baseline": 99.0,
           "details": {"steps": 8, "vrg_optimize_ms": 2.5, "vrg_calibrate_ms": 1500.0}}
    lines = cost.cost_table([row, {**row, "method": "other", "met": False, "details": {}}]).splitlines()
    assert lines[0] == ("| method | baseline | NFE/sample method | NFE/sample baseline | NFE ratio | time ratio (90% CI) | "
                        "runs | target | met | median ms method / baseline (this machine) |")
    assert lines[1] == "|" + "---|" * 10
    assert lines[2] == ("| VRG | normal | 16 (8 calls) | 16 (8 calls) | 1.000 | 1.012 (0.988–1.050) | 3 | time ≤ 1.03 | yes | "
                        "101 / 99 |")
    assert lines[3].startswith("| other |") and "| no |" in lines[3]
    assert lines[5].startswith("VRG schedule optimisation (scheduler `vrg`, 8 steps): 2.5 ms median; calibration 1500 ms")

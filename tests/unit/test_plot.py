"""The plots (plots/line.py, plots/figures.py): each node's plot draws the data it was given, curves stay
distinguishable where they coincide, ticks are whole on step axes, and the legend keeps off the drawn lines."""

import pytest
import torch

from plots.figures import calibration_figure, diffier_figures, noise_shift_figure, omega_figure
from plots.line import COLOURS, UI_KEY, legend_corner, line_plot, plotted, render, tick_label, x_ticks

LEFT, RIGHT, TOP, BOTTOM = 70, 620, 34, 354  # the plot frame of render's default 640×400 size


def test_legend_goes_to_the_top_corner_that_no_line_crosses():
    falling, rising = [[(LEFT, TOP), (RIGHT, BOTTOM)]], [[(LEFT, BOTTOM), (RIGHT, TOP)]]
    x, covered = legend_corner(falling, [12], LEFT, RIGHT, TOP, 22)
    assert x > (LEFT + RIGHT) / 2 and covered == 0
    x, covered = legend_corner(rising, [12], LEFT, RIGHT, TOP, 22)
    assert x < (LEFT + RIGHT) / 2 and covered == 0


def test_a_line_through_both_corners_is_lowered_below_the_legend():
    image = render({"flat": ([0, 1, 2], [1.0, 1.0, 1.0]), "falling": ([0, 1, 2], [1.0, 0.5, 0.0])}, "t", "x", "y",
                   log_y=False)[0]
    flat = (image[:, 320] - torch.tensor(COLOURS[0]) / 255).abs().amax(-1) < 1e-3  # the flat line, mid-plot
    rows = flat.nonzero().flatten()
    assert len(rows) > 0 and rows.min() >= TOP + 14 * 2 + 8  # at or below the two-label legend band (it was at TOP)


# ---------------------------------------------------------------------------------------------------------------------
# Every plot the nodes draw (plots/figures.py) plots the data it was given, on the axes it says


def assert_draws(plot, label: str, xs: list, ys: list) -> None:
    """The plot draws the series ``label`` at exactly these points (y in the axis' units: log10 on a log axis)."""
    points = plotted(plot.spec)[label]
    assert [p[0] for p in points] == pytest.approx(list(xs)), label
    assert [p[1] for p in points] == pytest.approx(list(ys)), label


def log10(values: torch.Tensor | list) -> list[float]:
    return torch.log10(torch.as_tensor(values, dtype=torch.float64)).tolist()


def test_the_omega_plot_draws_each_samples_omega_per_step_with_whole_step_ticks():
    omega = torch.rand(49, 5, generator=torch.Generator().manual_seed(0)) * 3
    plot = omega_figure(omega)
    assert list(plotted(plot.spec)) == ["sample 0", "sample 1", "sample 2", "sample 3"]  # at most four lines
    for b in range(4):
        assert_draws(plot, f"sample {b}", list(range(49)), omega[:, b].tolist())
    assert plot.spec["x_ticks"] == [0, 24, 48] and all(float(t).is_integer() for t in plot.spec["x_ticks"])
    assert "omega = 1" in omega_figure(torch.ones(6, 1), distilled=True).spec["title"]


def test_the_calibration_plot_draws_both_curves_over_the_whole_sigma_range():
    sigmas = torch.logspace(-2, 1.2, 12, dtype=torch.float64)  # most levels below 1, where the double log hid them
    readings = sigmas * torch.linspace(0.8, 1.3, 12, dtype=torch.float64)
    plot = calibration_figure(sigmas, readings, 0.05)
    assert_draws(plot, "true sigma", log10(sigmas), log10(sigmas))
    assert_draws(plot, "estimated sigma", log10(sigmas), log10(readings))
    image = plot.image[0]
    for i, label in enumerate(["true sigma", "estimated sigma"]):  # both are visible where they cross
        assert colour_pixels(image, i) > 300, label


def test_the_noise_shift_plot_draws_the_scheduled_and_both_estimated_levels_per_model_call():
    scheduled, plain, guided = [14.6, 5.0, 1.2, 0.3], [14.0, 5.5, 1.4, 0.4], [14.0, 5.5, 1.3, 0.31]
    plot = noise_shift_figure(scheduled, plain, guided, "t")
    for label, level in {"scheduled sigma": scheduled, "estimated, plain": plain, "estimated, guided": guided}.items():
        assert_draws(plot, label, list(range(4)), log10(level))
    assert plot.spec["x_ticks"] == [0, 2, 3]


def test_the_diffier_plots_draw_the_gap_per_step_and_the_weight_against_cfg():
    plain, corrected = torch.tensor([0.5, 0.2, 0.05]), torch.tensor([0.3, 0.1, 0.04])
    weights = torch.tensor([7.0, 5.5, 6.0, 7.0])
    gap, weight, ui = diffier_figures(plain, corrected, weights, 7.0, 2, 0.5)
    assert_draws(gap, "plain cfg", [1, 2, 3], log10(plain))
    assert_draws(gap, "DiffIER K=2", [1, 2, 3], log10(corrected))
    assert_draws(weight, "cfg", [0, 1, 2, 3], [7.0] * 4)
    assert_draws(weight, "DiffIER weight (batch mean)", [0, 1, 2, 3], weights.tolist())
    assert ui[UI_KEY] == [gap.spec, weight.spec]


# ---------------------------------------------------------------------------------------------------------------------
# The drawing itself: each point where the axes put it, coinciding curves distinguishable, ticks whole and inside


def colour_pixels(image: torch.Tensor, index: int) -> int:
    """How many pixels of an IMAGE ``[H, W, 3]`` have the colour of the ``index``-th series."""
    return int(((image - torch.tensor(COLOURS[index]) / 255).abs().amax(-1) < 1e-3).sum())


def test_each_point_is_drawn_where_its_value_puts_it():
    xs, ys = [0, 1, 2, 3], [1.0, 10.0, 100.0, 1000.0]  # log axis: evenly spaced rows
    image = render({"rising": (xs, ys)}, "t", "x", "y")[0]
    x_pixels = [LEFT + (x - 0) / 3 * (RIGHT - LEFT) for x in xs]
    y_pixels = [BOTTOM - k / 3 * (BOTTOM - TOP) for k in range(4)]  # the legend is in the free top-left corner
    for x, y in zip(x_pixels, y_pixels):
        patch = image[round(y) - 1:round(y) + 2, round(x) - 1:round(x) + 2]
        assert colour_pixels(patch, 0) > 0, (x, y)


def test_curves_that_coincide_stay_distinguishable():
    same = ([0, 1, 2, 3, 4], [1.0, 2.0, 4.0, 3.0, 5.0])
    image = render({"first": same, "second": same, "third": same}, "t", "x", "y", log_y=False)[0]
    alone = colour_pixels(render({"first": same}, "t", "x", "y", log_y=False)[0], 0)
    for index in range(3):
        assert colour_pixels(image, index) > 0.2 * alone, index  # no line hides the ones drawn before it


def test_whole_number_axes_get_whole_number_ticks_and_others_keep_their_range():
    assert x_ticks(list(range(50)), integer=True) == [0, 24, 49]
    assert x_ticks([-2.0, 1.2], integer=False) == pytest.approx([-2.0, -0.4, 1.2])
    assert line_plot({"a": (range(7), [1.0] * 7)}, "t", "x", "y").spec["x_ticks"] == [0, 3, 6]
    assert [tick_label(t) for t in (0.0, 24.0, 1.5)] == ["0", "24", "1.5"]

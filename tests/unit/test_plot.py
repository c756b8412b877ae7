"""The IMAGE plots (plots/line.py): the legend keeps off the drawn lines."""

import torch

from plots.line import COLOURS, legend_corner, render

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

"""Largest-component post-processing keeps the main tumour and drops islands."""

import numpy as np

from sarcomakit.inference.predictor import keep_largest_component


def test_keeps_largest_component_per_class() -> None:
    labels = np.zeros((10, 20, 20), np.uint8)
    labels[2:6, 2:10, 2:10] = 1  # main tumour
    labels[8, 15, 15] = 1  # island
    labels[7:9, 12:14, 2:4] = 2  # another class, one component
    out = keep_largest_component(labels)
    assert out[8, 15, 15] == 0
    assert (out == 1).sum() == 4 * 8 * 8
    assert (out == 2).sum() == 2 * 2 * 2
    touching_diagonally = np.zeros((3, 3, 3), np.uint8)
    touching_diagonally[0, 0, 0] = touching_diagonally[1, 1, 1] = 1
    assert keep_largest_component(touching_diagonally).sum() == 2  # 26-connectivity

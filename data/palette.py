"""Colours of mask classes, the same wherever a mask is drawn (palette PNGs, figures).

Class 0 (background) is black; class k > 0 takes a hue stepped by the golden ratio, so neighbouring
ids get far-apart colours whatever the class count.
"""
from __future__ import annotations

import colorsys

import numpy as np

GOLDEN = 0.618033988749895  # hue step between consecutive classes


def class_palette(num_classes: int) -> np.ndarray:
    """uint8 (num_classes, 3) RGB colours, class 0 black."""
    colours = np.zeros((num_classes, 3), dtype=np.uint8)
    for k in range(1, num_classes):
        hue = (k * GOLDEN) % 1.0
        value = 1.0 if k % 2 else 0.7  # alternate brightness: twice as many distinct colours
        colours[k] = np.rint(np.array(colorsys.hsv_to_rgb(hue, 0.85, value)) * 255)
    return colours


def colour_masks(masks: np.ndarray, num_classes: int) -> np.ndarray:
    """Class ids uint8 (..., H, W) -> RGB uint8 (..., H, W, 3)."""
    return class_palette(max(num_classes, int(masks.max(initial=0)) + 1))[masks]

"""What the renderers share: one colour per class, the GT colour, and which boxes to draw."""

from __future__ import annotations

import numpy as np

from bevdeploy.data.frame import Detections

# matplotlib's "tab10" palette as 0..255 RGB, so PIL and matplotlib draw the same colours.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
GT_COLOR: tuple[int, int, int] = (255, 255, 255)


def class_color(label: int) -> tuple[int, int, int]:
    """The 0..255 RGB colour of class ``label`` (the palette repeats past ten classes)."""
    return PALETTE[int(label) % len(PALETTE)]


def to_unit(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    """0..255 RGB → matplotlib's 0..1 floats."""
    r, g, b = rgb
    return (r / 255.0, g / 255.0, b / 255.0)


def boxes_to_draw(detections: Detections, score_threshold: float | None,
                  max_boxes: int) -> Detections:
    """The ``max_boxes`` highest-scoring detections with a score of at least
    ``score_threshold`` (``None``: any), best first (a picture of 200 random-weight boxes
    shows nothing)."""
    keep = detections if score_threshold is None else detections.filter(
        detections.scores >= score_threshold)
    keep = keep.sorted()
    return keep.filter(np.arange(len(keep)) < max_boxes)


def picture_title(token: str, shown: int, score_threshold: float | None,
                  gt: int | None) -> str:
    """The title both pictures of a frame carry (drawn, and as the PNG's ``Title`` text chunk):
    the number of boxes drawn and the threshold they passed, so the picture, the console and
    detections.json can be checked against each other."""
    which = "all proposals" if score_threshold is None else f"score ≥ {score_threshold:.2f}"
    return (f"{token or 'frame'}: {shown} boxes ({which})"
            + ("" if gt is None else f", {gt} GT"))

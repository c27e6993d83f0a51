"""Images in the terminal: two pixels per character cell.

Each cell shows two pixels stacked: the upper half block ``▀`` with the upper
pixel as foreground and the lower one as background colour (grey or RGB).
Without colour (a pipe, a log file, ``NO_COLOR``) the cell is ``█``, ``▀``,
``▄`` or a space by which of the two pixels are inked (brighter than half).
"""

from __future__ import annotations

import math

import numpy as np
from rich.style import Style
from rich.text import Text

_INK = 128  # brightness from which a monochrome cell counts as inked
#: MNIST's digits sit inside a blank border this wide; ``crop=True`` leaves it out.
BORDER = 2


def shrink(pixels: np.ndarray, max_cells: int) -> np.ndarray:
    """uint8 (C, H, W) or (H, W) averaged down by a whole factor to at most ``max_cells`` columns (as it is when
    narrower): a 224×224 photo in a terminal."""
    if pixels.ndim == 2:
        return shrink(pixels[None], max_cells)[0]
    c, h, w = pixels.shape
    if w <= max_cells:
        return pixels
    k = math.ceil(w / max(1, max_cells))
    ph, pw = math.ceil(h / k) * k, math.ceil(w / k) * k
    padded = np.pad(pixels.astype(np.float64), ((0, 0), (0, ph - h), (0, pw - w)), mode="edge")
    return np.round(padded.reshape(c, ph // k, k, pw // k, k).mean(axis=(2, 4))).astype(np.uint8)


def picture(pixels: np.ndarray, colour: bool, crop: bool = False) -> Text:
    """uint8 pixels (H, W), (1, H, W) or (3, H, W) → a Text of H/2 lines of W cells."""
    img = np.asarray(pixels, dtype=np.uint8)
    if img.ndim == 2:
        img = img[None]
    if img.shape[0] not in (1, 3):
        raise ValueError(f"pixels must be (H, W), (1, H, W) or (3, H, W), got {img.shape}")
    if crop and img.shape[1] > 4 * BORDER and img.shape[2] > 4 * BORDER:
        img = img[:, BORDER:-BORDER, BORDER:-BORDER]
    if img.shape[1] % 2:
        img = np.concatenate([img, np.zeros((img.shape[0], 1, img.shape[2]), dtype=np.uint8)], axis=1)
    rgb = np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img
    # ITU-R BT.601 luma, for the monochrome cells of a colour image
    luma = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) if img.shape[0] == 3 else img[0]
    text = Text(no_wrap=True)
    for r in range(0, rgb.shape[1], 2):
        for col in range(rgb.shape[2]):
            if colour:
                (a, b, c), (d, e, f) = rgb[:, r, col].tolist(), rgb[:, r + 1, col].tolist()
                text.append("▀", Style(color=f"rgb({a},{b},{c})", bgcolor=f"rgb({d},{e},{f})"))
            else:
                up, down = luma[r, col] >= _INK, luma[r + 1, col] >= _INK
                text.append("█" if up and down else "▀" if up else "▄" if down else " ")
        if r + 2 < rgb.shape[1]:
            text.append("\n")
    return text

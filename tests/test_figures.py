"""Figures are legible in JupyterLab at 1400x900: their text is at least the notebook's own (14 px)
and no figure is so wide that the lab shrinks it, and its text, to fit the output area."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vitdino_core.notebook import FONT_SIZE, MAX_WIDTH, setup

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_TEXT_PX = 14  # JupyterLab's --jp-content-font-size1
OUTPUT_AREA_PX = 968  # a notebook's output area in a 1400 px wide window, file browser open
SOURCES = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.py")) + [
    REPO / "vitdino_core" / "attention_maps.py"
]


def test_setup_sets_figure_text_at_the_notebooks_size():
    import matplotlib.pyplot as plt

    env = setup()
    dpi = plt.rcParams["figure.dpi"]
    assert plt.rcParams["font.size"] == FONT_SIZE
    assert FONT_SIZE * dpi / 72 >= NOTEBOOK_TEXT_PX  # points at the figure's dpi, in pixels
    assert MAX_WIDTH * dpi <= OUTPUT_AREA_PX  # a figure this wide is shown at its own size
    assert env.seed == 0


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_no_figure_text_is_set_smaller_or_figure_wider(path):
    source = path.read_text(encoding="utf-8")
    small = [
        (source.count("\n", 0, m.start()) + 1, m.group(0))
        for m in re.finditer(r"fontsize\s*=\s*([0-9.]+)", source)
        if float(m.group(1)) < FONT_SIZE
    ]
    assert not small, f"text below {FONT_SIZE} pt (line, setting): {small}"
    wide = [
        (source.count("\n", 0, m.start()) + 1, m.group(0))
        for m in re.finditer(r"figsize\s*=\s*\(\s*([0-9.]+)\s*,", source)
        if float(m.group(1)) > MAX_WIDTH
    ]
    assert not wide, f"figures wider than {MAX_WIDTH} in (line, setting): {wide}"

"""Every notebook, solution or exercise version, is valid jupytext, imports vitdino_core, and does
not redefine what the core exports.

(nbval runs the notebooks themselves; this checks their source. tests/test_exercise_generator.py
checks how the exercise versions are made.)
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import jupytext
import pytest

import vitdino_core

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
CURRICULUM = [
    "00_setup_and_data",
    "01_patch_embedding",
    "02_attention",
    "03_vision_transformer",
    "04_multicrop",
    "05_dino_loss",
    "06_ema_training",
    "07_attention_maps",
    "08_linear_probe",
    "09_scaling_up",
    "10_dinov2",
]
# the learner versions in notebooks/exercises/ (stubs + checks), made by `make exercises`
EXERCISE_NOTEBOOKS = [
    "01_patch_embedding",
    "02_attention",
    "03_vision_transformer",
    "04_multicrop",
    "05_dino_loss",
    "06_ema_training",
    "07_attention_maps",
    "08_linear_probe",
    "10_dinov2",
]
EXERCISES = sorted((NOTEBOOK_DIR / "exercises").glob("[0-9][0-9]_*.py"))
ALL = NOTEBOOKS + EXERCISES


def label(path: Path) -> str:
    return f"exercises/{path.stem}" if path.parent.name == "exercises" else path.stem


def core_exports() -> set[str]:
    names = {n for n in dir(vitdino_core) if not n.startswith("_")}
    return names | set(getattr(vitdino_core, "__all__", []))


def code_of(path: Path) -> str:
    nb = jupytext.read(path, fmt="py:percent")
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


def test_the_curriculum_is_complete():
    assert [p.stem for p in NOTEBOOKS] == CURRICULUM
    made = [p.stem for p in EXERCISES]
    assert set(EXERCISE_NOTEBOOKS) <= set(made) <= set(CURRICULUM), made


@pytest.mark.parametrize("path", ALL, ids=label)
def test_notebook_is_valid_jupytext_that_builds_on_the_core(path):
    nb = jupytext.read(path, fmt="py:percent")
    kinds = [c.cell_type for c in nb.cells]
    assert kinds.count("markdown") >= 3 and kinds.count("code") >= 3, (
        "a notebook teaches in prose and code"
    )
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.lstrip().startswith("#"), (
        "starts with a title"
    )
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    tree = ast.parse(code_of(path))  # every code cell is valid Python
    imported = {
        n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
    }
    imported |= {
        a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    assert "vitdino_core" in imported, "notebooks import the finished pieces from vitdino_core"
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    clashes = defined & core_exports()
    assert not clashes, (
        f"redefines core exports {sorted(clashes)}: give the hand-built version its own name"
    )
    assert "setup(" in code_of(path), "one setup cell: seed, device, data root"


@pytest.mark.parametrize("path", ALL, ids=label)
def test_notebook_checks_itself(path):
    """Checks live in cells as assertions; notebooks that build a piece compare it with the core."""
    code = code_of(path)
    assert re.search(r"\bassert\b|assert_close", code), "at least one assertion"
    if path.stem not in ("00_setup_and_data", "09_scaling_up"):
        assert "assert_close" in code or "torch.equal" in code, (
            "the hand-built piece is checked against the core"
        )

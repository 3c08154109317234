"""Shared fixtures for the unit tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The data root holding imagenette-96/ and photos/: $VITDINO_DATA, else data/ in the repo.

    Missing data skips the test on a laptop but fails it in CI (`CI` set), where it must be there.
    """
    env = os.environ.get("VITDINO_DATA")
    root = Path(env).expanduser() if env else REPO_ROOT / "data"
    missing = [name for name in ("imagenette-96", "photos") if not (root / name).is_dir()]
    if missing:
        msg = (
            f"course data not found: {root} lacks {', '.join(missing)}/ (set VITDINO_DATA to a"
            " folder that holds them; python -m vitdino_core.data download imagenette-96 makes"
            " imagenette-96/)"
        )
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return root


def pytest_collection_modifyitems(config, items):
    """The browser check of the website (marker `site`) runs after `make site`: with `-m site`
    (make site-check) or when tests/test_site.py is named; a plain `pytest tests` leaves it out."""
    wanted = "site" in (config.option.markexpr or "") or any("test_site" in a for a in config.args)
    if wanted:
        return
    kept = [item for item in items if item.get_closest_marker("site") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept

"""The weights notebooks 07 and 08 show: $VITDINO_CHECKPOINT or the shipped checkpoint (vitdino_core.notebook)."""

from __future__ import annotations

import pytest
import torch

from vitdino_core.checkpoint import CheckpointError
from vitdino_core.notebook import SHIPPED_CHECKPOINT, SHIPPED_LABEL, course_checkpoint, load_course_backbone


def test_default_is_the_shipped_checkpoint(monkeypatch):
    monkeypatch.delenv("VITDINO_CHECKPOINT", raising=False)
    assert course_checkpoint() == (SHIPPED_CHECKPOINT, SHIPPED_LABEL)
    model, info = load_course_backbone("cpu")
    assert (info["arch"], info["patch_size"], info["image_size"]) == ("vit_tiny", 12, 72)
    assert info["label"] == SHIPPED_LABEL and not model.training
    assert model(torch.zeros(1, 3, 72, 72)).shape == (1, 192)


def test_the_variable_names_another_file_and_its_name_is_the_label(monkeypatch, tmp_path):
    copy = tmp_path / "my_dino.pth"
    copy.write_bytes(SHIPPED_CHECKPOINT.read_bytes())
    monkeypatch.setenv("VITDINO_CHECKPOINT", str(copy))
    assert course_checkpoint() == (copy, "my_dino.pth")
    model, info = load_course_backbone()
    assert info["path"] == str(copy) and info["label"] == "my_dino.pth"


def test_a_missing_file_is_a_one_line_user_error(monkeypatch, tmp_path):
    monkeypatch.setenv("VITDINO_CHECKPOINT", str(tmp_path / "nope.pth"))
    with pytest.raises(CheckpointError, match="VITDINO_CHECKPOINT=.*unset it"):
        course_checkpoint()

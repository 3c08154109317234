"""The weights the notebooks show: $VITDINO_CHECKPOINT or the shipped checkpoint
(vitdino_core.notebook)."""

from __future__ import annotations

import re

import pytest
import torch

from vitdino_core import notebook
from vitdino_core.checkpoint import CheckpointError
from vitdino_core.notebook import (
    SHIPPED_CHECKPOINT,
    SHIPPED_LABEL,
    course_checkpoint,
    course_weights,
    load_course_backbone,
)
from vitdino_core.vision_transformer import VisionTransformer


def tiny_vit(depth: int = 2) -> VisionTransformer:
    """A ViT of the official DINO kind (qkv bias) at 32 px with 8 px patches: a 4 x 4 grid."""
    torch.manual_seed(0)
    return VisionTransformer(
        img_size=32, patch_size=8, embed_dim=192, depth=depth, num_heads=3, qkv_bias=True
    )


def test_default_is_the_shipped_checkpoint(monkeypatch):
    monkeypatch.delenv("VITDINO_CHECKPOINT", raising=False)
    assert course_checkpoint() == (SHIPPED_CHECKPOINT, SHIPPED_LABEL)
    model, info = load_course_backbone("cpu")
    assert (info["arch"], info["patch_size"], info["image_size"]) == ("vit_tiny", 12, 72)
    assert info["label"] == SHIPPED_LABEL and not model.training
    assert model(torch.zeros(1, 3, 72, 72)).shape == (1, 192)
    weights = course_weights()
    assert weights.trained is not None and weights.model is weights.trained
    assert (weights.grid, weights.depth, weights.num_heads) == (6, 12, 3)
    assert "trained at 72 px = 6 x 6 patches" in weights.summary() and "111 epochs" in weights.story
    trained_sd, random_sd = weights.trained.state_dict(), weights.random.state_dict()
    assert trained_sd.keys() == random_sd.keys() and not torch.equal(
        trained_sd["pos_embed"], random_sd["pos_embed"]
    )


def test_the_variable_names_another_file_and_its_name_is_the_label(monkeypatch, tmp_path):
    copy = tmp_path / "my_dino.pth"
    copy.write_bytes(SHIPPED_CHECKPOINT.read_bytes())
    monkeypatch.setenv("VITDINO_CHECKPOINT", str(copy))
    assert course_checkpoint() == (copy, "my_dino.pth")
    model, info = load_course_backbone()
    assert info["path"] == str(copy) and info["label"] == "my_dino.pth"


def test_a_path_relative_to_the_repository_works_from_the_notebooks_folder(monkeypatch):
    monkeypatch.chdir(SHIPPED_CHECKPOINT.parents[1] / "notebooks")  # where a notebook's kernel runs
    monkeypatch.setenv("VITDINO_CHECKPOINT", "checkpoints/dino_imagenette96.pth")
    assert course_checkpoint()[0].resolve() == SHIPPED_CHECKPOINT.resolve()
    monkeypatch.setenv("VITDINO_CHECKPOINT", "checkpoints/nope.pth")  # missing: both places named
    with pytest.raises(
        CheckpointError, match=r"notebooks/checkpoints/nope.pth, nor under the repository root"
    ):
        course_checkpoint()


def test_a_missing_file_is_one_line_naming_the_variable_and_the_path(monkeypatch, tmp_path):
    missing = tmp_path / "nope.pth"
    monkeypatch.setenv("VITDINO_CHECKPOINT", str(missing))
    for call in (course_checkpoint, load_course_backbone, course_weights):
        with pytest.raises(CheckpointError) as e:
            call()
        message = str(e.value)
        assert "\n" not in message and message.startswith(
            f"VITDINO_CHECKPOINT={missing}: no such file"
        )
        assert "unset it" in message  # what to do, and never the shipped checkpoint instead


def test_a_folder_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("VITDINO_CHECKPOINT", str(tmp_path))
    with pytest.raises(
        CheckpointError, match=r"^VITDINO_CHECKPOINT=.* is a folder .*checkpoint file inside"
    ) as e:
        load_course_backbone()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("layout", ["backbone", "dino-full"])
def test_an_official_dino_file_loads_with_its_shape_read_from_the_weights(
    monkeypatch, tmp_path, layout
):
    vit = tiny_vit(depth=2)
    sd = vit.state_dict()
    if layout == "backbone":  # dino_deitsmall8_pretrain.pth: a bare state dict
        obj = sd
    # an official training checkpoint: student/teacher with module./backbone. prefixes and a head
    else:
        wrapped = {f"module.backbone.{k}": v for k, v in sd.items()} | {
            "module.head.last_layer.weight_g": torch.ones(8, 1)
        }
        obj = {"teacher": wrapped, "student": wrapped, "epoch": 3}
    path = tmp_path / "dino_official.pth"
    torch.save(obj, path)
    monkeypatch.setenv("VITDINO_CHECKPOINT", str(path))
    weights = course_weights()
    assert (weights.arch, weights.patch_size, weights.image_size, weights.grid) == (
        "vit_tiny",
        8,
        32,
        4,
    )
    assert weights.depth == 2 and len(weights.random.blocks) == 2  # the baseline has the same shape
    assert weights.label == "dino_official.pth" and "carries no training config" in weights.story
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(weights.trained(x), vit.eval()(x))
    assert "trained at 32 px = 4 x 4 patches" in weights.summary()


def test_a_file_without_vit_weights_is_one_line_naming_the_variable(monkeypatch, tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 7, 7)}, path)
    monkeypatch.setenv("VITDINO_CHECKPOINT", str(path))
    with pytest.raises(
        CheckpointError, match=r"^VITDINO_CHECKPOINT=.*does not hold Vision Transformer weights"
    ) as e:
        load_course_backbone()
    assert "\n" not in str(e.value)


def test_weights_that_are_not_finite_are_refused_with_a_count(monkeypatch, tmp_path):
    sd = tiny_vit().state_dict()
    sd["blocks.1.attn.qkv.weight"][0, :5] = float("nan")
    sd["pos_embed"][0, 0, 0] = float("inf")
    path = tmp_path / "diverged.pth"
    torch.save(sd, path)
    monkeypatch.setenv("VITDINO_CHECKPOINT", str(path))
    with pytest.raises(CheckpointError) as e:
        course_weights()
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    assert re.search(r"\b6 of its \d+ weight values are not finite", message), message
    assert "2 tensor(s)" in message


def test_without_any_checkpoint_the_shipped_shape_at_random_init(monkeypatch, tmp_path):
    monkeypatch.delenv("VITDINO_CHECKPOINT", raising=False)
    monkeypatch.setattr(notebook, "SHIPPED_CHECKPOINT", tmp_path / "absent.pth")
    weights = course_weights()
    assert weights.trained is None and weights.model is weights.random and weights.path is None
    assert (weights.arch, weights.patch_size, weights.image_size) == notebook.SHIPPED_SHAPE
    assert weights.summary().startswith("weights: RANDOM INITIALISATION")

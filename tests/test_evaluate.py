"""The evaluation CLI and loading backbones from checkpoints (vitdino_core.evaluate)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from vitdino_core import DINOHead, MultiCropWrapper, save_checkpoint, vit_tiny
from vitdino_core.checkpoint import CheckpointError, export_backbone
from vitdino_core.evaluate import build_backbone_from_checkpoint, main
from vitdino_core.notebook import checkpoint_story

TINY = ["--dataset", "random", "--image-size", "24", "--max-train", "40", "--max-val", "20", "--batch-size", "20"]


def run_main(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def wrapper(seed: int) -> MultiCropWrapper:
    torch.manual_seed(seed)
    return MultiCropWrapper(vit_tiny(patch_size=12, img_size=36), DINOHead(192, 64, hidden_dim=32, bottleneck_dim=16))


def test_cli_random_init_prints_one_json_object(capsys):
    code, out, _ = run_main(["--random-init", "--arch", "vit_tiny", "--patch-size", "12", *TINY], capsys)
    assert code == 0
    res = json.loads(out)
    assert res["num_train"] == 40 and res["num_val"] == 20 and res["feature_dim"] == 192 and res["image_size"] == 24
    assert 0 <= res["knn_top1"] <= 100 and 0 <= res["linear_top1"] <= 100 and res["linear_C"] > 0
    assert "vit_tiny/12" in res["model"] and res["seconds"] >= 0


def test_cli_as_a_module_raw_pixels():
    cmd = [sys.executable, "-m", "vitdino_core.evaluate", "--raw-pixels", "8", "--no-probe", *TINY]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)  # stdout holds the JSON and nothing else
    assert res["feature_dim"] == 3 * 8 * 8 and res["linear_top1"] is None


def test_training_checkpoint_teacher_and_student(tmp_path):
    teacher, student = wrapper(0), wrapper(1)
    config = {"arch": "vit_tiny", "patch_size": 12, "global_crops_size": 36}
    path = save_checkpoint({"teacher": teacher.state_dict(), "student": student.state_dict(), "config": config, "epoch": 3},
                           tmp_path / "checkpoint.pth")
    x = torch.randn(2, 3, 36, 36)
    for which, net in (("teacher", teacher), ("student", student)):
        model, info = build_backbone_from_checkpoint(path, which)
        assert info["image_size"] == 36 and info["arch"] == "vit_tiny"
        with torch.no_grad():
            torch.testing.assert_close(model(x), net.backbone.eval()(x))


def test_config_less_checkpoint_needs_arch(tmp_path, capsys):
    torch.manual_seed(0)
    backbone = vit_tiny(patch_size=12, img_size=24)
    path = tmp_path / "official_style.pth"
    torch.save({f"module.backbone.{k}": v for k, v in backbone.state_dict().items()}, path)
    with pytest.raises(CheckpointError, match="--arch vit_tiny --patch-size 12"):
        build_backbone_from_checkpoint(path)
    code, out, err = run_main(["--ckpt", str(path), *TINY, "--no-probe"], capsys)
    assert code == 2 and out == "" and "--arch" in err
    code, out, _ = run_main(["--ckpt", str(path), "--arch", "vit_tiny", "--patch-size", "12", *TINY, "--no-probe"], capsys)
    assert code == 0 and json.loads(out)["feature_dim"] == 192


def test_shipped_fp16_backbone_and_attention_maps(tmp_path, capsys):
    teacher = wrapper(0)
    sd = {k.removeprefix("backbone."): v.half() for k, v in teacher.state_dict().items() if k.startswith("backbone.")}
    path = save_checkpoint({"teacher": sd, "config": {"arch": "vit_tiny", "patch_size": 12, "global_crops_size": 36}},
                           tmp_path / "backbone.pth")
    with pytest.raises(CheckpointError, match="only the teacher"):
        build_backbone_from_checkpoint(path, "student")
    maps = tmp_path / "maps"
    code, out, _ = run_main(["--ckpt", str(path), *TINY, "--no-probe", "--attention-maps", str(maps)], capsys)
    assert code == 0
    res = json.loads(out)
    assert res["image_size"] == 24 and len(res["attention_maps"]) == 8  # 4 images x (heads, masks)
    assert all((maps / name).stat().st_size > 0 for name in ("attention_0.png", "masks_3.png"))


def test_exported_backbone_describes_itself_for_the_notebooks(tmp_path):
    cfg = {"arch": "vit_tiny", "patch_size": 12, "global_crops_size": 36, "dataset": "imagenette", "max_images": 64}
    train_ckpt = save_checkpoint({"teacher": wrapper(0).state_dict(), "config": cfg, "step": 30, "epoch": 3},
                                 tmp_path / "checkpoint.pth")
    out = export_backbone(train_ckpt, tmp_path / "shipped.pth", meta={"epochs": 3, "knn_top1": 31.0})
    line, tag, record = checkpoint_story(out)
    assert tag == "DINO teacher, 3 epochs" and record["knn_top1"] == 31.0
    assert "(30 steps)" in line and "the first 64 images of imagenette" in line and "vit_tiny/12 on 36 px" in line
    staged = export_backbone(train_ckpt, tmp_path / "staged.pth",  # continued by a warm restart
                             meta={"epochs": 7, "step": 70, "stages": [{"epochs": 3}, {"epochs": 4}]})
    assert "(70 steps, 2 stages)" in checkpoint_story(staged)[0] and checkpoint_story(staged)[1] == "DINO teacher, 7 epochs"
    out.with_suffix(".json").unlink()  # without its record the checkpoint's own epoch is used
    assert checkpoint_story(out)[1] == "DINO teacher, 3 epochs" and checkpoint_story(out)[2] == {}


def test_image_size_must_fit_the_patch(capsys):
    code, out, err = run_main(["--random-init", "--arch", "vit_tiny", "--patch-size", "12", *TINY, "--image-size", "30"], capsys)
    assert code == 2 and "multiple of the patch size" in err


def test_shipped_checkpoint_is_small_loads_and_its_record_adds_up():
    from vitdino_core.notebook import SHIPPED_CHECKPOINT as path

    assert path.stat().st_size <= 25 * 2**20, "shipped weights must stay under 25 MB"
    model, info = build_backbone_from_checkpoint(path)
    assert (info["arch"], info["patch_size"], info["image_size"]) == ("vit_tiny", 12, 72)
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 72, 72))  # (2, 192) CLS features
    assert feats.shape == (2, 192) and torch.isfinite(feats).all()
    record = json.loads(path.with_suffix(".json").read_text())
    for key in ("config", "epochs", "training_hours", "hardware", "knn_top1", "linear_top1", "baselines", "command"):
        assert key in record, f"{path.with_suffix('.json')} lacks {key!r}"
    stages = record["stages"]  # the record's totals are the sums over its stages, its accuracies the last stage's
    assert record["epochs"] == sum(s["epochs"] for s in stages) and record["steps"] == sum(s["steps"] for s in stages)
    assert record["knn_top1"] == stages[-1]["knn_top1"] and record["linear_top1"] == stages[-1]["linear_top1"]
    for s in stages:  # every stage's curves ship beside the weights
        assert (path.parent / s["metrics"]).is_file()

"""The evaluation CLI and loading backbones from checkpoints (vitdino_core.evaluate)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from vitdino_core import DINOHead, MultiCropWrapper, save_checkpoint, vit_tiny
from vitdino_core.checkpoint import CheckpointError, build_backbone_from_checkpoint, export_backbone
from vitdino_core.eval_protocol import holdout_split
from vitdino_core.evaluate import main
from vitdino_core.notebook import checkpoint_story

TINY = [
    "--dataset",
    "random",
    "--image-size",
    "24",
    "--max-train",
    "40",
    "--max-val",
    "20",
    "--batch-size",
    "20",
]


def run_main(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def wrapper(seed: int) -> MultiCropWrapper:
    torch.manual_seed(seed)
    return MultiCropWrapper(
        vit_tiny(patch_size=12, img_size=36), DINOHead(192, 64, hidden_dim=32, bottleneck_dim=16)
    )


def test_cli_random_init_prints_one_json_object(capsys):
    code, out, _ = run_main(
        ["--random-init", "--arch", "vit_tiny", "--patch-size", "12", *TINY], capsys
    )
    assert code == 0
    res = json.loads(out)
    assert (
        res["num_train"] == 40
        and res["num_val"] == 20
        and res["feature_dim"] == 192
        and res["image_size"] == 24
    )
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
    path = save_checkpoint(
        {
            "teacher": teacher.state_dict(),
            "student": student.state_dict(),
            "config": config,
            "epoch": 3,
        },
        tmp_path / "checkpoint.pth",
    )
    x = torch.randn(2, 3, 36, 36)
    for which, net in (("teacher", teacher), ("student", student)):
        model, info = build_backbone_from_checkpoint(path, which)
        assert info["image_size"] == 36 and info["arch"] == "vit_tiny"
        with torch.no_grad():
            torch.testing.assert_close(model(x), net.backbone.eval()(x))


def test_config_less_checkpoint_is_read_from_its_shapes(tmp_path, capsys):
    torch.manual_seed(0)
    backbone = vit_tiny(patch_size=12, img_size=24)
    path = tmp_path / "official_style.pth"
    torch.save({f"module.backbone.{k}": v for k, v in backbone.state_dict().items()}, path)
    model, info = build_backbone_from_checkpoint(path)
    assert (info["arch"], info["patch_size"], info["image_size"]) == ("vit_tiny", 12, 24)
    code, out, _ = run_main(["--ckpt", str(path), *TINY, "--no-probe"], capsys)
    assert code == 0 and json.loads(out)["feature_dim"] == 192
    code, out, err = run_main(
        ["--ckpt", str(path), "--arch", "vit_small", *TINY, "--no-probe"], capsys
    )
    assert code == 2 and out == "" and "--arch vit_small does not match" in err


def test_shipped_fp16_backbone_and_attention_maps(tmp_path, capsys):
    teacher = wrapper(0)
    sd = {
        k.removeprefix("backbone."): v.half()
        for k, v in teacher.state_dict().items()
        if k.startswith("backbone.")
    }
    path = save_checkpoint(
        {"teacher": sd, "config": {"arch": "vit_tiny", "patch_size": 12, "global_crops_size": 36}},
        tmp_path / "backbone.pth",
    )
    with pytest.raises(CheckpointError, match="only the teacher"):
        build_backbone_from_checkpoint(path, "student")
    maps = tmp_path / "maps"
    code, out, _ = run_main(
        ["--ckpt", str(path), *TINY, "--no-probe", "--attention-maps", str(maps)], capsys
    )
    assert code == 0
    res = json.loads(out)
    assert res["image_size"] == 24 and len(res["attention_maps"]) == 8  # 4 images x (heads, masks)
    assert all((maps / name).stat().st_size > 0 for name in ("attention_0.png", "masks_3.png"))


def test_exported_backbone_describes_itself_for_the_notebooks(tmp_path):
    cfg = {
        "arch": "vit_tiny",
        "patch_size": 12,
        "global_crops_size": 36,
        "dataset": "imagenette",
        "max_images": 64,
    }
    train_ckpt = save_checkpoint(
        {"teacher": wrapper(0).state_dict(), "config": cfg, "step": 30, "epoch": 3},
        tmp_path / "checkpoint.pth",
    )
    out = export_backbone(
        train_ckpt, tmp_path / "shipped.pth", meta={"epochs": 3, "knn_top1": 31.0}
    )
    line, tag, record = checkpoint_story(out)
    assert tag == "DINO teacher, 3 epochs" and record["knn_top1"] == 31.0
    assert (
        "(30 steps)" in line
        and "the first 64 images of imagenette" in line
        and "vit_tiny/12 on 36 px" in line
    )
    staged = export_backbone(
        train_ckpt,
        tmp_path / "staged.pth",  # continued by a warm restart
        meta={"epochs": 7, "step": 70, "stages": [{"epochs": 3}, {"epochs": 4}]},
    )
    assert (
        "(70 steps, 2 stages)" in checkpoint_story(staged)[0]
        and checkpoint_story(staged)[1] == "DINO teacher, 7 epochs"
    )
    out.with_suffix(".json").unlink()  # without its record the checkpoint's own epoch is used
    assert checkpoint_story(out)[1] == "DINO teacher, 3 epochs" and checkpoint_story(out)[2] == {}


def test_image_size_must_fit_the_patch(capsys):
    code, out, err = run_main(
        ["--random-init", "--arch", "vit_tiny", "--patch-size", "12", *TINY, "--image-size", "30"],
        capsys,
    )
    assert code == 2 and "multiple of the patch size" in err and err.count("\n") == 1


def test_shipped_checkpoint_is_small_loads_and_its_record_adds_up():
    from vitdino_core.notebook import SHIPPED_CHECKPOINT as path

    assert path.stat().st_size <= 25 * 2**20, "shipped weights must stay under 25 MB"
    model, info = build_backbone_from_checkpoint(path)
    assert (info["arch"], info["patch_size"], info["image_size"]) == ("vit_tiny", 12, 72)
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 72, 72))  # (2, 192) CLS features
    assert feats.shape == (2, 192) and torch.isfinite(feats).all()
    record = json.loads(path.with_suffix(".json").read_text())
    for key in (
        "config",
        "epochs",
        "training_hours",
        "hardware",
        "knn_top1",
        "linear_top1",
        "baselines",
        "command",
    ):
        assert key in record, f"{path.with_suffix('.json')} lacks {key!r}"
    stages = record[
        "stages"
    ]  # the record's totals are the sums over its stages, its accuracies the last stage's
    assert record["epochs"] == sum(s["epochs"] for s in stages) and record["steps"] == sum(
        s["steps"] for s in stages
    )
    assert (
        record["knn_top1"] == stages[-1]["knn_top1"]
        and record["linear_top1"] == stages[-1]["linear_top1"]
    )
    for s in stages:  # every stage's curves ship beside the weights
        assert (path.parent / s["metrics"]).is_file()


# ----------------------------------------------------------------------------- which images are
# scored


def image_folder(root, classes=("cat", "dog"), per_class=10, size=16):
    """One subfolder per class of small PNGs, each class its own colour (so kNN can
    tell them apart)."""
    from PIL import Image

    g = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(g.normal(60 + 120 * c, 30, size=(size, size, 3)), 0, 255).astype(
                np.uint8
            )
            Image.fromarray(pixels).save(root / name / f"{name}_{i:02d}.png")
    return root


FOLDER = [
    "--random-init",
    "--arch",
    "vit_tiny",
    "--patch-size",
    "12",
    "--image-size",
    "24",
    "--batch-size",
    "20",
]


def test_folder_without_val_is_split_and_says_so(tmp_path, capsys):
    data = image_folder(tmp_path / "pets")
    feats = tmp_path / "feats"
    code, out, err = run_main(
        [*FOLDER, "--data-path", str(data), "--save-features", str(feats)], capsys
    )
    assert code == 0, err
    res = json.loads(out)
    assert (
        res["data"]["split"] == {"holdout": 0.2, "seed": 0, "of": str(data)}
        and res["data"]["chosen_by"] == "--data-path"
    )
    assert res["dataset"] == "folder" and res["data"]["val"] == f"20% of {data} per class"
    assert (res["num_train"], res["num_val"]) == (16, 4)  # 2 of each class's 10 images scored
    train = set((feats / "train_paths.txt").read_text().splitlines())
    val = set((feats / "val_paths.txt").read_text().splitlines())
    assert not train & val and train | val == {str(p) for p in data.rglob("*.png")}
    assert {p.split("/")[-2] for p in val} == {"cat", "dog"}  # stratified: both classes scored


def test_holdout_split_is_seeded_and_stratified():
    targets = [0] * 10 + [1] * 5 + [2] * 1
    train, val = holdout_split(targets, 0.2, seed=0)
    assert sorted(train + val) == list(range(16)) and not set(train) & set(val)
    assert [sum(targets[i] == c for i in val) for c in range(3)] == [
        2,
        1,
        0,
    ]  # a single image stays in train
    assert holdout_split(targets, 0.2, seed=0) == (train, val) and holdout_split(
        targets, 0.2, seed=1
    ) != (train, val)


def test_folder_data_mistakes_are_one_line(tmp_path, capsys):
    one = image_folder(tmp_path / "one", classes=("cat",))
    both = image_folder(tmp_path / "both" / "train")
    (tmp_path / "both" / "val").symlink_to(
        both, target_is_directory=True
    )  # val/ = the very same images
    image_folder(tmp_path / "sep" / "train", per_class=3)
    image_folder(tmp_path / "sep" / "val", per_class=3)
    pets = image_folder(tmp_path / "pets", per_class=3)
    cases = {
        "holds a single class of images": ["--dataset", "folder", "--data-path", str(one)],
        "images are both in the train and the val images": [
            "--dataset",
            "folder",
            "--data-path",
            str(tmp_path / "both"),
        ],
        "--holdout is for folders without val/": [
            "--dataset",
            "folder",
            "--data-path",
            str(tmp_path / "sep"),
            "--holdout",
            "0.3",
        ],
        "--holdout must be between 0 and 1": [
            "--dataset",
            "folder",
            "--data-path",
            str(pets),
            "--holdout",
            "1.5",
        ],
        "--dataset folder needs --data-path": ["--dataset", "folder"],
        "has its own val split": ["--dataset", "random", "--holdout", "0.2"],
    }
    for expected, argv in cases.items():
        code, out, err = run_main([*FOLDER, *argv], capsys)
        assert code == 2 and out == "" and err.count("\n") == 1 and expected in err, (expected, err)


def test_a_run_is_evaluated_on_its_own_data(tmp_path, capsys):
    data = image_folder(tmp_path / "imagenet" / "train", per_class=6)
    image_folder(tmp_path / "imagenet" / "val", per_class=3)
    config = {
        "arch": "vit_tiny",
        "patch_size": 12,
        "global_crops_size": 24,
        "dataset": "folder",
        "data_path": str(data),
    }
    path = save_checkpoint(
        {"teacher": wrapper(0).state_dict(), "config": config}, tmp_path / "checkpoint.pth"
    )
    code, out, err = run_main(["--ckpt", str(path), "--batch-size", "20"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["data"] == {
        "dataset": "folder",
        "train": str(data),
        "val": str(tmp_path / "imagenet" / "val"),
        "split": None,
        "chosen_by": "the checkpoint's training config",
    }
    assert (res["num_train"], res["num_val"]) == (
        12,
        6,
    )  # train/ beside val/: val/ is what gets scored
    code, out, _ = run_main(
        [
            "--ckpt",
            str(path),
            "--dataset",
            "random",
            "--max-train",
            "20",
            "--max-val",
            "10",
            "--no-probe",
        ],
        capsys,
    )
    assert code == 0 and json.loads(out)["data"]["chosen_by"] == "the command line"


def test_threads_like_training(capsys, monkeypatch):
    calls, real = [], torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n)))
    before = torch.get_num_threads()
    code, _, _ = run_main(["--raw-pixels", "4", "--no-probe", *TINY, "--threads", "1"], capsys)
    assert (
        code == 0 and calls == [1, before] and torch.get_num_threads() == before
    )  # set for the run, then restored


def test_imagenette_data_path_may_be_the_data_root(tmp_path):
    from vitdino_core.eval_protocol import eval_datasets

    image_folder(tmp_path / "imagenette-96" / "train", per_class=4)
    image_folder(tmp_path / "imagenette-96" / "val", per_class=2)
    (tmp_path / "photos").mkdir()  # another folder of the data root: not a class
    train, val, data = eval_datasets("imagenette", str(tmp_path))
    assert (len(train), len(val)) == (8, 4) and data["val"] == str(
        tmp_path / "imagenette-96" / "val"
    )

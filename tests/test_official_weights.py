"""Official DINO files load as published: bare backbones, full training checkpoints, and every bad
file is one line.

The files are built here in the official layouts (facebookresearch/dino: `hubconf.py` loads the
`dino_*_pretrain.pth` backbones with strict=True; `main_dino.py` saves {"student", "teacher",
"optimizer", "epoch", "args", "dino_loss"} with a DDP student and a plain teacher). Nothing is
downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

from vitdino_core import (
    DINOHead,
    MultiCropWrapper,
    VisionTransformer,
    vit_small,
    vit_tiny,
)
from vitdino_core.checkpoint import (
    CheckpointError,
    build_backbone_from_checkpoint,
    checkpoint_layout,
    load_checkpoint,
    vit_shape,
)
from vitdino_core.evaluate import main

TINY = [
    "--dataset",
    "random",
    "--max-train",
    "20",
    "--max-val",
    "10",
    "--batch-size",
    "10",
    "--no-probe",
]


def official_backbone_keys(depth: int) -> set[str]:
    """The key names of DINO's vision_transformer.VisionTransformer(num_classes=0), written out by
    hand."""
    block = [
        "norm1.weight",
        "norm1.bias",
        "attn.qkv.weight",
        "attn.qkv.bias",
        "attn.proj.weight",
        "attn.proj.bias",
        "norm2.weight",
        "norm2.bias",
        "mlp.fc1.weight",
        "mlp.fc1.bias",
        "mlp.fc2.weight",
        "mlp.fc2.bias",
    ]
    top = [
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "norm.weight",
        "norm.bias",
    ]
    return set(top) | {f"blocks.{i}.{k}" for i in range(depth) for k in block}


def run_main(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def same_output(a: torch.nn.Module, b: torch.nn.Module, size: int) -> None:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))  # (2, 3, S, S)
    with torch.no_grad():
        torch.testing.assert_close(
            a.eval()(x), b.eval()(x), rtol=0, atol=0
        )  # (2, D): the very same numbers


@pytest.mark.parametrize(
    "make, patch, img, arch", [(vit_tiny, 16, 64, "vit_tiny"), (vit_small, 8, 32, "vit_small")]
)
def test_published_backbone_state_dict_loads_and_is_read_from_its_shapes(
    tmp_path, make, patch, img, arch
):
    torch.manual_seed(0)
    source = make(patch_size=patch, img_size=img)
    sd = source.state_dict()
    assert set(sd) == official_backbone_keys(12)  # the published files' names, no head
    path = tmp_path / f"dino_{arch}{patch}_pretrain.pth"
    torch.save(sd, path)  # as published: the bare state dict, nothing around it
    assert checkpoint_layout(load_checkpoint(path)) == "backbone"
    model, info = build_backbone_from_checkpoint(path)  # no --arch, no --patch-size
    assert (info["arch"], info["patch_size"], info["image_size"], info["depth"]) == (
        arch,
        patch,
        img,
        12,
    )
    assert info["layout"] == "backbone" and info["which"] == "backbone"
    same_output(model, source, img)
    same_output(model, source, 2 * img)  # other sizes: the position grid interpolated the same way


def official_full_checkpoint(path, arch="vit_tiny", patch=16, img=32, depth=12):
    """main_dino.py's save_dict: a DDP-wrapped student (module.backbone., module.head.) and a plain
    teacher."""
    torch.manual_seed(1)
    nets = {}
    for name in ("student", "teacher"):
        backbone = VisionTransformer(
            img_size=img, patch_size=patch, embed_dim=192, depth=depth, num_heads=3
        )
        nets[name] = MultiCropWrapper(backbone, DINOHead(192, 64, hidden_dim=32, bottleneck_dim=16))
    student_sd = {f"module.{k}": v for k, v in nets["student"].state_dict().items()}
    optimizer = torch.optim.AdamW(nets["student"].parameters())
    args = argparse.Namespace(
        arch=arch,
        patch_size=patch,
        out_dim=64,
        global_crops_scale=(0.4, 1.0),
        lr=0.0005,
        data_path="/path/to/imagenet/train",
        use_fp16=True,
        epochs=100,
    )
    torch.save(
        {
            "student": student_sd,
            "teacher": nets["teacher"].state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": 100,
            "args": args,
            "dino_loss": {"center": torch.zeros(1, 64)},
            "fp16_scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0},
        },
        path,
    )
    return nets


def test_official_full_training_checkpoint_teacher_and_student(tmp_path, capsys):
    path = tmp_path / "checkpoint.pth"
    nets = official_full_checkpoint(path)
    ckpt = load_checkpoint(
        path
    )  # weights_only=True, with the argparse.Namespace of args allowed for this call only
    assert isinstance(ckpt["args"], argparse.Namespace) and ckpt["args"].arch == "vit_tiny"
    assert any(k.startswith("module.backbone.") for k in ckpt["student"]) and any(
        k.startswith("head.") for k in ckpt["teacher"]
    )
    assert (
        argparse.Namespace not in torch.serialization.get_safe_globals()
    )  # not allowed process-wide afterwards
    for which in ("teacher", "student"):
        model, info = build_backbone_from_checkpoint(path, which)
        assert (
            info["layout"],
            info["which"],
            info["arch"],
            info["patch_size"],
            info["image_size"],
        ) == ("dino-full", which, "vit_tiny", 16, 32)
        same_output(model, nets[which].backbone, 32)
    code, out, err = run_main(["--ckpt", str(path), "--which", "student", *TINY], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert (
        res["model"] == f"vit_tiny/16 student from {path}"
        and res["image_size"] == 32
        and res["feature_dim"] == 192
    )
    assert (
        info["config"] == {} and res["data"]["chosen_by"] == "the command line"
    )  # official args name no data of ours


def test_other_objects_in_a_checkpoint_are_still_refused(tmp_path):
    path = tmp_path / "with_a_function.pth"
    torch.save(
        {"teacher": vit_tiny(patch_size=16, img_size=32).state_dict(), "hook": os.getcwd}, path
    )
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)


def test_depth_is_read_from_the_keys(tmp_path, capsys):
    torch.manual_seed(0)
    source = VisionTransformer(img_size=48, patch_size=16, embed_dim=192, depth=4, num_heads=3)
    path = tmp_path / "shallow.pth"
    torch.save(source.state_dict(), path)
    model, info = build_backbone_from_checkpoint(path)
    assert info["depth"] == 4 and len(model.blocks) == 4
    same_output(model, source, 48)
    code, out, _ = run_main(["--ckpt", str(path), *TINY], capsys)
    assert code == 0 and json.loads(out)["model"].startswith("vit_tiny/16 (4 blocks) backbone from")


def test_arch_and_patch_size_are_optional_and_checked(tmp_path, capsys):
    path = tmp_path / "dino_deitsmall8_pretrain.pth"
    torch.save(vit_small(patch_size=8, img_size=32).state_dict(), path)
    code, out, err = run_main(
        ["--ckpt", str(path), "--arch", "vit_small", "--patch-size", "8", *TINY], capsys
    )
    assert code == 0 and json.loads(out)["feature_dim"] == 384, err
    for wrong in (["--arch", "vit_base"], ["--patch-size", "16"]):
        code, out, err = run_main(["--ckpt", str(path), *wrong, *TINY], capsys)
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert (
            f"{' '.join(wrong)} does not match" in err
            and "vit_small/8" in err
            and "leave out --arch" in err
        )


def test_shape_inference_names_what_it_cannot_read():
    sd = vit_tiny(patch_size=16, img_size=32).state_dict()
    assert (
        vit_shape(sd)["num_heads"] == 3
        and vit_shape(sd)["mlp_ratio"] == 4.0
        and vit_shape(sd)["qkv_bias"]
    )
    odd = dict(
        sd,
        **{
            "patch_embed.proj.weight": torch.zeros(256, 3, 16, 16),
            "pos_embed": torch.zeros(1, 5, 256),
        },
    )
    with pytest.raises(CheckpointError, match="embed dim 256"):
        vit_shape(odd)
    with pytest.raises(CheckpointError, match="square position grid"):
        vit_shape(dict(sd, pos_embed=torch.zeros(1, 4, 192)))


# ----------------------------------------------------------------------------- one line for every
# bad file


def bad_inputs(tmp_path):
    """(name, argv) of the mistakes the command must answer with one line."""
    text = tmp_path / "notes.txt"
    text.write_text("these are my notes, not weights\n")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save(
        {
            "teacher": vit_tiny(patch_size=12, img_size=24).state_dict(),
            "config": {"arch": "vit_tiny"},
        },
        run_dir / "checkpoint.pth",
    )
    resnet = tmp_path / "resnet50.pth"
    torch.save(
        {
            "conv1.weight": torch.zeros(64, 3, 7, 7),
            "bn1.weight": torch.ones(64),
            "fc.weight": torch.zeros(10, 2048),
        },
        resnet,
    )
    a_file = tmp_path / "features_here"
    a_file.write_text("a file, not a folder")
    good = run_dir / "checkpoint.pth"
    return {
        "text file": ["--ckpt", str(text)],
        "empty file": ["--ckpt", str(empty)],
        "folder": ["--ckpt", str(run_dir)],
        "missing file": ["--ckpt", str(tmp_path / "nowhere.pth")],
        "not a ViT": ["--ckpt", str(resnet)],
        "features dir is a file": ["--ckpt", str(good), "--save-features", str(a_file)],
        "maps dir under a file": ["--ckpt", str(good), "--attention-maps", str(a_file / "maps")],
    }


EXPECTED = {
    "text file": "is not a PyTorch checkpoint (it starts like text)",
    "empty file": "is empty (0 bytes)",
    "folder": "is a folder, not a checkpoint file; did you mean",
    "missing file": "checkpoint not found",
    "not a ViT": "does not hold Vision Transformer weights (no patch_embed.proj.weight",
    "features dir is a file": "--save-features",
    "maps dir under a file": "is a file, so the folder cannot be created",
}


def test_every_bad_input_is_one_line(tmp_path, capsys):
    for name, argv in bad_inputs(tmp_path).items():
        code, out, err = run_main([*argv, *TINY], capsys)
        assert code == 2 and out == "", (name, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, (
            name,
            err,
        )
        assert EXPECTED[name] in err, (name, err)


def test_an_output_folder_that_cannot_be_written(tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if (
        os.geteuid() == 0
    ):  # root may write anywhere: make the permission check answer as for another user
        real_access = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode: False if str(p) == str(locked) else real_access(p, mode)
        )
    code, out, err = run_main(
        [
            "--random-init",
            "--arch",
            "vit_tiny",
            "--patch-size",
            "12",
            "--image-size",
            "24",
            "--save-features",
            str(locked / "feats"),
            *TINY,
        ],
        capsys,
    )
    locked.chmod(0o700)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert f"cannot write in {locked} (permission denied)" in err


@pytest.mark.slow
def test_bad_file_from_the_shell_and_debug(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not weights\n")
    cmd = [sys.executable, "-m", "vitdino_core.evaluate", "--ckpt", str(text)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    debug = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, timeout=120)
    assert (
        debug.returncode != 0 and "Traceback" in debug.stderr and "CheckpointError" in debug.stderr
    )

"""The training engine and its command line, on a small slice of imagenette-96."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vitdino_core.checkpoint import load_checkpoint
from vitdino_core.data import EpochBatchSampler
from vitdino_core.train import main
from vitdino_core.training.config import ConfigError, load_config
from vitdino_core.training.multicrop_gpu import PaddedImages
from vitdino_core.training.trainer import DINOTrainer, TrainingDivergedError, train

REPO = Path(__file__).resolve().parents[1]


def tiny_overrides(out: Path, **extra) -> list[str]:
    """workshop_tiny shrunk to seconds: 48 images, 8 per batch (6 steps per epoch),
    48/24 px crops."""
    values = dict(
        output_dir=str(out),
        max_images=48,
        batch_size_per_gpu=8,
        out_dim=128,
        local_crops_number=2,
        global_crops_size=48,
        local_crops_size=24,
        num_workers=0,
        log_every=1,
        epochs=2,
        threads=1,
    )
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def tiny(out: Path, **extra) -> list[str]:
    """Command-line arguments for the shrunk workshop_tiny run."""
    args = ["--config", "workshop_tiny"]
    for item in tiny_overrides(out, **extra):
        args += ["--set", item]
    return args


@pytest.fixture
def data_env(shared_data, monkeypatch):
    monkeypatch.setenv("VITDINO_DATA", str(shared_data))
    return shared_data


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_fast_flag_is_one_config_key_that_student_and_teacher_carry(data_env, tmp_path):
    """`fast` (default true) builds the student with the model's speed tricks on and the EMA
    teacher, a copy, keeps them; the summary's path line says which path runs and which tricks
    act on this device; fast=false builds the plain modules; a value that is not true or false is
    an error that names the key."""
    import warnings

    assert load_config("workshop_tiny").fast is True
    for fast, precision in ((True, "fp32"), (True, "bf16"), (False, "fp32")):
        cfg = load_config("workshop_tiny", tiny_overrides(tmp_path, fast=fast, precision=precision))
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # bf16 on a CPU without bf16 units: the slow-precision warning
            tr = DINOTrainer(cfg, quiet=True)
        flags = {
            m.fast
            for model in (tr.student, tr.teacher)
            for m in model.modules()
            if hasattr(m, "fast")
        }
        assert flags == {fast} and f"fast={fast}" in repr(tr.teacher.backbone)
        path = next(ln for ln in tr.summary().splitlines() if ln.startswith("path:"))
        if not fast:
            assert path.startswith("path:   plain (")
        else:
            assert path.startswith(
                "path:   fast (the last block computes the CLS row alone; a dropped branch is not"
            )
            assert ("attention as the explicit softmax" in path) == (precision == "bf16")
    with pytest.raises(ConfigError, match="fast: expected true or false"):
        load_config("workshop_tiny", ["fast=sometimes"])


def test_cli_writes_checkpoint_metrics_and_config(data_env, tmp_path):
    assert main(tiny(tmp_path, max_steps=3)) == 0
    run = tmp_path / "workshop_tiny"
    ckpt = load_checkpoint(run / "checkpoint.pth")
    assert ckpt["step"] == 3 and ckpt["config"]["max_images"] == 48
    assert {"student", "teacher", "optimizer", "scaler", "dino_loss", "rng"} <= set(ckpt)
    assert ckpt["dino_loss"]["center"].shape == (1, 128)
    records = read_metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in (
        "loss",
        "lr",
        "wd",
        "momentum",
        "teacher_temp",
        "teacher_entropy",
        "kl_uniform",
        "images_per_s",
    ):
        assert all(torch.isfinite(torch.tensor(r[key])) for r in records), key
    assert all(0 < r["loss"] < 2 * torch.log(torch.tensor(128.0)) for r in records)
    assert load_config(run / "config.yaml").max_images == 48


def test_resume_matches_an_uninterrupted_run(data_env, tmp_path):
    """3 steps, stop, resume to 8 (across an epoch boundary) == 8 steps in one go, bit for bit."""
    assert main(tiny(tmp_path / "a", max_steps=8)) == 0
    assert main(tiny(tmp_path / "b", max_steps=3)) == 0
    assert main(tiny(tmp_path / "b", max_steps=8) + ["--resume"]) == 0
    a = load_checkpoint(tmp_path / "a" / "workshop_tiny" / "checkpoint.pth")
    b = load_checkpoint(tmp_path / "b" / "workshop_tiny" / "checkpoint.pth")
    assert a["step"] == b["step"] == 8 and b["epoch"] == 1
    for part in ("student", "teacher", "dino_loss"):
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], rtol=0, atol=1e-6, msg=f"{part}.{k}")
    steps_b = [r["step"] for r in read_metrics(tmp_path / "b" / "workshop_tiny")]
    assert steps_b == list(range(1, 9)), (
        "metrics are logged once per step, with no duplicates after resume"
    )


def test_gpu_augment_path_trains_and_resumes_exactly(data_env, tmp_path):
    """gpu_augment=true: workers decode uint8 images, crops are made in one batched pass (here on
    the CPU)."""
    assert main(tiny(tmp_path / "a", max_steps=4, gpu_augment="true")) == 0
    assert main(tiny(tmp_path / "b", max_steps=2, gpu_augment="true")) == 0
    assert main(tiny(tmp_path / "b", max_steps=4, gpu_augment="true") + ["--resume"]) == 0
    a = load_checkpoint(tmp_path / "a" / "workshop_tiny" / "checkpoint.pth")
    b = load_checkpoint(tmp_path / "b" / "workshop_tiny" / "checkpoint.pth")
    assert a["step"] == b["step"] == 4 and "augment" in a["rng"]
    for k in a["teacher"]:
        torch.testing.assert_close(a["teacher"][k], b["teacher"][k], rtol=0, atol=1e-6, msg=k)
    assert all(0 < r["loss"] < 10 for r in read_metrics(tmp_path / "a" / "workshop_tiny"))


def test_gpu_augment_on_images_of_different_sizes(shared_data, tmp_path):
    """gpu_augment_max_size: ImageNet-like photos of different sizes, shrunk to fit 64 px and padded
    to one 64 x 64 batch shape; the crops are made from each image's own pixels."""
    folder = tmp_path / "photos" / "all"
    folder.mkdir(parents=True)
    for i in range(2):  # 7 photos (451 x 300 to 640 x 427), twice: 14 images
        for f in sorted((shared_data / "photos").iterdir()):
            (folder / f"{i}_{f.name}").symlink_to(f)
    overrides = dict(
        dataset="folder",
        data_path=str(tmp_path / "photos"),
        max_images=0,
        batch_size_per_gpu=4,
        max_steps=3,
        gpu_augment="true",
        gpu_augment_max_size=64,
    )
    trainer = train(
        load_config("workshop_tiny", tiny_overrides(tmp_path / "runs", **overrides)), quiet=True
    )
    images, _ = next(iter(trainer.loader))
    assert isinstance(images, PaddedImages) and images.images.shape == (4, 3, 64, 64)
    assert (
        images.sizes.max() == 64 and len({tuple(s) for s in images.sizes.tolist()}) > 1
    )  # shrunk, not squared
    recs = read_metrics(tmp_path / "runs" / "workshop_tiny")
    assert trainer.step == 3 and all(0 < r["loss"] < 10 for r in recs)
    with pytest.raises(ConfigError, match="not both"):
        load_config("workshop_tiny", ["gpu_augment_size=64", "gpu_augment_max_size=64"])


def test_metrics_follow_the_schedules(data_env, tmp_path):
    """lr warms up linearly (scaled by batch/256) then decays; momentum rises towards 1; wd towards
    its end value."""
    assert (
        main(
            tiny(
                tmp_path,
                max_steps=12,
                epochs=2,
                warmup_epochs=1,
                lr=0.0032,
                min_lr=1e-6,
                log_every=1,
            )
        )
        == 0
    )
    recs = read_metrics(tmp_path / "workshop_tiny")
    peak = 0.0032 * 8 / 256
    lr = [r["lr"] for r in recs]
    assert lr[0] == pytest.approx(0.0) and lr[5] == pytest.approx(
        peak
    )  # step 6 = end of the 1-epoch warm-up
    assert all(a < b for a, b in zip(lr[:5], lr[1:6]))
    assert lr[6] == pytest.approx(peak) and all(
        a > b for a, b in zip(lr[6:-1], lr[7:])
    )  # cosine starts at the peak
    mom = [r["momentum"] for r in recs]
    assert (
        mom[0] == pytest.approx(0.99) and all(a < b for a, b in zip(mom, mom[1:])) and mom[-1] < 1
    )
    assert recs[-1]["wd"] > recs[0]["wd"]


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(data_env, tmp_path):
    cfg = load_config("workshop_tiny", tiny_overrides(tmp_path))
    trainer = DINOTrainer(cfg, quiet=True)
    crops, _ = next(iter(trainer.loader))
    trainer.train_step(*crops)
    trainer.save()
    good = load_checkpoint(trainer.ckpt_path)
    crops[0][0, 0, 0, 0] = float("nan")
    trainer.train_step(*crops)
    with pytest.raises(
        TrainingDivergedError,
        match=rf"last good checkpoint is {re.escape(str(trainer.ckpt_path))} \(step 1\).*lower lr",
    ):
        trainer.save()
    kept = load_checkpoint(trainer.ckpt_path)
    assert kept["step"] == good["step"] == 1
    assert all(torch.equal(kept["teacher"][k], good["teacher"][k]) for k in good["teacher"])


@pytest.mark.parametrize("rank", [0, 1])
def test_a_span_of_steps_gives_the_batches_of_each_epoch_in_turn(rank):
    """set_steps(a, b), which fit uses to run the loader across epoch ends, yields exactly the
    batches that set_epoch would give epoch by epoch: same images, same order, same per-epoch
    crop seeds."""
    sampler = EpochBatchSampler(
        50, 8, seed=3, rank=rank, world_size=2
    )  # 25 images per rank: 3 batches per epoch
    per_epoch = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        per_epoch += list(sampler)
    assert len(per_epoch) == 12 and per_epoch[0] != per_epoch[3]  # epochs are shuffled differently
    for start, stop in ((0, 12), (2, 7), (3, 4), (5, 12)):
        sampler.set_steps(start, stop)
        assert list(sampler) == per_epoch[start:stop]
    sampler.set_epoch(1, 1, 2)  # set_epoch still means one epoch's slice
    assert list(sampler) == per_epoch[4:5]


def test_a_background_save_holds_the_state_of_its_step(data_env, tmp_path):
    """save(block=False), as fit does at epoch ends on a GPU: the steps that follow do not leak into
    the file."""
    cfg = load_config("workshop_tiny", tiny_overrides(tmp_path))
    trainer = DINOTrainer(cfg, quiet=True)
    crops, _ = next(iter(trainer.loader))
    trainer.train_step(*crops)
    at_save = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    trainer.save(block=False)
    trainer.train_step(*crops)  # moves the teacher in place while the file may be being written
    trainer.wait_for_save()
    saved = load_checkpoint(trainer.ckpt_path)
    assert saved["step"] == 1 and trainer.step == 2
    assert all(torch.equal(saved["teacher"][k], at_save[k]) for k in at_save)
    assert not all(torch.equal(at_save[k], v) for k, v in trainer.teacher.state_dict().items())


def test_a_step_past_the_end_of_training_is_one_clear_error(data_env, tmp_path):
    """The schedules hold epochs x steps per epoch values; the step after the last says so instead
    of an IndexError."""
    cfg = load_config("workshop_tiny", tiny_overrides(tmp_path, max_images=16, epochs=1))  # 2 steps
    trainer = DINOTrainer(cfg, quiet=True)
    crops, _ = next(iter(trainer.loader))
    for _ in range(2):
        trainer.train_step(*crops)
    with pytest.raises(ValueError, match="step 2 is past the end of training"):
        trainer.train_step(*crops)


def test_init_weights_starts_student_and_teacher_from_an_exported_backbone(data_env, tmp_path):
    """A warm restart: the backbone comes from an earlier run's exported teacher, the head starts
    fresh."""
    from vitdino_core.checkpoint import CheckpointError, export_backbone

    assert main(tiny(tmp_path / "first", max_steps=2)) == 0
    exported = export_backbone(
        tmp_path / "first" / "workshop_tiny" / "checkpoint.pth",
        tmp_path / "backbone.pth",
        half=False,
    )
    before = load_checkpoint(exported)["teacher"]
    cfg = load_config(
        "workshop_tiny", tiny_overrides(tmp_path / "second", init_weights=str(exported))
    )
    trainer = DINOTrainer(cfg, quiet=True)
    fresh = DINOTrainer(
        load_config("workshop_tiny", tiny_overrides(tmp_path / "third")), quiet=True
    )
    for net in (trainer.student, trainer.teacher):
        for k, v in net.backbone.state_dict().items():
            assert torch.equal(v, before[k]), k
    assert not torch.equal(trainer.student.backbone.pos_embed, fresh.student.backbone.pos_embed)
    for (
        k,
        v,
    ) in trainer.student.head.state_dict().items():  # the head is the one a fresh run starts with
        assert torch.equal(v, fresh.student.head.state_dict()[k]), k
    with pytest.raises(CheckpointError, match="does not fit"):
        DINOTrainer(
            load_config(
                "workshop_tiny",
                tiny_overrides(tmp_path / "x", init_weights=str(exported), arch="vit_small"),
            ),
            quiet=True,
        )
    assert main(tiny(tmp_path / "y", init_weights=str(tmp_path / "nowhere.pth"))) == 2


def test_bad_config_is_an_error_naming_the_key(data_env, tmp_path, capsys):
    assert main(tiny(tmp_path) + ["--set", "learning_rate=0.1"]) == 2
    assert "learning_rate" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("arch: vit_tiny\nepochs: ten\n")
    with pytest.raises(ConfigError, match="epochs"):
        load_config(bad)


def test_corrupt_image_is_reported_and_skipped(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    (folder / "a").mkdir(parents=True)
    for i in range(8):
        Image.new("RGB", (40, 40), (i * 30, 10, 200)).save(folder / "a" / f"{i}.jpg")
    (folder / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    args = tiny(tmp_path / "out", max_steps=2, max_images=0, batch_size_per_gpu=4)
    args += ["--set", "dataset=folder", "--set", f"data_path={folder}"]
    with pytest.warns(UserWarning, match="broken.jpg"):
        assert main(args) == 0
    assert load_checkpoint(tmp_path / "out" / "workshop_tiny" / "checkpoint.pth")["step"] == 2


@pytest.mark.slow
def test_python_m_entry_point(data_env, tmp_path):
    env = dict(os.environ, VITDINO_DATA=str(data_env))
    out = subprocess.run(
        [sys.executable, "-m", "vitdino_core.train", *tiny(tmp_path, max_steps=1)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["step"] == 1


def test_progress_lines_go_to_stdout_in_a_notebook(monkeypatch, capsys):
    """In a terminal progress goes to stderr (stdout carries the command's JSON); in a notebook
    kernel to stdout, since JupyterLab paints stderr as an error box under the live plot."""
    import io
    from types import SimpleNamespace

    from vitdino_core.training.device import DistEnv
    from vitdino_core.training.trainer import progress_stream

    fake_self = SimpleNamespace(env=DistEnv(), quiet=False)
    DINOTrainer.say(fake_self, "epoch 1/2: loss 5.0")
    out, err = capsys.readouterr()
    assert "epoch 1/2" in err and "epoch 1/2" not in out

    class OutStream(io.StringIO):  # what ipykernel puts in sys.stderr
        pass

    OutStream.__module__ = "ipykernel.iostream"
    monkeypatch.setattr(sys, "stderr", OutStream())
    assert progress_stream() is sys.stdout
    DINOTrainer.say(fake_self, "epoch 2/2: loss 4.0")
    assert "epoch 2/2" in capsys.readouterr().out and sys.stderr.getvalue() == ""

"""Runs never clobber or mix each other, nothing non-finite is saved, every user mistake is one
line, and the progress a person sees: a summary, one line per epoch, one line at the end."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from vitdino_core import data as data_module
from vitdino_core import vision_transformer
from vitdino_core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vitdino_core.train import main
from vitdino_core.training import config as config_module
from vitdino_core.training import device as device_module
from vitdino_core.training.config import FIELDS, ConfigError, load_config
from vitdino_core.training.run_state import RunFolder, RunFolderError
from vitdino_core.training.trainer import DINOTrainer, TrainingDivergedError, split_crops, train

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from test_train import read_metrics, tiny, tiny_overrides  # noqa: E402


@pytest.fixture
def data_env(shared_data, monkeypatch):
    monkeypatch.setenv("VITDINO_DATA", str(shared_data))
    return shared_data


def one_line_error(capsys) -> str:
    """stderr of a command that failed on a user's mistake: exactly one line, 'error: ...', no
    traceback."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------- runs never clobber
# each other


def test_a_run_folder_with_a_checkpoint_needs_resume(data_env, tmp_path, capsys):
    assert main(tiny(tmp_path, max_steps=2)) == 0
    run = tmp_path / "workshop_tiny"
    before = (run / "checkpoint.pth").read_bytes(), (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(tiny(tmp_path, max_steps=3)) == 2
    line = one_line_error(capsys)
    assert (
        "already holds a run" in line
        and "--resume" in line
        and "run_name" in line
        and str(run) in line
    )
    assert (
        (run / "checkpoint.pth").read_bytes(),
        (run / "metrics.jsonl").read_text(),
    ) == before, "nothing touched"


def test_the_api_refuses_to_start_a_new_run_over_an_old_one(data_env, tmp_path):
    """fit() on a fresh trainer is a new run too: it must not overwrite the checkpoint nor append to
    the metrics."""
    assert main(tiny(tmp_path, max_steps=1)) == 0
    trainer = DINOTrainer(
        load_config("workshop_tiny", tiny_overrides(tmp_path, max_steps=2)), quiet=True
    )
    with pytest.raises(RunFolderError, match="already holds a run"):
        trainer.fit()
    assert load_checkpoint(trainer.ckpt_path)["step"] == 1 and [
        r["step"] for r in read_metrics(trainer.run_dir)
    ] == [1]


def test_resume_with_nothing_to_resume_is_an_error(data_env, tmp_path, capsys):
    assert main(tiny(tmp_path, max_steps=1) + ["--resume"]) == 2
    line = one_line_error(capsys)
    assert "--resume" in line and "no checkpoint to resume" in line
    assert not (tmp_path / "workshop_tiny" / "checkpoint.pth").exists()


def test_a_fresh_run_starts_its_metrics_afresh(data_env, tmp_path):
    """A run killed before its first checkpoint leaves metrics.jsonl; the next run must not mix them
    with its own."""
    run = tmp_path / "workshop_tiny"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 123.0}\n{"step": 2, "loss": 123.0}\n')
    assert main(tiny(tmp_path, max_steps=1)) == 0
    assert [r["loss"] != 123.0 for r in read_metrics(run)] == [True]


def test_a_locked_run_folder_is_refused(data_env, tmp_path, capsys):
    holder = RunFolder(tmp_path, "workshop_tiny")
    holder.open(
        continuing=False
    )  # another writer (a separate open file: flock conflicts even within one process)
    try:
        assert main(tiny(tmp_path, max_steps=1)) == 2
        line = one_line_error(capsys)
        assert f"is being written by pid {os.getpid()}" in line and "run_name" in line
    finally:
        holder.close()
    assert main(tiny(tmp_path, max_steps=1)) == 0, "released: the next run goes ahead"


@pytest.mark.slow
def test_the_lock_of_a_killed_process_does_not_block_the_next_run(data_env, tmp_path):
    code = (
        "import sys, time; from vitdino_core.training.run_state import"
        f" RunFolder\nRunFolder({str(tmp_path)!r}, 'workshop_tiny').open(continuing=False);"
        " print('locked', flush=True); time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match="being written by pid"):
            RunFolder(tmp_path, "workshop_tiny").open(continuing=False)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (
        tmp_path / "workshop_tiny" / ".lock"
    ).exists()  # the file stays; its lock went with the process
    assert main(tiny(tmp_path, max_steps=1)) == 0


@pytest.mark.slow
def test_torchrun_ranks_all_stop_on_a_folder_that_holds_a_run(shared_data, tmp_path):
    """Only rank 0 looks at the folder; every rank gets its verdict and stops, none hangs."""
    run = tmp_path / "runs" / "workshop_tiny"
    run.mkdir(parents=True)
    (run / "checkpoint.pth").write_bytes(b"an older run")
    overrides = tiny_overrides(
        tmp_path / "runs", max_images=32, batch_size_per_gpu=4, max_steps=2, device="cpu"
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29617",
        str(REPO / "tests" / "dist_worker.py"),
        str(tmp_path),
        *overrides,
    ]
    t0 = time.time()
    out = subprocess.run(
        cmd,
        cwd=REPO,
        env=dict(os.environ, VITDINO_DATA=str(shared_data)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0 and time.time() - t0 < 240
    assert out.stderr.count("already holds a run") >= 2, out.stderr[
        -3000:
    ]  # both ranks, the same verdict
    assert (run / "checkpoint.pth").read_bytes() == b"an older run"


@pytest.mark.parametrize("name", ["", " ", ".", "..", "a/b", "/tmp/x", "../up", "a\\b"])
def test_run_name_must_be_a_plain_folder_name(name):
    with pytest.raises(ConfigError, match="run_name must be a plain folder name"):
        load_config("workshop_tiny", {"run_name": name})


def test_runs_go_into_their_own_folder_never_beside_shipped_files(data_env, tmp_path, capsys):
    cfg = load_config("workshop_tiny")
    assert RunFolder(cfg.output_dir, cfg.run_name).path.parent == Path(
        cfg.output_dir
    )  # checkpoints/<run_name>/
    shipped = tmp_path / "dino_imagenette96.pth"
    shipped.write_bytes(b"shipped weights")
    assert main(tiny(tmp_path, max_steps=1, run_name="dino_imagenette96.pth")) == 2
    assert "is a file, not a folder" in one_line_error(capsys)
    assert shipped.read_bytes() == b"shipped weights"


# ----------------------------------------------------------------------------- nothing non-finite

FLOAT_FIELDS = [
    k for k, f in FIELDS.items() if f.type in ("float", float) or "tuple[float" in str(f.type)
]


def test_every_float_field_is_checked():
    assert {
        "lr",
        "min_lr",
        "weight_decay",
        "weight_decay_end",
        "teacher_temp",
        "warmup_teacher_temp",
        "student_temp",
        "momentum_teacher",
        "center_momentum",
        "clip_grad",
        "drop_path_rate",
        "global_crops_scale",
    } <= set(FLOAT_FIELDS)


@pytest.mark.parametrize("key", FLOAT_FIELDS)
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_nan_and_inf_config_values_are_refused(key, bad):
    value = f"[{bad}, 1.0]" if isinstance(FIELDS[key].default, tuple) else bad
    with pytest.raises(ConfigError, match=rf"^{key} must be a finite number"):
        load_config("workshop_tiny", [f"{key}={value}"])


def test_save_checkpoint_refuses_nan_and_keeps_the_old_file(tmp_path):
    path = save_checkpoint({"w": torch.ones(3)}, tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match=r"refused to write .*NaN/inf in 1 tensor.*model\.w"):
        save_checkpoint({"model": {"w": torch.tensor([1.0, float("inf")])}, "step": 2}, path)
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pth"]


def test_weights_gone_nan_are_never_saved_and_the_message_points_to_the_good_file(
    data_env, tmp_path
):
    trainer = DINOTrainer(load_config("workshop_tiny", tiny_overrides(tmp_path)), quiet=True)
    with torch.no_grad():
        trainer.teacher.head.mlp[0].weight[0, 0] = float("nan")  # a fault that no loss has seen yet
    with pytest.raises(TrainingDivergedError, match="no good checkpoint of this run was written"):
        trainer.save()
    assert not trainer.ckpt_path.exists()

    trainer = DINOTrainer(load_config("workshop_tiny", tiny_overrides(tmp_path)), quiet=True)
    crops, _ = next(iter(trainer.loader))
    trainer.train_step(*crops)
    trainer.save()
    good = trainer.ckpt_path.read_bytes()
    trainer.train_step(*crops)
    with torch.no_grad():
        trainer.student.backbone.pos_embed[0, 0, 0] = float("inf")
    with pytest.raises(
        TrainingDivergedError,
        match=rf"NaN/inf in .*pos_embed.*last good checkpoint is "
        rf"{re.escape(str(trainer.ckpt_path))} \(step 1\)",
    ):
        trainer.save()
    assert trainer.ckpt_path.read_bytes() == good


# ----------------------------------------------------------------------------- one line for each
# mistake


def test_output_dir_that_is_a_file(data_env, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("a file")
    assert main(tiny(tmp_path / "notes.txt", max_steps=1)) == 2
    assert "output_dir" in (line := one_line_error(capsys)) and "is a file, not a folder" in line


def test_output_dir_that_is_not_writable(data_env, tmp_path, capsys, monkeypatch):
    out = tmp_path / "readonly"
    out.mkdir()
    out.chmod(0o500)
    if (
        os.geteuid() == 0
    ):  # root writes anywhere: make this folder read-only as far as the check can tell
        real = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode: False if Path(p) == out else real(p, mode)
        )
    try:
        assert main(tiny(out, max_steps=1)) == 2
        line = one_line_error(capsys)
        assert f"cannot write to {out}" in line and "output_dir" in line
    finally:
        out.chmod(0o700)


def test_batch_larger_than_the_dataset(data_env, tmp_path, capsys):
    assert main(tiny(tmp_path, max_images=6, batch_size_per_gpu=8)) == 2
    assert "batch_size_per_gpu=8 is larger than the dataset (6 images)" in one_line_error(capsys)


def test_a_folder_of_unreadable_images(tmp_path, capsys):
    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    for i in range(4):
        (folder / f"{i}.jpg").write_bytes(b"not a jpeg")
    args = tiny(tmp_path / "out", max_images=0, batch_size_per_gpu=2) + [
        "--set",
        "dataset=folder",
        "--set",
        f"data_path={tmp_path / 'imgs'}",
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(args) == 2
    assert str(tmp_path / "imgs") in one_line_error(capsys)
    assert not [w for w in caught if ".jpg" in str(w.message)], (
        "the error says it all: no warning per file"
    )


@pytest.mark.parametrize("content", [b"", b"these are not weights\n"], ids=["empty", "text"])
@pytest.mark.parametrize("how", ["resume", "init_weights"])
def test_a_file_that_is_not_a_checkpoint(data_env, tmp_path, capsys, content, how):
    path = (
        tmp_path / "workshop_tiny" / "checkpoint.pth"
        if how == "resume"
        else tmp_path / "weights.pth"
    )
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    args = (
        tiny(tmp_path, max_steps=1) + ["--resume"]
        if how == "resume"
        else tiny(tmp_path, max_steps=1, init_weights=str(path))
    )
    assert main(args) == 2
    assert str(path) in one_line_error(capsys)  # the message names the file


def test_debug_shows_the_traceback(data_env, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="learning_rate"):
        main(tiny(tmp_path) + ["--set", "learning_rate=0.1", "--debug"])
    monkeypatch.setenv("VITDINO_DEBUG", "1")
    with pytest.raises(RunFolderError, match="no checkpoint to resume"):
        main(tiny(tmp_path) + ["--resume"])


# ----------------------------------------------------------------------------- the step and its
# crops


def test_global_and_local_crops_of_one_size(data_env, tmp_path):
    """With global_crops_size == local_crops_size the loader's crops come as one tensor; the teacher
    still sees only the 2 global views of each image, and the loss is the one computed by hand."""
    cfg = load_config(
        "workshop_tiny",
        tiny_overrides(tmp_path, global_crops_size=36, local_crops_size=36, max_steps=2),
    )
    trainer = DINOTrainer(cfg, quiet=True)
    batch, labels = next(iter(trainer.loader))
    assert len(batch) == 1 and batch[0].shape[0] == 4 * 8  # one group: (V*B, 3, 36, 36)
    global_crops, local_crops = trainer.crops_of(batch, len(labels))
    assert torch.equal(global_crops, batch[0][:16]) and torch.equal(local_crops, batch[0][16:])
    seen = []
    trainer.teacher.register_forward_hook(lambda m, inp, out: seen.append(out.shape[0]))
    trainer.fit()
    assert seen == [16, 16] and trainer.step == 2


def test_split_crops():
    g, l2 = torch.randn(6, 3, 8, 8), torch.randn(9, 3, 4, 4)  # B=3: 2 global views, 3 local views
    got = split_crops([g, l2], 3)
    assert got[0] is g and got[1] is l2
    assert split_crops([g], 3) == (g, None)
    both = torch.randn(15, 3, 8, 8)  # 5 views of one size
    g1, l1 = split_crops([both], 3)
    assert torch.equal(g1, both[:6]) and torch.equal(l1, both[6:])


def test_config_choices_come_from_the_registries():
    assert config_module.CHOICES["arch"] == tuple(vision_transformer.ARCHS)
    assert config_module.CHOICES["dataset"] == tuple(data_module.DATASETS)


# ----------------------------------------------------------------------------- what a person sees


def test_progress_a_person_sees(data_env, tmp_path, capsys):
    assert main(tiny(tmp_path, max_steps=8)) == 0  # 6 steps per epoch: one full epoch, then 2 steps
    out, err = capsys.readouterr()
    lines = [ln.split("\r")[-1].strip() for ln in err.splitlines()]
    run = tmp_path / "workshop_tiny"
    summary = next(i for i, ln in enumerate(lines) if ln.startswith("data:"))
    assert (
        "imagenette, 48 images" in lines[summary]
        and "6 steps per epoch, 8 steps in all" in lines[summary]
    )
    assert re.match(
        r"model: +vit_tiny/12 \+ DINO head \(128 outputs\): [\d.]+M parameters", lines[summary + 1]
    )
    assert re.match(r"device: cpu, 1 thread, fp32", lines[summary + 2]) and lines[
        summary + 4
    ].endswith(str(run))
    assert (
        lines[summary + 3]
        == "path:   fast (the last block computes the CLS row alone; a dropped branch is not "
        "computed; the same values as plain)"
    )  # fast: true, the default
    epoch_lines = [ln for ln in lines if re.search(r"epoch \d/2: loss [\d.]+ \(step", ln)]
    assert len(epoch_lines) == 1 and "step 6/8" in epoch_lines[0]
    done = [ln for ln in err.splitlines() if "done:" in ln]
    assert len(done) == 1 and re.search(
        rf"done: step 8 .* in \d:\d\d:\d\d; final loss [\d.]+, checkpoint {re.escape(str(run))}",
        done[0],
    )
    assert (
        out.strip().startswith("{") and len(out.strip().splitlines()) == 1
    )  # stdout: the JSON result only
    assert main(tiny(tmp_path, max_steps=8) + ["--resume"]) == 0  # a finished run, resumed: says so
    assert "nothing left to train: step 8 of 8 was done already" in capsys.readouterr().err


def test_quiet_prints_nothing(data_env, tmp_path, capsys):
    train(load_config("workshop_tiny", tiny_overrides(tmp_path, max_steps=2)), quiet=True)
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize(
    "dtype, probes, slow",
    [
        (torch.bfloat16, {}, True),
        (torch.bfloat16, {"_is_avx512_bf16_supported": True}, False),
        (torch.bfloat16, {"_is_amx_tile_supported": True}, False),
        (torch.float16, {"_is_avx512_bf16_supported": True}, True),
        (torch.float16, {"_is_amx_fp16_supported": True}, False),
        (torch.float32, {}, False),
    ],
)
def test_low_precision_on_a_cpu_without_units_for_it_warns(monkeypatch, dtype, probes, slow):
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported", "_is_amx_fp16_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda v=probes.get(probe, False): v, raising=False)
    msg = device_module.slow_precision(dtype, torch.device("cpu"))
    assert bool(msg) == slow and (not slow or "precision=fp32" in msg)
    assert device_module.slow_precision(dtype, torch.device("cuda", 0)) == ""


def test_the_trainer_warns_once_about_slow_precision(data_env, tmp_path, monkeypatch):
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    with pytest.warns(
        UserWarning, match=r"precision=bf16 on this CPU is slow.*precision=fp32"
    ) as caught:
        DINOTrainer(
            load_config("workshop_tiny", tiny_overrides(tmp_path, precision="bf16")), quiet=True
        )
    assert sum("precision=bf16" in str(w.message) for w in caught) == 1

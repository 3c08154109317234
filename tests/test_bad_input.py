"""What a careless or hostile user can hand the commands: each is one `error:` line (exit code 2)
before any long work, nothing written or lost; never a traceback, never a score of NaNs, never a
folder of two models' features."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vitdino_core import evaluate
from vitdino_core import features as features_module
from vitdino_core.checkpoint import (
    CheckpointError,
    build_random_backbone,
    load_checkpoint,
    save_checkpoint,
)
from vitdino_core.cli import UserError
from vitdino_core.features import load_features, save_features
from vitdino_core.train import main as train_main
from vitdino_core.training.config import FIELDS, ConfigError, load_config
from vitdino_core.training.run_state import RESUME_CHANGEABLE, RunFolder

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from test_train import tiny  # noqa: E402

RANDOM = [
    "--dataset",
    "random",
    "--image-size",
    "24",
    "--max-train",
    "20",
    "--max-val",
    "10",
    "--batch-size",
    "10",
    "--no-probe",
]
TINY_MODEL = ["--random-init", "--arch", "vit_tiny", "--patch-size", "12"]


@pytest.fixture
def data_env(shared_data, monkeypatch):
    monkeypatch.setenv("VITDINO_DATA", str(shared_data))
    return shared_data


def error_line(capsys) -> str:
    """The last line on stderr of a command stopped by a user's mistake: 'error: ...', and no
    traceback anywhere."""
    err = capsys.readouterr().err
    lines = [
        ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()
    ]  # a progress bar redraws with \r
    assert lines and lines[-1].startswith("error: "), err[-2000:]
    assert "Traceback" not in err
    return lines[-1]


def snapshot_dir(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())} if d.is_dir() else {}


def small_features(tmp_path: Path, name: str = "feats", n: int = 12, seed: int = 0, **kw) -> Path:
    g = torch.Generator().manual_seed(seed)
    tx, vx = torch.randn(n, 8, generator=g), torch.randn(n // 2, 8, generator=g)  # (N, D), (M, D)
    ty, vy = torch.arange(n) % 3, torch.arange(n // 2) % 3  # (N,), (M,)
    return save_features(tmp_path / name, tx, ty, vx, vy, meta={"model": f"seed {seed}"}, **kw)


def no_temporaries(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------- a features folder is
# replaced whole


def test_save_features_refuses_to_replace_without_overwrite_and_replaces_whole_with_it(
    tmp_path, capsys
):
    feats = tmp_path / "feats"
    assert evaluate.main([*TINY_MODEL, *RANDOM, "--save-features", str(feats)]) == 0
    before = snapshot_dir(feats)
    capsys.readouterr()
    assert evaluate.main([*TINY_MODEL, *RANDOM, "--seed", "1", "--save-features", str(feats)]) == 2
    line = error_line(capsys)
    assert "already holds features" in line and "--overwrite" in line
    assert snapshot_dir(feats) == before, "refused before any work: the old folder is untouched"
    assert (
        evaluate.main(
            [*TINY_MODEL, *RANDOM, "--seed", "1", "--save-features", str(feats), "--overwrite"]
        )
        == 0
    )
    after = snapshot_dir(feats)
    assert sorted(after) == sorted(before) and after["train_paths.txt"] != before["train_paths.txt"]
    assert no_temporaries(tmp_path)


def test_a_folder_holding_other_files_is_never_replaced(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert evaluate.main([*TINY_MODEL, *RANDOM, "--save-features", str(mine), "--overwrite"]) == 2
    line = error_line(capsys)
    assert "thesis.tex" in line and "not replaced" in line
    assert snapshot_dir(mine) == {"thesis.tex": b"years of work"}


def test_an_interrupted_write_leaves_the_old_folder_whole(tmp_path, monkeypatch):
    feats = small_features(tmp_path, seed=0)
    before = snapshot_dir(feats)
    real_save, calls = np.save, []

    def dies_on_the_val_split(path, arr, **kw):
        calls.append(path)
        if "val_" in str(path):
            raise KeyboardInterrupt  # killed between the train files and the val files
        return real_save(path, arr, **kw)

    monkeypatch.setattr(features_module.np, "save", dies_on_the_val_split)
    with pytest.raises(KeyboardInterrupt):
        small_features(tmp_path, seed=1, overwrite=True)
    assert len(calls) == 3 and snapshot_dir(feats) == before, (
        "the train rows of the new model never mix in"
    )
    assert no_temporaries(tmp_path)
    assert load_features(feats).meta["model"] == "seed 0"


def test_a_full_disk_while_saving_features_is_one_line_and_keeps_the_old_folder(
    tmp_path, capsys, monkeypatch
):
    feats = tmp_path / "feats"
    assert evaluate.main([*TINY_MODEL, *RANDOM, "--save-features", str(feats)]) == 0
    before = snapshot_dir(feats)
    capsys.readouterr()
    real_save = np.save

    def disk_full(path, arr, **kw):
        if "val_" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(path, arr, **kw)

    monkeypatch.setattr(features_module.np, "save", disk_full)
    assert evaluate.main([*TINY_MODEL, *RANDOM, "--save-features", str(feats), "--overwrite"]) == 2
    line = error_line(capsys)
    assert "no space left" in line and str(feats) in line and "as it was" in line
    assert snapshot_dir(feats) == before and no_temporaries(tmp_path)


# ----------------------------------------------------------------------------- non-finite numbers
# are refused


def test_features_with_nan_are_refused_not_scored(tmp_path, capsys):
    feats = small_features(tmp_path)
    x = np.load(feats / "val_features.npy")
    x[0, :3] = np.nan
    x[1, 0] = np.inf
    np.save(feats / "val_features.npy", x)
    assert evaluate.main(["--features", str(feats)]) == 2
    line = error_line(capsys)
    assert "val_features.npy" in line and "4 of 48 values are not finite" in line
    with pytest.raises(UserError, match="not finite"):
        save_features(
            tmp_path / "other",
            torch.full((4, 2), float("nan")),
            torch.zeros(4),
            torch.zeros(2, 2),
            torch.zeros(2),
        )
    assert not (tmp_path / "other").exists()


def nan_backbone(path: Path, how_many: int = 5) -> Path:
    model, _ = build_random_backbone("vit_tiny", 12, 24)
    sd = model.state_dict()
    sd["blocks.0.attn.qkv.weight"].view(-1)[:how_many] = float("nan")
    torch.save({"teacher": sd}, path)  # torch.save itself: save_checkpoint refuses to write this
    return path


def test_a_checkpoint_with_nan_weights_is_refused_by_evaluate(tmp_path, capsys):
    ckpt = nan_backbone(tmp_path / "nan.pth")
    assert evaluate.main(["--ckpt", str(ckpt), *RANDOM[:2], *RANDOM[4:]]) == 2
    line = error_line(capsys)
    assert (
        str(ckpt) in line
        and "5 of its" in line
        and "not finite" in line
        and "blocks.0.attn.qkv.weight" in line
    )


def test_init_weights_with_nan_are_refused(data_env, tmp_path, capsys):
    ckpt = nan_backbone(tmp_path / "nan.pth", how_many=2)
    assert (
        train_main(
            tiny(tmp_path, max_steps=1, arch="vit_tiny", patch_size=12, init_weights=str(ckpt))
        )
        == 2
    )
    line = error_line(capsys)
    assert f"init_weights {ckpt}" in line and "2 of its" in line and "not finite" in line
    assert not (tmp_path / "workshop_tiny" / "checkpoint.pth").exists()


# ----------------------------------------------------------------------------- a config says each
# key once


def test_a_yaml_key_given_twice_is_refused_naming_both_lines(tmp_path, capsys):
    cfg = tmp_path / "twice.yaml"
    cfg.write_text("arch: vit_tiny\npatch_size: 12\narch: vit_small\n")
    with pytest.raises(ConfigError, match=r"'arch' is set twice, on lines 1 and 3"):
        load_config(cfg)
    assert train_main(["--config", str(cfg), "--set", f"output_dir={tmp_path / 'out'}"]) == 2
    line = error_line(capsys)
    assert str(cfg) in line and "'arch' is set twice, on lines 1 and 3" in line
    assert not (tmp_path / "out").exists()


def test_a_yaml_that_is_not_utf8_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes("run_name: caf\u00e9\n".encode("latin-1"))
    assert train_main(["--config", str(cfg), "--set", f"output_dir={tmp_path / 'out'}"]) == 2
    line = error_line(capsys)
    assert str(cfg) in line and "not UTF-8" in line and "0xe9" in line
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- --resume cannot
# change what the run is


@pytest.fixture
def run_of_two_steps(data_env, tmp_path):
    assert train_main(tiny(tmp_path, max_steps=2)) == 0
    return tmp_path


@pytest.mark.parametrize(
    "override",
    [
        "batch_size_per_gpu=4",
        "arch=vit_small",
        "patch_size=8",
        "out_dim=256",
        "global_crops_size=72",
        "local_crops_number=4",
        "epochs=3",
        "lr=0.001",
        "max_images=40",
        "seed=1",
        "precision=bf16",
    ],
)
def test_resume_refuses_overrides_that_change_the_run(run_of_two_steps, capsys, override):
    tmp_path = run_of_two_steps
    ckpt = tmp_path / "workshop_tiny" / "checkpoint.pth"
    before = ckpt.read_bytes()
    capsys.readouterr()
    assert train_main(tiny(tmp_path, max_steps=4) + ["--set", override, "--resume"]) == 2
    line = error_line(capsys)
    key = override.split("=")[0]
    assert (
        f"{key} (" in line
        and "--resume continues the run as it was" in line
        and "max_steps" in line
    )
    assert ckpt.read_bytes() == before


def test_resume_accepts_overrides_that_do_not_change_the_run(run_of_two_steps, capsys):
    tmp_path = run_of_two_steps
    args = tiny(
        tmp_path,
        max_steps=3,
        threads=2,
        log_every=3,
        save_every_steps=1,
        collapse_patience=5,
        batch_size_per_gpu=8,
    )  # batch_size_per_gpu as it was: not a change
    assert train_main(args + ["--set", "device=cpu", "--resume"]) == 0
    ckpt = load_checkpoint(tmp_path / "workshop_tiny" / "checkpoint.pth")
    assert ckpt["step"] == 3 and ckpt["config"]["threads"] == 2 and ckpt["config"]["log_every"] == 3
    assert set(RESUME_CHANGEABLE) <= set(FIELDS)


def test_a_bad_value_in_the_saved_config_says_it_came_from_the_checkpoint(run_of_two_steps, capsys):
    tmp_path = run_of_two_steps
    path = tmp_path / "workshop_tiny" / "checkpoint.pth"
    ckpt = load_checkpoint(path)
    ckpt["config"]["arch"] = "vit_gigantic"
    torch.save(ckpt, path)
    capsys.readouterr()
    assert train_main(tiny(tmp_path, max_steps=4) + ["--resume"]) == 2
    line = error_line(capsys)
    assert f"the config saved in {path}" in line and "vit_gigantic" in line


@pytest.mark.parametrize(
    "key,value,words",
    [
        ("global_crops_size", 50, "multiple"),
        ("dataset", "nonsense", "names the dataset 'nonsense'"),
    ],
)
def test_evaluate_says_a_bad_value_came_from_the_checkpoint(tmp_path, capsys, key, value, words):
    model, _ = build_random_backbone("vit_tiny", 12, 24)
    path = save_checkpoint(
        {
            "teacher": model.state_dict(),
            "config": {"global_crops_size": 24, "dataset": "random", key: value},
        },
        tmp_path / "run.pth",
    )
    assert (
        evaluate.main(["--ckpt", str(path), "--max-train", "20", "--max-val", "10", "--no-probe"])
        == 2
    )
    line = error_line(capsys)
    assert f"the config saved in {path}" in line and words in line


# ----------------------------------------------------------------------------- the run's lock is
# the run's alone


def test_a_forked_child_does_not_inherit_the_run_lock(tmp_path):
    run = RunFolder(tmp_path, "run")
    run.open(continuing=False)
    try:
        fd = run._lock_fd
        pid = os.fork()
        if (
            pid == 0
        ):  # the child (a data-loader worker is one): its copy of the lock descriptor is closed
            try:
                os.fstat(fd)
                os._exit(1)
            except OSError:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (
            "the child still held the lock descriptor"
        )
        os.fstat(fd)  # the parent keeps its own
    finally:
        run.close()


@pytest.mark.slow
def test_a_run_killed_with_minus_9_leaves_no_child_holding_its_lock(tmp_path):
    code = (
        "import os, signal, sys, time; from vitdino_core.training.run_state import RunFolder\n"
        f"RunFolder({str(tmp_path)!r}, 'run').open(continuing=False)\n"
        "child = os.fork()\n"
        "if child == 0:\n    time.sleep(600)\n    os._exit(0)\n"
        "print(child, flush=True); os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    child = int(proc.stdout.readline())
    proc.wait()
    try:
        os.kill(child, 0)  # the worker outlives its parent ...
        run = RunFolder(tmp_path, "run")
        run.open(continuing=False)  # ... yet the lock went with the run
        run.close()
    finally:
        os.kill(child, signal.SIGKILL)


# ----------------------------------------------------------------------------- a full disk while
# checkpointing


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError(
            "[enforce fail at inline_container.cc:603] . unexpected pos 1 vs 0: "
            "No space left on device"
        ),
    ],
)
def test_a_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, error):
    path = save_checkpoint({"w": torch.ones(3)}, tmp_path / "checkpoint.pth")
    before = path.read_bytes()

    def full(*a, **kw):
        raise error

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(
        CheckpointError,
        match=(
            "no space left on the disk while writing .*checkpoint.pth; .* is the "
            "previous checkpoint, unchanged"
        ),
    ):
        save_checkpoint({"w": torch.zeros(3)}, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [
        "checkpoint.pth"
    ]


def test_a_full_disk_during_training_is_one_line_naming_the_checkpoint_kept(
    run_of_two_steps, capsys, monkeypatch
):
    tmp_path = run_of_two_steps
    path = tmp_path / "workshop_tiny" / "checkpoint.pth"
    monkeypatch.setattr(
        torch, "save", lambda *a, **kw: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space"))
    )
    capsys.readouterr()
    assert train_main(tiny(tmp_path, max_steps=3) + ["--resume"]) == 2
    line = error_line(capsys)
    assert (
        "no space left" in line
        and f"{path} is the previous checkpoint" in line
        and "--resume" in line
    )
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 2


# ----------------------------------------------------------------------------- file names of any
# kind


def test_paths_files_round_trip_any_file_name(tmp_path):
    names = [
        "plain/a.jpg",
        "new\nline.jpg",
        "cr\rhere.jpg",
        os.fsdecode(b"caf\xe9.jpg"),
        '"quoted".jpg',
        "sep\u2028arated.jpg",
        "tab\there.jpg",
        "back\\slash.jpg",
    ]
    g = torch.Generator().manual_seed(0)
    tx = torch.randn(len(names), 4, generator=g)  # (N, D)
    d = save_features(
        tmp_path / "f", tx, torch.zeros(len(names)), tx[:2], torch.zeros(2), names, None
    )
    assert load_features(d).train_paths == names
    text = (d / "train_paths.txt").read_bytes()
    assert text.count(b"\n") == len(names) and text.startswith(b"plain/a.jpg\n"), (
        "one row per name, plain ones plain"
    )
    text.decode("utf-8")  # the file itself is UTF-8


def test_save_features_with_non_utf8_and_newline_file_names(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "images"
    names = {"a": [b"caf\xe9.png", b"x.png", b"y.png"], "b": [b"new\nline.png", b"u.png", b"v.png"]}
    for cls, files in names.items():
        (root / cls).mkdir(parents=True)
        for i, name in enumerate(files):
            Image.new("RGB", (24, 24), (40 * i, 100, 200 if cls == "a" else 0)).save(
                os.fsdecode(os.fsencode(root / cls) + b"/" + name), format="PNG"
            )
    feats = tmp_path / "feats"
    assert (
        evaluate.main(
            [
                *TINY_MODEL,
                "--data-path",
                str(root),
                "--holdout",
                "0.5",
                "--image-size",
                "24",
                "--no-probe",
                "--k",
                "1",
                "--save-features",
                str(feats),
            ]
        )
        == 0
    ), capsys.readouterr().err
    f = load_features(feats)
    every = f.train_paths + f.val_paths
    assert len(every) == 6 and all(os.path.isfile(os.fsencode(p)) for p in every)
    assert {os.fsencode(Path(p).name) for p in every} == {
        n for files in names.values() for n in files
    }


# ----------------------------------------------------------------------------- broken features
# folders


def _empty(d):
    np.save(d / "val_features.npy", np.zeros((0, 8), np.float32))
    np.save(d / "val_labels.npy", np.zeros(0, np.int64))
    (d / "val_paths.txt").write_text("")


def _labels(values, dtype=np.int64):
    def write(d):
        y = np.load(d / "train_labels.npy").astype(dtype)
        y[: len(values)] = values
        np.save(d / "train_labels.npy", y)

    return write


BROKEN = {
    "empty arrays": (_empty, "val_features.npy is empty"),
    "a negative label": (_labels([-1]), "holds the label -1"),
    "a label out of range": (_labels([10**9]), "holds the label 1000000000"),
    "float labels": (_labels([0.5], np.float32), "holds float32 values; labels are class indices"),
    "features.json a list": (
        lambda d: (d / "features.json").write_text("[1, 2]"),
        "holds a JSON list",
    ),
    "features.json not JSON": (
        lambda d: (d / "features.json").write_text("{model: x"),
        "is not valid JSON",
    ),
    "paths not UTF-8": (
        lambda d: (d / "train_paths.txt").write_bytes(b"\xff\xfe\n" * 12),
        "train_paths.txt is not a paths file",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_features_folder_is_one_line(tmp_path, capsys, case):
    break_it, words = BROKEN[case]
    feats = small_features(tmp_path)
    break_it(feats)
    before = snapshot_dir(feats)
    assert evaluate.main(["--features", str(feats)]) == 2
    line = error_line(capsys)
    assert words in line, line
    assert snapshot_dir(feats) == before and sorted(p.name for p in tmp_path.iterdir()) == ["feats"]


# ----------------------------------------------------------------------------- odd files and
# impossible configs


@pytest.mark.parametrize("what", ["device", "folder"])
def test_ckpt_that_is_a_device_or_a_folder(tmp_path, capsys, what):
    path = "/dev/null" if what == "device" else str(tmp_path)
    assert evaluate.main(["--ckpt", path, *RANDOM]) == 2
    line = error_line(capsys)
    assert path in line and ("not a regular file" if what == "device" else "is a folder") in line


@pytest.mark.parametrize(
    "extra,words",
    [
        (dict(out_dim=10**12), ["out_dim=1000000000000", "GiB", "memory"]),
        (dict(local_crops_size=96), ["local_crops_size (96) must be <= global_crops_size (48)"]),
        (
            dict(warmup_teacher_temp_epochs=3),
            ["warmup_teacher_temp_epochs (3) must be <= epochs (2)"],
        ),
    ],
)
def test_impossible_configs_are_refused_before_anything_is_written(
    tmp_path, capsys, monkeypatch, extra, words
):
    monkeypatch.setenv(
        "VITDINO_DATA", str(tmp_path / "no-data-needed")
    )  # refused before the data is looked at
    t0 = time.perf_counter()
    assert train_main(tiny(tmp_path / "out", **extra)) == 2
    line = error_line(capsys)
    assert all(w in line for w in words), line
    assert not (tmp_path / "out").exists() and time.perf_counter() - t0 < 30


# ----------------------------------------------------------------------------- file modes


def test_checkpoint_has_the_mode_of_the_runs_other_files(tmp_path):
    old = os.umask(0o027)
    try:
        path = save_checkpoint({"w": torch.ones(2)}, tmp_path / "checkpoint.pth")
        other = tmp_path / "config.yaml"
        other.write_text("x: 1\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(other.stat().st_mode) == 0o640


def test_a_trained_run_s_files_share_one_mode(run_of_two_steps):
    run = run_of_two_steps / "workshop_tiny"
    modes = {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in (run / "checkpoint.pth", run / "config.yaml", run / "metrics.jsonl")
    }
    assert len(set(modes.values())) == 1, modes

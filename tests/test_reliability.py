"""Bad input, interrupted runs, untrusted files and failing ranks: clear errors, nothing lost,
nothing run."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from vitdino_core.checkpoint import (
    BackgroundWriter,
    CheckpointError,
    load_backbone_weights,
    load_checkpoint,
    save_checkpoint,
)
from vitdino_core.data import DatasetNotFoundError, ImageFolderDataset, build_dataset
from vitdino_core.train import main
from vitdino_core.training.config import ConfigError, load_config
from vitdino_core.training.trainer import DINOTrainer, collapse_state
from vitdino_core.vision_transformer import vit_small, vit_tiny

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from test_train import read_metrics, tiny, tiny_overrides  # noqa: E402


@pytest.fixture
def data_env(shared_data, monkeypatch):
    monkeypatch.setenv("VITDINO_DATA", str(shared_data))
    return shared_data


def run_env(shared_data) -> dict:
    return dict(os.environ, VITDINO_DATA=str(shared_data), PYTHONUNBUFFERED="1")


def wait_for_step(metrics: Path, step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.communicate()[1][-2000:]}")
        if metrics.is_file() and any(
            json.loads(ln)["step"] >= step for ln in metrics.read_text().splitlines() if ln.strip()
        ):
            return
        time.sleep(0.2)
    raise AssertionError(f"no step {step} within {timeout} s")


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "override, key",
    [
        ("lr=-0.1", "lr"),
        ("learning_rate=0.1", "learning_rate"),
        ("epochs=ten", "epochs"),
        ("teacher_temp=0", "teacher_temp"),
        ("global_crops_size=0", "global_crops_size"),
        ("local_crops_number=-2", "local_crops_number"),
        ("local_crops_size=8", "local_crops_size"),
        ("global_crops_scale=[0.5, 0.2]", "global_crops_scale"),
        ("momentum_teacher=1.5", "momentum_teacher"),
        ("arch=vit_huge", "arch"),
        ("compile=maybe", "compile"),
    ],
)
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config("workshop_tiny", [override])


def test_crop_smaller_than_patch_suggests_sizes():
    with pytest.raises(
        ConfigError,
        match=r"global_crops_size 100 is not a multiple of the patch size \(12\); use 96 or 108",
    ):
        load_config("workshop_tiny", ["global_crops_size=100"])
    with pytest.raises(
        ConfigError, match=r"local_crops_size 8 is smaller than one patch \(12\); use 12 or 24"
    ):
        load_config("workshop_tiny", ["local_crops_size=8"])


def test_batch_larger_than_dataset(data_env, tmp_path):
    cfg = load_config("workshop_tiny", tiny_overrides(tmp_path, max_images=6, batch_size_per_gpu=8))
    with pytest.raises(
        ConfigError, match=r"batch_size_per_gpu=8 is larger than the dataset \(6 images\)"
    ):
        DINOTrainer(cfg, quiet=True)


def test_missing_empty_and_bad_dataset_folders(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError, match="not found"):
        ImageFolderDataset(tmp_path / "nowhere")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetNotFoundError, match="no images found"):
        ImageFolderDataset(tmp_path / "empty")
    monkeypatch.setenv("VITDINO_DATA", str(tmp_path))
    with pytest.raises(
        DatasetNotFoundError, match=r"(?s)imagenette-96.*VITDINO_DATA.*download imagenette"
    ):
        build_dataset("imagenette", "train")


def test_corrupt_and_truncated_images_are_skipped_and_reported(tmp_path):
    folder = tmp_path / "imgs" / "cls"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (32, 32), (80 * i, 0, 0)).save(folder / f"ok{i}.jpg")
    good = (folder / "ok0.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "garbage.png").write_bytes(b"not a png at all")
    ds = ImageFolderDataset(tmp_path / "imgs")
    with pytest.warns(UserWarning) as caught:
        images = [ds[i][0] for i in range(len(ds))]
    assert all(img.size == (32, 32) for img in images)
    reported = " ".join(str(w.message) for w in caught)
    assert "truncated.jpg" in reported and "garbage.png" in reported
    assert sorted(p.name for p in ds.bad_files) == ["garbage.png", "truncated.jpg"]


def test_checkpoint_of_another_architecture_lists_the_mismatch(tmp_path):
    sd = vit_tiny(patch_size=16).state_dict()
    with pytest.raises(
        CheckpointError, match=r"(?s)shape mismatches.*blocks\.0\.attn\.qkv\.weight"
    ):
        load_backbone_weights(vit_small(patch_size=16), sd)
    sd.pop("norm.weight")
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): norm.weight"):
        load_backbone_weights(vit_tiny(patch_size=16), sd)


def test_resume_from_another_architecture_is_a_clear_error(data_env, tmp_path):
    assert main(tiny(tmp_path, max_steps=1)) == 0
    ckpt = tmp_path / "workshop_tiny" / "checkpoint.pth"
    other = DINOTrainer(
        load_config("workshop_tiny", tiny_overrides(tmp_path / "x", arch="vit_small")), quiet=True
    )
    with pytest.raises(CheckpointError, match=r"(?s)trained with arch=vit_tiny.*size mismatch"):
        other.resume(ckpt)


# ----------------------------------------------------------------------------- untrusted files


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump({"teacher": _Exploit(marker)}, f)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(bad)
    assert not marker.exists(), "the pickle's code ran"
    torch.save({"teacher": {"w": torch.ones(2)}, "note": "plain data"}, tmp_path / "ok.pth")
    assert torch.equal(load_checkpoint(tmp_path / "ok.pth")["teacher"]["w"], torch.ones(2))


def test_yaml_with_python_tags_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.yaml"
    bad.write_text(f"run_name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    assert not marker.exists()


def test_paths_from_configs_are_never_run_by_a_shell(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    cfg = load_config(
        "workshop_tiny",
        ["dataset=folder", f"data_path=$(touch {marker})", f"output_dir={tmp_path}"],
    )
    with pytest.raises(DatasetNotFoundError):
        DINOTrainer(cfg, quiet=True)
    assert not marker.exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = save_checkpoint({"w": torch.randn(1000)}, tmp_path / "c.pth")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="could not read"):
        load_checkpoint(path)


# ----------------------------------------------------------------------------- interrupted runs


def test_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint({"version": 1, "w": torch.zeros(10)}, tmp_path / "checkpoint.pth")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"version": 2, "w": torch.ones(10)}, path)
    assert load_checkpoint(path)["version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"], (
        "the temporary file is cleaned up"
    )


def test_background_writer_saves_the_state_as_it_was_submitted(tmp_path, monkeypatch):
    """The state is copied at submit: a training step changing the tensors in place right after does
    not reach the file; writes land in order; a failed write is raised by the next wait, not lost.
    """
    w = torch.zeros(1000)
    state = {"step": 1, "model": {"w": w}, "groups": [{"lr": 0.1, "params": [0, 1]}]}
    writer = BackgroundWriter()
    writer.submit(state, [tmp_path / "a.pth", tmp_path / "b.pth"])
    w.add_(1.0)  # the next step, while the file may still be being written
    state["groups"][0]["lr"] = 0.2
    writer.submit(
        {**state, "step": 2}, [tmp_path / "a.pth"]
    )  # waits for the first write, then starts
    writer.wait()
    first, second = load_checkpoint(tmp_path / "b.pth"), load_checkpoint(tmp_path / "a.pth")
    assert (
        first["step"] == 1
        and torch.all(first["model"]["w"] == 0)
        and first["groups"][0]["lr"] == 0.1
    )
    assert (
        second["step"] == 2
        and torch.all(second["model"]["w"] == 1)
        and second["groups"][0]["lr"] == 0.2
    )

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    writer.submit({"step": 3}, [tmp_path / "a.pth"])
    with pytest.raises(OSError, match="disk full"):
        writer.wait()
    assert load_checkpoint(tmp_path / "a.pth")["step"] == 2  # the previous file is intact
    writer.wait()  # the error is raised once


@pytest.mark.slow
def test_sigkill_while_writing_never_corrupts_the_checkpoint(tmp_path):
    """A process rewrites a 40 MB checkpoint in a loop; SIGKILL at several moments; the file always
    loads."""
    path = tmp_path / "checkpoint.pth"
    code = (
        "import sys, torch; from vitdino_core.checkpoint import save_checkpoint\ni = 0\nwhile"
        " True:\n    save_checkpoint({'version': i, 'w': torch.full((10_000_000,), float(i))},"
        f" {str(path)!r}); i += 1\n    print(i, flush=True)\n"
    )
    for delay in (0.3, 0.9, 1.7):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # at least one complete checkpoint exists
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = load_checkpoint(path)
        assert torch.all(ckpt["w"] == ckpt["version"])


@pytest.mark.slow
def test_sigint_saves_then_resume_finishes(data_env, tmp_path):
    args = tiny(tmp_path, max_steps=40, epochs=8)
    metrics = tmp_path / "workshop_tiny" / "metrics.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitdino_core.train", *args],
        cwd=REPO,
        env=run_env(data_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_step(metrics, 3, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "SIGINT received" in err and "--resume" in err
    stopped = load_checkpoint(tmp_path / "workshop_tiny" / "checkpoint.pth")["step"]
    assert 3 <= stopped < 40
    assert max(r["step"] for r in read_metrics(tmp_path / "workshop_tiny")) == stopped, (
        "saved at the step it stopped"
    )
    assert main(tiny(tmp_path, max_steps=stopped + 2, epochs=8) + ["--resume"]) == 0
    assert load_checkpoint(tmp_path / "workshop_tiny" / "checkpoint.pth")["step"] == stopped + 2


@pytest.mark.slow
def test_sigkill_resumes_from_the_last_checkpoint(data_env, tmp_path):
    args = tiny(tmp_path, max_steps=40, epochs=8, save_every_steps=2)
    run = tmp_path / "workshop_tiny"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitdino_core.train", *args],
        cwd=REPO,
        env=run_env(data_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_step(run / "metrics.jsonl", 5, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    saved = load_checkpoint(run / "checkpoint.pth")["step"]
    assert saved >= 4 and saved % 2 == 0
    assert (
        main(tiny(tmp_path, max_steps=saved + 1, epochs=8, save_every_steps=2) + ["--resume"]) == 0
    )
    assert [r["step"] for r in read_metrics(run)] == list(range(1, saved + 2)), (
        "steps after the checkpoint are redone once"
    )


# ----------------------------------------------------------------------------- numerical faults


def test_collapse_is_detected_and_warned(data_env, tmp_path):
    """A teacher temperature of 50 makes the targets uniform: the run warns (log
    and progress bar)."""
    with pytest.warns(UserWarning, match=r"collapsed \(uniform\)"):
        assert (
            main(
                tiny(
                    tmp_path,
                    max_steps=3,
                    teacher_temp=50.0,
                    warmup_teacher_temp=50.0,
                    collapse_patience=2,
                )
            )
            == 0
        )
    flags = [r["collapse"] for r in read_metrics(tmp_path / "workshop_tiny")]
    assert flags == ["", "uniform", "uniform"]
    assert collapse_state({"kl_uniform": 2.0, "batch_entropy": 0.01}) == "one-dim"
    assert collapse_state({"kl_uniform": 2.0, "batch_entropy": 3.0}) == ""


# ----------------------------------------------------------------------------- several processes


def torchrun(out: Path, shared_data: Path, *extra: str, port: int) -> subprocess.CompletedProcess:
    overrides = tiny_overrides(
        out / "runs", max_images=32, batch_size_per_gpu=4, max_steps=4, device="cpu"
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        str(REPO / "tests" / "dist_worker.py"),
        str(out),
        *extra,
        *overrides,
    ]
    return subprocess.run(
        cmd, cwd=REPO, env=run_env(shared_data), capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_two_processes_end_with_identical_weights(shared_data, tmp_path):
    out = torchrun(tmp_path, shared_data, port=29611)
    assert out.returncode == 0, out.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert a["step"] == b["step"] == 4
    for part in ("student", "teacher"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert torch.equal(a["center"], b["center"])
    assert (tmp_path / "runs" / "workshop_tiny" / "checkpoint.pth").is_file()


@pytest.mark.slow
def test_two_processes_with_compiled_backbones_stay_in_sync(shared_data, tmp_path):
    """compile=true under DDP: the compiled backbones sit inside the DDP-wrapped student, whose
    gradient hooks must still average every rank's gradients; the weights match an eager run of the
    same steps (without stochastic depth, whose random masks compiled code draws from another
    generator)."""
    out = torchrun(
        tmp_path / "compiled", shared_data, "compile=true", "drop_path_rate=0", port=29613
    )
    assert out.returncode == 0, out.stderr[-3000:]
    eager = torchrun(tmp_path / "eager", shared_data, "drop_path_rate=0", port=29614)
    assert eager.returncode == 0, eager.stderr[-3000:]
    (a, b), (e, _) = (
        (torch.load(tmp_path / run / f"rank{r}.pt", weights_only=True) for r in (0, 1))
        for run in ("compiled", "eager")
    )
    assert a["step"] == b["step"] == 4
    for part in ("student", "teacher"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
        assert max((a[part][k] - e[part][k]).abs().max().item() for k in a[part]) < 1e-4, part


@pytest.mark.slow
def test_a_failing_rank_fails_the_whole_job(shared_data, tmp_path):
    t0 = time.time()
    out = torchrun(tmp_path, shared_data, "--fail-rank", "1", port=29612)
    assert out.returncode != 0
    assert "rank 1 fails on purpose" in out.stderr
    assert time.time() - t0 < 240, "the job must not hang"

"""A run's folder on disk: its files, the config a resumed run reads, the lock, and stopping on a
signal.

    <output_dir>/<run_name>/
        checkpoint.pth    DINOTrainer.state_dict(): student, teacher, optimiser, DINO centre,
                          step, RNG states, config
        metrics.jsonl     one JSON record per `log_every` steps
        config.yaml       the run's full config
        .lock             held by the process that writes the folder

Rules: a new run never writes into a folder that already holds a checkpoint (continue it with
`--resume`, or pick another `run_name`); `--resume` with nothing to resume is an error; two
processes never write one folder at once (the lock is an `flock`, which the system drops when its
process dies, so a killed run never blocks the next one; forked children such as data-loader workers
close their copy of it, so it dies with the run); a checkpoint is never written with non-finite
values; `--resume` continues the run as it was (`RESUME_CHANGEABLE` lists what it may change). Under
torchrun only rank 0 touches the folder; the other ranks learn its verdict.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

import torch
import torch.distributed as dist

from ..checkpoint import CheckpointError, load_checkpoint
from ..cli import UserError
from .config import ConfigError, TrainConfig, make_config, parse_override, save_config
from .device import DistEnv

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None


class RunFolderError(UserError):
    """The run folder cannot be used as asked: it holds another run, holds nothing to resume, or is
    not writable."""


_HELD_LOCKS: set[int] = set()  # descriptors of the run locks this process holds


def _close_locks_in_child() -> None:
    """In a forked child (a data-loader worker): close the inherited lock descriptors. An flock
    belongs to the open file, shared by every copy of the descriptor: a worker outliving a killed
    run would hold the run's lock."""
    for fd in _HELD_LOCKS:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_locks_in_child)


# ----------------------------------------------------------------------------- the folder


class RunFolder:
    """<output_dir>/<run_name>/ and the rules for writing it (rank 0 writes; every rank asks)."""

    def __init__(self, output_dir: str | os.PathLike, run_name: str, env: DistEnv | None = None):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / run_name
        self.env = env or DistEnv()
        self.checkpoint = self.path / "checkpoint.pth"
        self.metrics = self.path / "metrics.jsonl"
        self.config = self.path / "config.yaml"
        self.lock_file = self.path / ".lock"
        self._lock_fd: int | None = None

    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file()

    def place_problem(self) -> str:
        """'' if the folder can be created and written, else why not (a file in the way, no
        permission)."""
        existing = next(
            p for p in (self.path, *self.path.parents) if p.exists()
        )  # '.' or '/' at the latest
        if not existing.is_dir():
            what = "the run folder" if existing == self.path else "output_dir"
            return (
                f"{what} {existing} is a file, not a folder; set output_dir to a folder "
                "(--set output_dir=...) or pick another run_name"
            )
        if not os.access(existing, os.W_OK | os.X_OK):
            return (
                f"cannot write to {existing} (permission denied); set output_dir to a folder you"
                " can write to (--set output_dir=...)"
            )
        return ""

    def checkpoint_problem(self, resume: bool) -> str:
        """'' if a new run (resume=False) or a resumed one (resume=True) may start here,
        else why not."""
        if resume and not self.has_checkpoint():
            return (
                f"--resume: there is no checkpoint to resume in {self.path}; "
                "drop --resume to start a new run there (or check output_dir and run_name)"
            )
        if not resume and self.has_checkpoint():
            return (
                f"{self.path} already holds a run (checkpoint.pth): add --resume to continue it, or"
                " start a new one with another name (--set run_name=...) or after deleting that"
                " folder"
            )
        return ""

    def check(self, resume: bool) -> None:
        """Raise RunFolderError (on every rank) if a run cannot start here; rank 0 decides."""
        problem = (
            (self.place_problem() or self.checkpoint_problem(resume)) if self.env.is_main else ""
        )
        raise_shared(problem, self.env, RunFolderError)

    def open(self, continuing: bool) -> None:
        """Create the folder and take its lock (rank 0; kept if already held); then, unless this run
        is `continuing` (it wrote or loaded a checkpoint already), refuse a folder that holds a
        checkpoint. Every rank raises alike."""
        problem = ""
        if self.env.is_main:
            problem = (
                "" if self._lock_fd is not None else self.place_problem() or self._create_and_lock()
            )
            if not problem and not continuing:
                problem = self.checkpoint_problem(resume=False)
            if problem:
                self.close()
        raise_shared(problem, self.env, RunFolderError)

    def _create_and_lock(self) -> str:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            return (
                f"cannot create the run folder {self.path} ({e.strerror}); set output_dir to a"
                " folder you can write to"
            )
        self._lock_fd = fd
        if fcntl is None:
            return ""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            self._lock_fd = None
            os.close(fd)
            return (
                f"{self.path} is being written by {holder}; wait for it to finish, "
                "or give this run another name (--set run_name=...)"
            )
        _HELD_LOCKS.add(fd)
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            f"pid {os.getpid()} on"
            f" {os.uname().nodename if hasattr(os, 'uname') else 'this machine'}".encode(),
            0,
        )
        return ""

    def close(self) -> None:
        """Release the lock (the file stays: removing it would race with a process about
        to take it)."""
        if self._lock_fd is not None:
            _HELD_LOCKS.discard(self._lock_fd)
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def begin(self, step: int, cfg: TrainConfig) -> None:
        """Write config.yaml and drop metrics logged after `step` (all of them for a new run): they
        will be logged again."""
        if not self.env.is_main:
            return
        save_config(cfg, self.config)
        if self.metrics.is_file():
            keep = [
                ln
                for ln in self.metrics.read_text().splitlines()
                if ln.strip() and json.loads(ln)["step"] <= step
            ]
            self.metrics.write_text("".join(ln + "\n" for ln in keep))

    def log(self, record: dict) -> None:
        if self.env.is_main:
            with open(self.metrics, "a") as f:
                f.write(json.dumps(record) + "\n")


def raise_shared(problem: str, env: DistEnv, error: type[Exception]) -> None:
    """Raise `error(problem)` on every rank when rank 0 found a problem (torchrun: all ranks stop
    alike)."""
    if env.distributed and dist.is_initialized():
        box = [problem]
        dist.broadcast_object_list(box, src=0)
        problem = box[0]
    if problem:
        raise error(problem)


# ----------------------------------------------------------------------------- resuming

# what --resume may change: where and how fast the steps run, and the bookkeeping around them. Every
# other key fixes the model, the data, the random streams or a schedule laid over `epochs` x steps
# per
# epoch (lr, weight decay, teacher momentum and temperature): changing one would make another run,
# or
# re-index the data position and every schedule. `precision` is fixed too: it is the arithmetic of
# every step (and fp16 saves a loss scale the others lack); `device` is not: a run may move
# machines.
RESUME_CHANGEABLE = (
    "fast",
    "threads",
    "num_workers",
    "max_steps",
    "log_every",
    "save_every_steps",
    "saveckp_freq",
    "collapse_patience",
    "device",
    "compile",
    "compile_mode",
    "grad_checkpointing",
    "gpu_augment",
    "download",
    "output_dir",
    "run_name",
)


def resume_config(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Resuming uses the run's own config (from its checkpoint) with only the command line's --set
    on top; a --set that would change what the run is (a key not in RESUME_CHANGEABLE) is
    refused, naming it."""
    run = RunFolder(cfg.output_dir, cfg.run_name)
    problem = run.checkpoint_problem(resume=True)
    if problem:
        raise RunFolderError(problem)
    saved = load_checkpoint(run.checkpoint).get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{run.checkpoint} has no config; cannot resume it")
    try:
        was = make_config(saved)
    except ConfigError as e:
        raise ConfigError(f"the config saved in {run.checkpoint}: {e}") from None
    asked = dict(parse_override(o) for o in overrides)
    now = make_config(dict(saved) | asked)
    fixed = [
        f"{k} ({getattr(was, k)} -> {getattr(now, k)})"
        for k in asked
        if k not in RESUME_CHANGEABLE and getattr(now, k) != getattr(was, k)
    ]
    if fixed:
        raise RunFolderError(
            f"--resume continues the run as it was; {', '.join(fixed)} would change its model, data"
            " or schedules: drop that --set, or start a new run (another run_name; init_weights="
            f" starts from this run's weights). --resume may change {', '.join(RESUME_CHANGEABLE)}"
        )
    return now


# ----------------------------------------------------------------------------- signals


class StopSignals:
    """Ctrl-C or SIGTERM asks the loop to finish its step, save and stop; a second Ctrl-C stops at
    once.

    Installed only in the main thread (signal handlers cannot be set elsewhere); `requested()` is
    the same answer on every rank."""

    def __init__(self, env: DistEnv, device: torch.device):
        self.env, self.device = env, device
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # the second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum
        if self.env.is_main:
            print(
                f"\n{signal.Signals(signum).name} received: finishing this step, saving, then"
                " stopping (press Ctrl-C again to stop at once)",
                file=sys.stderr,
            )

    def requested(self) -> bool:
        flag = self.signum is not None
        if self.env.distributed:
            t = torch.tensor(int(flag), device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t)
        return flag

# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · Scaling up: configs, the command line, many processes, GPUs
#
# In notebook 06 we trained DINO inside a notebook, for a few minutes on a CPU. The published DINO
# models took days on dozens of GPUs. The *algorithm* is the same; what changes is everything around
# it:
#
# ```
# notebook 06                     a real run
# ────────────────────────────    ─────────────────────────────────────────────────────────────────
# overrides in a Python dict   -> a YAML config, validated, saved next to the run
# trainer.fit() in a cell      -> python -m vitdino_core.train --config ... --set key=value
# run until the cell ends      -> checkpoints every N steps, --resume after a crash or a time limit
# 1 process, fp32, 2 CPU cores -> torchrun: N processes (DDP), bf16 autocast, torch.compile, GPUs
# a kNN number in a cell       -> python -m vitdino_core.evaluate --ckpt ...
# ```
#
# This notebook runs each of these for real, at toy size, on this CPU: the shipped configs, the
# training command line, resuming, two processes with `torchrun`, and the evaluation command line.
# It also *measures* what mixed precision, `torch.compile` and gradient checkpointing do here, and
# explains what they do on a GPU. No new piece of DINO is built; checks are assertions on what the
# runs produce.

# %%
import contextlib
import io
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch.profiler import ProfilerActivity, profile

from vitdino_core import DINOHead, load_checkpoint, vit_base, vit_small, vit_tiny
from vitdino_core.data import REPO_ROOT
from vitdino_core.evaluate import parse_args as evaluate_args
from vitdino_core.notebook import native_stderr_silenced, save_figure, setup
from vitdino_core.train import main as train_main
from vitdino_core.training.config import CONFIG_DIR, ConfigError, load_config, shipped_configs
from vitdino_core.training.trainer import DINOTrainer

env = setup(seed=0)
FAST = env.fast  # True under CI or VITDINO_FAST=1: fewer steps and images, every cell still runs
# the runs of this notebook, outside the repository
RUNS = Path(tempfile.mkdtemp(prefix="vitdino_09_"))
print("runs go to", RUNS)


def shell(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command as a learner would in a terminal.

    Show it and its stdout; fail loudly if it fails.
    """
    print(
        "$",
        " ".join(a if " " not in a else repr(a) for a in args).replace(sys.executable, "python"),
    )
    t0 = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    print(out.stdout.strip())
    print(f"[exit code {out.returncode}, {time.perf_counter() - t0:.0f} s]")
    if out.returncode != 0:
        print(out.stderr[-3000:])
    return out


# %% [markdown]
# ## 1. The shipped configs
#
# A training run is described by one flat config, `TrainConfig`, whose keys are the official DINO
# argument names (`out_dim`, `momentum_teacher`, `warmup_teacher_temp_epochs`, `local_crops_number`,
# ...). Four are shipped with the package, in `vitdino_core/configs/`:

# %%
names = shipped_configs()
configs = {name: load_config(name) for name in names}
print(CONFIG_DIR)
for name in names:
    first = (CONFIG_DIR / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
    print(f"  {name + '.yaml':22s} {first}")

# %% [markdown]
# Side by side, the keys in which they differ. (`lr` is given for a total batch of 256 and scaled
# linearly with the real total batch, as in DINO; the table shows the peak learning rate on one GPU
# or process.)

# %%
dicts = {n: c.to_dict() for n, c in configs.items()}
differ = [k for k in dicts[names[0]] if len({json.dumps(d[k]) for d in dicts.values()}) > 1]
rows = [(k, [dicts[n][k] for n in names]) for k in differ]
rows.append(
    ("peak lr on 1 process", [f"{c.lr * c.batch_size_per_gpu / 256:.2e}" for c in configs.values()])
)
rows.append(("crops per image", [c.ncrops for c in configs.values()]))
width = max(len(k) for k, _ in rows) + 2
print("".join([f"{'key':{width}s}"] + [f"{n:>18s}" for n in names]))
for key, values in rows:
    print("".join([f"{key:{width}s}"] + [f"{str(v):>18s}" for v in values]))
assert "workshop_tiny" in names and "dino_vitb12" in names

# %% [markdown]
# * `workshop_tiny`: the notebook run of 06, minutes on a laptop CPU (ViT-tiny/12, 72 px global
#   crops);
# * `imagenette_cpu`: the longest run that makes sense on a CPU (hours);
# * `imagenette_small`: ViT-S/8 on Imagenette on one GPU, with the crops made on the GPU
#   (`gpu_augment`);
# * `dino_vitb12`: DINO's ViT-B/16 ImageNet recipe with 12 px patches, for many GPUs; its crops are
#   made on the GPU too, from whole images of any size (shrunk to at most 512 px and padded to one
#   batch shape).
#
# ## 2. Loading, overriding, validating
#
# `load_config(name_or_path, overrides)` reads a shipped name or any YAML file, applies `key=value`
# overrides (values are read as YAML: numbers, `true`, lists) and **validates** the result. Keys you
# do not give take the `TrainConfig` defaults (DINO's ViT-S/16 ImageNet values).

# %%
base = load_config("workshop_tiny")
cfg = load_config(
    "workshop_tiny", ["epochs=5", "lr=1e-3", "global_crops_scale=[0.3, 1.0]", "compile=true"]
)
print(
    {k: (base.to_dict()[k], v) for k, v in cfg.to_dict().items() if v != base.to_dict()[k]},
    "(before, after)",
)

my_yaml = RUNS / "my_run.yaml"
my_yaml.write_text(
    "run_name: my_run\narch: vit_tiny\npatch_size: 8\nglobal_crops_size: 64\nlocal_crops_size: 32\n"
    "dataset: folder\ndata_path: /path/to/my/photos\nepochs: 10\n"
)
mine = load_config(my_yaml)
print(
    f"{my_yaml.name}: arch {mine.arch}/{mine.patch_size}, "
    f"crops {mine.global_crops_size}/{mine.local_crops_size}, "
    f"out_dim {mine.out_dim} (default), lr {mine.lr} (default)"
)
assert cfg.epochs == 5 and cfg.global_crops_scale == (0.3, 1.0) and mine.out_dim == 65536

# %% [markdown]
# A config that cannot work fails **before** anything is built, with a message that names the key
# and the fix. A typo in a key, a crop size that is not a multiple of the patch, a word where a
# number belongs, an unknown precision, a warm-up longer than training:

# %%
bad = [
    ["lrate=1e-3"],
    ["global_crops_size=70"],
    ["epochs=two"],
    ["precision=fp8"],
    ["epochs=2", "warmup_epochs=5"],
]
for overrides in bad:
    try:
        load_config("workshop_tiny", overrides)
    except ConfigError as e:
        print(f"{' '.join(overrides):28s} -> ConfigError: {e}")
        key = overrides[-1].split("=")[0]
        assert key.rstrip("e") in str(e) or key in str(e)
    else:
        raise AssertionError(f"{overrides} should have been refused")

# %% [markdown]
# ## 3. The training command line
#
# `python -m vitdino_core.train` is the same `DINOTrainer` as notebook 06, started from a config:

# %%
with contextlib.redirect_stdout(io.StringIO()) as help_text, contextlib.suppress(SystemExit):
    train_main(["--help"])
print(help_text.getvalue())

# %% [markdown]
# We run it for real in a terminal (a subprocess), with `workshop_tiny` shrunk by `--set` overrides
# to a few steps. Everything lands in `<output_dir>/<run_name>/`. The run's summary (on stderr)
# names the model, the device and the **path**: `fast` (the config key `fast: true`, the default:
# the speed tricks of section 5, the same values in less time) or `plain` (`--set fast=false`:
# every module exactly as notebooks 01-03 build it).

# %%
batch = 16 if FAST else 32
tiny = [
    "--set",
    f"output_dir={RUNS}",
    "--set",
    "max_images=256",
    "--set",
    f"batch_size_per_gpu={batch}",
    "--set",
    "log_every=2",
]
cli = shell(
    [
        sys.executable,
        "-m",
        "vitdino_core.train",
        "--config",
        "workshop_tiny",
        *tiny,
        "--set",
        "max_steps=2",
    ]
)
assert cli.returncode == 0, cli.stderr[-2000:]
result = json.loads(cli.stdout.strip().splitlines()[-1])
run_dir = Path(result["run_dir"])
print("\n".join(ln for ln in cli.stderr.splitlines() if ln.startswith(("model:", "path:"))))
for f in sorted(run_dir.iterdir()):
    print(f"  {f.name:18s} {f.stat().st_size / 1e6:8.2f} MB")
assert {"checkpoint.pth", "metrics.jsonl", "config.yaml"} <= {f.name for f in run_dir.iterdir()}
assert "\npath:   fast (" in cli.stderr  # fast: true, the default

# %% [markdown]
# * `config.yaml`: the full config of the run, every key, so the run can be repeated exactly;
# * `metrics.jsonl`: one JSON record per `log_every` steps (the curves of notebook 06 are drawn from
#   these);
# * `checkpoint.pth`: student, teacher, optimiser, DINO centre, step, RNG states and config. It is
#   written to a temporary file and renamed, so a crash never leaves half a checkpoint, and it holds
#   only tensors and plain data, so it loads with `torch.load(..., weights_only=True)`.

# %%
print((run_dir / "config.yaml").read_text()[:300], "...")
first_record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
print({k: round(v, 4) if isinstance(v, float) else v for k, v in first_record.items()})
ckpt = load_checkpoint(run_dir / "checkpoint.pth")
print("checkpoint keys:", list(ckpt), "| step", ckpt["step"])
assert ckpt["step"] == 2

# %% [markdown]
# ## 4. Resuming
#
# Long runs get interrupted: a time limit on a cluster, a preempted cloud machine, Ctrl-C. The same
# command with `--resume` continues from `checkpoint.pth`, with the run's own saved config (only the
# new `--set` values on top). The checkpoint carries the optimiser state, the centre and the random
# number generators, and the data order depends only on (seed, epoch), so a resumed run continues
# **exactly** as an uninterrupted one would (the test suite checks this weight for weight). Here we
# continue the run of section 3 from step 2:

# %%
resume_to = 4 if FAST else 16
res = shell(
    [
        sys.executable,
        "-m",
        "vitdino_core.train",
        "--config",
        "workshop_tiny",
        *tiny,
        "--set",
        f"max_steps={resume_to}",
        "--resume",
    ]
)
assert res.returncode == 0, res.stderr[-2000:]
resumed = [ln for ln in res.stderr.splitlines() if ln.startswith("resumed")]
print(resumed[0] if resumed else "")
records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
print("steps in metrics.jsonl:", [r["step"] for r in records])
assert load_checkpoint(run_dir / "checkpoint.pth")["step"] == resume_to
assert [r["step"] for r in records] == list(range(2, resume_to + 1, 2))

# %% [markdown]
# ## 5. Throughput on this machine
#
# Every record has `images_per_s`, measured over the steps since the previous record. The first
# record includes the start-up (the first step is slow: memory allocation, the data loader's first
# batches); the later ones are the steady state. From it we can say how long real runs of these
# configs would take **on this CPU**. (On a machine that is busy with other work, expect much lower
# numbers than on an idle one: they are measured, not quoted.)

# %%
steady = [r["images_per_s"] for r in records[1:]]
ips = sum(steady) / len(steady)
print(
    f"workshop_tiny (batch {batch}) on this machine: {ips:.1f} images/s "
    f"({torch.get_num_threads()} threads; "
    f"records: {[round(r['images_per_s'], 1) for r in records]})"
)
for name in ("workshop_tiny", "imagenette_cpu"):
    c = configs[name]
    n_images = 9469  # imagenette-96 train
    print(
        f"  {name:15s}: one epoch of Imagenette ~{n_images / ips / 60:5.1f} min, "
        f"all {c.epochs} epochs ~{c.epochs * n_images / ips / 3600:5.1f} h"
        + ("  (different crop sizes and batch: a rough guide)" if name != "workshop_tiny" else "")
    )
assert ips > 0

# %% [markdown]
# ### Where a step's time goes
#
# Images per second says *how fast*; a profiler says *where the time goes*. `torch.profiler` records
# every operator a step runs, with its own time. We run two `train_step`s of `workshop_tiny` (one
# batch from its real loader) under it and sort the operators into four kinds: matrix products
# (`mm`, `addmm`, `bmm`: every linear layer, forward and backward), fused attention
# (`scaled_dot_product_attention`), the optimiser, clipping and the EMA (`_fused_adamw_` and the
# `_foreach_` calls), and everything else (GELU, LayerNorm, residual additions, copies, the loss).

# %%
MATMULS = {"aten::mm", "aten::addmm", "aten::bmm"}


def kind(op: str) -> str:
    if op in MATMULS:
        return "matmul"
    if "scaled_dot_product" in op:
        return "attention"
    return "optimiser + EMA" if ("adam" in op or "_foreach_" in op) else "everything else"


prof_trainer = DINOTrainer(
    load_config(
        "workshop_tiny",
        [
            f"output_dir={RUNS}",
            "run_name=profile",
            f"max_images={4 * batch}",  # 4 steps per epoch: enough for the 5 steps below
            f"batch_size_per_gpu={batch}",
            "num_workers=0",
        ],
    ),
    quiet=True,
)
prof_crops = next(iter(prof_trainer.loader))[0]  # [(2B, 3, 72, 72), (4B, 3, 36, 36)]
prof_trainer.train_step(*prof_crops)  # warm-up: the first step allocates
t0 = time.perf_counter()
for _ in range(2):
    prof_trainer.train_step(*prof_crops)
live_step_s = (
    time.perf_counter() - t0
) / 2  # timed without the profiler, whose own overhead grows with each operator call
with (
    native_stderr_silenced(),
    profile(activities=[ProfilerActivity.CPU]) as prof,
):  # (the profiler's C++ log lines)
    for _ in range(2):
        prof_trainer.train_step(*prof_crops)
live = {}  # kind -> seconds per step, the operators' own time
for e in prof.key_averages():
    if e.key.startswith("aten::"):
        k = kind(e.key)
        live[k] = live.get(k, 0.0) + e.self_cpu_time_total / 1e6 / 2
top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:6]
print("largest operators:", ", ".join(f"{e.key} {e.self_cpu_time_total / 2e3:.0f} ms" for e in top))
print({k: f"{v * 1e3:.0f} ms" for k, v in live.items()})
assert live["matmul"] > 0 and live["attention"] > 0

# %% [markdown]
# Next to it, the committed profile of the CPU anchor (`benchmarks/train_step.py --compare --paired
# --profile 2`: a ViT-S/16 with a 65536-prototype head, batch 8, 2 x 224 + 6 x 96 crops, fp32,
# measured on a 2-core AMD EPYC), for this project's step and for the official DINO code's way of
# running the same maths. The official-style step computes attention explicitly: its attention is in
# its `bmm` (matmul) and softmax (everything else) rows.

# %%
anchor_run = json.loads(
    (REPO_ROOT / "benchmarks" / "results" / "cpu-zen4_step-profile" / "latest.json").read_text()
)
GROUPS = {"matmul": "matmul", "attention": "attention", "optimizer_ema": "optimiser + EMA"}


def grouped(by_kind: dict) -> dict:
    out = {}
    for k, v in by_kind.items():
        group = GROUPS.get(k, "everything else")
        out[group] = out.get(group, 0.0) + v
    return out


bars = {
    f"workshop_tiny, batch {batch}\n(this machine, now)": live,
    "ViT-S/16 anchor, batch 8\n(this project's step)": grouped(
        anchor_run["ours"]["profile"]["by_kind_s"]
    ),
    "ViT-S/16 anchor, batch 8\n(official-style step)": grouped(
        anchor_run["reference"]["profile"]["by_kind_s"]
    ),
}
timed = [
    live_step_s,
    anchor_run["ours"]["step_s_median"],
    anchor_run["reference"]["step_s_median"],
]  # without the profiler
order = ["matmul", "attention", "everything else", "optimiser + EMA"]
colours = {
    "matmul": "tab:blue",
    "attention": "tab:orange",
    "everything else": "tab:gray",
    "optimiser + EMA": "tab:green",
}
fig, ax = plt.subplots(figsize=(10.5, 3.4))
for row, (label, secs) in enumerate(bars.items()):
    total, left = sum(secs.values()), 0.0
    for k in order:
        share = 100 * secs.get(k, 0.0) / total
        ax.barh(row, share, left=left, color=colours[k], label=k if row == 0 else None)
        if share > 6:
            ax.text(left + share / 2, row, f"{share:.0f}%", ha="center", va="center", color="white")
        left += share
    ax.text(101, row, f"step {timed[row]:.2f} s", va="center")
    print(
        f"{label.replace(chr(10), ' '):55s} step {timed[row]:5.2f} s timed, "
        f"{total:5.2f} s in operators under the profiler, "
        f"matmul {100 * secs['matmul'] / total:4.1f}%"
    )
ax.set_yticks(range(len(bars)), list(bars))
ax.invert_yaxis()
ax.set(
    xlim=(0, 116),
    xlabel="% of the step's operator time (under the profiler)",
    title="Where a DINO training step's time goes on a CPU",
)
ax.legend(loc="lower center", bbox_to_anchor=(0.5, -0.55), ncol=4)
plt.tight_layout()
save_figure(fig, "09_step_profile")
plt.show()
assert timed[1] < timed[2]  # the same maths in less time

# %% [markdown]
# Two things to read from it. First, a DINO step on a CPU is mostly matrix products (how much
# depends on the model's width: a ViT-tiny's 192-wide matrices are small, so its other operators
# weigh more); no change *around* the matmuls can make a step much faster than its matmuls alone.
# Second, where the official-style step loses: the explicit attention's softmax and the copies
# around it (its grey part), and Python loops (over view pairs in the loss, over parameters with one
# `.item()` each when clipping, and for the EMA) whose cost lies *between* operators, so that only
# the timed step shows it. The project's step runs attention in the fused kernel, clips and updates
# the teacher with one call over all parameters, and its last block computes the class token's row
# alone (next section), which skips 7% of the matmul work itself; past that little can be won at the
# same precision. bf16 (section 7) makes the matmuls themselves faster on CPUs with bf16 units. (The
# profiler adds a little time to every operator call, more to the step with more calls: compare the
# timed steps, not the bars' widths.) On a GPU the matmuls are so fast that everything else weighs
# far more, which is where fused attention kernels and `torch.compile` (section 8) pay off. `python
# benchmarks/train_step.py --profile 2` profiles any configuration this way (`--device cuda`: every
# GPU kernel, sorted into the same kinds and a few more).

# %% [markdown]
# ### Making DINO fast on a CPU: which tricks stay
#
# Notebooks 01-08 build DINO as the paper and the official code write it, and the model modules of
# `vitdino_core` are exactly that. A faster way to compute the same thing earns a place in the
# package only if it saves **at least 3% of a measured training step** (or decides whether a run
# fits in memory), and then in plain sight: as a branch in the module it speeds up, behind one
# flag, `fast`. `VisionTransformer(fast=True)` sets it on the model, on every block and on every
# attention; the trainer builds its student so when the config says `fast: true` (the default),
# and the teacher, a copy, keeps it. Each candidate was timed against the same step
# without it, in one process, the two stepped in turn so that a busy machine slows both alike
# (`benchmarks/ab.py`), on the CPU anchor (ViT-S/16 + a 65536-prototype head, batch 8) and on
# `workshop_tiny`, in fp32 and in bf16 autocast. The measurements are committed:

# %%
SPEEDUPS_RUN = REPO_ROOT / "benchmarks" / "results" / "cpu-zen4_speedups" / "latest.json"
tricks_run = json.loads(SPEEDUPS_RUN.read_text())
settings = tricks_run["settings"]  # short name -> what was stepped
tricks = tricks_run["tricks"]  # name -> the share of the step it saves per setting, its verdict
print(tricks_run["machine"])
print(f"{'share of the step saved':30s}" + "".join(f"{k:>13s}" for k in settings) + "  verdict")
for name, t in tricks.items():
    cells = [t["saves"].get(k) for k in settings]  # 1 - (with it) / (without it); None: not timed
    print(
        f"{name:30s}"
        + "".join(f"{'-' if c is None else f'{100 * c:+.1f}%':>13s}" for c in cells)
        + ("  kept: " + t["where"] if t["kept"] else "  removed")
    )

fig, ax = plt.subplots(figsize=(10.5, 3.8))
width = 0.8 / len(settings)
for i, (k, colour) in enumerate(zip(settings, ["tab:blue", "tab:cyan", "tab:orange", "tab:red"])):
    xs = [j + (i - (len(settings) - 1) / 2) * width for j in range(len(tricks))]
    ax.bar(
        xs,
        [100 * (t["saves"].get(k) or 0.0) for t in tricks.values()],
        width,
        color=colour,
        label=k,
    )
ax.axhline(100 * tricks_run["threshold"], ls="--", color="black", lw=1, label="3%: the bar to stay")
ax.axhline(0, color="gray", lw=0.8)
labels = [f"{n}\n({'kept' if t['kept'] else 'removed'})" for n, t in tricks.items()]
ax.set_xticks(range(len(tricks)), labels)
ax.set(ylabel="% of the step saved", title="Each speed trick against the same CPU step without it")
ax.legend(ncol=3)
plt.tight_layout()
save_figure(fig, "09_speedups")
plt.show()
for name, t in tricks.items():
    if t.get("note"):
        print(f"{name}: {t['note']}")
    if t["kept"]:  # the rule: a kept trick saves at least 3% of some measured step
        assert max(v for v in t["saves"].values() if v is not None) >= tricks_run["threshold"], name

# %% [markdown]
# Three tricks pass, and all compute the same maths as the plain modules (tests compare the values
# and every gradient):
#
# * **The last block computes the class token's row alone.** DINO's feature is the CLS token after
#   the final norm; nothing reads the last block's other N outputs. So that block computes the keys
#   and values of every token (the CLS token attends to all of them), but the query, the attention
#   row, the projection and the MLP of one token. For ViT-S/16 at 224 px that skips 10/12 of the
#   last block's matrix products, about 7% of the step's FLOPs.
# * **A dropped branch is not computed.** Drop path (notebook 03) multiplies a sample's branch by
#   0; Huang et al. (2016) skip a dropped block altogether. So the block draws the same coins
#   first and runs attention or the MLP on the kept samples only; a dropped sample's row is `x`
#   itself. With DINO's rate 0.1, rising linearly over the 12 blocks, a branch is dropped for 5% of
#   the samples on average, and the student's blocks are most of the step. On GPUs the plain block
#   stays: finding the kept samples would make the CPU wait for the GPU at every block.
# * **On a CPU in bf16, attention as the explicit softmax.** PyTorch's fused CPU attention kernel is
#   the slow path in bf16, while the explicit `softmax(q k^T / sqrt(d)) v` runs its two products on
#   the CPU's bf16 units. In fp32 and on GPUs the fused kernel stays.
#
# Everything else that once made the step faster by a percent or two was taken out, so that the
# modules read like the paper: the residual and drop path fused into one `addcmul`, `qkv` split with
# `chunk` instead of DINO's reshape, the loss's view pairs summed by an algebraic rewrite instead of
# the loop, the EMA as one `lerp`, clipping that skipped the gradients it left alone, the patch
# embedding computed as a matmul on CPUs, and the head's weight-normalised last layer with
# hand-written gradients. The flag on a small ViT: `repr` shows it on every module that reads it,
# the weights are the same ones (the flag adds none), and so is the feature. Appendix A.2-A.4 shows
# each branch and what it saves; `benchmarks/ab.py` measures each by turning the flag off on one
# kind of module only.

# %%
torch.manual_seed(0)
small_vit = vit_tiny(patch_size=16, img_size=64).eval()  # fast=False: notebooks 01-08's modules
fast_vit = vit_tiny(patch_size=16, img_size=64, fast=True).eval()  # as the trainer builds it
fast_vit.load_state_dict(small_vit.state_dict(), strict=True)  # the same parameters, by name
print("\n".join(repr(fast_vit).splitlines()[:12]), "\n  ...")
images = torch.randn(4, 3, 64, 64)  # (B, 3, H, W)
with torch.no_grad():
    plain_feature = small_vit(images)  # (4, 192): every token through every block
    fast_feature = fast_vit(images)  # (4, 192): the last block computed the CLS row alone
gap = (fast_feature - plain_feature).abs().max()
print(f"fast=True: largest difference from the plain forward {gap:.1e}")
torch.testing.assert_close(fast_feature, plain_feature)

# %% [markdown]
# And the step as a whole, against the official code's execution strategy rebuilt on the same
# modules and timed in turn with it (`python benchmarks/train_step.py --compare --paired`; with
# `--dtype bf16 --reference-dtype fp32` for ours in bf16 against the reference in fp32): "before",
# the step with every small trick in it; "after", the trainer's step with the three tricks above.

# %%
fmt = lambda v: "not measured" if v is None else f"{v:.3f}"  # noqa: E731
for when, r in tricks_run["step_over_reference"].items():
    print(
        f"{when:6s} ({r['code']}): ours / reference in fp32 {fmt(r['fp32'])}; "
        f"ours in bf16 / reference in fp32 {fmt(r['bf16_vs_fp32_reference'])}"
    )
after = tricks_run["step_over_reference"]["after"]
assert after["fp32"] <= 0.9  # the CPU target in fp32: at most 0.9x the official-style step
bf16_ratio = after[
    "bf16_vs_fp32_reference"
]  # the bf16 target is 0.5; see the results README for its reading
print(
    "bf16 target (at most 0.5):",
    "met" if bf16_ratio is not None and bf16_ratio <= 0.5 else "not shown by this run",
)

# %% [markdown]
# ## 6. Many processes: `torchrun` and DistributedDataParallel
#
# To use several GPUs (or CPU sockets, or machines), DINO runs one process per device with
# `DistributedDataParallel` (DDP):
#
# * every process holds a full copy of student and teacher and starts from **the same weights**
#   (broadcast from rank 0);
# * every process loads a **different slice** of each batch (`batch_size_per_gpu` images each, so
#   the total batch is `batch_size_per_gpu x world_size`, and the learning rate scales with it);
# * in the backward pass, DDP **averages the gradients** of all processes (an all-reduce), so every
#   copy of the student takes the identical step, and the EMA keeps the teachers identical too;
# * the DINO centre is averaged over all processes' teacher outputs (one more all-reduce).
#
# `torchrun` (also `python -m torch.distributed.run`) starts the processes and gives each its `RANK`
# and `WORLD_SIZE`. The trainer sees `WORLD_SIZE > 1` and joins the group: with the **NCCL** backend
# on GPUs, **gloo** on CPUs. Here are 2 processes on this CPU, one thread each, for 2 steps.
# (`--standalone` would pick a free port by itself; we pick one explicitly, as on a cluster.)

# %%
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]  # a port nobody uses right now
ddp_batch = 8
ddp = shell(
    [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        "-m",
        "vitdino_core.train",
        "--config",
        "workshop_tiny",
        "--set",
        "device=cpu",
        "--set",
        "threads=1",
        "--set",
        f"output_dir={RUNS}",
        "--set",
        "run_name=two_processes",
        "--set",
        "max_images=64",
        "--set",
        f"batch_size_per_gpu={ddp_batch}",
        "--set",
        "num_workers=0",
        "--set",
        "max_steps=2",
        "--set",
        "log_every=1",
    ]
)
assert ddp.returncode == 0, ddp.stderr[-3000:]
ddp_records = [
    json.loads(ln) for ln in (RUNS / "two_processes" / "metrics.jsonl").read_text().splitlines()
]
ddp_cfg = load_config(RUNS / "two_processes" / "config.yaml")
lr_one = ddp_cfg.lr * ddp_batch / 256
print(
    f"2 processes x {ddp_batch} images = total batch {2 * ddp_batch}; "
    f"peak lr {ddp_cfg.lr} x {2 * ddp_batch}/256 = "
    f"{ddp_cfg.lr * 2 * ddp_batch / 256:.2e} "
    f"(one process with the same batch_size_per_gpu: {lr_one:.2e})"
)
print(
    "steps:",
    [r["step"] for r in ddp_records],
    "| steps per epoch:",
    round(ddp_records[0]["step"] / ddp_records[0]["epoch"]),
    f"(= 64 images / {2 * ddp_batch} per step)",
)
assert load_checkpoint(RUNS / "two_processes" / "checkpoint.pth")["step"] == 2
assert round(ddp_records[0]["step"] / ddp_records[0]["epoch"]) == 64 // (2 * ddp_batch)

# %% [markdown]
# On a GPU machine the same command, without `device=cpu`, runs one process per GPU:
#
# ```bash
# torchrun --nproc_per_node 8 -m vitdino_core.train --config dino_vitb12 \
#     --set data_path=/data/imagenet/train
# # several machines: the same on each, plus --nnodes 4 --node_rank K --rdzv_endpoint HOST:PORT
# ```
#
# ## 7. Mixed precision: bf16 autocast
#
# Under `torch.autocast(device, dtype=torch.bfloat16)`, matrix multiplications and convolutions run
# in **bfloat16** (8 exponent bits like fp32, 7 mantissa bits instead of 23: about 3 significant
# digits), while the weights, the optimiser and numerically delicate operations (softmax, norms, the
# loss) stay in fp32. On a modern GPU this is usually about twice as fast, because tensor cores do
# bf16 matmuls at many times the fp32 rate, and activations take half the memory. Unlike fp16, bf16
# has fp32's range, so no loss scaling (`GradScaler`) is needed. The config's `precision: auto`
# picks bf16 on GPUs and fp32 on CPUs.
#
# Why fp32 on CPUs? A CPU gains from bf16 only if it has bf16 units (AVX-512 BF16 or AMX, e.g.
# recent Xeons); otherwise PyTorch converts to and from bf16 around fp32 arithmetic, which is
# slower. Let us measure this CPU.

# %%
print("CPU capability:", torch.backends.cpu.get_cpu_capability())
model = vit_tiny(patch_size=12, img_size=96).eval()
x = torch.randn(32 if FAST else 64, 3, 96, 96)  # (B, 3, 96, 96)


def forward_time(model, x, repeats=3, **autocast):
    with (
        torch.no_grad(),
        torch.autocast("cpu", **autocast) if autocast else contextlib.nullcontext(),
    ):
        out = model(x)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return min(times), out


t32, out32 = forward_time(model, x)
t16, out16 = forward_time(model, x, dtype=torch.bfloat16)
rel = ((out16.float() - out32).norm() / out32.norm()).item()
print(
    f"ViT-tiny/12 forward, batch {x.shape[0]} at 96 px: fp32 {t32 * 1e3:.0f} ms, "
    f"bf16 autocast {t16 * 1e3:.0f} ms "
    f"(x {t32 / t16:.2f} speed-up); relative difference of the features {rel:.1e}"
)
assert 0 < rel < 0.1  # close, not equal: the matmuls ran in bf16 (the final LayerNorm returns fp32)

# %% [markdown]
# The output is what bf16 promises: the same features to about two or three digits. Whether it was
# faster is what this CPU's capability line predicts: without AVX-512 BF16 / AMX, bf16 autocast on a
# CPU is usually *slower* than fp32. On a GPU it is the default: on an H200 the bf16 DINO step of a
# ViT-B/12 (batch 64, 12 crops) ran its 56 TFLOP in 149 ms compiled, 48% of the rate of one large
# bf16 matrix product (README, Performance).
#
# ## 8. `torch.compile`
#
# `torch.compile(model)` traces the Python forward into a graph and generates fused kernels for it
# (Triton on GPUs, C++/OpenMP on CPUs): a LayerNorm, a GELU and a residual add become one pass over
# memory instead of several. It pays off when the same shapes run many thousands of times, as in a
# long GPU run: on an H200 it cut the DINO step from 184 to 149 ms for ViT-B/12 and from 68 to 45 ms
# for ViT-S/16 (README, Performance). It costs a **compilation** on the first call (tens of seconds
# to minutes, and again for every new input shape: multi-crop has two), needs a C++ compiler on
# CPUs, and makes errors harder to read. That is why it is off in every notebook and in
# `workshop_tiny`; the long runs' configs (`imagenette_cpu`, `imagenette_small`, `dino_vitb12`) turn
# it on, and `--set compile=true` does it for any run.
#
# A measurement on this CPU: one block's MLP (`FAST`) or a whole ViT-tiny forward and backward (full
# mode).

# %%
torch._dynamo.reset()
if FAST:
    net = vit_tiny(patch_size=12, img_size=96).blocks[0].mlp  # Linear -> GELU -> Linear
    x = torch.randn(32, 65, 192)  # (B, N+1, D)
else:
    net = vit_tiny(patch_size=12, img_size=96)
    x = torch.randn(32, 3, 96, 96)  # (B, 3, 96, 96)


def train_pass(f, x):
    out = f(x)
    out.float().pow(2).mean().backward()


compiled = torch.compile(net)
timings = {}  # label -> seconds per forward + backward
try:
    t0 = time.perf_counter()
    train_pass(compiled, x)  # the first call compiles
    compile_s = time.perf_counter() - t0
    for label, f in (("eager", net), ("compiled", compiled)):
        train_pass(f, x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(3):
            train_pass(f, x)
        timings[label] = (time.perf_counter() - t0) / 3
    print(
        f"{type(net).__name__}: first compiled call {compile_s:.1f} s (compilation); "
        f"then eager {timings['eager'] * 1e3:.1f} ms, "
        f"compiled {timings['compiled'] * 1e3:.1f} ms per forward + backward "
        f"(x {timings['eager'] / timings['compiled']:.2f})"
    )
    print(
        "compilation pays for itself after "
        f"~{compile_s / max(timings['eager'] - timings['compiled'], 1e-9):,.0f} steps"
        if timings["compiled"] < timings["eager"]
        else "no speed-up here: compilation never pays for itself"
    )
except Exception as e:  # e.g. no C++ compiler on this machine
    print(
        f"torch.compile failed here ({type(e).__name__}: {str(e)[:200]}); "
        "training without it works the same"
    )

# %% [markdown]
# ## 9. Gradient checkpointing
#
# Backpropagation needs the activations of the forward pass: PyTorch **saves** them while going
# forward. For a ViT they grow with batch x tokens x width x depth, and at 224 px with a large batch
# they, not the weights, fill a GPU. With `grad_checkpointing: true` each block keeps only its
# **input**; its inside is recomputed during the backward pass. Memory for activations drops by
# roughly the depth; the price is one extra forward per block (about 30% more time per step).
#
# We can measure exactly what autograd saves, with a `saved_tensors_hooks` that adds up the bytes of
# every tensor stored for backward (each storage once; the weights themselves are not counted).


# %%
def saved_activation_mib(model, x):
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
        return t

    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)  # (B, D)
    out.pow(2).mean().backward()
    return total / 2**20, time.perf_counter() - t0


model = (vit_tiny if FAST else vit_small)(patch_size=12, img_size=96).train()
x = torch.randn(16, 3, 96, 96)  # (B, 3, 96, 96): 64 patches + CLS
model(x).pow(2).mean().backward()  # warm-up: the first pass allocates
memory = {}
for flag in (False, True):
    model.grad_checkpointing = flag
    memory[flag] = saved_activation_mib(model, x)
    print(
        f"grad_checkpointing={flag!s:5s}: {memory[flag][0]:7.1f} MiB saved for backward, "
        f"{memory[flag][1]:.2f} s forward + backward"
    )
print(f"x {memory[False][0] / memory[True][0]:.0f} less activation memory")
assert memory[True][0] < memory[False][0] / 4

# %% [markdown]
# The three measurements side by side: what each option buys on this machine.

# %%
fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.8), layout="constrained")
axes[0].bar(["fp32", "bf16 autocast"], [t32 * 1e3, t16 * 1e3], color=["tab:blue", "tab:orange"])
axes[0].set(
    ylabel="ms per forward", title=f"7. precision\n(CPU: {torch.backends.cpu.get_cpu_capability()})"
)
if len(timings) == 2:
    axes[1].bar(
        ["eager", "compiled"],
        [timings["eager"] * 1e3, timings["compiled"] * 1e3],
        color=["tab:blue", "tab:green"],
    )
    axes[1].set(
        ylabel="ms per forward + backward", title=f"8. torch.compile\n({type(net).__name__})"
    )
else:
    axes[1].text(0.5, 0.5, "torch.compile\nnot available here", ha="center", va="center")
    axes[1].set(title="8. torch.compile", xticks=[], yticks=[])
axes[2].bar(
    ["stored", "checkpointed"],
    [memory[False][0], memory[True][0]],
    color=["tab:blue", "tab:purple"],
)
axes[2].set(
    ylabel="MiB saved for backward",
    title=f"9. gradient checkpointing\n({x.shape[0]} images at 96 px)",
)
for ax in axes:
    for bar in ax.patches:
        ax.annotate(
            f"{bar.get_height():.0f}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
        )
fig.suptitle("Speed and memory options, measured on this machine")
save_figure(fig, "09_speed_and_memory")
plt.show()

# %% [markdown]
# ## 10. The GPU configs, in numbers
#
# What `imagenette_small` and `dino_vitb12` would do, computed from the configs. Memory for the
# model state counts 4 bytes for each of: student weights, their gradients, AdamW's two moments, and
# the teacher's weights (activations come on top, and dominate at large batches). Parameter counts
# come from the `meta` device (shapes, no memory).


# %%
def model_state_gib(c):
    with torch.device("meta"):
        backbone = {"vit_tiny": vit_tiny, "vit_small": vit_small, "vit_base": vit_base}[c.arch](
            patch_size=c.patch_size
        )
        head = DINOHead(backbone.embed_dim, c.out_dim)
    n = sum(p.numel() for p in backbone.parameters()) + sum(p.numel() for p in head.parameters())
    return n, 5 * 4 * n / 2**30


datasets = {
    "imagenette_small": ("Imagenette", 9469, (1, 8)),
    "dino_vitb12": ("ImageNet", 1_281_167, (1, 8, 32)),
}
for name, (data, n_images, gpu_counts) in datasets.items():
    c = configs[name]
    n_params, gib = model_state_gib(c)
    print(
        f"{name}: {c.arch}/{c.patch_size}, "
        f"{c.global_crops_size}/{c.local_crops_size} px crops x {c.ncrops}, "
        f"{n_params / 1e6:.1f}M parameters with the head, ~{gib:.1f} GiB of model state, "
        f"precision {c.precision}"
    )
    for gpus in gpu_counts:
        total = c.batch_size_per_gpu * gpus
        steps = n_images // total
        print(
            f"   {gpus:2d} GPU(s) on {data}: total batch {total:5d}, "
            f"peak lr {c.lr * total / 256:.2e}, {steps:6,d} steps/epoch, "
            f"{steps * c.epochs:9,d} steps for {c.epochs} epochs"
        )

# %% [markdown]
# And what a GPU does with them, measured: one NVIDIA H200 ran `benchmarks/gpu_suite.sh`, whose JSON
# files are committed in `benchmarks/results/`. Each DINO step below is the real `train_step` in
# bf16 autocast, eager and with `compile: true`; "share" is the step's FLOPs per second over that of
# one large bf16 matrix product timed in the same process, the most this GPU does. The third panel
# is what an epoch end costs the real training loop (`benchmarks/epoch_boundary.py`): the
# checkpoint, and the loader's workers starting the next epoch. "Before" is the code that wrote the
# checkpoint in the loop and restarted the loader each epoch; "after" writes it on a thread and
# keeps the loader running across epoch ends.

# %%
GPU_RESULTS = REPO_ROOT / "benchmarks" / "results" / "h200_gpu-suite"


def gpu_step(name: str) -> dict:
    r = json.loads((GPU_RESULTS / f"{name}.json").read_text())
    return r.get("ours", r)  # --compare files hold ours and the official-style step


steps = {
    "ViT-S/16, batch 64\n2x224 + 6x96": "step_vits16",
    "ViT-B/12, batch 64\n2x228 + 10x96": "step_vitb12",
    "imagenette_small\nViT-S/8, batch 256": "step_imagenette_small",
}
measured = {label: (gpu_step(name), gpu_step(name + "_compile")) for label, name in steps.items()}
reference = json.loads((GPU_RESULTS / "step_vits16.json").read_text())["reference"]
print(
    json.loads((GPU_RESULTS / "step_vitb12.json").read_text())["device_name"],
    "| torch",
    json.loads((GPU_RESULTS / "step_vitb12.json").read_text())["torch"],
)
for label, (eager, compiled) in measured.items():
    print(
        f"{label.replace(chr(10), ', '):42s} eager {eager['step_s_median'] * 1e3:6.1f} ms "
        f"{eager['images_per_s']:6,.0f} img/s "
        f"share {eager['fraction_of_matmul_peak']:.1%} | "
        f"compiled {compiled['step_s_median'] * 1e3:6.1f} ms "
        f"{compiled['images_per_s']:6,.0f} img/s "
        f"share {compiled['fraction_of_matmul_peak']:.1%} | "
        f"peak memory {compiled['peak_memory_bytes'] / 2**30:.1f} GiB"
    )
print(
    f"official-style ViT-S/16 step, same run as ours: {reference['step_s_median'] * 1e3:.1f} ms, "
    f"{reference['images_per_s']:,.0f} img/s"
)
assert all(
    c["step_s_median"] < e["step_s_median"] for e, c in measured.values()
)  # compiling paid off for all three
# epoch ends in the real loop (imagenette_small, eager): the code before and after the checkpoint
# thread and the loader's single pass across epochs, same machine
ends = {
    when: json.loads((GPU_RESULTS / f"epoch_boundary{suffix}.json").read_text())
    for when, suffix in (("before", "_before"), ("after", ""))
}
for when, r in ends.items():
    print(
        f"epoch end {when:6s}: {r['epoch_end_overhead_s_median']:.2f} s "
        f"on top of a {r['other_steps_median_s']:.2f} s step"
    )
assert ends["after"]["epoch_end_overhead_s_median"] < ends["before"]["epoch_end_overhead_s_median"]

fig, axes = plt.subplot_mosaic([["a", "b"], ["c", "."]], figsize=(10.5, 7.6))
axes = [axes["a"], axes["b"], axes["c"]]  # speed, share of the peak; epoch ends below
x = range(len(measured))
for i, (which, colour) in enumerate((("eager", "tab:blue"), ("compiled", "tab:green"))):
    axes[0].bar(
        [k + 0.4 * i - 0.2 for k in x],
        [m[i]["images_per_s"] for m in measured.values()],
        0.4,
        color=colour,
        label=which,
    )
    axes[1].bar(
        [k + 0.4 * i - 0.2 for k in x],
        [100 * m[i]["fraction_of_matmul_peak"] for m in measured.values()],
        0.4,
        color=colour,
        label=which,
    )
axes[0].scatter(
    [-0.2],
    [reference["images_per_s"]],
    marker="_",
    s=900,
    color="black",
    label="official-style step (eager)",
)
axes[0].set(ylabel="images per second", title="DINO training step\non one H200 (bf16)")
axes[1].axhline(50, ls="--", color="gray", label="50%")
axes[1].set(
    ylabel="% of the large-matmul FLOP/s", title="share of what\nthe GPU can do", ylim=(0, 100)
)
for ax in axes[:2]:
    ax.set_xticks(list(x), list(measured))
    ax.legend()
axes[2].bar(
    list(ends),
    [r["epoch_end_overhead_s_median"] for r in ends.values()],
    color=["tab:gray", "tab:green"],
)
axes[2].axhline(ends["after"]["other_steps_median_s"], ls=":", color="black", label="one step")
axes[2].set(ylabel="seconds lost per epoch end", title="epoch ends (imagenette_small)")
axes[2].legend()
plt.tight_layout()
save_figure(fig, "09_gpu_steps")
plt.show()

# %% [markdown]
# `imagenette_small` is sized for **one** GPU (its config's own estimate: about 23 minutes on an
# H200); on 8 GPUs an epoch would be only 4 steps, and the whole run 1,200 steps at a peak learning
# rate 8 times higher: more GPUs do not help a small dataset much. `dino_vitb12` is sized for
# **many**: its 400 epochs on ImageNet are 16 million steps on a single GPU and half a million on
# 32. For scale, the official DINO README reports 1.75 days on one node of 8 GPUs for a ViT-S/16
# trained 100 epochs (69.3% kNN on ImageNet).
#
# ## 11. Evaluating a checkpoint from the command line
#
# `python -m vitdino_core.evaluate` extracts frozen features and reports DINO's weighted kNN and a
# linear probe (notebook 08), as one JSON object on stdout:

# %%
with contextlib.redirect_stdout(io.StringIO()) as help_text, contextlib.suppress(SystemExit):
    evaluate_args(["--help"])
print(help_text.getvalue())

# %% [markdown]
# On the checkpoint of sections 3-4 (a few steps of training, so expect numbers near the random-init
# baseline), with a small subset of the images:

# %%
n_train, n_val = (200, 100) if FAST else (1000, 500)
ev = shell(
    [
        sys.executable,
        "-m",
        "vitdino_core.evaluate",
        "--ckpt",
        str(run_dir / "checkpoint.pth"),
        "--max-train",
        str(n_train),
        "--max-val",
        str(n_val),
    ]
)
assert ev.returncode == 0, ev.stderr[-2000:]
scores = json.loads(ev.stdout.strip().splitlines()[-1])
print(
    f"kNN top-1 {scores['knn_top1']}%, linear probe top-1 {scores['linear_top1']}% "
    f"on {scores['num_val']} val images "
    "(chance: 10%)"
)
assert (
    scores["num_train"] == n_train and scores["num_val"] == n_val and 0 <= scores["knn_top1"] <= 100
)

# %% [markdown]
# ## What we built
#
# Nothing new inside DINO; everything around it that a real run needs, each tried here:
#
# * **configs**: YAML files with the official DINO names, overridden with `--set key=value`,
#   validated with errors that name the key and the fix;
# * the **training CLI**, its run folder (`config.yaml`, `metrics.jsonl`, an atomic
#   `checkpoint.pth`) and **exact resume** with `--resume`;
# * **torchrun** with 2 processes on a CPU (gloo): the same command runs N GPUs with NCCL;
# * measured on this CPU: **bf16 autocast** (a GPU feature), **torch.compile** (compilation cost
#   against step savings), **gradient checkpointing** (activation memory against recomputation), and
#   the **throughput** of `workshop_tiny`, with a **profile** of where its step's time goes next to
#   the CPU anchor's; and, read from the committed benchmark files, what the same training step does
#   on an H200;
# * the **evaluation CLI**.
#
# ## Exercises
#
# 1. Write your own config for a folder of your photos (`dataset: folder`, `data_path: ...`),
#    starting from `workshop_tiny.yaml`. Run it for one epoch, then evaluate the checkpoint with
#    `--random-init` as a baseline (`python -m vitdino_core.evaluate --random-init --arch vit_tiny
#    --patch-size 12`).
# 2. Start a run with `max_steps=50`, stop it with Ctrl-C in the terminal after a few steps, and
#    resume it. Compare `metrics.jsonl` with an uninterrupted run of the same config.
# 3. Measure `grad_checkpointing` for ViT-S at 224 px with batch 64: how many GiB of activations
#    does it save, and what would that mean for `batch_size_per_gpu` on a 24 GB GPU?

# %% [markdown]
# ## Appendix A: engineering notes on the Vision Transformer (notebooks 01-04)
#
# Notebooks 01-04 teach the model as the paper writes it, and the modules of `vitdino_core`
# compute it that way. This appendix asks what each piece costs and which other forms of the same
# maths exist. Only three such forms run in training: the branches that `fast=True` turns on in the
# modules themselves (section 5, "Making DINO fast on a CPU: which tricks stay"); below, each one
# with the flag off and on. Every measurement behind them is in `benchmarks/PERFORMANCE.md`.

# %% [markdown]
# ### A.1 Patch embedding: a convolution or one matrix product
#
# Notebook 01 shows that the strided `Conv2d` and a linear layer on the flattened patches compute
# the same tokens: flatten the conv's weight to $(D, C p^2)$, channel-first like the patches, and
# each token is one row of `patchify(x) @ W.T + b`. The conv reads the image once, with no reshaped
# copy of the patches in memory; the linear layer is one plain matrix multiply, the operation CPUs
# are best at. `PatchEmbed` is the conv on every device, as in DINO. The matmul form did not save
# the 3% of a training step that a trick needs to stay (`patch_embed_matmul` in section 5's table;
# `benchmarks/patch_embed.py` times both forms). Here, the two checked against each other and
# timed forward only on the machine running this notebook:

# %%
from vitdino_core import PatchEmbed, patchify


def best_time(fn, budget_s: float, min_repeats: int = 2) -> float:
    """The fastest of several runs (at least `min_repeats`, more within `budget_s`)."""
    fn()  # warm-up
    times, spent = [], 0.0
    while len(times) < min_repeats or (spent < budget_s and len(times) < 50):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return min(times)


embed = PatchEmbed(img_size=224, patch_size=16, in_chans=3, embed_dim=384)
W = embed.proj.weight.flatten(1)  # (D, C*p*p) = (384, 768): the conv's weight, flattened
crops = torch.randn(4 if FAST else 16, 3, 224, 224)  # (B, 3, 224, 224)


def as_matmul(x: torch.Tensor) -> torch.Tensor:
    return patchify(x, 16) @ W.T + embed.proj.bias  # (B, 196, 768) @ (768, 384) -> (B, 196, 384)


with torch.no_grad():
    torch.testing.assert_close(as_matmul(crops), embed(crops), rtol=1e-4, atol=1e-4)
    for name, fn in (("conv", embed), ("matmul", as_matmul)):
        t = best_time(lambda: fn(crops), 0.2 if FAST else 1.0)
        print(f"{name:>6}: {1e3 * t:6.1f} ms for {crops.shape[0]} crops of 224 px (forward only)")

# %% [markdown]
# ### A.2 Attention: the explicit softmax or the fused kernel
#
# Notebook 02 computes attention explicitly, storing the $N \times N$ weights. PyTorch's fused
# `F.scaled_dot_product_attention` computes the same result block by block with a running softmax,
# so the matrix never exists in memory. We time both for one image with $H = 6$ heads of $d = 64$
# (ViT-S), on **one thread**: with several threads, a machine busy with other work makes the
# threads wait for each other and the curve shows the scheduler rather than the algorithm. Each
# point is the fastest of several runs.

# %%
from vitdino_core.attention import softmax_attention

H, d = 6, 64
Ns = [64, 256, 1024] if FAST else [64, 128, 256, 512, 1024, 2048, 4096]
budget = 0.1 if FAST else 0.5  # seconds of timing per point and path
timings = {"explicit": [], "fused": []}
threads = torch.get_num_threads()
torch.set_num_threads(1)
with torch.no_grad():
    for n in Ns:
        q, k, v = torch.randn(3, 1, H, n, d).unbind(0)  # 3 x (1, H, n, d)
        explicit = lambda: softmax_attention(q, k, v, d**-0.5)  # noqa: E731
        fused = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)  # noqa: E731
        timings["explicit"].append(best_time(explicit, budget))
        timings["fused"].append(best_time(fused, budget))
        torch.testing.assert_close(explicit()[0], fused(), rtol=1e-4, atol=1e-5)
torch.set_num_threads(threads)  # back to all threads

fig, ax = plt.subplots(figsize=(6.5, 4))
ax.plot(Ns, [t * 1e3 for t in timings["explicit"]], "o-", label="explicit softmax (stores N x N)")
ax.plot(Ns, [t * 1e3 for t in timings["fused"]], "s-", label="fused scaled_dot_product_attention")
ref = [timings["explicit"][-1] * 1e3 * (n / Ns[-1]) ** 2 for n in Ns]
ax.plot(Ns, ref, ":", color="gray", label=r"$\propto N^2$")
ax.set(
    xscale="log",
    yscale="log",
    xlabel="tokens N",
    ylabel="time (ms, fastest run)",
    title=f"Attention, 1 image, {H} heads x d={d}\nmeasured on this machine: CPU, 1 thread",
)
ax.legend()
fig.tight_layout()
plt.show()
for n, te, tf in zip(Ns, timings["explicit"], timings["fused"]):
    print(f"N = {n:5d}: explicit {te * 1e3:8.2f} ms | fused {tf * 1e3:8.2f} ms")

# %% [markdown]
# The exact numbers depend on the machine (steps in the curve appear where the matrices stop
# fitting in a CPU cache), but the slope does not: past a few hundred tokens, doubling $N$ makes
# attention about four times slower. `vitdino_core.Attention` takes the fused kernel unless the
# weights are asked for (attention maps, notebooks 02 and 07). On a CPU in bf16, PyTorch's fused
# kernel is the slow path, so a fast `Attention` takes the explicit softmax there: one more
# condition in `Attention.attend`, which leaves the choice alone everywhere else (section 5;
# `benchmarks/attention.py --dtype bf16` times the paths at a training step's shapes). Below, one
# attention layer of ViT-S in bf16 autocast, forward and backward, with the flag off and on. (On a
# CPU without bf16 units bf16 is emulated and slow either way; the trainer warns about it.)

# %%
from vitdino_core import Attention

torch.manual_seed(0)
attn_layer = Attention(384, num_heads=6, qkv_bias=True)
attn_in = torch.randn(8, 65 if FAST else 197, 384, requires_grad=True)  # (B, N, D)


def attention_step() -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attn_layer(attn_in)  # (B, N, D) in bf16
    y.float().square().mean().backward()


bf16_times = {}
for flag in (False, True):
    attn_layer.fast = flag  # the flag of this one module: False = the fused kernel
    bf16_times[flag] = best_time(attention_step, 0.2 if FAST else 1.0)
print(
    f"{tuple(attn_in.shape)} in bf16, forward + backward: fused {bf16_times[False] * 1e3:.1f} ms, "
    f"explicit (fast=True) {bf16_times[True] * 1e3:.1f} ms: "
    f"{1 - bf16_times[True] / bf16_times[False]:+.0%} of the time saved on this machine"
)

# %% [markdown]
# ### A.3 Only the class token leaves the last block
#
# DINO reads one vector per image: the class token after the final norm. After the *last* block
# nothing reads the other $N$ tokens. The class token still attends to every token, so the last
# block needs keys and values for all of them; but its query, its row of attention weights, the
# projection and the MLP are needed for one token only.
#
# The plain `VisionTransformer.forward` runs every token through every block, as the official
# code does. With `fast=True` it calls the last block's `forward_cls` instead, which computes the
# class token's row alone (with `Attention.forward_cls`: one query against every key and value);
# the trainer's student is built so, and the teacher is its copy. The feature and every gradient
# are the same; only the unread rows are skipped. What reads the other tokens runs the plain
# blocks: `forward_features`, `get_intermediate_layers` and `get_last_selfattention` (notebook
# 07's attention maps). The backbones that notebook 08 and
# `vitdino_core.evaluate` load from checkpoints are plain modules, so their `forward` computes every
# token and gives the same feature. Below, the last block's class-token row by hand:

# %%
from vitdino_core import VisionTransformer

torch.manual_seed(0)
small_vit = VisionTransformer(img_size=96, patch_size=12, embed_dim=96, depth=4, num_heads=3).eval()
images = torch.randn(2, 3, 96, 96)  # (2, 3, 96, 96)
last = small_vit.blocks[-1]
with torch.no_grad():
    x = small_vit.prepare_tokens(images)  # (2, 65, 96)
    for blk in small_vit.blocks[:-1]:
        x = blk(x)  # (2, 65, 96)
    h = last.norm1(x)  # (2, 65, 96): every token is still a key and a value
    C, heads = h.shape[-1], last.attn.num_heads
    w, b = last.attn.qkv.weight, last.attn.qkv.bias  # (3C, C), (3C,): rows [q | k | v]
    q = torch.nn.functional.linear(h[:, :1], w[:C], b[:C])  # (2, 1, C): the class token's query
    k, v = torch.nn.functional.linear(h, w[C:], b[C:]).chunk(2, dim=-1)  # 2 x (2, 65, C)
    split = lambda t: t.view(2, -1, heads, C // heads).transpose(1, 2)  # noqa: E731 (2, H, n, d)
    a = (split(q) @ split(k).transpose(-2, -1) * last.attn.scale).softmax(dim=-1)  # (2, H, 1, 65)
    y = last.attn.proj((a @ split(v)).transpose(1, 2).reshape(2, 1, C))  # (2, 1, C)
    cls = x[:, :1] + y  # (2, 1, C): the residual of the class token alone
    cls = cls + last.mlp(last.norm2(cls))  # (2, 1, C)
    feat_cls_only = small_vit.norm(cls[:, 0])  # (2, C)
    torch.testing.assert_close(cls, last.forward_cls(x))  # (2, 1, C): the fast last block
    plain = small_vit(images)  # (2, C): fast=False, every token through every block
    torch.testing.assert_close(plain, small_vit.forward_features(images)[:, 0])
    small_vit.fast = True  # the model's own flag: its last block computes the CLS row alone
    torch.testing.assert_close(feat_cls_only, small_vit(images))  # (2, C)
    small_vit.fast = False  # the plain forward again
torch.testing.assert_close(feat_cls_only, plain)
print("by hand == forward_cls; the class-token row == plain forward == fast forward")

# %% [markdown]
# How much that saves, counted in multiply-adds of one 224 px image through ViT-S/16
# ($N + 1 = 197$ tokens, $D = 384$, MLP $4D$): each of the first eleven blocks does the same work;
# the last one, with the trick, a fraction of it (the cell prints how much). Then a forward and
# backward of the model on this machine with its flag off and on (the blocks' own flags stay off:
# this trick alone). Section 5 measures what it is worth in a whole training step.


# %%
def block_macs(D: int, T: int, cls_only: bool = False) -> float:
    """Multiply-adds of one block for T tokens: qkv, proj, fc1, fc2 (12 D^2 per token) and
    attention (2 T^2 D)."""
    if cls_only:  # keys and values of T tokens; query, one attention row, proj and MLP of one token
        return T * 2 * D * D + 10 * D * D + 2 * T * D
    return T * 12 * D * D + 2 * T * T * D


D, T = 384, 197
full = [block_macs(D, T) / 1e9] * 12
ours = full[:-1] + [block_macs(D, T, cls_only=True) / 1e9]
fig, ax = plt.subplots(figsize=(7, 2.6))
ax.bar(range(12), full, color="0.85", label="every token (the plain forward)")
ax.bar(range(12), ours, color="C0", label="fast=True: the last block's CLS row alone")
ax.set(
    xlabel="block",
    ylabel="GMAC per image",
    xticks=range(12),
    ylim=(0, 1.4 * full[0]),
    title=f"ViT-S/16 at 224 px: {sum(ours) / sum(full):.1%} of the blocks' work",
)
ax.legend(loc="upper left", ncol=2)  # above the bars
plt.show()
print(
    f"last block: {ours[-1]:.3f} of {full[-1]:.3f} GMAC ({1 - ours[-1] / full[-1]:.0%} skipped);"
    f" all blocks: {1 - sum(ours) / sum(full):.1%} skipped, forward and backward alike"
)

torch.manual_seed(0)
timed_vit = (vit_tiny if FAST else vit_small)(patch_size=16, img_size=224).train()
timed_images = torch.randn(2 if FAST else 4, 3, 224, 224)  # (B, 3, 224, 224)


def vit_step() -> None:
    timed_vit.zero_grad(set_to_none=True)
    timed_vit(timed_images).square().mean().backward()  # (B, D) -> a scalar


vit_times = {}
for flag in (False, True):
    timed_vit.fast = flag  # the model's flag only
    vit_times[flag] = best_time(vit_step, 0.5 if FAST else 3.0)
print(
    f"{'ViT-Ti/16' if FAST else 'ViT-S/16'}, {timed_images.shape[0]} images of 224 px, "
    f"forward + backward: plain {vit_times[False]:.2f} s, fast {vit_times[True]:.2f} s "
    f"({1 - vit_times[True] / vit_times[False]:+.0%} of the time saved on this machine)"
)

# %% [markdown]
# ### A.4 A dropped branch is not computed
#
# Drop path (notebook 03) keeps each sample's residual branch with probability $1 - p$ and
# multiplies the dropped ones by 0: their attention or MLP is computed and then thrown away.
# Stochastic depth as Huang et al. (2016) wrote it skips a dropped block altogether. A fast block
# does that per sample, in training on a CPU (`Block.forward_kept`): it draws the coins first,
# exactly as `drop_path` would, then runs the branch on the kept samples only; a dropped sample's
# row is `x` itself, a kept one `x + f(x) / (1 - p)`. The values and the gradients are the plain
# block's. (On a GPU, finding the kept samples would make the CPU wait for the GPU at every block,
# and a compiled graph cannot have a shape that depends on the coins: there the plain block runs.)
# Below, a block with $p = 0.5$: the rows its attention and MLP see with the flag off and on, and
# the two outputs from the same random state.

# %%
from vitdino_core import Block

torch.manual_seed(0)
blk = Block(96, num_heads=3, qkv_bias=True, drop_path=0.5).train()
tokens = torch.randn(8, 17, 96)  # (B, N, D): 8 samples
rows_seen = []
hooks = [
    m.register_forward_hook(lambda m, i, o: rows_seen.append(len(i[0])))
    for m in (blk.attn, blk.mlp)
]
torch.manual_seed(1)
plain_out = blk(tokens)  # (8, 17, 96): every branch computed, the dropped ones times 0
blk.fast = True  # the block's flag
torch.manual_seed(1)  # the same coins
skip_out = blk(tokens)  # (8, 17, 96): each branch on its kept samples only
blk.fast = False
for h in hooks:
    h.remove()
torch.testing.assert_close(skip_out, plain_out)
print(f"plain block: attention and MLP saw {rows_seen[:2]} samples; fast: {rows_seen[2:]}")
unchanged = (skip_out == tokens).flatten(1).all(dim=1)  # (8,): samples with both branches dropped
print(f"samples that skipped the whole block (output == input): {unchanged.sum().item()} of 8")

# %% [markdown]
# DINO's rate for ViT-S and ViT-B is $p = 0.1$ for the last block, falling linearly to 0 for the
# first (`drop_path_rate` in the configs). The share of the samples whose branches each block of
# the student still computes, in expectation. The last block runs the class token's row alone
# (A.3) and keeps the plain drop path: its work is already small.

# %%
rate, depth = 0.1, 12
kept_share = [1 - rate * i / (depth - 1) for i in range(depth - 1)] + [1.0]  # (12,): 1 - p
fig, ax = plt.subplots(figsize=(7, 2.6))
ax.bar(range(depth), [1.0] * depth, color="0.85", label="every sample (the plain block)")
ax.bar(range(depth), kept_share, color="C0", label="fast=True, expected")
ax.set(
    xlabel="block",
    ylabel="samples that run it",
    xticks=range(depth),
    ylim=(0.8, 1.08),
    title=f"drop_path_rate {rate}: branches run for {sum(kept_share) / depth:.1%} of the samples",
)
ax.legend(loc="upper right", ncol=2)
plt.show()

torch.manual_seed(0)
timed_block = Block(384, num_heads=6, qkv_bias=True, drop_path=rate).train()  # ViT-S width, p = 0.1
block_in = torch.randn(32, 65, 384)  # (B, N, D): 32 crops of 96 px at patch 12


def block_step() -> None:
    torch.manual_seed(0)  # the same coins in every run, with the flag off and on
    timed_block.zero_grad(set_to_none=True)
    timed_block(block_in).square().mean().backward()


block_times = {}
for flag in (False, True):
    timed_block.fast = flag  # the block's flag only: attention keeps its own
    block_times[flag] = best_time(block_step, 0.3 if FAST else 2.0)
print(
    f"one block with p = {rate}, forward + backward of {tuple(block_in.shape)}: "
    f"plain {block_times[False] * 1e3:.1f} ms, fast {block_times[True] * 1e3:.1f} ms "
    f"({1 - block_times[True] / block_times[False]:+.0%} on this machine, these coins)"
)

# %% [markdown]
# ### A.5 Multi-crop: one backbone pass per resolution
#
# Notebook 04's `MultiCropWrapper` runs the backbone once per resolution instead of once per view.
# Fewer, larger calls keep the matrix multiplications big, which is what CPUs and GPUs are fast at
# (and in training, the backward pass has two graphs to walk instead of $2 + N$). A rough timing on
# this machine, for 4 images with 2 global views of 96 px and 4 local views of 48 px:

# %%
from vitdino_core import MultiCropWrapper

torch.manual_seed(0)
backbone = VisionTransformer(img_size=96, patch_size=16, embed_dim=96, depth=4, num_heads=3).eval()
head = DINOHead(96, 256, hidden_dim=256, bottleneck_dim=64).eval()
wrapper = MultiCropWrapper(backbone, head)
n_img = 4
views = [torch.randn(n_img, 3, 96, 96) for _ in range(2)] + [
    torch.randn(n_img, 3, 48, 48) for _ in range(4)
]  # 6 x (B, 3, h, w)
with torch.no_grad():
    torch.testing.assert_close(
        wrapper(views), torch.cat([head(backbone(v)) for v in views]), rtol=1e-4, atol=1e-5
    )
    for name, fn in (
        ("naive, per view", lambda: torch.cat([head(backbone(v)) for v in views])),
        ("MultiCropWrapper", lambda: wrapper(views)),
    ):
        t = best_time(fn, 0.2 if FAST else 1.0)
        print(f"{name:18s} {1000 * t:7.1f} ms per batch of {n_img} images x 6 views")

# %% [markdown]
# ## Appendix B: engineering notes on DINO training (notebooks 05-06)
#
# The same for notebooks 05 and 06: what the head's last layer and the EMA update cost, and why a
# small simulation runs on one thread.
#
# ### B.1 The head's last layer: the weight, or one scale per output (notebook 05)
#
# The head's last layer has the weight $w_k = g_k v_k / \lVert v_k \rVert$, row by row. The core's
# `DINOHead` keeps it as DINO does, a weight-normalised `nn.Linear`, and calls it: every forward
# pass writes this $K \times 256$ matrix, and every backward pass its gradient. The same scores
# follow without forming $w$: $z \cdot w_k = (z \cdot v_k)\, g_k / \lVert v_k \rVert$, a product
# with $v$ followed by one scale per output. Computed that way, with hand-written gradients, it did
# not save the 3% of a training step that a trick needs to stay (`head_last_layer_by_hand` in
# section 5's table), so the core keeps the layer. The cell checks that the two agree and says how
# large the matrix $w$ is at DINO's size.

# %%
import torch.nn.functional as F

head = DINOHead(384, 4096)  # K = 4096 here; DINO uses 65536
wn = head.last_layer.parametrizations.weight  # original0: g (K, 1), original1: v (K, 256)
feats = torch.randn(8, 384)  # (B, D)
with torch.no_grad():
    z = F.normalize(head.mlp(feats), dim=-1)  # (B, 256)
    by_layer = head.last_layer(z)  # (B, K): writes w (K, 256) first
    scale = wn.original0 / wn.original1.norm(dim=1, keepdim=True)  # (K, 1): g_k / ||v_k||
    rescaled = (z @ wn.original1.T) * scale.T  # (B, K): never forms w
    torch.testing.assert_close(head(feats), by_layer)  # (B, K): the core's forward calls the layer
torch.testing.assert_close(rescaled, by_layer)
w_bytes = 65536 * 256 * 4  # fp32
print(
    f"rescaled scores == the layer's; at K = 65536 the layer writes a w of {w_bytes / 1e6:.0f} MB "
    "on every forward pass, and its gradient as large on every backward pass"
)

# %% [markdown]
# ### B.2 The EMA update: one call per operation for all tensors (notebook 06)
#
# `ema_by_hand` in notebook 06 loops over the parameters in Python: two small operations per
# tensor, for every tensor of backbone and head. `update_teacher` does the same two operations,
# $\theta_t \leftarrow m\,\theta_t + (1 - m)\,\theta_s$, each as one call over all tensors at once:
# `torch._foreach_mul_` on the teacher's list, then `torch._foreach_add_` with the student's. That
# is two Python calls instead of two per tensor (on a GPU, a few kernel launches for all tensors
# instead of one per tensor).

# %%
from vitdino_core import make_teacher, update_teacher

student = MultiCropWrapper(vit_tiny(img_size=48), DINOHead(192, 256))
loop_teacher, foreach_teacher = make_teacher(student), make_teacher(student)
with torch.no_grad():
    for p in student.parameters():
        p.add_(0.01 * torch.randn_like(p))  # the student moved
    for p_s, p_t in zip(student.parameters(), loop_teacher.parameters()):
        p_t.mul_(0.996).add_(p_s, alpha=1 - 0.996)  # the loop, as in notebook 06
update_teacher(student, foreach_teacher, 0.996)  # _foreach_mul_, then _foreach_add_
for a, b in zip(loop_teacher.parameters(), foreach_teacher.parameters()):
    torch.testing.assert_close(a, b)
print(f"{len(list(student.parameters()))} tensors: the loop and update_teacher agree")

# %% [markdown]
# ### B.3 Small tensors, one thread (notebook 05)
#
# The collapse simulation of notebook 05 multiplies matrices with at most a few hundred rows and
# columns. Splitting such work across threads costs more in coordination than it saves, and on a
# CPU shared with other programs a thread that waits for a busy core holds up the others. That is
# why the simulation runs under `torch.set_num_threads(1)` and restores the setting afterwards.

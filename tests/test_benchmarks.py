"""The benchmark scripts run and print the JSON they promise (tiny configs; no assertion on speed),
and the analytic FLOP count of benchmarks/train_step.py agrees with PyTorch's own FLOP counter."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


def run_script(name: str, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(BENCH / name), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def load_train_step():
    spec = importlib.util.spec_from_file_location("bench_train_step", BENCH / "train_step.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_walk():
    spec = importlib.util.spec_from_file_location("bench_walk", BENCH / "walk.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def files_a_learner_meets() -> set[str]:
    """The package files (relative to vitdino_core/) that define what notebooks 01-08 import: the
    modules a learner opens. Notebook 09 and the appendices are left out: a file only they import is
    hidden from a reader of the step."""
    import ast
    import importlib
    import inspect

    import vitdino_core

    package, files = Path(vitdino_core.__file__).parent, set()
    for nb in sorted((REPO / "notebooks").glob("0[1-8]_*.py")):
        for node in ast.walk(ast.parse(nb.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and (node.module or "").split(".")[0] == "vitdino_core"
            ):
                module = importlib.import_module(node.module)
                objs = [getattr(module, a.name) for a in node.names]
            elif isinstance(node, ast.Import):
                objs = [
                    importlib.import_module(a.name)
                    for a in node.names
                    if a.name.startswith("vitdino_core.")
                ]
            else:
                continue
            for obj in objs:
                try:
                    path = Path(inspect.getsourcefile(obj))
                except TypeError:  # a constant: it lives where it was imported from
                    path = Path(module.__file__)
                if path.is_relative_to(package):
                    files.add(path.relative_to(package).as_posix())
    return files


def test_the_walk_from_train_step_to_the_loss_is_short_and_in_plain_sight(capsys):
    """benchmarks/walk.py: one step of workshop_tiny on a CPU in fp32 (the default, fast path) calls
    at most 25 distinct package functions up to the loss, every one in a file that notebooks
    01-08 import from; the tricks are among them, in the modules they speed up; the plain path
    walks fewer."""
    walk = load_walk()
    threads = torch.get_num_threads()
    try:
        r = walk.main([])
        plain = walk.walk(overrides=["fast=false"])
    finally:
        torch.set_num_threads(threads)
    assert json.loads(capsys.readouterr().out) == r
    fns = r["functions"]
    assert (
        r["fast"] is True
        and r["count"] == len(fns) == len(set(fns))
        and r["file_count"] == len(r["files"])
    )
    assert r["count"] <= 25, fns
    assert (
        fns[0] == "training/trainer.py:DINOTrainer.train_step"
        and fns[-1] == "dino_loss.py:DINOLoss.update_center"
    )
    met = files_a_learner_meets()
    assert {
        "patch_embedding.py",
        "attention.py",
        "vision_transformer.py",
        "dino_loss.py",
        "training/trainer.py",
    } <= met
    assert [f for f in fns if f.split(":")[0] not in met] == []  # no hidden module
    tricks = {
        "vision_transformer.py:Block.forward_cls",
        "attention.py:Attention.forward_cls",
        "vision_transformer.py:Block.forward_kept",
    }
    assert tricks <= set(fns) and not tricks & set(plain["functions"])
    assert (
        plain["fast"] is False
        and set(plain["functions"]) < set(fns)
        and plain["count"] == r["count"] - 3
    )
    assert (
        fns.count("patch_embedding.py:check_image_batch") == 1
        and "patch_embedding.py:PatchEmbed.forward" not in fns
    )


TINY = [
    "--arch",
    "vit_tiny",
    "--patch-size",
    "8",
    "--global-size",
    "16",
    "--local-size",
    "8",
    "--local-crops",
    "1",
    "--batch",
    "2",
    "--out-dim",
    "64",
    "--warmup",
    "0",
    "--repeat",
    "1",
    "--matmul-size",
    "64",
    "--threads",
    "1",
]


def check_step(r: dict) -> None:
    for key in (
        "step_s_median",
        "images_per_s",
        "crops_per_s",
        "user_cpu_s_median",
        "peak_memory_bytes",
        "model_flop_per_step",
        "achieved_flop_per_s",
        "fraction_of_matmul_peak",
        "fraction_of_step_in_own_matmuls",
        "loss",
    ):
        assert positive(r[key]), (key, r[key])
    assert len(r["step_s"]) == 1 and r["matmul"]["flop_per_s"] > 0
    assert set(r["breakdown_s_median"]) == {
        "teacher_forward",
        "student_forward",
        "loss",
        "backward",
        "clip_optimizer_ema",
    }
    assert all(v >= 0 and math.isfinite(v) for v in r["breakdown_s_median"].values())
    assert sum(r["breakdown_s_median"].values()) <= r["step_s_median"] * 1.05 + 1e-3


@pytest.mark.slow
def test_train_step_script_compares_ours_with_the_official_style_step():
    r = run_script("train_step.py", *TINY, "--compare")
    assert positive(r["step_s_median"]) and r["config"]["arch"] == "vit_tiny"
    assert (
        r["ours"]["implementation"] == "vitdino"
        and r["reference"]["implementation"] == "official_style_reference"
    )
    check_step(r["ours"])
    check_step(r["reference"])
    # the reference computes every token through the last block, as the official code does; ours the
    # CLS rows
    assert (
        r["reference"]["model_flop_per_step"]
        == r["reference"]["all_tokens_flop_per_step"]
        == r["ours"]["all_tokens_flop_per_step"]
    )
    assert r["ours"]["model_flop_per_step"] < r["reference"]["model_flop_per_step"]
    assert positive(r["reference_over_ours_wall"]) and positive(r["reference_over_ours_user_cpu"])
    assert r["ours"]["loss"] == pytest.approx(
        r["reference"]["loss"], rel=1e-4
    )  # the same maths, two execution strategies


@pytest.mark.slow
def test_train_step_paired_comparison_times_both_in_turn():
    r = run_script(
        "train_step.py", *TINY, "--compare", "--paired", "--repeat", "2", "--profile", "1"
    )
    assert r["timing"].startswith("paired")
    assert (
        r["ours"]["profile"]["by_kind_s"]["matmul"] > 0
        and r["reference"]["profile"]["by_kind_s"]["matmul"] > 0
    )
    # both embed patches with the convolution (the matmul form was not worth a separate path)
    assert (
        "convolution" in r["reference"]["profile"]["by_kind_s"]
        and "convolution" in r["ours"]["profile"]["by_kind_s"]
    )
    for side in ("ours", "reference"):
        assert len(r[side]["step_s"]) == 2 and positive(r[side]["peak_memory_bytes"])
    ratios = r["ours_over_reference_per_round"]
    assert len(ratios) == 2 and all(positive(x) for x in ratios)
    assert ratios == [a / b for a, b in zip(r["ours"]["step_s"], r["reference"]["step_s"])]
    assert r["ours_over_reference_paired_median"] == pytest.approx(sum(ratios) / 2)
    # each implementation keeps its own random stream (stochastic depth), so interleaving changes no
    # number
    alone = run_script("train_step.py", *TINY, "--compare", "--repeat", "2")
    assert (
        r["ours"]["loss"] == alone["ours"]["loss"]
        and r["reference"]["loss"] == alone["reference"]["loss"]
    )


def test_train_step_pairs_ours_in_bf16_with_the_reference_in_fp32(capsys):
    """The bf16 target compares ours in bf16 with the official-style step in fp32:
    --reference-dtype."""
    bench, threads = load_train_step(), torch.get_num_threads()
    try:
        r = bench.main(
            [
                *TINY,
                "--dtype",
                "bf16",
                "--reference-dtype",
                "fp32",
                "--compare",
                "--paired",
                "--repeat",
                "2",
            ]
        )
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    assert r["config"]["dtype"] == "bf16" and r["config"]["reference_dtype"] == "fp32"
    assert (
        r["ours"]["matmul"]["dtype"] == "bfloat16"
        and r["reference"]["matmul"]["dtype"] == "float32"
    )
    assert r["ours"]["loss"] != r["reference"]["loss"] and r["ours"]["loss"] == pytest.approx(
        r["reference"]["loss"], rel=2e-2
    )
    assert (
        bench.parse_args(TINY).reference_dtype == "fp32"
        and bench.parse_args([*TINY, "--dtype", "bf16"]).reference_dtype == "bf16"
    )


def test_ab_script_steps_each_trick_against_the_step_without_it(monkeypatch):
    """benchmarks/ab.py: one trainer per way, the `fast` flag turned off on one class's instances of
    its student and teacher only; every round steps each way once; the ratios are the step times'
    ratios to `all`; in fp32 the losses agree."""
    sys.path.insert(0, str(BENCH))
    try:
        import ab
    finally:
        sys.path.remove(str(BENCH))
    from vitdino_core import Attention, Block, VisionTransformer

    bench = load_train_step()
    monkeypatch.setattr(ab, "ts", bench)
    args = bench.parse_args(TINY)
    ways = ab.default_ways(args)
    assert list(ways) == [
        "all",
        "without_cls_only_last_block",
        "without_skip_dropped_branches",
    ]  # explicit_attention
    # only acts in CPU bf16
    assert "without_explicit_attention" in ab.default_ways(
        bench.parse_args([*TINY, "--dtype", "bf16"])
    )
    assert list(ab.default_ways(args, ["skip_dropped_branches"])) == [
        "all",
        "without_skip_dropped_branches",
    ]
    with pytest.raises(SystemExit, match="unknown"):
        ab.default_ways(args, ["skip_dropped"])
    built = []
    mode = bench.Mode
    monkeypatch.setattr(bench, "Mode", lambda *a, **k: built.append(mode(*a, **k)) or built[-1])
    threads = torch.get_num_threads()
    try:
        r = ab.ab_ways(ways, 3, args)
    finally:
        torch.set_num_threads(threads)
    assert r["rounds"] == 3 and set(r["ways"]) == set(ways)
    for w in r["ways"].values():
        assert len(w["step_s"]) == 3 and w["over_base_per_round"] == [
            x / b for x, b in zip(w["step_s"], r["ways"]["all"]["step_s"])
        ]

    def flags(
        way: int, kind: type
    ) -> set[bool]:  # the `fast` flags of one way's modules of one class, both models
        tr = built[way].trainer
        return {
            m.fast
            for model in (tr.student, tr.teacher)
            for m in model.modules()
            if isinstance(m, kind)
        }

    assert [flags(0, k) for k in (VisionTransformer, Block, Attention)] == [
        {True}
    ] * 3  # all: the trainer as built
    assert [flags(1, k) for k in (VisionTransformer, Block, Attention)] == [
        {False},
        {True},
        {True},
    ]  # one class off
    assert [flags(2, k) for k in (VisionTransformer, Block, Attention)] == [{True}, {False}, {True}]
    last = [w["last_loss"] for w in r["ways"].values()]
    assert (
        last[0] == pytest.approx(last[1], rel=1e-5) == pytest.approx(last[2], rel=1e-5)
    )  # fp32: the same maths
    assert ab.TRICKS == {
        "cls_only_last_block": VisionTransformer,
        "explicit_attention": Attention,
        "skip_dropped_branches": Block,
    }


def test_train_step_with_bf16_autocast_and_grad_checkpointing(capsys):
    """In-process (the script's main) to spare a second interpreter start-up."""
    bench, threads = load_train_step(), torch.get_num_threads()
    try:
        r = bench.main([*TINY, "--dtype", "bf16", "--grad-checkpointing"])
    finally:
        torch.set_num_threads(threads)
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(r))
    check_step(r)
    assert r["matmul"]["dtype"] == "bfloat16" and r["config"]["grad_checkpointing"] is True


def test_train_step_profile_says_where_the_time_went(capsys):
    bench, threads = load_train_step(), torch.get_num_threads()
    try:
        r = bench.main([*TINY, "--profile", "2"])
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    prof = r["profile"]
    assert prof["steps"] == 2 and r["config"]["profile"] == 2
    assert prof["by_kind_s"]["matmul"] > 0 and prof["by_kind_s"]["attention"] > 0
    assert sum(prof["by_kind_s"].values()) == pytest.approx(prof["operators_s"])
    assert sum(prof["by_kind_fraction"].values()) == pytest.approx(1.0)
    assert (
        prof["operators_s"] <= prof["profiled_step_s"] * 1.05
    )  # own times on one thread cannot exceed the wall time
    tops = [row["s_per_step"] for row in prof["top"]]
    assert tops == sorted(tops, reverse=True) and all(
        row["kind"] in prof["by_kind_s"] for row in prof["top"]
    )
    with pytest.raises(SystemExit):
        bench.parse_args([*TINY, "--profile", "-1"])


@pytest.mark.parametrize(
    "name, kind",
    [
        ("cudnn_generated_fort_native_sdpa_sm90_knob_7_64x128x64_4x1x1_kernel0_0", "attention"),
        (
            (
                "void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel"
                "<Flash_bwd_kernel_traits<64>>"
            ),
            "attention",
        ),
        ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTN", "matmul"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64", "matmul"),
        ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nchw", "convolution"),
        (
            "triton_poi_fused_convolution_gelu_3",
            "elementwise",
        ),  # a fused pointwise kernel, whatever ops it absorbed
        ("triton_red_fused_add_native_layer_norm_5", "normalization_softmax"),
        ("triton_tem_fused_mm_4", "matmul"),
        (
            "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamW>",
            "optimizer_ema",
        ),
        ("aten::addmm", "matmul"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", "attention"),
        ("aten::transpose", "views_allocation"),
        ("aten::gelu_backward", "elementwise"),
        ("aten::copy_", "copy_fill"),
        ("mkl::_mkl_linear", "matmul"),
        ("aten::layer_norm", "normalization_softmax"),
    ],
)
def test_profile_kinds(name, kind):
    assert load_train_step().kind_of(name) == kind


def test_explicit_attention_for_short_sequences_is_the_same_step(capsys, monkeypatch):
    import vitdino_core.attention as attention

    bench, threads = load_train_step(), torch.get_num_threads()
    monkeypatch.setattr(
        attention.Attention, "attend", attention.Attention.attend
    )  # the experiment's, restored after
    fused_calls, sdpa = [], attention.F.scaled_dot_product_attention
    monkeypatch.setattr(
        attention.F,
        "scaled_dot_product_attention",
        lambda *a, **k: fused_calls.append(1) or sdpa(*a, **k),
    )
    try:
        fused = bench.main(TINY)
        assert fused_calls
        # TINY's local crops: 1 patch + CLS; its global crops have 5 tokens
        bench.explicit_attention_upto(2)
        attn = attention.Attention(8, num_heads=2, fast=True)

        def seq(n):
            return torch.zeros(1, 2, n, 4)  # (B, H, N, d)

        fused_calls.clear()
        # explicit: weights returned
        assert attn.attend(seq(2), seq(2), seq(2))[1] is not None and not fused_calls
        assert attn.attend(seq(5), seq(5), seq(5))[1] is None and fused_calls  # fused
        fused_calls.clear()
        mixed = bench.main([*TINY, "--explicit-attention-upto", "5"])  # every sequence explicit
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    assert mixed["config"]["explicit_attention_upto"] == 5 and not fused_calls
    assert mixed["loss"] == pytest.approx(fused["loss"], rel=1e-5)


@pytest.mark.slow
def test_patch_embed_script_times_three_ways():
    r = run_script(
        "patch_embed.py",
        "--dim",
        "16",
        "--patch-size",
        "4",
        "--sizes",
        "16",
        "8",
        "--crops",
        "2",
        "3",
        "--warmup",
        "0",
        "--repeat",
        "1",
        "--threads",
        "1",
    )
    assert [(s["crops"], s["size"]) for s in r["shapes"]] == [(2, 16), (3, 8)]
    for s in r["shapes"]:
        for way in ("default", "channels_last", "matmul"):
            assert positive(s[way]["forward_ms"]) and positive(s[way]["forward_backward_ms"])
        assert s["max_abs_diff"] < 1e-5  # the same tokens every way
        assert positive(s["channels_last_over_default_forward_backward"]) and positive(
            s["matmul_over_default_forward_backward"]
        )


@pytest.mark.slow
def test_data_pipeline_script():
    r = run_script(
        "data_pipeline.py",
        "--dataset",
        "random",
        "--images",
        "12",
        "--global-size",
        "16",
        "--local-size",
        "8",
        "--local-crops",
        "1",
        "--batch",
        "4",
        "--batches",
        "1",
        "--workers",
        "0",
        "--threads",
        "1",
    )
    (cpu,) = r["cpu_path"]
    assert cpu["workers"] == 0 and all(
        positive(cpu[k]) for k in ("images_per_s", "crops_per_s", "cpu_s_per_image")
    )
    gpu = r["gpu_path"]
    assert all(
        positive(gpu[k])
        for k in ("augment_images_per_s", "augment_crops_per_s", "augment_s_per_batch")
    )
    assert gpu["output_shapes"] == [[8, 3, 16, 16], [4, 3, 8, 8]]
    assert positive(gpu["loader_uint8"][0]["images_per_s"])
    padded = run_script(
        "data_pipeline.py",
        "--dataset",
        "random",
        "--images",
        "12",
        "--global-size",
        "16",
        "--local-size",
        "8",
        "--local-crops",
        "1",
        "--batch",
        "4",
        "--batches",
        "1",
        "--workers",
        "0",
        "--threads",
        "1",
        "--skip-cpu-path",
        "--max-size",
        "20",
    )
    assert padded["config"]["max_size"] == 20 and padded["gpu_path"]["input_image_size"] == [
        20,
        20,
    ]  # shrunk, padded square
    assert padded["gpu_path"]["output_shapes"] == [[8, 3, 16, 16], [4, 3, 8, 8]]


def test_analytic_flops_match_pytorchs_flop_counter():
    """Forward FLOPs of the student (all crops) and the teacher (globals), counted by
    FlopCounterMode on the real modules with attention on its matmul path, equal the closed-form
    count."""
    bench = load_train_step()
    args = Namespace(
        arch="vit_tiny",
        patch_size=8,
        global_size=32,
        local_size=16,
        local_crops=2,
        batch=2,
        out_dim=96,
    )
    from vitdino_core import DINOHead, MultiCropWrapper, vit_tiny

    model = MultiCropWrapper(
        vit_tiny(patch_size=8, img_size=32, fast=True), DINOHead(192, 96)
    )  # as the trainer
    crops = [
        torch.randn(2 * args.batch, 3, 32, 32),
        torch.randn(args.local_crops * args.batch, 3, 16, 16),
    ]
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as student:
            model(crops)
        with FlopCounterMode(display=False) as teacher:
            model(crops[0])
    flops = bench.step_flops(args)
    assert flops["student_forward"] == student.get_total_flops()
    assert flops["teacher_forward"] == teacher.get_total_flops()
    assert flops["total"] == flops["teacher_forward"] + 3 * flops["student_forward"]
    # the plain forward (every token through the last block too), as the official code and its
    # reference run it
    model.backbone.fast = False
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as official:
        model(crops)
    assert (
        bench.step_flops(args, cls_only_last_block=False)["student_forward"]
        == official.get_total_flops()
    )
    assert official.get_total_flops() > 1.05 * student.get_total_flops()


def test_expected_skipped_flops_match_the_flops_a_dropping_student_leaves_out():
    """`expected_skipped_flops` is what skip_dropped_branches leaves out in expectation: the
    student's forward FLOPs, counted over many seeded forwards of the real modules in training
    mode, fall short of the model's count by a third of it (forward only; the backward's 2x
    follows the same rows)."""
    bench = load_train_step()
    args = Namespace(
        arch="vit_tiny",
        patch_size=8,
        global_size=32,
        local_size=16,
        local_crops=2,
        batch=4,
        out_dim=96,
    )
    from vitdino_core import DINOHead, MultiCropWrapper, vit_tiny

    rate = 0.5  # a high rate: many skipped rows in few forwards
    model = MultiCropWrapper(
        vit_tiny(patch_size=8, img_size=32, drop_path_rate=rate, fast=True), DINOHead(192, 96)
    )
    crops = [
        torch.randn(2 * args.batch, 3, 32, 32),
        torch.randn(args.local_crops * args.batch, 3, 16, 16),
    ]
    torch.manual_seed(0)
    counted = []
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        for _ in range(60):
            with FlopCounterMode(display=False) as student:
                model(crops)
            counted.append(student.get_total_flops())
    full = bench.step_flops(args)["student_forward"]
    skipped = full - sum(counted) / len(counted)  # per forward, on average
    expected = bench.expected_skipped_flops(args, drop_path_rate=rate) / 3
    assert expected > 0.1 * full  # a real share at this rate
    assert skipped == pytest.approx(expected, rel=0.08)
    assert bench.expected_skipped_flops(args, drop_path_rate=0.0) == 0


def test_anchor_step_is_about_810_gflop():
    """The anchor step was estimated at ~810 GFLOP; this count (which includes the head and
    attention) gives 831 for the official computation, and 774 for ours, whose last block
    computes the CLS rows alone."""
    bench = load_train_step()
    args = bench.parse_args(
        []
    )  # the defaults are the anchor: ViT-S/16, batch 8, 2x224 + 6x96, out_dim 65536
    assert bench.step_flops(args, cls_only_last_block=False)["total"] / 1e9 == pytest.approx(
        810, rel=0.03
    )
    assert bench.step_flops(args)["total"] / 1e9 == pytest.approx(774.5, abs=0.1)


def test_the_steps_own_matmul_shapes_add_up_to_its_analytic_flops():
    """The shapes timed alone (`own_matmuls_alone`) are exactly the step's matmuls: their FLOPs are
    the analytic step count minus the attention products, which are batched per head and not
    timed."""
    bench = load_train_step()
    args = bench.parse_args([])
    for cls_only in (True, False):  # ours, and the official computation
        flops = bench.step_flops(args, cls_only)
        globals_ = 2 * args.batch * flops["per_global_crop_forward"]["attention"]
        locals_ = args.local_crops * args.batch * flops["per_local_crop_forward"]["attention"]
        attention = globals_ + 3 * (
            globals_ + locals_
        )  # teacher forward; student forward + backward
        gemm = sum(
            2.0 * s["M"] * s["K"] * s["N"] * (s["forward_count"] + 2 * s["backward_count"])
            for s in bench.step_gemms(args, cls_only)
        )
        assert gemm == pytest.approx(flops["total"] - attention, rel=1e-12)
    for cls_only, shapes in (
        (True, 26),
        (False, 18),
    ):  # the CLS rows of the last block: 4 more shapes per resolution
        timed = bench.shape_matmul_time(
            bench.parse_args(TINY),
            torch.float32,
            torch.device("cpu"),
            repeat=1,
            cls_only_last_block=cls_only,
        )
        assert positive(timed["s"]) and timed["shapes"] == shapes


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["step", "contiguous"])
def test_attention_script_times_each_kernel_and_reports_the_unsupported(layout):
    r = run_script(
        "attention.py",
        "--dim",
        "32",
        "--heads",
        "2",
        "--patch-size",
        "4",
        "--sizes",
        "16",
        "8",
        "--crops",
        "2",
        "3",
        "--batch",
        "2",
        "--dtype",
        "fp32",
        "--warmup",
        "0",
        "--repeat",
        "1",
        "--layout",
        layout,
    )
    assert [(s["B"], s["H"], s["N"], s["d"]) for s in r["shapes"]] == [
        (4, 2, 17, 16),
        (6, 2, 5, 16),
    ]
    for shape in r["shapes"]:
        ran = {name: b for name, b in shape["backends"].items() if "error" not in b}
        assert {"flash", "math", "auto"} <= set(
            ran
        )  # these run on a CPU; the CUDA-only kernels say why they did not
        assert all(b["error"] for name, b in shape["backends"].items() if name not in ran)
        for b in ran.values():
            assert positive(b["forward_s"]) and positive(b["forward_backward_tflop_per_s"])
            assert (
                b["max_abs_diff_to_first"] < 1e-4
            )  # the same attention, whichever kernel computes it


def test_train_step_passes_compile_mode_and_sdpa_choice(monkeypatch):
    bench = load_train_step()
    seen = []
    monkeypatch.setattr(
        torch, "compile", lambda fn, **kw: seen.append(kw) or fn
    )  # record, do not compile
    args = bench.parse_args([*TINY, "--compile", "--compile-mode", "max-autotune-no-cudagraphs"])
    bench.make_trainer(args, steps=1, compile_backbones=True)
    assert (
        seen == [{"dynamic": False, "mode": "max-autotune-no-cudagraphs"}] * 2
    )  # student and teacher backbones
    flags = {
        b: getattr(torch.backends.cuda, f"{b}_sdp_enabled")()
        for b in ("flash", "mem_efficient", "cudnn", "math")
    }
    monkeypatch.setenv(
        "TORCHINDUCTOR_CACHE_DIR", "unset-at-teardown"
    )  # monkeypatch restores it afterwards
    try:
        bench.allow_only_sdpa("cudnn")
        assert [getattr(torch.backends.cuda, f"{b}_sdp_enabled")() for b in flags] == [
            False,
            False,
            True,
            False,
        ]
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"].endswith(
            "torchinductor_sdpa_cudnn"
        )  # no graph compiled for another kernel
    finally:
        for b, on in flags.items():
            getattr(torch.backends.cuda, f"enable_{b}_sdp")(on)


@pytest.mark.slow
def test_epoch_boundary_script(shared_data, monkeypatch):
    monkeypatch.setenv(
        "VITDINO_DATA", str(shared_data)
    )  # the subprocess reads imagenette-96 from there
    r = run_script(
        "epoch_boundary.py",
        "--images",
        "48",
        "--batch",
        "8",
        "--epochs",
        "2",
        "--set",
        "num_workers=1",
        "--set",
        "global_crops_size=24",
        "--set",
        "local_crops_size=12",
    )
    assert r["steps_per_epoch"] == 6 and len(r["first_step_of_epoch_s"]) == 1
    assert positive(r["other_steps_median_s"]) and math.isfinite(r["epoch_end_overhead_s_median"])


def gpu_suite_steps() -> list[str]:
    """The names of gpu_suite.sh's benchmark commands, read from the script (`run NAME ...` /
    `follow NAME ...`); names with an extension are runs of the training loop, not benchmark
    scripts, and are left out."""
    text = (BENCH / "gpu_suite.sh").read_text()
    names = re.findall(r"(?:^|&& )(?:run|follow) (\S+) \d+ ", text, flags=re.M)
    return [n for n in dict.fromkeys(names) if "." not in n]


@pytest.mark.slow
def test_gpu_suite_commands_parse(tmp_path, monkeypatch):
    """benchmarks/gpu_suite.sh runs where device time is scarce: run it with a stand-in python that
    only prints its arguments, and check that every benchmark command it would run parses, with the
    steps ONLY names and no others."""
    stub = tmp_path / "py"
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$*"\n')
    stub.chmod(0o755)
    steps = gpu_suite_steps()
    assert {
        "step_vits16",
        "step_vitb12_compile",
        "epoch_boundary_before",
        "patch_embed_vitb12",
    } <= set(steps)
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHON": str(stub),
        "ONLY": " ".join(steps),
        "VITDINO_DATA": str(tmp_path),  # no photos to link
        "BEFORE": str(REPO),
    }  # epoch_boundary_before runs $BEFORE/benchmarks/epoch_boundary.py
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu_suite.sh"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{s}.json" for s in steps] + ["log.txt"]
    )
    for step in steps:
        script, *argv = (out / f"{step}.json").read_text().split()
        spec = importlib.util.spec_from_file_location(f"suite_{step}", REPO / script)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mod.parse_args(argv)  # exits (SystemExit) on an unknown flag or a bad value
    assert (
        "--explicit-attention-upto 65"
        in (out / "step_vitb12_compile_explicit_local.json").read_text()
    )
    assert "--profile 3" in (out / "step_vitb12_compile.json").read_text()
    six = load_train_step().parse_args(
        (out / "step_vitb12_6local_compile.json").read_text().split()[1:]
    )
    assert (six.arch, six.local_crops, six.compile) == ("vit_base", 6, True)


def test_workshop_pictures_draws_attention_and_pca_of_every_network(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_pictures", BENCH / "workshop_pictures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from vitdino_core import VisionTransformer

    torch.manual_seed(0)
    images = torch.randn(3, 3, 24, 24)  # (n, 3, S, S): 2 x 2 patches of 12 px
    columns = []
    for registers in (0, 4):  # the DINOv2 run's registers must not reach the maps
        model = VisionTransformer(
            img_size=24,
            patch_size=12,
            embed_dim=16,
            depth=1,
            num_heads=2,
            num_register_tokens=registers,
        ).eval()
        attn, pca = mod.pictures(model, images)
        assert attn.shape == (3, 2, 2) and pca.shape == (3, 2, 2, 3)
        for i in range(3):  # each map scaled to [0, 1] on its own
            assert attn[i].min() == 0 and torch.isclose(attn[i].max(), torch.tensor(1.0))
        assert 0 <= pca.min() and pca.max() <= 1
        columns.append((f"{registers} registers", attn, pca))
    rgb = torch.rand(3, 24, 24, 3)
    for kind in ("attention", "pca"):
        fig = mod.draw(kind, rgb, ["a", "b", "c"], columns, 24)
        assert len(fig.axes) == 3 * (1 + len(columns))
        assert [ax.get_title() for ax in fig.axes[1:3]] == ["0 registers", "4 registers"]
    missing = mod.main(["--runs", str(tmp_path), "--out", str(tmp_path / "x.png")])
    assert missing == 2  # no kept runs there: one line, no traceback

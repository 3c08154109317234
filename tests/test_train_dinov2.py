"""DINOv2's additions in the trainer: config keys, the step with iBOT, KoLeo, Sinkhorn-Knopp and
registers, checkpoints that resume bit for bit, and a plain DINO run left as it was."""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from vitdino_core import VisionTransformer
from vitdino_core.checkpoint import backbone_state_dict, build_backbone_from_checkpoint
from vitdino_core.dino_loss import DINOHead
from vitdino_core.dinov2 import MaskedMultiCropWrapper
from vitdino_core.multicrop import MultiCropWrapper
from vitdino_core.train import main
from vitdino_core.training.config import FIELDS, ConfigError, load_config
from vitdino_core.training.run_state import RESUME_CHANGEABLE
from vitdino_core.training.trainer import build_student, train

sys.path.insert(0, str(Path(__file__).parent))
from test_train import read_metrics, tiny_overrides  # noqa: E402

DINOV2_KEYS = (
    "num_register_tokens",
    "koleo_loss_weight",
    "centering",
    "ibot",
    "ibot_loss_weight",
    "ibot_mask_ratio_min_max",
    "ibot_mask_sample_probability",
    "ibot_separate_head",
    "ibot_head_n_prototypes",
)


def dinov2_args(out: Path, *extra: str, **values) -> list[str]:
    """workshop_dinov2 shrunk as test_train shrinks workshop_tiny (48 px global crops: a 4 x 4
    patch grid to mask)."""
    args = ["--config", "workshop_dinov2"]
    for item in [*tiny_overrides(out, **values), *extra]:
        args += ["--set", item]
    return args


@pytest.fixture
def data_env(shared_data, monkeypatch):
    monkeypatch.setenv("VITDINO_DATA", str(shared_data))
    return shared_data


def assert_equal_state(a, b, where: str = "") -> None:
    """Every tensor of two nested checkpoint parts equal (torch.equal), every other value equal."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_equal_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_state(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


# ----------------------------------------------------------------------------- config


def test_the_shipped_dinov2_config_is_workshop_tiny_plus_dinov2s_additions():
    tiny, v2 = load_config("workshop_tiny"), load_config("workshop_dinov2")
    differ = {k for k in FIELDS if getattr(tiny, k) != getattr(v2, k)}
    assert differ == {"run_name", "num_register_tokens", "koleo_loss_weight", "centering", "ibot"}
    assert (v2.num_register_tokens, v2.koleo_loss_weight, v2.centering, v2.ibot) == (
        4,
        0.1,
        "sinkhorn_knopp",
        True,
    )
    assert (tiny.num_register_tokens, tiny.koleo_loss_weight, tiny.centering, tiny.ibot) == (
        0,
        0.0,
        "centering",
        False,
    )  # the defaults are plain DINO


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["centering=softmax"], "centering: 'softmax' is not one of centering, sinkhorn_knopp"),
        (["koleo_loss_weight=-0.1"], "koleo_loss_weight must be >= 0, got -0.1"),
        (["num_register_tokens=-1"], "num_register_tokens must be >= 0, got -1"),
        (["ibot_loss_weight=-1"], "ibot_loss_weight must be >= 0"),
        (["ibot_head_n_prototypes=-2"], "ibot_head_n_prototypes must be >= 0"),
        (["ibot_mask_ratio_min_max=[0.5,0.1]"], "ibot_mask_ratio_min_max must satisfy 0 <= min"),
        (["ibot_mask_ratio_min_max=[0.1]"], "ibot_mask_ratio_min_max: expected a list of 2"),
        (["ibot_mask_sample_probability=1.5"], "ibot_mask_sample_probability must be in [0, 1]"),
        (["ibot_mask_sample_probability=0.01"], "masks int(64 x 0.01) = 0 of the 64 global crops"),
        (["ibot_head_n_prototypes=64"], "set ibot=true and ibot_separate_head=true"),
        (
            ["global_crops_size=24", "local_crops_size=12"],
            "0.5 of the 4 patches of a global crop is 2, fewer than the 4-patch rectangles",
        ),
        (["ibot=yes please"], "ibot: expected true or false"),
    ],
)
def test_a_bad_dinov2_key_is_one_clear_error_naming_it(overrides, words):
    with pytest.raises(ConfigError, match=re.escape(words)) as e:
        load_config("workshop_dinov2", overrides)
    assert "\n" not in str(e.value)


def test_resume_keeps_every_dinov2_key_as_the_run_had_it():
    assert not set(DINOV2_KEYS) & set(RESUME_CHANGEABLE)
    assert set(DINOV2_KEYS) <= set(FIELDS)


def test_defaults_build_the_plain_dino_student():
    cfg = load_config("workshop_tiny", ["out_dim=64"])
    student = build_student(cfg)
    assert type(student) is MultiCropWrapper
    assert not any("register" in k or "mask_token" in k for k in student.state_dict())
    cfg = load_config("workshop_dinov2", ["out_dim=64", "ibot_separate_head=true"])
    student = build_student(cfg)
    assert type(student) is MaskedMultiCropWrapper
    assert student.backbone.register_tokens.shape == (1, 4, 192)
    assert student.backbone.mask_token.shape == (1, 192)
    assert student.ibot_head.last_layer.out_features == 64  # 0 prototypes: out_dim
    cfg = load_config("workshop_tiny", ["koleo_loss_weight=0.1", "out_dim=64"])
    student = build_student(cfg)
    assert type(student) is MaskedMultiCropWrapper  # KoLeo reads the CLS features
    assert not hasattr(student.backbone, "mask_token")


# ----------------------------------------------------------------------------- the wrapper


def tiny_vit(**kwargs) -> VisionTransformer:
    return VisionTransformer(
        img_size=48, patch_size=12, embed_dim=32, depth=2, num_heads=2, **kwargs
    )


def test_the_masked_wrapper_gives_cls_features_cls_logits_and_masked_patch_logits():
    torch.manual_seed(0)
    backbone = tiny_vit(num_register_tokens=2, use_mask_token=True)
    with torch.no_grad():
        backbone.mask_token.normal_()
    w = MaskedMultiCropWrapper(backbone, DINOHead(32, 16, hidden_dim=64)).eval()
    g, loc = torch.randn(4, 3, 48, 48), torch.randn(8, 3, 24, 24)
    masks = torch.zeros(4, 16, dtype=torch.bool)
    masks[0, :5], masks[2, 3:9] = True, True
    idx = masks.flatten().nonzero().flatten()  # (M,) = (11,)
    with torch.no_grad():
        student = w([g, loc], masks=masks, mask_indices=idx)
        teacher = w([g], mask_indices=idx)
        feats = backbone.forward_features_dict(g, masks)
        whole = backbone.forward_features_dict(g)
    assert_close(student["cls"], torch.cat([feats["x_norm_clstoken"], backbone(loc)]))
    assert_close(student["cls_logits"], w.head(student["cls"]))
    patches = feats["x_norm_patchtokens"].flatten(0, 1)[idx]  # (M, D)
    assert student["patch_logits"].shape == (11, 16)
    assert_close(student["patch_logits"], w.head(patches), atol=1e-5, rtol=1e-4)
    assert_close(teacher["cls"], whole["x_norm_clstoken"])
    assert_close(teacher["patch_logits"], w.head(whole["x_norm_patchtokens"].flatten(0, 1)[idx]))
    assert not torch.allclose(teacher["patch_logits"], student["patch_logits"])  # masked input
    assert_close(teacher["cls_logits"][1], student["cls_logits"][1])  # image 1: nothing masked

    koleo_only = MaskedMultiCropWrapper(tiny_vit(), DINOHead(32, 16, hidden_dim=64)).eval()
    with torch.no_grad():
        out = koleo_only([g, loc])
        assert out["patch_logits"] is None
        assert_close(out["cls"], torch.cat([koleo_only.backbone(g), koleo_only.backbone(loc)]))


def test_a_separate_ibot_head_maps_the_patches_and_is_no_backbone_weight():
    torch.manual_seed(0)
    w = MaskedMultiCropWrapper(
        tiny_vit(use_mask_token=True),
        DINOHead(32, 16, hidden_dim=64),
        DINOHead(32, 8, hidden_dim=64),
    ).eval()
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[1, 4:12] = True
    idx = masks.flatten().nonzero().flatten()
    with torch.no_grad():
        out = w([torch.randn(2, 3, 48, 48)], masks=masks, mask_indices=idx)
    assert out["cls_logits"].shape == (2, 16) and out["patch_logits"].shape == (8, 8)
    sd = {f"backbone.{k}": v for k, v in w.backbone.state_dict().items()}
    assert any(k.startswith("ibot_head.") for k in w.state_dict())
    assert backbone_state_dict({"teacher": w.state_dict()}).keys() == w.backbone.state_dict().keys()
    assert sd.keys() <= w.state_dict().keys()


# ----------------------------------------------------------------------------- training


def test_the_shipped_dinov2_config_trains_two_steps_on_a_cpu(data_env, tmp_path):
    """workshop_dinov2 as shipped (72 px crops, its model), on 16 images, batch 8: two steps whose
    loss is the DINO loss plus the KoLeo and iBOT terms; the teacher follows the student's new
    parameters; Sinkhorn-Knopp leaves the centres untouched."""
    cfg = load_config(
        "workshop_dinov2",
        [
            f"output_dir={tmp_path}",
            "max_images=16",
            "batch_size_per_gpu=8",
            "num_workers=0",
            "threads=1",
            "max_steps=2",
            "log_every=1",
            "device=cpu",
        ],
    )
    trainer = train(cfg, quiet=True)
    assert (
        "dinov2: iBOT (weight 1, the DINO head), KoLeo (weight 0.1), Sinkhorn-Knopp centering,"
        " 4 registers" in trainer.summary().splitlines()
    )
    records = read_metrics(tmp_path / "workshop_dinov2")
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert r["koleo_loss"] != 0 and r["ibot_loss"] > 0 and r["dino_loss"] > 0
        assert r["loss"] == pytest.approx(r["dino_loss"] + r["koleo_loss"] + r["ibot_loss"])
    ckpt = trainer.state_dict()
    teacher, student = ckpt["teacher"], ckpt["student"]
    assert teacher["backbone.register_tokens"].shape == (1, 4, 192)
    assert teacher["backbone.mask_token"].abs().sum() > 0  # zeros at the start: EMA moved it
    assert torch.equal(ckpt["dino_loss"]["center"], torch.zeros(1, 1024))  # no centre with SK
    assert torch.equal(ckpt["ibot_patch_loss"]["center"], torch.zeros(1, 1, 1024))
    assert not torch.equal(teacher["backbone.mask_token"], student["backbone.mask_token"])

    # the masks of a step: the same on a second draw, and Python's own stream left as it was
    state = random.getstate()
    a, b = trainer.ibot_masks(16), trainer.ibot_masks(16)
    assert random.getstate() == state
    assert torch.equal(a["collated_masks"], b["collated_masks"]) and a["n_masked"] > 0
    assert a["collated_masks"].shape == (16, 36) and a["collated_masks"].any(1).sum() == 8
    trainer.step += 1
    assert not torch.equal(trainer.ibot_masks(16)["collated_masks"], a["collated_masks"])

    model, info = build_backbone_from_checkpoint(tmp_path / "workshop_dinov2" / "checkpoint.pth")
    assert model.num_register_tokens == 4 and info["num_register_tokens"] == 4
    assert torch.equal(model.mask_token, teacher["backbone.mask_token"])


@pytest.mark.parametrize(
    "extra",
    [
        [],  # as shipped: iBOT (shared head), KoLeo, Sinkhorn-Knopp, 4 registers
        ["centering=centering", "ibot_separate_head=true", "ibot_head_n_prototypes=64"],
    ],
    ids=["sinkhorn_knopp", "centering-separate-head"],
)
def test_a_dinov2_run_resumes_bit_for_bit(data_env, tmp_path, extra):
    """3 steps, stop, resume to 8 (across an epoch boundary) == 8 steps in one go: every weight,
    centre and optimizer moment equal (torch.equal)."""
    assert main(dinov2_args(tmp_path / "a", *extra, max_steps=8)) == 0
    assert main(dinov2_args(tmp_path / "b", *extra, max_steps=3)) == 0
    assert main(dinov2_args(tmp_path / "b", *extra, max_steps=8) + ["--resume"]) == 0
    a = torch.load(tmp_path / "a" / "workshop_dinov2" / "checkpoint.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "workshop_dinov2" / "checkpoint.pth", weights_only=True)
    assert a["step"] == b["step"] == 8
    for part in ("student", "teacher", "dino_loss", "ibot_patch_loss", "optimizer"):
        assert_equal_state(a[part], b[part], part)
    if extra:  # the running centres of the CLS and patch outputs are saved and moved
        assert a["ibot_patch_loss"]["center"].abs().sum() > 0
        assert a["dino_loss"]["center"].abs().sum() > 0
        assert a["teacher"]["ibot_head.last_layer.parametrizations.weight.original1"].shape == (
            64,
            256,
        )


def test_resume_refuses_to_turn_a_dinov2_addition_off(data_env, tmp_path, capsys):
    assert main(dinov2_args(tmp_path, max_steps=1)) == 0
    ckpt = tmp_path / "workshop_dinov2" / "checkpoint.pth"
    before = ckpt.read_bytes()
    capsys.readouterr()
    assert main(dinov2_args(tmp_path, "ibot=false", max_steps=2) + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "ibot (True -> False)" in err and "--resume continues the run as it was" in err
    assert ckpt.read_bytes() == before


class NoImages(torch.utils.data.Dataset):
    """A length for the trainer's sampler; the test feeds `train_step` its crops directly."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        raise RuntimeError("not read: train_step is fed directly")


@pytest.mark.parametrize("centering", ["sinkhorn_knopp", "centering"])
def test_one_step_s_loss_is_dinov2s_sum_computed_by_hand(tmp_path, centering):
    """The loss of one step, rebuilt from the backbone, the head and the dinov2.py pieces: the
    DINO cross-entropy over (teacher global view, other student view) pairs on Sinkhorn-Knopp (or
    centred) targets, + 0.1 x KoLeo per global view, + iBOT's loss on the masked patches."""
    from vitdino_core.dinov2 import KoLeoLoss, iBOTPatchLoss, sinkhorn_knopp_teacher
    from vitdino_core.training.trainer import DINOTrainer

    cfg = load_config(
        "workshop_dinov2",
        tiny_overrides(tmp_path, max_images=16)
        + ["drop_path_rate=0", "device=cpu", "precision=fp32", f"centering={centering}"],
    )
    torch.manual_seed(0)
    trainer = DINOTrainer(cfg, dataset=NoImages(16), quiet=True)
    student, teacher = trainer.student, trainer.teacher
    with torch.no_grad():  # the centres as a run would have them after some steps
        trainer.loss_fn.center.normal_(0, 0.1)
        trainer.ibot_patch_loss.center.normal_(0, 0.1)
    dino_center = trainer.loss_fn.center.clone()
    patch_center = trainer.ibot_patch_loss.center.clone()
    g = torch.Generator().manual_seed(0)
    B = cfg.batch_size_per_gpu
    global_crops = torch.randn(2 * B, 3, 48, 48, generator=g)  # (2B, 3, 48, 48)
    local_crops = torch.randn(2 * B, 3, 24, 24, generator=g)  # (2B, 3, 24, 24): 2 local views
    masks = trainer.ibot_masks(2 * B)  # the masks this step draws
    m, idx = masks["collated_masks"], masks["mask_indices_list"]
    with torch.no_grad():
        t = teacher.backbone.forward_features_dict(global_crops)
        s = student.backbone.forward_features_dict(global_crops, m)
        s_local = student.backbone(local_crops)  # (2B, D)
        t_cls = teacher.head(t["x_norm_clstoken"])  # (2B, K)
        s_cls = student.head(torch.cat([s["x_norm_clstoken"], s_local]))  # (4B, K)
        t_patch = teacher.head(t["x_norm_patchtokens"].flatten(0, 1)[idx])  # (M, K)
        s_patch = student.head(s["x_norm_patchtokens"].flatten(0, 1)[idx])  # (M, K)
        if centering == "sinkhorn_knopp":
            q = sinkhorn_knopp_teacher(t_cls, cfg.teacher_temp)  # (2B, K)
            q_patch = sinkhorn_knopp_teacher(t_patch, cfg.teacher_temp)  # (M, K)
        else:
            q = ((t_cls - dino_center) / cfg.teacher_temp).softmax(-1)
            q_patch = ((t_patch - patch_center[0]) / cfg.teacher_temp).softmax(-1)
        log_p = (s_cls / cfg.student_temp).log_softmax(-1).chunk(4)  # 4 x (B, K)
        pairs = [
            -(qv * log_p[v]).sum(-1).mean()
            for iq, qv in enumerate(q.chunk(2))
            for v in range(4)
            if v != iq
        ]
        dino = sum(pairs) / len(pairs)
        koleo = 0.1 * sum(KoLeoLoss()(c) for c in s["x_norm_clstoken"].chunk(2))
        ibot = iBOTPatchLoss(cfg.out_dim).forward_masked(
            s_patch, q_patch, m, masks_weight=masks["masks_weight"]
        )
    loss = trainer.train_step(global_crops, local_crops)
    assert_close(loss, dino + koleo + ibot, rtol=1e-5, atol=1e-5)
    assert masks["n_masked"] > 0 and ibot > 0
    if centering == "sinkhorn_knopp":  # no centre in use: none moves
        assert torch.equal(trainer.loss_fn.center, dino_center)
        assert torch.equal(trainer.ibot_patch_loss.center, patch_center)
    else:  # each centre moves towards the mean of its teacher outputs
        want = 0.9 * patch_center + 0.1 * t_patch.mean(0)
        assert_close(trainer.ibot_patch_loss.center, want)
        assert_close(trainer.loss_fn.center, 0.9 * dino_center + 0.1 * t_cls.mean(0))

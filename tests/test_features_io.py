"""Features on disk (vitdino_core.features): written by --save-features, scored again by --features,
exactly."""

from __future__ import annotations

import json

import pytest
import torch

from vitdino_core import knn_classifier, linear_probe
from vitdino_core.checkpoint import build_random_backbone
from vitdino_core.eval_protocol import evaluate_features, score_features
from vitdino_core.evaluate import main
from vitdino_core.features import load_features, save_features

RANDOM = [
    "--dataset",
    "random",
    "--image-size",
    "24",
    "--max-train",
    "60",
    "--max-val",
    "30",
    "--batch-size",
    "30",
]


def run_main(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_saved_features_give_the_same_scores_exactly(tmp_path):
    model, info = build_random_backbone("vit_tiny", 12, 24)
    feats = tmp_path / "feats"
    in_one_go = evaluate_features(
        model,
        "random",
        image_size=24,
        max_train=60,
        max_val=30,
        batch_size=30,
        save_dir=feats,
        meta={"model": "vit_tiny/12 random init"},
    )
    f = load_features(feats)
    assert (
        f.train_x.shape == (60, 192)
        and f.val_x.shape == (30, 192)
        and f.train_x.dtype == torch.float32
    )
    assert len(f.train_paths) == 60 and f.train_paths[0].startswith("random:train:")
    from_disk = score_features(f.train_x, f.train_y, f.val_x, f.val_y)
    assert from_disk | {"image_size": 24, "data": in_one_go["data"]} == in_one_go
    # and unrounded: the arrays round-trip bit for bit, so the classifiers see the same numbers
    model_again, _ = build_random_backbone("vit_tiny", 12, 24)
    f2 = tmp_path / "again"
    evaluate_features(
        model_again, "random", image_size=24, max_train=60, max_val=30, batch_size=30, save_dir=f2
    )
    g = load_features(f2)
    assert torch.equal(f.train_x, g.train_x) and torch.equal(f.val_y, g.val_y)
    assert knn_classifier(
        f.train_x, f.train_y, f.val_x, f.val_y, return_top5=True
    ) == knn_classifier(g.train_x, g.train_y, g.val_x, g.val_y, return_top5=True)
    assert linear_probe(f.train_x, f.train_y, f.val_x, f.val_y) == linear_probe(
        g.train_x, g.train_y, g.val_x, g.val_y
    )
    meta = f.meta
    assert (
        meta["model"] == "vit_tiny/12 random init"
        and meta["image_size"] == 24
        and meta["num_train"] == 60
    )
    assert (
        meta["normalisation"]["mean"] == [0.485, 0.456, 0.406]
        and meta["data"]["dataset"] == "random"
    )
    assert meta["date"].startswith("20") and meta["feature_dim"] == 192


def test_library_round_trip_is_exact(tmp_path):
    g = torch.Generator().manual_seed(0)
    tx, vx = torch.randn(50, 8, generator=g), torch.randn(20, 8, generator=g)  # (N, D), (M, D)
    ty, vy = torch.randint(0, 3, (50,), generator=g), torch.randint(0, 3, (20,), generator=g)
    save_features(
        tmp_path, tx, ty, vx, vy, [f"img/{i}.jpg" for i in range(50)], None, {"model": "test"}
    )
    f = load_features(tmp_path)
    assert (
        torch.equal(f.train_x, tx)
        and torch.equal(f.train_y, ty)
        and torch.equal(f.val_x, vx)
        and torch.equal(f.val_y, vy)
    )
    assert (
        f.train_paths[7] == "img/7.jpg" and f.val_paths[0] == "val:0" and f.meta["model"] == "test"
    )


def test_cli_save_then_score_from_the_folder(tmp_path, capsys):
    feats = tmp_path / "feats"
    code, out, err = run_main(
        [
            "--random-init",
            "--arch",
            "vit_tiny",
            "--patch-size",
            "12",
            *RANDOM,
            "--save-features",
            str(feats),
        ],
        capsys,
    )
    assert code == 0, err
    first = json.loads(out)
    assert first["saved_features"] == str(feats)
    assert sorted(p.name for p in feats.iterdir()) == sorted(
        ["features.json"]
        + [
            f"{s}_{n}"
            for s in ("train", "val")
            for n in ("features.npy", "labels.npy", "paths.txt")
        ]
    )
    code, out, err = run_main(["--features", str(feats)], capsys)
    assert code == 0, err
    again = json.loads(out)
    for key in (
        "knn_top1",
        "knn_top5",
        "k",
        "T",
        "linear_top1",
        "linear_C",
        "num_train",
        "num_val",
        "feature_dim",
        "image_size",
        "model",
        "dataset",
    ):
        assert again[key] == first[key], key
    code, out, _ = run_main(["--features", str(feats), "--k", "5", "--no-probe"], capsys)
    assert code == 0 and json.loads(out)["k"] == 5 and json.loads(out)["linear_top1"] is None


def test_features_folder_mistakes(tmp_path, capsys):
    code, out, err = run_main(["--features", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and out == "" and "features folder not found" in err and err.count("\n") == 1
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "train_features.npy").write_bytes(b"")
    code, out, err = run_main(["--features", str(tmp_path / "half")], capsys)
    assert code == 2 and "is not a complete features folder" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:  # argparse: these were fixed when the features were saved
        main(["--features", str(tmp_path), "--dataset", "random", "--image-size", "24"])
    assert e.value.code == 2 and "--dataset, --image-size do not apply" in capsys.readouterr().err

"""Weighted kNN, the linear probe and feature extraction (vitdino_core.linear_probe)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitdino_core import (
    build_dataset,
    eval_transform,
    extract_features,
    knn_classifier,
    linear_probe,
    raw_pixel_features,
    vit_tiny,
)


def clustered(n: int, num_classes: int = 10, dim: int = 32, noise: float = 0.1, seed: int = 0):
    """Features around one random centre per class: trivially separable."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g)  # (C, D)
    labels = torch.arange(n) % num_classes  # (n,)
    return centres[labels] + noise * torch.randn(n, dim, generator=g), labels  # (n, D), (n,)


def brute_force_knn(train_x, train_y, x, k, T, num_classes):
    """One test sample, the slow obvious way: cosine to every train sample, sort, vote."""
    sims = [float(F.cosine_similarity(x, t, dim=0)) for t in train_x]
    order = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
    votes = [0.0] * num_classes
    for i in order:
        votes[int(train_y[i])] += math.exp(sims[i] / T)
    return sorted(range(num_classes), key=lambda c: -votes[c])


def test_knn_separable_is_perfect_and_random_labels_are_chance():
    train_x, train_y = clustered(500)
    test_x, test_y = clustered(200, seed=0)
    assert knn_classifier(train_x, train_y, test_x, test_y) == pytest.approx(100.0)
    g = torch.Generator().manual_seed(1)
    rand_train, rand_test = (
        torch.randn(2000, 64, generator=g),
        torch.randn(1000, 64, generator=g),
    )  # (N, D)
    acc = knn_classifier(
        rand_train,
        torch.randint(0, 10, (2000,), generator=g),
        rand_test,
        torch.randint(0, 10, (1000,), generator=g),
    )
    assert 5.0 < acc < 15.0  # chance is 10%


def test_knn_matches_brute_force_per_sample():
    g = torch.Generator().manual_seed(0)
    num_classes, k, T = 5, 7, 0.07
    train_x, train_y = (
        torch.randn(60, 8, generator=g),
        torch.randint(0, num_classes, (60,), generator=g),
    )
    test_x, test_y = (
        torch.randn(25, 8, generator=g),
        torch.randint(0, num_classes, (25,), generator=g),
    )
    hits1 = hits5 = 0
    for x, y in zip(test_x, test_y):
        ranking = brute_force_knn(train_x, train_y, x, k, T, num_classes)
        top1, top5 = knn_classifier(
            train_x, train_y, x[None], y[None], k=k, T=T, num_classes=num_classes, return_top5=True
        )
        assert top1 == (100.0 if ranking[0] == y else 0.0)
        assert top5 == (100.0 if y in ranking[:5] else 0.0)
        hits1, hits5 = hits1 + (ranking[0] == y), hits5 + (y in ranking[:5])
    # the whole set at once, in odd-sized chunks, gives the same totals
    top1, top5 = knn_classifier(
        train_x,
        train_y,
        test_x,
        test_y,
        k=k,
        T=T,
        num_classes=num_classes,
        chunk=7,
        return_top5=True,
    )
    assert top1 == pytest.approx(100.0 * hits1 / 25) and top5 == pytest.approx(100.0 * hits5 / 25)


def test_knn_ignores_feature_scale_and_rejects_bad_shapes():
    train_x, train_y = clustered(100, noise=1.0)
    test_x, test_y = clustered(50, noise=1.0, seed=0)
    acc = knn_classifier(train_x, train_y, test_x, test_y)
    assert knn_classifier(3.0 * train_x, train_y, 0.5 * test_x, test_y) == pytest.approx(
        acc
    )  # cosine: scale-free
    with pytest.raises(ValueError, match="test_labels"):
        knn_classifier(train_x, train_y, test_x, test_y[:-1])
    with pytest.raises(ValueError, match="k="):
        knn_classifier(train_x, train_y, test_x, test_y, k=1000)


def test_linear_probe_separable_and_random():
    train_x, train_y = clustered(400, noise=0.5)
    test_x, test_y = clustered(200, noise=0.5, seed=0)
    res = linear_probe(train_x, train_y, test_x, test_y)
    assert res["top1"] > 99.0 and res["C"] in (0.01, 0.1, 1.0)
    g = torch.Generator().manual_seed(2)
    res = linear_probe(
        torch.randn(600, 16, generator=g),
        torch.randint(0, 10, (600,), generator=g),
        torch.randn(600, 16, generator=g),
        torch.randint(0, 10, (600,), generator=g),
    )
    assert 3.0 < res["top1"] < 17.0


def test_linear_probe_never_looks_at_test_labels_to_choose_C():
    train_x, train_y = clustered(300, noise=3.0)
    test_x, test_y = clustered(100, noise=3.0, seed=0)
    a = linear_probe(train_x, train_y, test_x, test_y, Cs=(0.001, 0.1, 10.0))
    b = linear_probe(train_x, train_y, test_x, torch.roll(test_y, 1), Cs=(0.001, 0.1, 10.0))
    assert a["C"] == b["C"] and a["val_scores"] == b["val_scores"]


def test_extract_features_normalised_eval_mode_and_restores_mode():
    torch.manual_seed(0)
    model = vit_tiny(patch_size=12, img_size=24).train()
    ds = build_dataset("random", "val", transform=eval_transform(24), image_size=32, num_images=10)
    feats, labels = extract_features(model, ds, batch_size=4)
    assert feats.shape == (10, 192) and feats.dtype == torch.float32 and labels.dtype == torch.long
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(10))
    assert model.training  # left as it was
    raw, _ = extract_features(model, ds, batch_size=10, normalize=False)
    with torch.no_grad():
        expected = model.eval()(torch.stack([ds[i][0] for i in range(10)]))  # (10, D)
    torch.testing.assert_close(raw, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(TypeError, match="transform"):
        extract_features(model, build_dataset("random", "val", num_images=4))


def test_raw_pixel_knn_reproduces_the_data_readme(shared_data):
    """The README's baseline, 28.3% at 32 px: a strong end-to-end check of knn_classifier."""
    data = shared_data / "imagenette-96"
    train_x, train_y = raw_pixel_features(
        build_dataset("imagenette", "train", data_path=str(data)), 32
    )  # (9469, 3072)
    val_x, val_y = raw_pixel_features(
        build_dataset("imagenette", "val", data_path=str(data)), 32
    )  # (3925, 3072)
    assert train_x.shape == (9469, 3 * 32 * 32) and val_x.shape[0] == 3925
    assert knn_classifier(train_x, train_y, val_x, val_y, k=20, T=0.07) == pytest.approx(
        28.3, abs=0.3
    )

"""Few-label evaluation: kNN and the linear probe with 1, 2, 5, ... labels per class
(vitdino_core.linear_probe)."""

from __future__ import annotations

import pytest
import torch

from vitdino_core.linear_probe import (
    few_shot_indices,
    knn_classifier,
    label_efficiency,
    linear_probe,
    summarize_label_efficiency,
)


def noisy_clusters(n: int, num_classes: int = 5, dim: int = 16, noise: float = 1.0, seed: int = 0):
    """One centre per class and a lot of noise: a few labels are not enough, many are."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(num_classes, dim, generator=g)  # (C, D), the same for train and val
    g.manual_seed(seed)
    labels = torch.arange(n) % num_classes  # (n,)
    return centres[labels] + noise * torch.randn(n, dim, generator=g), labels  # (n, D), (n,)


def test_few_shot_indices_draw_the_given_number_per_class_reproducibly():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 7)
    idx = few_shot_indices(labels, 5, seed=1)
    assert torch.equal(torch.bincount(labels[idx]), torch.tensor([5, 3, 5]))  # class 1 has only 3
    assert len(idx.unique()) == len(idx)
    assert torch.equal(idx, few_shot_indices(labels, 5, seed=1))
    assert not torch.equal(idx, few_shot_indices(labels, 5, seed=2))


def test_label_efficiency_rows_scores_and_summary():
    train_x, train_y = noisy_clusters(500)
    val_x, val_y = noisy_clusters(300, seed=1)
    rows = label_efficiency(train_x, train_y, val_x, val_y, shots=(1, 5, None), draws=3, seed=0)
    assert [(r["shots"], r["draw"]) for r in rows] == [
        (1, 0),
        (1, 1),
        (1, 2),
        (5, 0),
        (5, 1),
        (5, 2),
        (None, 0),
    ]
    assert [r["n_train"] for r in rows] == [5, 5, 5, 25, 25, 25, 500]
    assert all(r["C"] == 0.1 for r in rows[:3])  # one label per class: nothing to hold out, C fixed
    # each row is the plain classifiers on that draw's subset
    idx = few_shot_indices(train_y, 5, seed=1)
    assert rows[4]["knn_top1"] == knn_classifier(
        train_x[idx], train_y[idx], val_x, val_y, k=20, T=0.07
    )
    assert (
        rows[4]["linear_top1"]
        == linear_probe(train_x[idx], train_y[idx], val_x, val_y, seed=1)["top1"]
    )
    assert rows[-1]["knn_top1"] == knn_classifier(train_x, train_y, val_x, val_y, k=20, T=0.07)
    assert len({r["knn_top1"] for r in rows[:3]}) > 1  # different draws, different scores

    table = summarize_label_efficiency(rows)
    assert [t["shots"] for t in table] == [1, 5, None] and [t["draws"] for t in table] == [3, 3, 1]
    one = torch.tensor([r["linear_top1"] for r in rows[:3]], dtype=torch.float64)
    assert table[0]["linear_mean"] == pytest.approx(one.mean().item())
    assert table[0]["linear_std"] == pytest.approx(one.std().item())  # sample std over the draws
    assert table[-1]["knn_std"] == 0.0
    assert table[-1]["knn_mean"] > table[0]["knn_mean"] + 10  # more labels help on noisy clusters
    assert table[-1]["linear_mean"] > table[0]["linear_mean"] + 10


def test_label_efficiency_rejects_nonsense():
    x, y = noisy_clusters(50)
    with pytest.raises(ValueError, match="shots"):
        label_efficiency(x, y, x, y, shots=(0,), draws=1)
    with pytest.raises(ValueError, match="draws"):
        label_efficiency(x, y, x, y, shots=(1,), draws=0)

"""How good are frozen features? Weighted kNN and a linear probe, as DINO measures them.

Self-supervised training never sees a label, so we judge its features from outside: freeze the
backbone, turn every image into one vector (the CLS token), then ask how well a very simple
classifier does on those vectors.

    extract_features   images -> (N, D) CLS features, L2-normalised (no gradients, eval mode)
    knn_classifier     each test vector votes with its k nearest train vectors (DINO's eval_knn.py)
    linear_probe       logistic regression on the frozen features (scikit-learn)
    raw_pixel_features the baseline: the pixels themselves, flattened

Weighted kNN (Wu et al. 2018, as in DINO): with cosine similarities s_i of the k nearest
training features, class c scores sum_{i in top-k, y_i = c} exp(s_i / T). k=20, T=0.07.
It needs no training and no hyper-parameter search, which is why DINO reports it beside the
linear probe.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

# ----------------------------------------------------------------------------- features


def _as_loader(data: Dataset | DataLoader, batch_size: int, num_workers: int) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    if len(data) and not isinstance(data[0][0], torch.Tensor):
        raise TypeError(
            f"the dataset yields {type(data[0][0]).__name__} images; give it a transform that makes"
            " tensors, e.g. build_dataset(..., transform=eval_transform(224))"
        )
    return DataLoader(
        data, batch_size=batch_size, shuffle=False, num_workers=num_workers, drop_last=False
    )


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataset_or_loader: Dataset | DataLoader,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    normalize: bool = True,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the frozen `model` over a dataset of (image tensor, label): features (N, D) float32,
    labels (N,) long.

    `model(x)` must return one vector per image, (B, D); `VisionTransformer.forward` returns the CLS
    token after the final norm. The dataset must already turn images into tensors (use
    `vitdino_core.data.eval_transform(size)`). With `normalize=True` each row has unit L2 norm, so a
    dot product is a cosine similarity. The model is put in eval mode (no dropout, no drop-path)
    and left in whatever mode it was in before.
    """
    loader = _as_loader(dataset_or_loader, batch_size, num_workers)
    was_training = model.training
    model.eval()
    feats, labels = [], []
    try:
        for images, targets in tqdm(loader, desc=desc, leave=False):
            out = model(images.to(device, non_blocking=True))  # (B, D)
            if out.ndim != 2:
                raise ValueError(
                    f"model output has shape {tuple(out.shape)}; expected (B, D), one feature"
                    " vector per image"
                )
            feats.append(out.float().cpu())
            labels.append(torch.as_tensor(targets, dtype=torch.long).cpu())
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("the dataset is empty: no features to extract")
    features = torch.cat(feats)  # (N, D)
    if normalize:
        features = F.normalize(features, dim=1, p=2)  # (N, D), unit rows
    return features, torch.cat(labels)  # (N, D), (N,)


def raw_pixel_features(
    dataset: Dataset, size: int, normalize: bool = True, desc: str = "pixels"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw-pixel baseline: every image resized to size x size, its pixels flattened: (N,
    3*size*size).

    Images are converted to RGB, resized with PIL's bilinear filter (antialiased when shrinking;
    squashed, not cropped: the Imagenette copy is square already) and scaled to [0, 1], with no
    ImageNet mean/std; with `normalize=True` each row is then L2-normalised so that a dot product
    is the cosine similarity. On imagenette-96 this reproduces the data README's weighted kNN
    baseline: 28.3% at 32 px and 24.0% at 96 px (bicubic gives 27.2% at 32 px; ImageNet-normalised
    pixels give about 37% / 35%, since centring each channel makes cosine compare contrasts).
    `dataset` must yield PIL images (build it without a transform).
    """
    from PIL import Image

    from .data import to_rgb

    feats, labels = [], []
    for i in tqdm(range(len(dataset)), desc=desc, leave=False):
        img, label = dataset[i]
        if not isinstance(img, Image.Image):
            raise TypeError(
                f"raw_pixel_features needs a dataset of PIL images (no transform); item {i} is"
                f" {type(img).__name__}"
            )
        img = to_rgb(img)  # transparency over white, 16-bit gray scaled: as the training images
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        feats.append(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()))  # (size, size, 3)
        labels.append(int(label))
    x = (
        torch.stack(feats).permute(0, 3, 1, 2).reshape(len(feats), -1).float() / 255.0
    )  # (N, 3*size*size) in [0, 1]
    if normalize:
        x = F.normalize(x, dim=1, p=2)  # (N, 3*size*size), unit rows
    return x, torch.tensor(labels, dtype=torch.long)


# ----------------------------------------------------------------------------- weighted kNN


def _check_pair(features: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    if features.ndim != 2:
        raise ValueError(f"{name}_features must be (N, D), got shape {tuple(features.shape)}")
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"{name}_labels must be (N,) with N={features.shape[0]} to match {name}_features, got"
            f" {tuple(labels.shape)}"
        )


@torch.no_grad()
def knn_classifier(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    T: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 256,
    return_top5: bool = False,
) -> float | tuple[float, float]:
    """DINO's weighted k-nearest-neighbour classifier; top-1 accuracy in percent (and top-5 if
    asked).

    The algorithm of the official `eval_knn.py`, step by step, for a chunk of B test rows:
      1. similarity = test @ train.T                     (B, N_train) cosine similarities
      2. the k largest per row: distances, indices       (B, k)
      3. their labels, one-hot                           (B, k, C)
      4. votes weighted by exp(similarity / T), summed   (B, C)
      5. prediction = the class with the largest sum.
    Features are L2-normalised here (a no-op if they already are). Working on `chunk` test rows
    at a time keeps memory at chunk x N_train floats. Top-5 with fewer than 5 neighbours counts
    the classes that received votes, as the official code does.
    """
    _check_pair(train_features, train_labels, "train")
    _check_pair(test_features, test_labels, "test")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"train features have D={train_features.shape[1]} but test features"
            f" D={test_features.shape[1]}"
        )
    if not 1 <= k <= train_features.shape[0]:
        raise ValueError(
            f"k={k} must be between 1 and the number of training samples"
            f" ({train_features.shape[0]})"
        )
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    train = F.normalize(train_features.float(), dim=1).t()  # (D, N_train)
    test = F.normalize(test_features.float(), dim=1)  # (N_test, D)
    train_labels, test_labels = train_labels.long(), test_labels.long()
    top1 = top5 = 0
    for start in range(0, test.shape[0], chunk):
        feats, targets = (
            test[start : start + chunk],
            test_labels[start : start + chunk],
        )  # (B, D), (B,)
        B = targets.shape[0]
        similarity = feats @ train  # (B, N_train)
        distances, indices = similarity.topk(k, dim=1, largest=True, sorted=True)  # (B, k), (B, k)
        neighbours = train_labels[indices]  # (B, k): labels of the k nearest training samples
        one_hot = F.one_hot(neighbours, num_classes).float()  # (B, k, C)
        weights = (distances / T).exp()  # (B, k)
        probs = (one_hot * weights.unsqueeze(-1)).sum(dim=1)  # (B, C): weighted votes per class
        predictions = probs.argsort(dim=1, descending=True)  # (B, C)
        correct = predictions == targets.view(B, 1)  # (B, C)
        top1 += correct[:, 0].sum().item()
        top5 += correct[:, : min(5, k)].sum().item()
    n = test.shape[0]
    top1, top5 = 100.0 * top1 / n, 100.0 * top5 / n
    return (top1, top5) if return_top5 else top1


# ----------------------------------------------------------------------------- linear probe


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    Cs: Iterable[float] = (0.01, 0.1, 1.0),
    val_fraction: float = 0.2,
    max_iter: int = 300,
    seed: int = 0,
    threads: int | None = 1,
    verbose: bool = False,
) -> dict:
    """Logistic regression on frozen features; returns {"top1": %, "C": chosen C, "val_scores": {C:
    %}}.

    The probe only reads the features: nothing in the backbone changes. Steps:
      1. standardise each feature dimension (mean 0, std 1), using training statistics only;
      2. hold out `val_fraction` of the TRAIN features (stratified), fit one model per C in `Cs`
         (C is the inverse L2 strength; each fit starts from the previous one's weights) and keep
         the C with the best held-out accuracy;
      3. refit on all training features with that C and report top-1 on the test features.
    The test set is never used to choose anything, so the number is an honest estimate.
    Features stay float32 and the solver runs on `threads` threads (1 by default: the problem is
    small, and on a busy CPU extra threads cost more in waiting than they save); 10k x 384
    features take a few seconds. (DINO's own linear evaluation trains a linear layer with SGD on
    augmented images for 100 epochs; on precomputed features logistic regression is the fast,
    standard stand-in.)
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    _check_pair(train_features, train_labels, "train")
    _check_pair(test_features, test_labels, "test")
    Cs = sorted(
        float(c) for c in Cs
    )  # strongest regularisation first: each warm start is a small step
    if not Cs:
        raise ValueError("Cs must hold at least one regularisation strength, e.g. (0.01, 0.1, 1.0)")
    x_train = train_features.float().cpu().numpy()  # (N_train, D) float32
    y_train = train_labels.cpu().numpy()  # (N_train,)
    x_test = test_features.float().cpu().numpy()  # (N_test, D)
    y_test = test_labels.cpu().numpy()  # (N_test,)
    if len(np.unique(y_train)) < 2:
        raise ValueError("the training labels hold a single class; a classifier needs at least two")
    scaler = StandardScaler().fit(x_train)
    x_train, x_test = (
        scaler.transform(x_train),
        scaler.transform(x_test),
    )  # (N, D) standardised, float32

    with threadpool_limits(threads), warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", ConvergenceWarning
        )  # a few more iterations would not change the choice
        val_scores = {}
        if len(Cs) > 1:
            x_fit, x_val, y_fit, y_val = _held_out_split(x_train, y_train, val_fraction, seed)
            clf = LogisticRegression(max_iter=max_iter, warm_start=True, random_state=seed)
            for C in tqdm(Cs, desc="choosing C", leave=False, disable=not verbose):
                val_scores[C] = 100.0 * clf.set_params(C=C).fit(x_fit, y_fit).score(x_val, y_val)
        best_C = max(val_scores, key=val_scores.get) if val_scores else Cs[0]
        clf = LogisticRegression(C=best_C, max_iter=max_iter, random_state=seed).fit(
            x_train, y_train
        )
    return {"top1": 100.0 * clf.score(x_test, y_test), "C": best_C, "val_scores": val_scores}


def _held_out_split(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int):
    """Stratified train/validation split of the training set; a plain random one when a class is too
    rare."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y)
    n_val, n_classes = int(np.ceil(val_fraction * len(y))), int((counts > 0).sum())
    stratifiable = counts[counts > 0].min() >= 2 and min(n_val, len(y) - n_val) >= n_classes
    x_fit, x_val, y_fit, y_val = train_test_split(
        x, y, test_size=val_fraction, random_state=seed, stratify=y if stratifiable else None
    )
    if len(np.unique(y_fit)) < 2:
        raise ValueError(
            f"too few training samples ({len(y)}) to hold some out for choosing C; pass a single C,"
            " e.g. Cs=(0.1,)"
        )
    return x_fit, x_val, y_fit, y_val


# ----------------------------------------------------------------------------- label efficiency


def few_shot_indices(labels: torch.Tensor, shots: int, seed: int = 0) -> torch.Tensor:
    """`shots` random indices per class of `labels` (N,), drawn with a fixed seed: (shots * C,)
    sorted.

    A class with fewer than `shots` samples gives all of them."""
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().squeeze(1)  # (n_c,) this class's samples
        picks.append(idx[torch.randperm(len(idx), generator=g)[:shots]])  # (<= shots,)
    return torch.cat(picks).sort().values


def label_efficiency(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    val_feats: torch.Tensor,
    val_labels: torch.Tensor,
    shots: Iterable[int | None] = (1, 2, 5, 10, 50, None),
    draws: int = 5,
    seed: int = 0,
    k: int = 20,
    T: float = 0.07,
    Cs: Iterable[float] = (0.01, 0.1, 1.0),
    few_shot_C: float = 0.1,
    desc: str = "label efficiency",
) -> list[dict]:
    """kNN and linear-probe accuracy with few labels: one row per (shots, draw).

    For each number of labelled training samples per class in `shots` (None = the whole training
    set, one draw), `draws` seeded draws of that many samples per class (`few_shot_indices`, seed
    `seed + draw`), then on the same labelled subset:
      - weighted kNN with k = min(k, number of labelled samples), temperature T;
      - the linear probe; with at least 5 samples per class its C is chosen among `Cs` on held-out
        labelled samples as in `linear_probe`; with fewer there is nothing to hold out, so C is
        fixed to `few_shot_C`.
    The validation set is only scored, never used to choose. Rows: {"shots", "draw", "n_train",
    "knn_top1", "linear_top1", "C"}; `summarize_label_efficiency` turns them into mean and std.
    """
    shots = list(shots)
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    jobs = [(s, d) for s in shots for d in range(1 if s is None else draws)]
    rows = []
    for s, d in tqdm(jobs, desc=desc, leave=False):
        if s is not None and s < 1:
            raise ValueError(
                f"shots must be positive numbers of labels per class (or None for all), got {s}"
            )
        idx = (
            torch.arange(len(train_labels))
            if s is None
            else few_shot_indices(train_labels, s, seed + d)
        )  # (n,)
        x, y = train_feats[idx], train_labels[idx]  # (n, D), (n,)
        knn = knn_classifier(x, y, val_feats, val_labels, k=min(k, len(idx)), T=T)
        per_class = int(torch.bincount(y).min())
        probe = linear_probe(
            x, y, val_feats, val_labels, Cs=Cs if per_class >= 5 else (few_shot_C,), seed=seed + d
        )
        rows.append(
            {
                "shots": s,
                "draw": d,
                "n_train": len(idx),
                "knn_top1": knn,
                "linear_top1": probe["top1"],
                "C": probe["C"],
            }
        )
    return rows


def summarize_label_efficiency(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over the draws of `label_efficiency` rows, one row per number of
    shots: {"shots", "draws", "n_train", "knn_mean", "knn_std", "linear_mean", "linear_std"}; the
    std is the sample standard deviation over the draws (0 for one draw)."""
    out = []
    for s in dict.fromkeys(r["shots"] for r in rows):  # in the order given
        group = [r for r in rows if r["shots"] == s]
        knn = np.array([r["knn_top1"] for r in group])
        lin = np.array([r["linear_top1"] for r in group])
        ddof = 1 if len(group) > 1 else 0
        out.append(
            {
                "shots": s,
                "draws": len(group),
                "n_train": group[0]["n_train"],
                "knn_mean": float(knn.mean()),
                "knn_std": float(knn.std(ddof=ddof)),
                "linear_mean": float(lin.mean()),
                "linear_std": float(lin.std(ddof=ddof)),
            }
        )
    return out

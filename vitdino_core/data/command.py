"""The data command: where the data root is and what it holds, and downloads into it.

python -m vitdino_core.data where                    the data root and what it holds
python -m vitdino_core.data download imagenette-96   the course dataset (needs a network once)
python -m vitdino_core.data download dino_vits16     DINO's published ViT-S/16 backbone
                                                     (also vits8, vitb16, vitb8)
"""

from __future__ import annotations

import os
from pathlib import Path

from .datasets import (
    IMAGENETTE_96,
    IMAGENETTE_FOLDERS,
    TORCHVISION_DATASETS,
    _torchvision_dataset,
    data_root,
)
from .imagenette import download_imagenette_96, is_course_copy, split_files
from .images import is_image_file


def _describe(path: Path) -> str:
    if path.name == IMAGENETTE_96 and (path / "train").is_dir():
        counts = {
            split: sum(1 for p in (path / split).glob("*/*") if is_image_file(p))
            for split in ("train", "val")
        }
        kind = (
            "the course copy"
            if is_course_copy(path)
            else "not the course copy (other files or images)"
        )
        return f"{counts['train']:,} train / {counts['val']:,} val images, {kind}"
    if path.is_dir():
        return f"{sum(1 for _ in path.iterdir())} entries"
    from .downloads import human_size

    return human_size(path.stat().st_size)


def where_lines(root: Path | None = None) -> list[str]:
    """What `python -m vitdino_core.data where` prints: the data root, what it holds, and what to
    run when Imagenette is missing."""
    root = data_root() if root is None else root
    how = (
        "from VITDINO_DATA"
        if os.environ.get("VITDINO_DATA")
        else "data/ in the repository; set VITDINO_DATA to move it"
    )
    lines = [f"data root: {root} ({how})"]
    entries = sorted(root.iterdir()) if root.is_dir() else []
    for path in entries:
        if path.name.startswith(".") or path.name == "README.md":
            continue
        lines.append(f"  {path.name + ('/' if path.is_dir() else ''):<24} {_describe(path)}")
        if path.name == "dino" and path.is_dir():
            lines += [f"    {w.name:<40} {_describe(w)}" for w in sorted(path.glob("*.pth"))]
    if not any((root / name / "train").is_dir() for name in IMAGENETTE_FOLDERS):
        lines.append(
            "Imagenette, the course dataset, is missing. Get it with: python -m vitdino_core.data"
            f" download {IMAGENETTE_96}  (once; needs a network: a 1.5 GB download becomes a 50 MB"
            " folder)"
        )
    return lines


def _print_fetched(path: Path) -> None:
    from .downloads import human_size

    size = (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else path.stat().st_size
    )
    print(f"{path} ({human_size(size)})")


def main(argv: list[str] | None = None) -> int:
    import argparse

    from .downloads import DINO_WEIGHTS, dino_url, download_dino

    names = (IMAGENETTE_96, "imagenette", *TORCHVISION_DATASETS, *DINO_WEIGHTS)
    parser = argparse.ArgumentParser(
        prog="python -m vitdino_core.data",
        description="Show the data root, or download a dataset or DINO's weights into it.",
        epilog=(
            f"names: {IMAGENETTE_96} (the course copy; 'imagenette' is the same),"
            f" {', '.join(TORCHVISION_DATASETS)}; DINO's published weights:"
            f" {', '.join(DINO_WEIGHTS)} (into <data root>/dino/)"
        ),
    )
    parser.add_argument("command", choices=["where", "download"])
    parser.add_argument(
        "name", nargs="?", choices=names, metavar="NAME", help="what to download (see below)"
    )
    parser.add_argument(
        "--source",
        help=(
            f"for {IMAGENETTE_96}: a folder that already holds Imagenette v2 at full size "
            "(train/ and val/), instead of downloading it"
        ),
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    root = data_root()
    if args.command == "where":
        print("\n".join(where_lines(root)))
        return 0
    if args.name is None:
        parser.error(
            f"download needs a NAME, e.g. python -m vitdino_core.data download {IMAGENETTE_96}"
        )
    root.mkdir(parents=True, exist_ok=True)
    if args.name in DINO_WEIGHTS:
        print(f"fetching {dino_url(args.name)}")
        path = download_dino(args.name, root, quiet=args.quiet)
    elif args.name in (IMAGENETTE_96, "imagenette"):
        path = download_imagenette_96(root, source=args.source, quiet=args.quiet)
        names = split_files(path)
        counts = {
            split: sum(n.startswith(split + "/") for n in names) for split in ("train", "val")
        }
        note = (
            ""
            if is_course_copy(path)
            else " (not the exact course copy: the source had other files)"
        )
        print(f"{IMAGENETTE_96}: {counts['train']:,} train / {counts['val']:,} val images{note}")
    else:
        for split in ("train", "val"):
            _torchvision_dataset(args.name, root, split, download=True)
        path = root
    _print_fetched(path)
    return 0

"""Imagenette-96, the course's copy of Imagenette: made from Imagenette v2 at full size (downloaded
once, resumable) by a fixed recipe, and recognised by its file list.

    python -m vitdino_core.data download imagenette-96
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

from PIL import Image

from .datasets import IMAGENETTE_96, DatasetNotFoundError
from .images import is_image_file, open_rgb

IMAGENETTE_96_SIZE = 96
IMAGENETTE_96_COUNTS = {"train": 9469, "val": 3925}
IMAGENETTE_96_RECIPE = (
    "Imagenette v2 train/val lists (torchvision Imagenette, size='full'), source file names; "
    "each image to RGB, squashed (not cropped) to 224x224 with bicubic resampling, then to 96x96 "
    "bicubic; JPEG quality 85 (Pillow)"
)
# of the sorted split/wnid/name list
IMAGENETTE_V2_FILES_SHA256 = "1d3b7e4e6d4af6b70a59b3a3dbeb85b33a623ea7039c536dbade63e771d028b1"
MARKER = "DATASET.json"


def split_files(folder: Path) -> list[str]:
    """'train/<wnid>/<name>' and 'val/<wnid>/<name>' of every image in an
    Imagenette copy, sorted."""
    return sorted(
        p.relative_to(folder).as_posix()
        for split in ("train", "val")
        for p in (folder / split).glob("*/*")
        if p.is_file() and is_image_file(p)
    )


def files_sha256(names: list[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def is_course_copy(folder: str | os.PathLike) -> bool:
    """True when `folder` (holding train/ and val/) is the course's Imagenette-96: exactly the
    Imagenette v2 file names (9,469 train, 3,925 val images), and either its DATASET.json names our
    recipe or its images are 96x96. Numbers quoted for the course (e.g. the raw-pixel baseline) hold
    for this copy only."""
    folder = Path(folder)
    names = split_files(folder)
    if (
        len(names) != sum(IMAGENETTE_96_COUNTS.values())
        or files_sha256(names) != IMAGENETTE_V2_FILES_SHA256
    ):
        return False
    try:
        info = json.loads((folder / MARKER).read_text())
        return isinstance(info, dict) and info.get("recipe") == IMAGENETTE_96_RECIPE
    except (OSError, ValueError):  # no marker (a copy made elsewhere): judge by the images
        with Image.open(folder / names[0]) as img:
            return img.size == (IMAGENETTE_96_SIZE, IMAGENETTE_96_SIZE)


def _squash_one(source: Path, out: Path) -> None:
    img = open_rgb(source)
    img = img.resize((224, 224), Image.BICUBIC).resize(
        (IMAGENETTE_96_SIZE, IMAGENETTE_96_SIZE), Image.BICUBIC
    )
    tmp = out.with_name(f".{out.name}.tmp")
    img.save(tmp, "JPEG", quality=85)
    os.replace(tmp, out)  # a stopped run leaves either the whole file or none


def make_imagenette_96(
    source: str | os.PathLike,
    dest: str | os.PathLike,
    workers: int | None = None,
    quiet: bool = False,
) -> dict[str, int]:
    """Imagenette at full size (`source` holds train/ and val/ of WordNet-id folders, as
    torchvision's `Imagenette(size="full")` extracts it) -> the course copy in `dest`, by
    `IMAGENETTE_96_RECIPE`.

    Resumable: images already in `dest` are kept. A source image that cannot be read is skipped with
    a warning that names it. Writes `dest/DATASET.json` (recipe, counts, file-list digest) at the
    end. Returns the number of images per split.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from torchvision.datasets.folder import find_classes, make_dataset
    from tqdm.auto import tqdm

    source, dest = Path(source), Path(dest)
    jobs = []
    for split in ("train", "val"):
        if not (source / split).is_dir():
            raise DatasetNotFoundError(
                f"{source / split} not found: the source must hold Imagenette's train/ and val/"
                " folders"
            )
        _, wnid_to_idx = find_classes(str(source / split))
        for path, _ in make_dataset(
            str(source / split), wnid_to_idx, extensions=".jpeg"
        ):  # torchvision's listing
            path = Path(path)
            jobs.append((path, dest / split / path.parent.name / path.name))
    todo = [(src, out) for src, out in jobs if not out.is_file()]
    for folder in sorted({out.parent for _, out in todo}):
        folder.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(
        workers or min(8, os.cpu_count() or 1)
    ) as pool:  # Pillow decodes and resizes outside the GIL
        futures = {pool.submit(_squash_one, src, out): src for src, out in todo}
        bar = tqdm(
            as_completed(futures),
            total=len(jobs),
            initial=len(jobs) - len(todo),
            desc=IMAGENETTE_96,
            unit="img",
            disable=quiet,
        )
        for fut in bar:
            try:
                fut.result()
            except Exception as e:  # noqa: BLE001 - an unreadable source image is skipped, by name
                warnings.warn(
                    f"skipping unreadable image {futures[fut]} ({type(e).__name__}: {e})",
                    stacklevel=2,
                )
    names = split_files(dest)
    counts = {split: sum(n.startswith(split + "/") for n in names) for split in ("train", "val")}
    info = {
        "name": IMAGENETTE_96,
        "recipe": IMAGENETTE_96_RECIPE,
        "counts": counts,
        "files_sha256": files_sha256(names),
        "made_by": f"python -m vitdino_core.data download {IMAGENETTE_96}",
    }
    tmp = dest / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, dest / MARKER)
    return counts


def _extract_imagenette2(archive: Path, root: Path, quiet: bool) -> Path:
    """imagenette2.tgz -> <root>/imagenette2, through a temporary folder so that a stopped
    extraction leaves nothing half done."""
    import shutil
    import tarfile

    from tqdm.auto import tqdm

    tmp = root / ".imagenette2.extracting"
    shutil.rmtree(tmp, ignore_errors=True)
    safe = (
        {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    )  # Python's own guard where it has one
    with tarfile.open(archive) as tar:
        for m in tqdm(tar, desc="extracting imagenette2.tgz", unit="file", disable=quiet):
            if not (m.isfile() or m.isdir()):  # no links or devices in an image archive
                continue
            if m.name.startswith(("/", "..")) or "/../" in m.name:
                raise DatasetNotFoundError(
                    f"{archive} holds an unsafe path ({m.name}); delete it and download again"
                )
            tar.extract(m, tmp, **safe)
    os.replace(tmp / "imagenette2", root / "imagenette2")
    shutil.rmtree(tmp, ignore_errors=True)
    return root / "imagenette2"


def download_imagenette_96(
    root: Path, source: str | os.PathLike | None = None, quiet: bool = False
) -> Path:
    """Make `<root>/imagenette-96` (the course copy) from Imagenette v2 at full size: `source` if
    given, else `<root>/imagenette2` if there, else the downloaded imagenette2.tgz (1.5 GB,
    resumable; deleted once extracted)."""
    from .downloads import IMAGENETTE2_MD5, IMAGENETTE2_URL, DownloadError, download_file

    dest = root / IMAGENETTE_96
    if is_course_copy(dest):  # already there: nothing to do
        return dest
    if source is not None:
        src = Path(source).expanduser()
    elif (root / "imagenette2" / "train").is_dir() and (root / "imagenette2" / "val").is_dir():
        src = root / "imagenette2"
    else:
        archive = root / "imagenette2.tgz"
        try:
            download_file(
                IMAGENETTE2_URL,
                archive,
                md5=IMAGENETTE2_MD5,
                desc="imagenette2.tgz (1.5 GB)",
                quiet=quiet,
            )
        except DownloadError as e:
            raise DownloadError(
                f"{e}; or set VITDINO_DATA to a folder that already holds {IMAGENETTE_96}/"
            ) from None
        src = _extract_imagenette2(archive, root, quiet)
        archive.unlink()
    make_imagenette_96(src, dest, quiet=quiet)
    return dest

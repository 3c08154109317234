"""Resumable downloads: the Imagenette v2 archive and DINO's published backbones.

A file is fetched into `<name>.part` and renamed when complete; run the same command again after an
interruption and it asks the server for the missing bytes only (an HTTP Range request). Without a
network every download fails with one line that says how to get the file another way.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from ..cli import PATH_ERRORS, UserError

DINO_BASE_URL = "https://dl.fbaipublicfiles.com/dino"
# our name -> the official name (facebookresearch/dino README); `<name>_full` is the full training
# checkpoint
DINO_BACKBONES = {
    "dino_vits16": "dino_deitsmall16_pretrain",
    "dino_vits8": "dino_deitsmall8_pretrain",
    "dino_vitb16": "dino_vitbase16_pretrain",
    "dino_vitb8": "dino_vitbase8_pretrain",
}
DINO_WEIGHTS = {
    **DINO_BACKBONES,
    **{f"{k}_full": f"{v}_full_checkpoint" for k, v in DINO_BACKBONES.items()},
}

# torchvision's Imagenette(size="full"): the Imagenette v2 train/val lists at full resolution
IMAGENETTE2_URL = "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz"
IMAGENETTE2_MD5 = "fe2fc210e6bb7c5664d602c3cd71e612"

CHUNK = 1 << 20


class DownloadError(UserError):
    """A download that could not finish; the message says why and what to do."""


def dino_url(name: str) -> str:
    stem = DINO_WEIGHTS[name]
    folder = stem.removesuffix("_full_checkpoint")
    return f"{DINO_BASE_URL}/{folder}/{stem}.pth"


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def _offline_hint(url: str, dest: Path, err: BaseException) -> DownloadError:
    host = urllib.request.urlparse(url).netloc
    reason = getattr(err, "reason", err)
    return DownloadError(
        f"cannot reach {host} ({reason}): no network here? Download {url} on a machine that has one"
        f" and copy it to {dest}, then run the same command again"
    )


def _total_from_content_range(value: str | None) -> int | None:
    """'bytes 100-199/200' or 'bytes */200' -> 200."""
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def download_file(
    url: str,
    dest: str | os.PathLike,
    md5: str | None = None,
    desc: str | None = None,
    timeout: float = 60.0,
    quiet: bool = False,
) -> Path:
    """Fetch `url` to `dest` through `dest.part`, resuming a partial `.part` with an HTTP Range
    request.

    A server that ignores the Range header answers 200 with the whole file: the part is then started
    again. `dest` appears only when complete (and, given `md5`, verified). An existing `dest` is
    kept.
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "vitdino", **({"Range": f"bytes={have}-"} if have else {})}
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        total = _total_from_content_range(e.headers.get("Content-Range")) if e.headers else None
        if e.code == 416 and have and total == have:  # the part already holds every byte
            return _finish(part, dest, md5, url)
        if e.code == 416:  # a part longer than the file, or a changed file: start again
            part.unlink()
            return download_file(url, dest, md5, desc, timeout, quiet)
        raise DownloadError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, socket.timeout, ConnectionError) as e:
        raise _offline_hint(url, dest, e) from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    with resp:
        resumed = have > 0 and resp.status == 206
        start = have if resumed else 0
        length = resp.headers.get("Content-Length")
        total = _total_from_content_range(resp.headers.get("Content-Range")) if resumed else None
        if total is None and length is not None:
            total = start + int(length)
        bar = tqdm(
            total=total,
            initial=start,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=desc or dest.name,
            disable=quiet,
            leave=False,
        )
        written = start
        try:
            with open(part, "ab" if resumed else "wb") as f:
                while block := resp.read(CHUNK):
                    f.write(block)
                    written += len(block)
                    bar.update(len(block))
        except PATH_ERRORS:
            raise
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise DownloadError(
                    f"no space left on the disk of {part} after {human_size(written)}; free some"
                    " space (or set VITDINO_DATA to a bigger disk) and run the same command again"
                ) from None
            raise DownloadError(
                f"download of {url} stopped at {human_size(written)} ({type(e).__name__}: {e}); "
                "run the same command again to resume"
            ) from None
        except http.client.HTTPException as e:
            raise DownloadError(
                f"download of {url} stopped at {human_size(written)} ({type(e).__name__}); "
                "run the same command again to resume"
            ) from None
        finally:
            bar.close()
    if total is not None and written != total:
        raise DownloadError(
            f"download of {url} stopped at {human_size(written)} of {human_size(total)}; "
            "run the same command again to resume"
        )
    return _finish(part, dest, md5, url)


def _finish(part: Path, dest: Path, md5: str | None, url: str) -> Path:
    if md5 is not None and md5sum(part) != md5:
        part.unlink()
        raise DownloadError(
            f"{dest.name} from {url} is corrupt (MD5 differs); it was deleted: run the same command"
            " again"
        )
    os.replace(part, dest)
    return dest


def download_dino(name: str, root: Path, quiet: bool = False) -> Path:
    """One of `DINO_WEIGHTS` into `<root>/dino/<official name>.pth`; returns its path."""
    if name not in DINO_WEIGHTS:
        raise DownloadError(
            f"unknown DINO weights {name!r}; choose one of {', '.join(DINO_WEIGHTS)}"
        )
    return download_file(dino_url(name), root / "dino" / f"{DINO_WEIGHTS[name]}.pth", quiet=quiet)

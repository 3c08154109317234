"""Resumable downloads against a local HTTP server on 127.0.0.1 (never the real network)."""

from __future__ import annotations

import hashlib
import http.server
import socket
import tarfile
import threading
from pathlib import Path

import pytest

from vitdino_core import data
from vitdino_core.cli import run_cli
from vitdino_core.data import downloads
from vitdino_core.data.downloads import DINO_WEIGHTS, DownloadError, dino_url, download_file

PAYLOAD = bytes(range(256)) * 4000  # 1,024,000 bytes: a few chunks


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves `files` (path -> bytes) with HTTP Range support unless `ranges` is off; logs what it
    was asked."""

    files: dict[str, bytes] = {}
    ranges = True
    log: list[tuple[str, str | None]] = []
    cut_after: int | None = (
        None  # send only this many bytes of the body, then close (a dropped connection)
    )

    def do_GET(self):  # noqa: N802 - the http.server name
        body = self.files.get(self.path)
        self.log.append((self.path, self.headers.get("Range")))
        if body is None:
            self.send_error(404, "Not Found")
            return
        rng = self.headers.get("Range")
        if rng and self.ranges:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            part = body[start:]
        else:
            self.send_response(200)
            part = body
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        self.wfile.write(part if self.cut_after is None else part[: self.cut_after])

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def server():
    Handler.files, Handler.ranges, Handler.log, Handler.cut_after = (
        {"/dino/w.pth": PAYLOAD},
        True,
        [],
        None,
    )
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_whole_file_lands_atomically(server, tmp_path):
    dest = download_file(
        f"{server}/dino/w.pth", tmp_path / "w.pth", md5=hashlib.md5(PAYLOAD).hexdigest(), quiet=True
    )
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "w.pth.part").exists()
    assert Handler.log == [("/dino/w.pth", None)]
    download_file(f"{server}/dino/w.pth", dest, quiet=True)  # already there: nothing fetched
    assert len(Handler.log) == 1


def test_a_partial_part_is_resumed_with_a_range_request(server, tmp_path):
    (tmp_path / "w.pth.part").write_bytes(PAYLOAD[:300_000])
    dest = download_file(f"{server}/dino/w.pth", tmp_path / "w.pth", quiet=True)
    assert dest.read_bytes() == PAYLOAD
    assert Handler.log == [("/dino/w.pth", "bytes=300000-")]


def test_a_complete_part_is_only_renamed(server, tmp_path):
    (tmp_path / "w.pth.part").write_bytes(PAYLOAD)
    assert (
        download_file(f"{server}/dino/w.pth", tmp_path / "w.pth", quiet=True).read_bytes()
        == PAYLOAD
    )
    assert Handler.log == [
        ("/dino/w.pth", f"bytes={len(PAYLOAD)}-")
    ]  # answered 416 with the full size


def test_a_server_without_ranges_restarts_the_part(server, tmp_path):
    Handler.ranges = False
    (tmp_path / "w.pth.part").write_bytes(b"stale bytes that must not stay in front")
    assert (
        download_file(f"{server}/dino/w.pth", tmp_path / "w.pth", quiet=True).read_bytes()
        == PAYLOAD
    )


def test_a_dropped_connection_keeps_the_part_and_the_next_run_finishes(server, tmp_path):
    Handler.cut_after = 400_000
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        download_file(f"{server}/dino/w.pth", tmp_path / "w.pth", quiet=True)
    assert (tmp_path / "w.pth.part").stat().st_size == 400_000 and not (tmp_path / "w.pth").exists()
    Handler.cut_after = None
    assert (
        download_file(f"{server}/dino/w.pth", tmp_path / "w.pth", quiet=True).read_bytes()
        == PAYLOAD
    )
    assert Handler.log[-1] == ("/dino/w.pth", "bytes=400000-")


def test_a_corrupt_download_is_deleted(server, tmp_path):
    with pytest.raises(DownloadError, match="corrupt"):
        download_file(f"{server}/dino/w.pth", tmp_path / "w.pth", md5="0" * 32, quiet=True)
    assert not list(tmp_path.iterdir())


def test_http_errors_and_no_network_are_one_line(server, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404"):
        download_file(f"{server}/nothing.pth", tmp_path / "n.pth", quiet=True)
    with socket.socket() as s:  # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError) as info:
        download_file(f"http://127.0.0.1:{port}/x.pth", tmp_path / "x.pth", quiet=True)
    msg = str(info.value)
    assert "\n" not in msg and "no network here?" in msg and str(tmp_path / "x.pth") in msg


def test_dino_names_are_the_official_files():
    assert (
        dino_url("dino_vits16")
        == "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth"
    )
    assert (
        dino_url("dino_vitb8_full") == "https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/"
        "dino_vitbase8_pretrain_full_checkpoint.pth"
    )
    assert set(DINO_WEIGHTS) == {
        f"dino_vit{a}{p}{full}" for a in "sb" for p in (8, 16) for full in ("", "_full")
    }


def test_the_command_fetches_dino_weights_reports_them_and_where_lists_them(
    server, tmp_path, monkeypatch, capsys
):
    Handler.files = {
        f"/dino/{v.removesuffix('_full_checkpoint')}/{v}.pth": PAYLOAD
        for v in DINO_WEIGHTS.values()
    }
    monkeypatch.setattr(downloads, "DINO_BASE_URL", f"{server}/dino")
    monkeypatch.setenv("VITDINO_DATA", str(tmp_path))
    assert run_cli(data.main, ["download", "dino_vits8", "--quiet"]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "dino" / "dino_deitsmall8_pretrain.pth"
    assert path.read_bytes() == PAYLOAD and f"{path} (1.0 MB)" in out
    assert run_cli(data.main, ["where"]) == 0
    out = capsys.readouterr().out
    assert "dino_deitsmall8_pretrain.pth" in out and "1.0 MB" in out
    assert "download imagenette-96" in out  # Imagenette is still missing: the hint says what to run


def test_offline_imagenette_is_one_line_that_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        downloads, "IMAGENETTE2_URL", "http://127.0.0.1:9/imagenette2.tgz"
    )  # port 9: nobody listens
    monkeypatch.setenv("VITDINO_DATA", str(tmp_path))
    assert run_cli(data.main, ["download", "imagenette-96", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: cannot reach 127.0.0.1:9")
    assert str(tmp_path / "imagenette2.tgz") in err and "VITDINO_DATA" in err


def test_imagenette_archive_is_fetched_checked_extracted_and_converted(
    server, tmp_path, monkeypatch, capsys
):
    from PIL import Image

    src = tmp_path / "build" / "imagenette2"
    for split in ("train", "val"):
        (src / split / "n03888257").mkdir(parents=True)
        Image.new("RGB", (120, 80), (0, 90, 200)).save(
            src / split / "n03888257" / f"{split}_1.JPEG"
        )
    with tarfile.open(tmp_path / "imagenette2.tgz", "w:gz") as tar:
        tar.add(src, arcname="imagenette2")
    blob = (tmp_path / "imagenette2.tgz").read_bytes()
    Handler.files = {"/imagenette2.tgz": blob}
    monkeypatch.setattr(downloads, "IMAGENETTE2_URL", f"{server}/imagenette2.tgz")
    monkeypatch.setattr(downloads, "IMAGENETTE2_MD5", hashlib.md5(blob).hexdigest())
    root = tmp_path / "root"
    monkeypatch.setenv("VITDINO_DATA", str(root))
    assert run_cli(data.main, ["download", "imagenette-96", "--quiet"]) == 0
    assert "1 train / 1 val images (not the exact course copy" in capsys.readouterr().out
    with Image.open(root / "imagenette-96" / "val" / "n03888257" / "val_1.JPEG") as im:
        assert im.size == (96, 96)
    assert not (root / "imagenette2.tgz").exists() and (root / "imagenette2" / "train").is_dir()
    assert not (root / ".imagenette2.extracting").exists()


def test_the_archive_constants_are_torchvisions():
    from torchvision.datasets import Imagenette

    assert Imagenette._ARCHIVES["full"] == (downloads.IMAGENETTE2_URL, downloads.IMAGENETTE2_MD5)


def test_where_says_what_to_run_when_imagenette_is_missing(tmp_path, monkeypatch):
    lines = data.where_lines(Path(tmp_path))
    assert lines[0].startswith(f"data root: {tmp_path}")
    assert lines[-1].startswith(
        "Imagenette, the course dataset, is missing. Get it with: "
        "python -m vitdino_core.data download imagenette-96"
    )


@pytest.mark.slow
def test_the_module_runs_through_run_cli(tmp_path, repo_root):
    import os
    import subprocess
    import sys

    env = dict(os.environ, VITDINO_DATA=str(tmp_path), PYTHONPATH=str(repo_root))
    run = [sys.executable, "-m", "vitdino_core.data"]
    where = subprocess.run([*run, "where"], env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0 and "download imagenette-96" in where.stdout
    bad = subprocess.run(
        [*run, "download", "imagenette-96", "--source", str(tmp_path / "nowhere")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )  # a missing source: nothing is downloaded
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert (
        bad.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: {tmp_path / 'nowhere' / 'train'} not found")
    )


def test_the_course_copy_already_there_is_not_downloaded_again(
    shared_data, tmp_path, monkeypatch, capsys
):
    (tmp_path / "imagenette-96").symlink_to(shared_data / "imagenette-96")
    monkeypatch.setattr(
        downloads, "IMAGENETTE2_URL", "http://127.0.0.1:9/imagenette2.tgz"
    )  # would fail if used
    monkeypatch.setenv("VITDINO_DATA", str(tmp_path))
    assert run_cli(data.main, ["download", "imagenette-96", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert (
        "imagenette-96: 9,469 train / 3,925 val images\n" in out
        and str(tmp_path / "imagenette-96") in out
    )

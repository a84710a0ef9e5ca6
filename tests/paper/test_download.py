"""Downloads of the paper's releases against a local HTTP server, and the archive unpacking's safety.

The server (127.0.0.1, a free port) supports Range requests and can misbehave on purpose: cut the
body short, ignore Range, or stall, so that resuming, restarting and the error messages are exercised.
"""

import dataclasses
import hashlib
import io
import json
import stat
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import tifffile

from hazematching.data.io import load_splits, read_split
from hazematching.paper import download, releases
from hazematching.paper.archive import ArchiveError, unpack_dataset
from hazematching.paper.download import DownloadError, download_checkpoint, download_dataset, fetch

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.files[path]``; ``server.modes[path]`` says how to misbehave."""

    def log_message(self, *args):  # keep pytest output quiet
        pass

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        mode = server.modes.get(self.path, "normal")
        start = 0
        range_header = self.headers.get("Range")
        if range_header and mode != "ignore_range":
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        rest = body[start:]
        self.send_header("Content-Length", str(len(rest)))
        self.end_headers()
        if mode in ("cut_first", "stall_first") and not server.cut_done.get(self.path):
            server.cut_done[self.path] = True
            self.wfile.write(rest[: len(rest) // 2])
            self.wfile.flush()
            if mode == "stall_first":
                time.sleep(1.5)
            self.close_connection = True
            return
        self.wfile.write(rest)


@pytest.fixture
def server(monkeypatch):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.files, httpd.modes, httpd.requests, httpd.cut_done = {}, {}, [], {}
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv(releases.BASE_URL_ENV, httpd.url + "/")
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def serve(server, path, body=PAYLOAD, mode="normal"):
    server.files[path] = body
    server.modes[path] = mode
    return server.url + path


def test_download_verifies_and_caches(server, tmp_path):
    url = serve(server, "/good.bin")
    dest = tmp_path / "cache" / "good.bin"
    assert fetch(url, SHA, dest, progress=False) == dest
    assert dest.read_bytes() == PAYLOAD and not dest.with_suffix(".bin.part").exists()
    assert fetch(url, "sha256:" + SHA.upper(), dest, progress=False) == dest
    assert len(server.requests) == 1, "a cached file that matches must not be downloaded again"


def test_existing_file_with_a_wrong_checksum_is_downloaded_again(server, tmp_path):
    url = serve(server, "/good.bin")
    dest = tmp_path / "good.bin"
    dest.write_bytes(b"stale")
    fetch(url, SHA, dest, progress=False)
    assert dest.read_bytes() == PAYLOAD and len(server.requests) == 1


def test_wrong_checksum_deletes_everything(server, tmp_path):
    url = serve(server, "/corrupt.bin", body=PAYLOAD[:-1] + b"x")
    dest = tmp_path / "corrupt.bin"
    with pytest.raises(DownloadError) as error:
        fetch(url, SHA, dest, progress=False)
    message = str(error.value)
    assert url in message and f"expected {SHA}" in message and "run the command again" in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_keeps_the_part_and_resumes(server, tmp_path):
    url = serve(server, "/big.bin", mode="cut_first")
    dest = tmp_path / "big.bin"
    part = tmp_path / "big.bin.part"
    with pytest.raises(DownloadError, match="run the command again to resume") as error:
        fetch(url, SHA, dest, progress=False)
    assert url in str(error.value)
    assert not dest.exists() and part.stat().st_size == len(PAYLOAD) // 2
    assert fetch(url, SHA, dest, progress=True) == dest
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert server.requests[-1] == ("/big.bin", f"bytes={len(PAYLOAD) // 2}-")


def test_a_server_that_ignores_range_restarts_cleanly(server, tmp_path):
    url = serve(server, "/norange.bin", mode="ignore_range")
    dest = tmp_path / "norange.bin"
    (tmp_path / "norange.bin.part").write_bytes(PAYLOAD[:1000])
    fetch(url, SHA, dest, progress=False)
    assert server.requests == [("/norange.bin", "bytes=1000-")]
    assert dest.read_bytes() == PAYLOAD


def test_a_stale_part_is_thrown_away_and_downloaded_afresh(server, tmp_path):
    """A .part from another file resumes into garbage: the checksum fails and one fresh download follows."""
    url = serve(server, "/good.bin")
    dest = tmp_path / "good.bin"
    (tmp_path / "good.bin.part").write_bytes(b"\xff" * 5000)
    fetch(url, SHA, dest, progress=False)
    assert [r[1] for r in server.requests] == ["bytes=5000-", None]
    assert dest.read_bytes() == PAYLOAD


def test_a_complete_part_is_verified_without_downloading(server, tmp_path):
    url = serve(server, "/good.bin")
    dest = tmp_path / "good.bin"
    (tmp_path / "good.bin.part").write_bytes(PAYLOAD)
    fetch(url, SHA, dest, progress=False)  # the server answers 416 to the Range request
    assert dest.read_bytes() == PAYLOAD and len(server.requests) == 1


def test_timeout_keeps_the_part(server, tmp_path):
    url = serve(server, "/slow.bin", mode="stall_first")
    dest = tmp_path / "slow.bin"
    with pytest.raises(DownloadError, match="resume"):
        fetch(url, SHA, dest, progress=False, timeout=0.3)
    assert (tmp_path / "slow.bin.part").stat().st_size == len(PAYLOAD) // 2


def test_unreachable_server_and_missing_file(server, tmp_path):
    with pytest.raises(DownloadError, match=f"HTTP 404.*{releases.BASE_URL_ENV}"):
        fetch(server.url + "/missing.bin", SHA, tmp_path / "m.bin", progress=False)
    with pytest.raises(DownloadError, match="cannot connect"):
        fetch("http://127.0.0.1:9/x.bin", SHA, tmp_path / "x.bin", progress=False, timeout=2)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------------
# archives


def tiff_bytes(seed: int, shape=(2, 16, 16)) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.random.default_rng(seed).integers(0, 1000, shape, dtype=np.uint16))
    return buffer.getvalue()


def paper_zip(path: Path, prefix: str = "", neuron: bool = False, extra: dict | None = None) -> Path:
    """A small archive in the paper's layout (2 pairs per folder)."""
    folders = ("train", "val", "test") if neuron else ("train_crop", "val_crop", "test", "val", "train_crops_fid")
    with zipfile.ZipFile(path, "w") as zf:
        for folder in folders:
            zf.writestr(f"{prefix}{folder}/", "")
            for i in range(2):
                zf.writestr(f"{prefix}{folder}/img_ch1_{i}.tif", tiff_bytes(i))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("prefix", ["", "organoids1/", "data/organoids1/"])
def test_unpack_maps_the_paper_folders(tmp_path, prefix):
    zip_path = paper_zip(tmp_path / "o.zip", prefix, extra={f"{prefix}train_crop/notes.txt": "n"})
    out = unpack_dataset(zip_path, tmp_path / "out" / "organoids1", releases.get("organoids1"))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".hazematching-release.json", "README.txt", "extra", "test", "train", "val"]
    )
    for split in ("train", "val", "test"):
        assert sorted(p.name for p in (out / split).iterdir()) == ["img_ch1_0.tif", "img_ch1_1.tif"]
    assert (out / "extra" / "val" / "img_ch1_0.tif").is_file()
    assert (out / "extra" / "train_crops_fid" / "img_ch1_1.tif").is_file()
    assert (out / "extra" / "train_crop" / "notes.txt").is_file()  # the trainer would refuse it in train/
    assert "train_crop/ -> train/" in (out / "README.txt").read_text()
    train, val = load_splits(out, None, 0.1, min_size=16)
    assert len(train) == 2 and len(val) == 2
    assert np.array_equal(train[0].target, tifffile.imread(io.BytesIO(tiff_bytes(0)))[0])  # channel 0 = target
    assert [p.name for p in tmp_path.joinpath("out").iterdir()] == ["organoids1"], "no staging folder left"


def test_unpack_neuron_keeps_its_folders(tmp_path):
    zip_path = paper_zip(tmp_path / "n.zip", "neuron/", neuron=True)
    out = unpack_dataset(zip_path, tmp_path / "neuron", releases.get("neuron"))
    assert len(read_split(out / "test")) == 2 and not (out / "extra").exists()


def test_unpack_names_the_missing_folder(tmp_path):
    zip_path = paper_zip(tmp_path / "n.zip", "neuron/", neuron=True)
    with pytest.raises(ArchiveError, match="train_crop/") as error:
        unpack_dataset(zip_path, tmp_path / "out", releases.get("zebrafish"))
    assert "neuron/train/" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_unpack_refuses_a_non_empty_target(tmp_path):
    zip_path = paper_zip(tmp_path / "o.zip")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    with pytest.raises(ArchiveError, match="not empty"):
        unpack_dataset(zip_path, tmp_path / "out", releases.get("organoids2"))
    unpack_dataset(zip_path, tmp_path / "out", releases.get("organoids2"), overwrite=True)
    assert not (tmp_path / "out" / "mine.txt").exists() and (tmp_path / "out" / "train").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.zip", "out"]


def symlink_member(zf: zipfile.ZipFile, name: str, target: str) -> None:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    zf.writestr(info, target)


@pytest.mark.parametrize(
    "bad, expected",
    [("../evil.tif", "outside the target"), ("/abs/evil.tif", "absolute path"), ("train_crop/link", "symbolic link")],
)
def test_unsafe_members_are_refused_before_anything_is_written(tmp_path, bad, expected):
    zip_path = paper_zip(tmp_path / "bad.zip")
    with zipfile.ZipFile(zip_path, "a") as zf:
        if expected == "symbolic link":
            symlink_member(zf, bad, "/etc/passwd")
        else:
            zf.writestr(bad, b"x")
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(ArchiveError, match=expected) as error:
        unpack_dataset(zip_path, work / "out", releases.get("microtubule"))
    assert repr(bad) in str(error.value)
    assert list(work.iterdir()) == [] and not (tmp_path / "evil.tif").exists()


def test_download_dataset_and_checkpoint_end_to_end(server, tmp_path, monkeypatch):
    """The release table's URLs, the cache layout, and a second call that neither downloads nor unpacks."""
    zip_bytes = paper_zip(tmp_path / "z.zip", "zebrafish/").read_bytes()
    # the real checksums cannot be served: a copy of the zebrafish entry expects these files instead
    fake = dataclasses.replace(
        releases.get("zebrafish"), data_sha256=hashlib.sha256(zip_bytes).hexdigest(), checkpoint_sha256=SHA
    )
    monkeypatch.setattr(download, "get", lambda name: fake)
    serve(server, "/data/zebrafish.zip", body=zip_bytes)
    serve(server, "/checkpoints/zebrafish/best_model.pth")
    cache = tmp_path / "cache"
    out = download_dataset("zebrafish", tmp_path / "data" / "zebrafish", cache_dir=cache, progress=False)
    assert len(read_split(out / "train")) == 2
    assert json.loads((out / ".hazematching-release.json").read_text())["name"] == "zebrafish"
    assert download_dataset("zebrafish", out, cache_dir=cache, progress=False) == out
    ckpt = download_checkpoint("zebrafish", cache_dir=cache, progress=False)
    assert ckpt == cache / "checkpoints" / "zebrafish" / "best_model.pth"
    assert ckpt.read_bytes() == PAYLOAD
    assert [r[0] for r in server.requests] == ["/data/zebrafish.zip", "/checkpoints/zebrafish/best_model.pth"]


def test_release_table():
    assert releases.NAMES == ("zebrafish", "organoids1", "organoids2", "microtubule", "neuron")
    neuron = releases.get("Neuron")
    assert (neuron.patch_size, neuron.attention_resolutions, neuron.inner_crop) == (64, (4,), 32)
    assert not neuron.denormalise_predictions and releases.get("microtubule").inference_border == 56
    for release in releases.RELEASES:
        assert release.attention_resolutions == ({128: 8, 64: 4}[release.patch_size],)  # 16 x 16 tokens
        assert releases.by_sha256(release.checkpoint_sha256) is release
        assert releases.by_sha256(release.data_sha256, kind="data") is release
        assert releases.by_sha256(release.data_sha256) is None
    assert releases.get("zebrafish").normalisation_for("dir/fish_ch2_t01.tif").input_mean == 162.67065
    assert releases.get("organoids1").normalisation_for("anything.tif").target_std == 311.96014
    with pytest.raises(ValueError, match="ch0"):
        releases.get("zebrafish").normalisation_for("fish.tif")
    assert [line.split()[0] for line in releases.summary_lines()] == list(releases.NAMES)
    with pytest.raises(ValueError, match="zebrafish, organoids1, organoids2, microtubule, neuron"):
        releases.get("mouse")


def test_base_url_follows_the_environment(monkeypatch):
    monkeypatch.delenv(releases.BASE_URL_ENV, raising=False)
    assert releases.get("neuron").data_url == "https://download.fht.org/jug/hazematching/data/neuron.zip"
    monkeypatch.setenv(releases.BASE_URL_ENV, "http://127.0.0.1:1/mirror")
    assert releases.get("neuron").checkpoint_url == "http://127.0.0.1:1/mirror/checkpoints/neuron/best_model.pth"

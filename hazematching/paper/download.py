"""Verified, resumable downloads of the paper's released files (standard library + tqdm only).

A file only ever appears under its final name after its sha256 matched: it is downloaded to
``<dest>.part`` and renamed with ``os.replace``. A broken connection keeps the ``.part`` so that the
next run resumes it with an HTTP Range request; a wrong checksum deletes it.
"""

import hashlib
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from hazematching.paper.archive import MARKER, unpack_dataset
from hazematching.paper.releases import BASE_URL_ENV, get
from hazematching.version import __version__

CACHE_ENV = "HAZEMATCHING_CACHE"
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download failed; the message names the URL and says what to do."""


def default_cache_dir() -> Path:
    """``$HAZEMATCHING_CACHE``, else the platform's user cache folder (``~/.cache/hazematching`` on Linux)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "hazematching" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "hazematching"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hazematching"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _part(dest: Path) -> Path:
    return dest.with_suffix(dest.suffix + ".part")


def _resume_start(content_range: str | None) -> int | None:
    """The first byte of a 206 answer (``Content-Range: bytes START-END/TOTAL``), None if unreadable."""
    try:
        return int(content_range.split()[1].split("-")[0])
    except (AttributeError, IndexError, ValueError):
        return None


def _download(url: str, part: Path, progress: bool, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (or write it anew if the server cannot resume)."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": f"hazematching/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    rerun = f"the partial file {part} was kept; run the command again to resume"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the .part is already whole: the checksum decides
            return
        advice = (
            f"the file is not there; check the address (a mirror can be set with {BASE_URL_ENV})"
            if exc.code in (403, 404, 410)
            else "try again later"
        )
        raise DownloadError(f"{url}: the server answered HTTP {exc.code} {exc.reason}; {advice}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"{url}: cannot connect ({reason}); check the network and run the command again") from exc
    with response:
        resumed = offset > 0 and response.status == 206
        if resumed and _resume_start(response.headers.get("Content-Range")) != offset:
            part.unlink()
            raise DownloadError(
                f"{url}: the server resumed at the wrong byte; {part} was deleted, run the command again"
            )
        if not resumed:
            offset = 0  # a 200 answer sends the whole file: start over
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        written = 0
        try:
            with (
                open(part, "ab" if resumed else "wb") as out,
                tqdm(
                    total=None if length is None else offset + length,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=part.name.removesuffix(".part"),
                    disable=not progress,
                ) as bar,
            ):
                # read1 hands over what has arrived, so a stall loses nothing that was already received
                read = getattr(response, "read1", response.read)
                while block := read(CHUNK):
                    out.write(block)
                    written += len(block)
                    bar.update(len(block))
        except (OSError, http.client.HTTPException) as exc:  # reset, timeout, IncompleteRead
            raise DownloadError(f"{url}: the download stopped ({type(exc).__name__}: {exc}); {rerun}") from exc
    if length is not None and written < length:
        raise DownloadError(
            f"{url}: the connection closed after {offset + written} of {offset + length} bytes; {rerun}"
        )


def fetch(url: str, sha256: str, dest: Path, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` and check its sha256; a ``dest`` that already matches is returned as is.

    Raises DownloadError (a one-line message naming the URL) on network errors, keeping ``<dest>.part``
    to resume from, and on a checksum mismatch, deleting it."""
    dest = Path(dest)
    expected = sha256.strip().lower().removeprefix("sha256:")
    if dest.is_file() and sha256_of(dest) == expected:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part(dest)
    for attempt in range(2):
        resumed = part.is_file() and part.stat().st_size > 0
        _download(url, part, progress, timeout)
        actual = sha256_of(part)
        if actual == expected:
            os.replace(part, dest)
            return dest
        part.unlink()
        if not (resumed and attempt == 0):  # a stale .part may have spoilt a resumed file: one fresh try
            break
    raise DownloadError(
        f"{url}: sha256 is {actual}, expected {expected}; the file was deleted, run the command again "
        "(if this repeats, the file on the server is not the released one)"
    )


def download_checkpoint(name: str, cache_dir: Path | None = None, progress: bool = True) -> Path:
    """The released ``best_model.pth`` of data set ``name``, downloaded once into the cache."""
    release = get(name)
    dest = Path(cache_dir or default_cache_dir()) / "checkpoints" / release.name / "best_model.pth"
    return fetch(release.checkpoint_url, release.checkpoint_sha256, dest, progress)


def download_dataset(
    name: str, target_dir: Path, cache_dir: Path | None = None, progress: bool = True, keep_zip: bool = True
) -> Path:
    """Data set ``name`` unpacked into ``target_dir`` (train/, val/, test/; see ``archive.unpack_dataset``).

    A ``target_dir`` already unpacked from the same release is returned without downloading; the zip
    stays in the cache unless ``keep_zip`` is False."""
    release = get(name)
    target_dir = Path(target_dir)
    try:
        if json.loads((target_dir / MARKER).read_text()).get("data_sha256") == release.data_sha256:
            return target_dir
    except (OSError, ValueError, AttributeError):
        pass
    zip_path = Path(cache_dir or default_cache_dir()) / "data" / f"{release.name}.zip"
    fetch(release.data_url, release.data_sha256, zip_path, progress)
    unpack_dataset(zip_path, target_dir, release)
    if not keep_zip:
        zip_path.unlink()
    return target_dir

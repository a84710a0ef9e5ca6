"""Unpacking a released data-set zip into the layout this project's trainer reads.

The paper's archives hold paired 2-channel TIFFs (channel 0 confocal target, channel 1 widefield
input), which ``hazematching.data.io`` reads as they are; only the folder names differ:

* P = 128 sets (zebrafish, organoids1, organoids2, microtubule): ``train_crop/`` -> ``train/``,
  ``val_crop/`` -> ``val/``, ``test/`` -> ``test/``; their ``val/`` (full-size validation images)
  and ``train_crops_fid/`` (the FID reference crops) go to ``extra/val/`` and
  ``extra/train_crops_fid/``, where the trainer does not look.
* neuron: ``train/``, ``val/``, ``test/`` as they are.

Anything else (other folders, loose files, non-TIFF files inside a split folder, which the trainer
would refuse) goes under ``extra/`` with the path it had. The archive may put the data set at its top
level, under ``<name>/`` or under ``data/<name>/``; a README.txt in the result says what came from where.

Every member is checked before anything is written (no absolute paths, no ``..`` leaving the target,
no symbolic links), and the data set is unpacked into a temporary folder beside the target that is
renamed into place at the end, so a failed or interrupted unpack never leaves a partial data set
under the final name.
"""

import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path

from hazematching.paper.releases import Release

MARKER = ".hazematching-release.json"  # which release a folder was unpacked from (download skips it then)
EXTRA = "extra"
_IGNORED = ("__MACOSX",)  # macOS resource forks that Finder's "Compress" adds


class ArchiveError(ValueError):
    """An archive that is unsafe or not the expected data set; the message names the member or folder."""


def _member_parts(info: zipfile.ZipInfo, zip_path: Path) -> tuple[str, ...]:
    """The member's path as clean parts, refusing absolute paths, escapes and symbolic links."""
    name = info.filename
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ArchiveError(f"{zip_path}: member {name!r} is a symbolic link; refusing to unpack this archive")
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        raise ArchiveError(f"{zip_path}: member {name!r} has an absolute path; refusing to unpack this archive")
    parts: list[str] = []
    for part in posix.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise ArchiveError(
                    f"{zip_path}: member {name!r} points outside the target folder; refusing to unpack this archive"
                )
            parts.pop()
        else:
            parts.append(part)
    return tuple(parts)


def _find_root(folders: set[tuple[str, ...]], release: Release, zip_path: Path) -> tuple[str, ...]:
    """The folder that holds the release's split folders: top level, ``<name>/``, ``data/<name>/`` or any one."""
    wanted = tuple(release.splits)
    roots = [f for f in folders | {()} if all(f + (w,) in folders for w in wanted)]
    if not roots:
        top = sorted({f[0] for f in folders if f})
        found = sorted("/".join(f) + "/" for f in folders if 0 < len(f) <= 3)[:20]
        raise ArchiveError(
            f"{zip_path}: no folder holds all of {', '.join(w + '/' for w in wanted)} as the {release.name} data set "
            f"should; found {', '.join(found) or 'no folders'} (top level: {', '.join(top) or 'nothing'})"
        )
    preferred = [(), (release.name,), ("data", release.name)]
    return min(roots, key=lambda f: (preferred.index(f) if f in preferred else len(preferred), len(f), f))


def _destination(parts: tuple[str, ...], root: tuple[str, ...], release: Release) -> tuple[str, ...]:
    if parts[: len(root)] != root:
        return (EXTRA, *parts)
    rel = parts[len(root) :]
    if len(rel) == 2 and rel[0] in release.splits and rel[1].lower().endswith((".tif", ".tiff")):
        return (release.splits[rel[0]], rel[1])
    return (EXTRA, *rel)


def _readme(release: Release, zip_path: Path, moved: dict[str, int]) -> str:
    lines = [
        f"{release.description}",
        f"Unpacked by hazematching from {zip_path.name} (sha256 {release.data_sha256}).",
        "",
        "Paired 2-channel TIFFs: channel 0 = confocal target, channel 1 = widefield input.",
        "Folders (the paper's name -> here):",
    ]
    lines += [f"  {src}/ -> {dst}/" for src, dst in release.splits.items()]
    if moved:
        lines += ["", f"Kept under {EXTRA}/ (not read by the trainer):"]
        lines += [f"  {folder}: {count} file(s)" for folder, count in sorted(moved.items())]
    return "\n".join(lines) + "\n"


def unpack_dataset(zip_path: Path, target_dir: Path, release: Release, overwrite: bool = False) -> Path:
    """Unpack ``zip_path`` into ``target_dir`` as ``train/``, ``val/``, ``test/`` (+ ``extra/``); see the module doc.

    Raises ArchiveError before writing anything if a member is unsafe, an expected folder is missing,
    or ``target_dir`` is a non-empty folder and ``overwrite`` is False."""
    zip_path, target_dir = Path(zip_path), Path(target_dir)
    if target_dir.exists() and (not target_dir.is_dir() or any(target_dir.iterdir())) and not overwrite:
        raise ArchiveError(f"{target_dir}: already exists and is not empty; remove it or choose another folder")
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"{zip_path}: not a readable zip archive ({exc}); delete it and download it again") from exc
    with archive:
        members = [(info, _member_parts(info, zip_path)) for info in archive.infolist()]
        members = [(i, p) for i, p in members if p and p[0] not in _IGNORED]
        files = [(i, p) for i, p in members if not i.is_dir()]
        folders = {p[:k] for i, p in members for k in range(1, len(p) + (1 if i.is_dir() else 0))}
        root = _find_root(folders, release, zip_path)
        plan = [(info, _destination(parts, root, release)) for info, parts in files]
        empty = [src for src, dst in release.splits.items() if not any(d[0] == dst and len(d) == 2 for _, d in plan)]
        if empty:
            raise ArchiveError(
                f"{zip_path}: {', '.join('/'.join((*root, s)) + '/' for s in empty)} holds no TIFF files; "
                "this is not a complete release archive"
            )

        target_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target_dir.name}.", suffix=".unpacking", dir=target_dir.parent))
        try:
            moved: dict[str, int] = {}
            for info, dest in plan:
                path = staging.joinpath(*dest)
                path.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(path, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                if dest[0] == EXTRA:
                    key = "/".join(dest[1:-1]) or "(top level)"
                    moved[key] = moved.get(key, 0) + 1
            (staging / "README.txt").write_text(_readme(release, zip_path, moved))
            (staging / MARKER).write_text(json.dumps({"name": release.name, "data_sha256": release.data_sha256}))
            _move_into_place(staging, target_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target_dir


def _move_into_place(staging: Path, target_dir: Path) -> None:
    """Rename the finished folder to its final name; an old one is moved aside first and removed after."""
    old = None
    if target_dir.is_dir() and any(target_dir.iterdir()):
        old = staging.with_suffix(".old")
        os.replace(target_dir, old)
    elif target_dir.is_dir():
        target_dir.rmdir()
    elif target_dir.exists():
        old = staging.with_suffix(".old")
        os.replace(target_dir, old)
    os.replace(staging, target_dir)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()

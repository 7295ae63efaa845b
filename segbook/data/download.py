"""Download Pascal VOC2012 once, check it, and never leave a half-made copy.

The 2 GB archive streams into a temporary file, its MD5 is checked before
anything is unpacked, and it is unpacked beside the target and renamed into
place when complete: a ``VOCdevkit/VOC2012`` folder is therefore whole.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Sequence

from tqdm.auto import tqdm

from ..settings import data_home
from .voc import VOC_ARCHIVE_NAME, layout_missing, missing_files, split_ids

VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"  # the official host
# Tried in turn when the one before fails: the host torchvision now uses, then the official host over HTTPS.
VOC_MIRRORS = (
    "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    "https://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
)
VOC_MD5 = "6cd6e144f989b92b3379bac3b3de84fd"  # torchvision.datasets.voc's value for the 2012 trainval tar
VOC_SUBDIR = PurePosixPath("VOCdevkit", "VOC2012")  # where the archive puts the dataset
_PARTIAL_PREFIX = ".voc2012-partial-"
_CHUNK = 1 << 20  # 1 MiB


class ChecksumError(RuntimeError):
    """The downloaded archive is not the one expected (truncated, or altered on the way)."""


def _by_hand(root: Path) -> str:
    return (f"To get VOC2012 by hand: download {VOC_ARCHIVE_NAME} (from {VOC_URL} or a mirror) in a browser, "
            f"then either put the .tar in {root} and call download_voc2012() again (it is checked, not re-fetched), "
            f"or extract it anywhere and set SEGBOOK_VOC_ROOT to the folder that holds VOCdevkit/VOC2012.")


def is_complete(voc_dir: Path) -> bool:
    """True when ``voc_dir`` is a finished VOC2012 folder (only a complete one is ever renamed into place)."""
    return not layout_missing(voc_dir)


def _missing_files(voc_dir: Path) -> list[Path]:
    """Images and labels that any split file names but the folder lacks."""
    split_files = sorted((voc_dir / "ImageSets" / "Segmentation").glob("*.txt"))
    ids = list(dict.fromkeys(i for split_file in split_files for i in split_ids(split_file)))
    return missing_files(voc_dir, ids)


def file_md5(path: Path, chunk: int = _CHUNK) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(url: str, dest: Path, *, progress: bool, timeout: float) -> None:
    """Stream ``url`` into ``dest`` with a progress bar; ``file://`` URLs work too (the tests use them)."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=VOC_ARCHIVE_NAME,
                  disable=not progress) as bar:
            for block in iter(lambda: response.read(_CHUNK), b""):
                out.write(block)
                bar.update(len(block))


def _check_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """Refuse any member that would land outside the target folder (absolute paths, '..', outward links).

    ``filter="data"`` (Python 3.12, and patch releases of 3.8-3.11) refuses these
    too; this check makes the promise on every Python and names the member.
    """
    members = tar.getmembers()
    for member in members:
        name = PurePosixPath(member.name)
        targets = [name]
        if member.issym():
            targets.append(name.parent / member.linkname)
        elif member.islnk():
            targets.append(PurePosixPath(member.linkname))
        for target in targets:
            if target.is_absolute() or ".." in target.parts:  # an absolute link target stays absolute after "/"
                raise ValueError(f"{archive}: member {member.name!r} would be written outside the target folder; "
                                 "refusing to extract an archive that is not VOC's. Delete it and download again.")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise ValueError(f"{archive}: member {member.name!r} is not a file or folder; refusing to extract it.")
    return members


def _extract(archive: Path, root: Path, target: Path, *, progress: bool) -> None:
    """Unpack into a temporary folder beside ``target`` and rename ``VOCdevkit/VOC2012`` into place when done."""
    partial = Path(tempfile.mkdtemp(prefix=_PARTIAL_PREFIX, dir=root))
    try:
        with tarfile.open(archive) as tar:
            members = _check_members(tar, archive)
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            for member in tqdm(members, desc="extracting", unit="file", disable=not progress):
                tar.extract(member, partial, **safe)
        unpacked = partial / VOC_SUBDIR
        if not is_complete(unpacked):
            raise ValueError(f"{archive} holds no complete {VOC_SUBDIR} (JPEGImages/, SegmentationClass/, "
                             "ImageSets/Segmentation/train.txt); it is not VOC2012's trainval archive.")
        missing = _missing_files(unpacked)
        if missing:
            raise ValueError(f"{archive} is incomplete: its split files name {len(missing)} files it does not hold "
                             f"(first: {missing[0].relative_to(partial).as_posix()}). Delete it and download again.")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(unpacked, target)  # atomic on one file system: the target appears whole or not at all
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def download_voc2012(root: os.PathLike | str | None = None, *, url: str = VOC_URL, md5: str = VOC_MD5,
                     progress: bool = True, mirrors: Sequence[str] = VOC_MIRRORS, timeout: float = 60.0) -> Path:
    """Return ``root/VOCdevkit/VOC2012`` (default ``data_home()/"voc"``), downloading VOC2012 only if it is not there.

    ``url`` is tried first, then ``mirrors``. An archive already in ``root`` (fetched
    by hand) is checked and used, and left there; one this call fetched is removed.
    ``ChecksumError`` or ``ConnectionError`` when no source served, saying how to get VOC2012 by hand.
    """
    root = Path(root).expanduser() if root is not None else data_home() / "voc"
    target = root / VOC_SUBDIR
    if is_complete(target):
        return target
    if target.exists():
        raise FileExistsError(f"{target} exists but is not a complete VOC2012 folder (no JPEGImages/, "
                              "SegmentationClass/ or ImageSets/Segmentation/train.txt). Delete it and call again.")
    root.mkdir(parents=True, exist_ok=True)
    for stale in [*root.glob(_PARTIAL_PREFIX + "*"), *root.glob(VOC_ARCHIVE_NAME + ".*.part")]:  # a killed run's
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    by_hand = root / VOC_ARCHIVE_NAME
    if by_hand.is_file():
        found = file_md5(by_hand)
        if found != md5:
            raise ChecksumError(f"{by_hand} has MD5 {found}, expected {md5}: it is incomplete or not VOC2012's "
                                f"trainval archive. Delete it and call download_voc2012() again.")
        _extract(by_hand, root, target, progress=progress)
        return target
    failures = []
    for source in dict.fromkeys([url, *mirrors]):  # in order, each once
        fd, name = tempfile.mkstemp(prefix=VOC_ARCHIVE_NAME + ".", suffix=".part", dir=root)
        os.close(fd)
        part = Path(name)
        try:
            try:
                _fetch(source, part, progress=progress, timeout=timeout)
            except (OSError, http.client.HTTPException, ValueError) as err:  # URLError is an OSError; a bad URL
                failures.append((source, "network", f"{type(err).__name__}: {err}"))
                continue
            found = file_md5(part)
            if found != md5:
                failures.append((source, "checksum", f"MD5 {found}, expected {md5}"))
                continue
            _extract(part, root, target, progress=progress)
            return target
        finally:
            part.unlink(missing_ok=True)

    tried = "; ".join(f"{source}: {why}" for source, _, why in failures)
    if any(kind == "checksum" for _, kind, _ in failures):
        raise ChecksumError(f"the VOC2012 archive failed its checksum (the file was removed, nothing was extracted). "
                            f"Tried {tried}. {_by_hand(root)}")
    raise ConnectionError(f"could not download VOC2012 (tried {tried}). {_by_hand(root)}")

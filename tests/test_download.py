"""download_voc2012, offline: a small VOC-layout tar served through a file:// URL runs the real code path."""
from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from _voc_fixture import write_tiny_voc
from segbook.data import download as dl
from segbook.data.download import ChecksumError, download_voc2012
from segbook.data.voc import VOCSegmentation, read_label


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, str]:
    """A tar with VOC's top-level layout (VOCdevkit/VOC2012/...) and its MD5."""
    src = tmp_path_factory.mktemp("src")
    write_tiny_voc(src)
    tar_path = tmp_path_factory.mktemp("served") / dl.VOC_ARCHIVE_NAME
    with tarfile.open(tar_path, "w") as tar:
        tar.add(src / "VOCdevkit", arcname="VOCdevkit")
    return tar_path, _md5(tar_path)


def _leftovers(root: Path) -> list[str]:
    """Everything in root apart from what a finished download leaves (VOCdevkit/)."""
    return sorted(p.name for p in root.iterdir() if p.name != "VOCdevkit") if root.exists() else []


def test_download_extracts_and_second_call_stays_offline(archive, tmp_path):
    tar_path, md5 = archive
    root = tmp_path / "voc"
    voc_dir = download_voc2012(root, url=tar_path.as_uri(), md5=md5, progress=True, mirrors=())  # bars on stderr
    assert voc_dir == root / "VOCdevkit" / "VOC2012"
    assert _leftovers(root) == []  # the fetched archive and the temporary folder are gone
    with tarfile.open(tar_path) as tar:  # every member landed, byte for byte
        for member in tar.getmembers():
            if member.isfile():
                assert (root / member.name).read_bytes() == tar.extractfile(member).read()
    dataset = VOCSegmentation(voc_dir, "train")
    assert len(dataset) == 3 and (dataset[0][1] == 255).any()

    missing_url = (tmp_path / "nowhere.tar").as_uri()  # a second call must not even try the network
    assert download_voc2012(root, url=missing_url, md5="0" * 32, progress=False, mirrors=()) == voc_dir


def test_archive_placed_by_hand_is_checked_and_kept(archive, tmp_path):
    tar_path, md5 = archive
    root = tmp_path / "voc"
    root.mkdir()
    (root / dl.VOC_ARCHIVE_NAME).write_bytes(tar_path.read_bytes())
    missing_url = (tmp_path / "nowhere.tar").as_uri()
    voc_dir = download_voc2012(root, url=missing_url, md5=md5, progress=False, mirrors=())
    assert read_label(voc_dir / "SegmentationClass" / "2007_000001.png").shape == (40, 48)
    assert _leftovers(root) == [dl.VOC_ARCHIVE_NAME]  # the user's file is left alone

    other = tmp_path / "other"
    other.mkdir()
    (other / dl.VOC_ARCHIVE_NAME).write_bytes(b"not a tar")  # a truncated or wrong file put there by hand
    with pytest.raises(ChecksumError, match=rf"{dl.VOC_ARCHIVE_NAME} has MD5 .*expected {md5}.*Delete it"):
        download_voc2012(other, url=missing_url, md5=md5, progress=False, mirrors=())
    assert not (other / "VOCdevkit").exists()


def test_wrong_checksum_leaves_nothing(archive, tmp_path):
    tar_path, md5 = archive
    root = tmp_path / "voc"
    wrong = "0" * 32
    with pytest.raises(ChecksumError, match=rf"failed its checksum.*MD5 {md5}, expected {wrong}.*SEGBOOK_VOC_ROOT"):
        download_voc2012(root, url=tar_path.as_uri(), md5=wrong, progress=False, mirrors=())
    assert _leftovers(root) == [] and not (root / "VOCdevkit").exists()


def test_network_failure_says_how_to_get_voc_by_hand(tmp_path):
    root = tmp_path / "voc"
    missing = (tmp_path / "nowhere.tar").as_uri()
    with pytest.raises(ConnectionError, match=r"could not download VOC2012.*nowhere\.tar.*SEGBOOK_VOC_ROOT"):
        download_voc2012(root, url=missing, progress=False, mirrors=())
    assert _leftovers(root) == [] and not (root / "VOCdevkit").exists()


def test_mirror_used_when_first_source_fails(archive, tmp_path):
    tar_path, md5 = archive
    root = tmp_path / "voc"
    missing = (tmp_path / "nowhere.tar").as_uri()
    voc_dir = download_voc2012(root, url=missing, md5=md5, progress=False, mirrors=(tar_path.as_uri(),))
    assert (voc_dir / "ImageSets" / "Segmentation" / "val.txt").is_file()


def test_interrupted_extraction_leaves_no_target(archive, tmp_path, monkeypatch):
    tar_path, md5 = archive
    root = tmp_path / "voc"
    real_extract, calls = tarfile.TarFile.extract, []

    def extract_then_interrupt(self, member, *args, **kwargs):
        calls.append(member)
        if len(calls) == 6:  # part of the tree is already on disk
            raise KeyboardInterrupt
        return real_extract(self, member, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "extract", extract_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        download_voc2012(root, url=tar_path.as_uri(), md5=md5, progress=False, mirrors=())
    assert len(calls) == 6
    assert _leftovers(root) == [] and not (root / "VOCdevkit").exists()

    monkeypatch.setattr(tarfile.TarFile, "extract", real_extract)  # the next run succeeds and clears what a
    (root / ".voc2012-partial-killed" / "VOCdevkit").mkdir(parents=True)  # run killed outright (kill -9) left
    (root / f"{dl.VOC_ARCHIVE_NAME}.killed.part").write_bytes(b"half")
    assert dl.is_complete(download_voc2012(root, url=tar_path.as_uri(), md5=md5, progress=False, mirrors=()))
    assert _leftovers(root) == []


@pytest.mark.parametrize("cut_at, error, message", [
    ("offset_data", tarfile.ReadError, "unexpected end of data"),  # inside a file's bytes: tarfile notices
    ("offset", ValueError, r"is incomplete: its split files name 1 files .*SegmentationClass/"),  # between members
])
def test_truncated_archive_leaves_no_target(archive, tmp_path, cut_at, error, message):
    """A cut archive whose MD5 we pass anyway (as if the expected MD5 were wrong): extraction must still fail."""
    tar_path, _ = archive
    with tarfile.open(tar_path) as tar:
        last = [m for m in tar.getmembers() if m.isfile()][-1]
        assert last.name.endswith(".png")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(tar_path.read_bytes()[: getattr(last, cut_at) + 10])
    root = tmp_path / "voc"
    with pytest.raises(error, match=message):
        download_voc2012(root, url=cut.as_uri(), md5=_md5(cut), progress=False, mirrors=())
    assert _leftovers(root) == [] and not (root / "VOCdevkit").exists()


def _tar_with(tmp_path: Path, name: str, **link) -> tuple[Path, str]:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        member = tarfile.TarInfo(name)
        if link:
            member.type, member.linkname = tarfile.SYMTYPE, link["linkname"]
            tar.addfile(member)
        else:
            member.size = 4
            tar.addfile(member, io.BytesIO(b"evil"))
    return path, _md5(path)


@pytest.mark.parametrize("name, link", [
    ("VOCdevkit/../../escaped.txt", {}),
    ("/tmp/absolute.txt", {}),
    ("VOCdevkit/VOC2012/link", {"linkname": "/etc"}),
    ("VOCdevkit/VOC2012/link", {"linkname": "../../../outside"}),
])
def test_path_traversal_member_refused(tmp_path, name, link):
    evil, md5 = _tar_with(tmp_path, name, **link)
    root = tmp_path / "deep" / "voc"
    with pytest.raises(ValueError, match=r"member .* would be written outside the target folder"):
        download_voc2012(root, url=evil.as_uri(), md5=md5, progress=False, mirrors=())
    assert not (tmp_path / "deep" / "escaped.txt").exists() and not Path("/tmp/absolute.txt").exists()
    assert _leftovers(root) == [] and not (root / "VOCdevkit").exists()


def test_archive_without_voc_layout_is_refused(tmp_path):
    path, md5 = _tar_with(tmp_path, "something/else.txt")
    root = tmp_path / "voc"
    with pytest.raises(ValueError, match=r"holds no complete VOCdevkit/VOC2012"):
        download_voc2012(root, url=path.as_uri(), md5=md5, progress=False, mirrors=())
    assert _leftovers(root) == [] and not (root / "VOCdevkit").exists()


def test_incomplete_target_folder_is_not_trusted(tmp_path):
    root = tmp_path / "voc"
    (root / "VOCdevkit" / "VOC2012" / "JPEGImages").mkdir(parents=True)
    with pytest.raises(FileExistsError, match=r"VOC2012 exists but is not a complete VOC2012 folder.*Delete it"):
        download_voc2012(root, url=(tmp_path / "nowhere.tar").as_uri(), progress=False, mirrors=())


def test_default_root_is_under_data_home(archive, tmp_path, monkeypatch):
    tar_path, md5 = archive
    monkeypatch.setenv("SEGBOOK_DATA", str(tmp_path / "home"))
    voc_dir = download_voc2012(url=tar_path.as_uri(), md5=md5, progress=False, mirrors=())
    assert voc_dir == tmp_path / "home" / "voc" / "VOCdevkit" / "VOC2012"

"""Dataset archives: unsafe members, bombs and oversize uploads are refused before extraction."""

from __future__ import annotations

import io
import os
import struct
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ml import archive
from ml.archive import ArchiveLimits, extract_archive, list_archive
from ml.errors import ArchiveTooLarge, InvalidArchive

LIMITS = ArchiveLimits(max_entries=100, max_total_bytes=10_000_000, max_ratio=100.0)
MEGABYTE = 1 << 20

Maker = Callable[[Path, dict[str, bytes]], Path]


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, content in members.items():
            bundle.writestr(zipfile.ZipInfo(name), content)
    return path


def _tar(path: Path, members: dict[str, bytes], gzipped: bool = True) -> Path:
    with tarfile.open(path, "w:gz") if gzipped else tarfile.open(path, "w") as bundle:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            bundle.addfile(info, io.BytesIO(content))
    return path


def _tar_special(path: Path, info: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w") as bundle:
        bundle.addfile(info)
    return path


def _noise(size: int) -> bytes:
    return np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()


class _Zeros:
    """A file-like object of ``size`` zero bytes that never holds them all in memory."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        self.left -= size
        return bytes(size)


def _zip_bomb(path: Path, size: int) -> Path:
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as bundle,
        bundle.open("cats/zeros.png", "w") as member,
    ):
        for _ in range(size // MEGABYTE):
            member.write(bytes(MEGABYTE))
    return path


GOOD = {
    "cats/a.png": b"cat-a",
    "cats/b.png": b"cat-b",
    "dogs/a.jpg": _noise(2000),
    "__MACOSX/cats/._a.png": b"resource fork",
    "cats/.DS_Store": b"finder",
    ".hidden/x.png": b"hidden",
}


@pytest.mark.parametrize("maker", [_zip, _tar], ids=["zip", "tar.gz"])
def test_listing_returns_regular_files_without_junk_or_hidden_files(
    maker: Maker, tmp_path: Path
) -> None:
    path = maker(tmp_path / "upload", GOOD)
    assert list_archive(path, LIMITS) == ["cats/a.png", "cats/b.png", "dogs/a.jpg"]


def test_folders_are_allowed_and_dot_prefixes_are_normalised(tmp_path: Path) -> None:
    path = tmp_path / "upload.tar"
    with tarfile.open(path, "w") as bundle:
        folder = tarfile.TarInfo("./cats")
        folder.type = tarfile.DIRTYPE
        bundle.addfile(folder)
        info = tarfile.TarInfo("./cats//a.png")
        info.size = 3
        bundle.addfile(info, io.BytesIO(b"cat"))
    assert list_archive(path, LIMITS) == ["cats/a.png"]


@pytest.mark.parametrize("maker", [_zip, _tar], ids=["zip", "tar.gz"])
def test_extraction_writes_the_same_bytes_and_only_the_listed_files(
    maker: Maker, tmp_path: Path
) -> None:
    path = maker(tmp_path / "upload", GOOD)
    dest = tmp_path / "out"
    written = extract_archive(path, dest, LIMITS)
    assert written == [dest / "cats/a.png", dest / "cats/b.png", dest / "dogs/a.jpg"]
    for target in written:
        assert target.read_bytes() == GOOD[target.relative_to(dest).as_posix()]
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == ["cats/a.png", "cats/b.png", "dogs/a.jpg"]


@pytest.mark.parametrize(
    "name",
    ["../evil.jpg", "cats/../../evil.jpg", "/etc/x", "C:/evil.jpg", "..\\evil.jpg", "a\x01b.jpg"],
)
@pytest.mark.parametrize("maker", [_zip, _tar], ids=["zip", "tar.gz"])
def test_names_that_could_escape_the_destination_are_refused_before_writing(
    maker: Maker, name: str, tmp_path: Path
) -> None:
    path = maker(tmp_path / "upload", {"cats/ok.png": b"ok", name: b"evil"})
    with pytest.raises(InvalidArchive) as caught:
        extract_archive(path, tmp_path / "out", LIMITS)
    assert caught.value.details == {"member": name}
    assert caught.value.code == "invalid_archive"
    assert caught.value.status == 400
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.jpg").exists()


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        (tarfile.SYMTYPE, "symbolic link"),
        (tarfile.LNKTYPE, "hard link"),
        (tarfile.CHRTYPE, "special file"),
        (tarfile.FIFOTYPE, "special file"),
    ],
)
def test_tar_links_devices_and_fifos_are_refused(kind: bytes, message: str, tmp_path: Path) -> None:
    info = tarfile.TarInfo("cats/a.png")
    info.type = kind
    info.linkname = "/etc/passwd"
    path = _tar_special(tmp_path / "upload.tar", info)
    with pytest.raises(InvalidArchive, match=message):
        list_archive(path, LIMITS)


def test_zip_entry_marked_as_symlink_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "upload.zip"
    with zipfile.ZipFile(path, "w") as bundle:
        link = zipfile.ZipInfo("cats/a.png")
        link.external_attr = 0o120777 << 16
        bundle.writestr(link, "/etc/passwd")
    with pytest.raises(InvalidArchive, match="symbolic link"):
        extract_archive(path, tmp_path / "out", LIMITS)
    assert not (tmp_path / "out").exists()


def test_zip_bomb_is_refused_by_ratio_before_anything_is_written(tmp_path: Path) -> None:
    path = _zip_bomb(tmp_path / "bomb.zip", 100 * MEGABYTE)
    assert path.stat().st_size < MEGABYTE
    roomy = ArchiveLimits(max_entries=10, max_total_bytes=1 << 30, max_ratio=100.0)
    with pytest.raises(ArchiveTooLarge, match="expands") as caught:
        extract_archive(path, tmp_path / "out", roomy)
    assert caught.value.code == "archive_too_large"
    assert caught.value.status == 413
    assert not (tmp_path / "out").exists()


def test_gzipped_tar_bomb_is_refused_by_ratio(tmp_path: Path) -> None:
    path = tmp_path / "bomb.tar.gz"
    size = 20 * MEGABYTE
    with tarfile.open(path, "w:gz", compresslevel=9) as bundle:
        info = tarfile.TarInfo("cats/zeros.png")
        info.size = size
        bundle.addfile(info, _Zeros(size))
    roomy = ArchiveLimits(max_entries=10, max_total_bytes=1 << 30, max_ratio=100.0)
    with pytest.raises(ArchiveTooLarge, match="expands"):
        list_archive(path, roomy)


def test_declared_total_over_the_byte_limit_is_refused(tmp_path: Path) -> None:
    path = _zip(
        tmp_path / "big.zip", {"cats/a.png": _noise(600_000), "dogs/a.png": _noise(600_000)}
    )
    small = ArchiveLimits(max_entries=10, max_total_bytes=1_000_000, max_ratio=100.0)
    with pytest.raises(ArchiveTooLarge, match="declares more than") as caught:
        list_archive(path, small)
    assert caught.value.details["limit"] == 1_000_000


def test_too_many_entries_are_refused(tmp_path: Path) -> None:
    path = _zip(tmp_path / "many.zip", {f"cats/{index}.png": b"x" for index in range(11)})
    few = ArchiveLimits(max_entries=10, max_total_bytes=1_000_000, max_ratio=100.0)
    with pytest.raises(ArchiveTooLarge, match="more than 10 entries"):
        list_archive(path, few)


def test_zip_that_understates_a_member_size_fails_extraction_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    path = _zip_bomb(tmp_path / "liar.zip", 4 * MEGABYTE)
    raw = bytearray(path.read_bytes())
    central = raw.rindex(b"PK\x01\x02")
    raw[central + 24 : central + 28] = struct.pack("<I", 1000)  # declared uncompressed size
    path.write_bytes(bytes(raw))
    assert list_archive(path, LIMITS) == ["cats/zeros.png"]
    dest = tmp_path / "out"
    with pytest.raises(InvalidArchive, match="corrupt"):
        extract_archive(path, dest, LIMITS)
    assert list(dest.rglob("*.png")) == []


def test_bytes_written_are_counted_even_when_declared_sizes_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _zip(
        tmp_path / "upload.zip", {"cats/a.png": _noise(300_000), "dogs/a.png": _noise(300_000)}
    )
    # Stand-in for declared sizes that lie: the listing's checks let everything through.
    monkeypatch.setattr(archive, "_check_limits", lambda *arguments: None)
    small = ArchiveLimits(max_entries=10, max_total_bytes=400_000, max_ratio=1.0)
    dest = tmp_path / "out"
    with pytest.raises(ArchiveTooLarge, match="while being extracted"):
        extract_archive(path, dest, small)
    assert [p for p in dest.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize(
    "content",
    [b"", b"just some text, not an archive", b"\x89PNG\r\n\x1a\n" + bytes(100)],
    ids=["empty", "text", "png"],
)
def test_files_that_are_not_archives_are_refused(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "upload.zip"
    path.write_bytes(content)
    with pytest.raises(InvalidArchive, match="not a zip or tar"):
        list_archive(path, LIMITS)


def test_truncated_gzipped_tar_is_refused_as_corrupt(tmp_path: Path) -> None:
    path = _tar(tmp_path / "upload.tar.gz", {"cats/a.png": _noise(50_000)})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InvalidArchive):
        extract_archive(path, tmp_path / "out", LIMITS)
    assert list((tmp_path / "out").rglob("*.png")) == []


def test_a_name_that_appears_twice_is_refused(tmp_path: Path) -> None:
    path = _tar(tmp_path / "upload.tar", {"cats/a.png": b"one"}, gzipped=False)
    with tarfile.open(path, "a") as bundle:
        info = tarfile.TarInfo("cats/a.png")
        info.size = 3
        bundle.addfile(info, io.BytesIO(b"two"))
    with pytest.raises(InvalidArchive, match="appears twice"):
        list_archive(path, LIMITS)


def test_a_name_that_is_both_a_file_and_a_folder_is_refused(tmp_path: Path) -> None:
    path = _zip(tmp_path / "upload.zip", {"cats": b"file", "cats/a.png": b"image"})
    with pytest.raises(InvalidArchive, match="both a file and a folder"):
        list_archive(path, LIMITS)


def test_extraction_does_not_follow_a_link_already_in_the_destination(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "out"
    dest.mkdir()
    os.symlink(outside, dest / "cats")
    path = _zip(tmp_path / "upload.zip", {"cats/a.png": b"image"})
    with pytest.raises(InvalidArchive, match="leave the destination"):
        extract_archive(path, dest, LIMITS)
    assert list(outside.iterdir()) == []

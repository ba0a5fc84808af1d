"""Uploaded dataset archives, listed and extracted without trusting what they declare.

A dataset arrives as one ``.zip``, ``.tar``, ``.tar.gz``/``.tgz`` file (the format is read from
the bytes, not the name; bzip2 and xz tars open the same way). Every member is checked before a
byte is written: names must stay inside the destination (no absolute paths, ``..``, drive
letters, backslashes, control characters), links and device or FIFO entries are refused, and
the entry count, the declared total size and the declared size over the archive's size (the
zip-bomb ratio) are bounded. Extraction then streams regular files one chunk at a time and
counts the bytes it actually writes, because declared sizes can lie. Nothing here calls
``extractall``.

macOS and hidden entries (``__MACOSX/``, ``._*``, ``.DS_Store``, anything under a dot folder)
are checked like the rest but neither listed nor extracted.
"""

from __future__ import annotations

import hashlib
import lzma
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, BinaryIO, cast

from ml.errors import ArchiveTooLarge, InvalidArchive

CHUNK_BYTES = 1 << 20
"""Bytes read per step while extracting: memory stays bounded whatever a member's size."""

JUNK_FOLDERS = frozenset({"__MACOSX"})
"""Top-level folders that archivers add and that never hold data."""

_READ_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    tarfile.TarError,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
    zlib.error,
    lzma.LZMAError,
)
_ZIP_METHODS = frozenset(
    {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
)
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds an archive must respect before and while it is extracted.

    Attributes:
        max_entries: most members (files, folders, ignored junk included).
        max_total_bytes: most uncompressed bytes, declared and actually written.
        max_ratio: most declared uncompressed bytes per byte of archive file.
    """

    max_entries: int
    max_total_bytes: int
    max_ratio: float


@dataclass(frozen=True)
class _Member:
    name: str  # normalised POSIX path, "" for the archive root
    is_file: bool  # False for folders; anything else has been refused already
    size: int  # as declared by the archive
    opener: Callable[[], IO[bytes]]


def _normalise(raw: str) -> str:
    """Return ``raw`` as a relative POSIX path, or refuse a name that could escape."""
    details = {"member": raw}
    if "\\" in raw or _DRIVE.match(raw):
        raise InvalidArchive(f"Member {raw!r} uses a Windows path.", details)
    if raw.startswith("/"):
        raise InvalidArchive(f"Member {raw!r} has an absolute path.", details)
    if _CONTROL.search(raw):
        raise InvalidArchive(f"Member {raw!r} has control characters in its name.", details)
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArchive(f"Member {raw!r} has a name that is not UTF-8.", details) from None
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise InvalidArchive(f"Member {raw!r} points outside the archive (..).", details)
    return "/".join(parts)


def _is_ignored(name: str) -> bool:
    parts = name.split("/")
    return parts[0] in JUNK_FOLDERS or any(part.startswith(".") for part in parts)


def _zip_is_file(info: zipfile.ZipInfo) -> bool:
    details = {"member": info.filename}
    mode = info.external_attr >> 16
    if "\x00" in info.orig_filename:
        raise InvalidArchive(f"Member {info.filename!r} has a NUL byte in its name.", details)
    if stat.S_ISLNK(mode):
        raise InvalidArchive(f"Member {info.filename!r} is a symbolic link.", details)
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise InvalidArchive(f"Member {info.filename!r} is a device, FIFO or socket.", details)
    if info.flag_bits & 0x1:
        raise InvalidArchive(f"Member {info.filename!r} is encrypted.", details)
    if info.compress_type not in _ZIP_METHODS:
        raise InvalidArchive(f"Member {info.filename!r} uses an unknown compression.", details)
    return not (info.is_dir() or stat.S_ISDIR(mode))


def _tar_is_file(info: tarfile.TarInfo) -> bool:
    details = {"member": info.name}
    if info.issym() or info.islnk():
        kind = "symbolic" if info.issym() else "hard"
        raise InvalidArchive(f"Member {info.name!r} is a {kind} link.", details)
    if info.isdir():
        return False
    if not info.isreg():
        raise InvalidArchive(
            f"Member {info.name!r} is a device, FIFO or other special file.", details
        )
    return True


def _open_tar_member(archive: tarfile.TarFile, info: tarfile.TarInfo) -> IO[bytes]:
    stream = archive.extractfile(info)
    if stream is None:  # only for non-regular members, which were refused already
        raise InvalidArchive(f"Member {info.name!r} has no data.", {"member": info.name})
    return stream


def _open_archive(path: Path) -> zipfile.ZipFile | tarfile.TarFile:
    try:
        if zipfile.is_zipfile(path):
            return zipfile.ZipFile(path)
        if tarfile.is_tarfile(path):
            return tarfile.open(path, "r:*")
    except _READ_ERRORS as exc:
        raise InvalidArchive(f"The archive is corrupt: {exc}") from exc
    raise InvalidArchive("The upload is not a zip or tar archive (optionally gzip-compressed).")


def _members(archive: zipfile.ZipFile | tarfile.TarFile) -> Iterator[_Member]:
    """Yield members in archive order, lazily, so a limit can stop a tar early."""
    try:
        if isinstance(archive, zipfile.ZipFile):
            for info in archive.infolist():
                is_file = _zip_is_file(info)
                opener = partial(archive.open, info)
                yield _Member(_normalise(info.filename), is_file, info.file_size, opener)
        else:
            for entry in archive:
                is_file = _tar_is_file(entry)
                opener = partial(_open_tar_member, archive, entry)
                yield _Member(_normalise(entry.name), is_file, entry.size, opener)
    except _READ_ERRORS as exc:
        raise InvalidArchive(f"The archive is corrupt: {exc}") from exc


def _check_limits(
    entries: int, total_bytes: int, archive_bytes: int, limits: ArchiveLimits
) -> None:
    if entries > limits.max_entries:
        raise ArchiveTooLarge(
            f"The archive has more than {limits.max_entries} entries.",
            {"limit": limits.max_entries},
        )
    if total_bytes > limits.max_total_bytes:
        raise ArchiveTooLarge(
            f"The archive declares more than {limits.max_total_bytes} uncompressed bytes.",
            {"declared_bytes": total_bytes, "limit": limits.max_total_bytes},
        )
    ratio = total_bytes / max(archive_bytes, 1)
    if ratio > limits.max_ratio:
        raise ArchiveTooLarge(
            f"The archive expands {ratio:.0f} times; the limit is {limits.max_ratio:g}.",
            {"ratio": ratio, "limit": limits.max_ratio},
        )


def _check_no_file_is_a_folder(files: set[str]) -> None:
    for name in files:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in files:
                raise InvalidArchive(
                    f"Member {folder!r} is both a file and a folder.", {"member": folder}
                )


def list_archive(path: Path, limits: ArchiveLimits) -> list[str]:
    """List the regular files of an archive, refusing it if anything in it is unsafe.

    Lets the API check an upload's members and layout before anything is written to disk.

    Args:
        path: the archive (zip, or tar with or without gzip/bzip2/xz).
        limits: entry-count, size and compression-ratio bounds.

    Returns:
        Normalised relative POSIX paths of the files, sorted; folders, macOS junk and hidden
        files are left out.

    Raises:
        InvalidArchive: unknown or corrupt format, unsafe names, links, special files,
            duplicate names.
        ArchiveTooLarge: too many entries, too many declared bytes, or too high a ratio.
    """
    archive_bytes = path.stat().st_size
    files: set[str] = set()
    entries = total_bytes = 0
    with _open_archive(path) as archive:
        for member in _members(archive):
            entries += 1
            total_bytes += member.size
            # Checked as the listing goes: the ratio only grows, so a bomb stops at its header.
            _check_limits(entries, total_bytes, archive_bytes, limits)
            if not member.is_file or _is_ignored(member.name):
                continue
            if not member.name or member.name in files:
                what = "appears twice" if member.name else "has an empty name"
                raise InvalidArchive(f"Member {member.name!r} {what}.", {"member": member.name})
            files.add(member.name)
    _check_no_file_is_a_folder(files)
    return sorted(files)


@contextmanager
def _reading(member: str) -> Iterator[None]:
    try:
        yield
    except _READ_ERRORS as exc:
        raise InvalidArchive(f"Member {member!r} is corrupt: {exc}", {"member": member}) from exc


def _copy(member: _Member, target: BinaryIO, budget: int) -> int:
    """Stream one member into ``target``; return its size. ``budget`` is the bytes still allowed."""
    copied = 0
    with _reading(member.name):
        stream = member.opener()
    with stream:
        while True:
            with _reading(member.name):
                chunk = stream.read(CHUNK_BYTES)
            if not chunk:
                return copied
            copied += len(chunk)
            if copied > budget:
                raise ArchiveTooLarge(
                    "The archive expands past the byte limit while being extracted.",
                    {"member": member.name},
                )
            if copied > member.size:
                raise InvalidArchive(
                    f"Member {member.name!r} holds more bytes than it declares.",
                    {"member": member.name, "declared_bytes": member.size},
                )
            target.write(chunk)


def extract_archive(path: Path, dest: Path, limits: ArchiveLimits) -> list[Path]:
    """Extract an archive's regular files under ``dest``, after checking all of it.

    Members are streamed one by one (never ``extractall``), so links, special files and
    names escaping ``dest`` cannot be written, and the bytes actually written are counted
    against ``limits.max_total_bytes``. Files already written are removed if extraction fails.

    Args:
        path: the archive.
        dest: the folder to extract into (created if missing); existing files are not replaced.
        limits: entry-count, size and compression-ratio bounds.

    Returns:
        The written files, sorted.

    Raises:
        InvalidArchive: as ``list_archive``, or a member is corrupt or larger than it declares.
        ArchiveTooLarge: as ``list_archive``, or the bytes written pass ``max_total_bytes``.
    """
    wanted = set(list_archive(path, limits))
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    written: list[Path] = []
    budget = limits.max_total_bytes
    try:
        with _open_archive(path) as archive:
            for member in _members(archive):
                if not member.is_file or member.name not in wanted:
                    continue
                wanted.discard(member.name)
                target = root / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.parent.resolve().is_relative_to(root):  # a link already in dest
                    raise InvalidArchive(f"Member {member.name!r} would leave the destination.")
                with target.open("xb") as handle:
                    written.append(target)
                    budget -= _copy(member, handle, budget)
    except BaseException:
        for target in written:
            target.unlink(missing_ok=True)
        raise
    return sorted(dest / target.relative_to(root) for target in written)


class _Digest:
    """A write-only stream that hashes what ``_copy`` writes to it, and keeps nothing."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()

    def write(self, chunk: bytes) -> int:
        self.sha256.update(chunk)
        return len(chunk)


def hash_files(path: Path, names: set[str], limits: ArchiveLimits) -> dict[str, tuple[str, int]]:
    """The SHA-256 and size of some of an archive's files, read without writing anything.

    Lets the API tell an upload's images that a dataset already holds from new ones when a
    limit depends on it, before any job exists.

    Args:
        path: the archive (already checked by ``list_archive``).
        names: the files to hash, as ``list_archive`` names them.
        limits: the same bounds as for extraction.

    Returns:
        File name -> (hex SHA-256, bytes), for each of ``names`` in the archive.

    Raises:
        InvalidArchive, ArchiveTooLarge: as ``extract_archive``.
    """
    digests: dict[str, tuple[str, int]] = {}
    budget = limits.max_total_bytes
    with _open_archive(path) as archive:
        for member in _members(archive):
            if member.is_file and member.name in names and member.name not in digests:
                digest = _Digest()
                size = _copy(member, cast("BinaryIO", digest), budget)
                budget -= size
                digests[member.name] = (digest.sha256.hexdigest(), size)
    return digests

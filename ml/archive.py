"""Uploaded dataset archives, listed and extracted without trusting what they declare.

A dataset arrives as one ``.zip``, ``.tar``, ``.tar.gz``/``.tgz`` file (the format is read from
the bytes, not the name; bzip2 and xz tars open the same way). Every member is checked before a
byte is written: names must stay inside the destination (no absolute paths, ``..``, drive
letters, backslashes, control characters) and be at most ``MAX_NAME_BYTES`` long,
``MAX_NAME_DEPTH`` components deep and ``MAX_COMPONENT_BYTES`` a component; links, device or
FIFO entries and sparse files are refused; and the entry count, the declared total size and the
declared size over the archive's size (the zip-bomb ratio) are bounded. Extraction then streams
regular files one chunk at a time and counts the bytes it actually writes, because declared
sizes can lie. Nothing here calls ``extractall``.

macOS and hidden entries (``__MACOSX/``, ``._*``, ``.DS_Store``, anything under a dot folder)
are checked like the rest but neither listed nor extracted.

Listing runs inside the API request, so its work is bounded as well, and checked before the
standard library does any of it:

- **Zip.** ``zipfile.ZipFile()`` reads and parses the whole central directory before one
  member can be looked at: as many bytes as the end record says, whatever count it claims,
  and each entry's extra field in time quadratic in its record count. So the end record (and
  the zip64 one, where any Python version looks for it) is read here first, and refused with
  ``ArchiveTooLarge`` if it claims more than ``max_entries`` entries or more than
  ``max_entries * ZIP_DIRECTORY_ENTRY_MAX_BYTES`` bytes. The directory's entries are then
  walked the way zipfile will walk them, reading only their 46 fixed bytes and extra fields
  (no name is decoded, nothing is kept): more than ``max_entries`` of them, or an extra field of
  more than 16 records, is refused before ``ZipFile`` is built.
- **Tar.** ``tarfile`` reads a GNU long name or link, or a pax header, whole inside
  ``TarFile.next()`` (for the first member already while opening); a chain of extended
  headers recurses once per header; tarfile before Python 3.11.10 and 3.12.6 (the development
  virtualenv has 3.11.7) parses pax headers with quadratic regexes (CVE-2024-6232), reads a
  GNU sparse 1.0 map in quadratic time, and applies every global pax record to every later
  member. Rather than a second pass over the (decompressed) stream, the tar is read once,
  through two hooks that see each header as it arrives: a ``TarInfo`` subclass whose
  ``_proc_member`` (the method tarfile's source names for subclasses to override) tarfile calls
  with each 512-byte header before it reads the blocks that follow, and a file object between
  tarfile and the decompressor. From the header alone, an extended header over
  ``MAX_EXTENDED_HEADER_BYTES``, more than 8 in a row, more extended-header bytes in all than
  64 KiB plus 1 KiB per member so far, and sparse members are refused. A pax header's blocks
  are read ahead (the file object keeps them for tarfile) and checked in one linear pass: its
  records must be well formed, none ``GNU.sparse``, no run of more than 32 digits or second
  ``hdrcharset`` (what makes the old regexes quadratic), and the records in all stay under 256
  plus 16 per member so far (64 in global headers). The file object refuses to read or seek
  past ``max_total_bytes`` plus 3 KiB per entry of ``max_entries`` of decompressed stream. Each
  check raises as its header arrives, so the 200 MB long name costs one 512-byte header: a
  small hostile archive is refused in milliseconds, and a listing never costs more than a few
  times what a legitimate archive of ``max_entries`` members does.
- **Names.** Length, depth and component caps come before any other check of a name, and the
  file/folder clash check walks one tree of all names, linear in their total length.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO, cast

from ml.errors import ArchiveTooLarge, InvalidArchive

CHUNK_BYTES = 1 << 20
"""Bytes read per step while extracting: memory stays bounded whatever a member's size."""

JUNK_FOLDERS = frozenset({"__MACOSX"})
"""Top-level folders that archivers add and that never hold data."""

MAX_NAME_BYTES = 1024
"""Longest member name, in UTF-8 bytes as stored; a longer one is refused (``InvalidArchive``)."""

MAX_NAME_DEPTH = 32
"""Most path components in a member name (``cats/a.jpg`` has 2); a deeper one is refused."""

MAX_COMPONENT_BYTES = 255
"""Longest file or folder name within a member name, in UTF-8 bytes: what Linux file systems
can create (``NAME_MAX``), so that extraction cannot fail on it."""

MAX_EXTENDED_HEADER_BYTES = 64 * 1024
"""Largest tar extended header (GNU long name or link, pax or Solaris header), checked on its
512-byte header before tarfile reads it; a larger one is an ``ArchiveTooLarge``."""

ZIP_DIRECTORY_ENTRY_MAX_BYTES = 46 + MAX_NAME_BYTES + 1024
"""Most central-directory bytes allowed per entry of ``max_entries``: the fixed 46-byte record, a
name at the cap, and 1 KiB for its extra field and comment."""

_EXTENDED_HEADERS_IN_A_ROW = 8
"""Extended headers before one member's own header (legitimate archives use one to three):
tarfile recurses once per header."""

_EXTENDED_BYTES_PER_MEMBER = 1024
"""Extended-header bytes allowed in all, per member read so far, beyond the first
``MAX_EXTENDED_HEADER_BYTES`` (archivers write tens to hundreds of bytes a member)."""

_PAX_RECORDS_FIRST = 256
_PAX_RECORDS_PER_MEMBER = 16
"""Pax records allowed in all: the first ones, then so many per member read so far. tarfile
spends a few microseconds on each, and applies global ones to every member after them."""

_GLOBAL_PAX_RECORDS = 64
"""Pax records allowed in global headers (``git archive`` writes one)."""

_PAX_DIGIT_RUN = 32
"""Longest run of ASCII digits in a pax header: tarfile's ``\\d+ hdrcharset=`` search costs the
square of each run (numbers in pax records have at most 20 digits)."""
_DIGITS_TO_ZERO = bytes(0 if chr(byte).isdigit() and byte < 0x80 else 1 for byte in range(256))
"""A ``bytes.translate`` table that marks ASCII digits with 0 and every other byte with 1."""

_STREAM_BYTES_PER_ENTRY = 4 * tarfile.BLOCKSIZE + _EXTENDED_BYTES_PER_MEMBER  # 3 KiB
"""Decompressed tar bytes allowed per entry besides its data: its header, padding and a few
extended headers."""

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
_NOT_THIS_FORMAT = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)
"""What opening a tar a given way raises when the file is not one (as ``tarfile.open`` says)."""
_ZIP_METHODS = frozenset(
    {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
)
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")  # how tarfile finds a pax record
_SHOWN_NAME = 120
"""Characters of an over-long name quoted in an error."""


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


def _shown(raw: str) -> str:
    return raw if len(raw) <= _SHOWN_NAME else raw[:_SHOWN_NAME] + "..."


def _check_name_size(raw: str) -> None:
    """Refuse a name deeper than ``MAX_NAME_DEPTH``, longer than ``MAX_NAME_BYTES`` or with a
    component longer than ``MAX_COMPONENT_BYTES``.

    Runs before any other check of the name, in time linear in its length.
    """
    if raw.count("/") >= MAX_NAME_DEPTH:  # only then can it have too many components
        depth = sum(1 for part in raw.split("/") if part not in ("", "."))
        if depth > MAX_NAME_DEPTH:
            raise InvalidArchive(
                f"Member {_shown(raw)!r} is {depth} path components deep; the limit is "
                f"{MAX_NAME_DEPTH}.",
                {"member": _shown(raw), "depth": depth, "limit": MAX_NAME_DEPTH},
            )
    if len(raw) * 4 <= MAX_COMPONENT_BYTES:  # short enough in any encoding
        return
    encoded = raw.encode("utf-8", "surrogatepass")
    if len(encoded) > MAX_NAME_BYTES:
        raise InvalidArchive(
            f"Member {_shown(raw)!r} has a name of {len(encoded)} bytes; the limit is "
            f"{MAX_NAME_BYTES}.",
            {"member": _shown(raw), "name_bytes": len(encoded), "limit": MAX_NAME_BYTES},
        )
    longest = max(len(part) for part in encoded.split(b"/"))
    if longest > MAX_COMPONENT_BYTES:
        raise InvalidArchive(
            f"Member {_shown(raw)!r} has a file or folder name of {longest} bytes; the limit "
            f"is {MAX_COMPONENT_BYTES}.",
            {"member": _shown(raw), "component_bytes": longest, "limit": MAX_COMPONENT_BYTES},
        )


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


# --- zip: the end records, read before zipfile parses the central directory ----------------

_END = struct.Struct("<4s4H2LH")  # end of central directory record
_END64_LOCATOR = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")
_END_SIGNATURE = b"PK\x05\x06"
_END64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_END64_SIGNATURE = b"PK\x06\x06"
_ENTRY_SIGNATURE = b"PK\x01\x02"
_ENTRY = struct.Struct("<4s4B4HL2L5H2L")  # central directory entry: name, extra, comment follow
_ZIP_EXTRA_RECORDS = 16
"""Most records in one entry's extra field (archivers write one to four)."""


@dataclass(frozen=True)
class _Directory:
    """A central directory as one end record describes it."""

    entries: int  # the larger of the record's two counts
    size: int  # bytes
    start: int  # where zipfile reads it from: it ends where its end record begins


def _read_at(handle: BinaryIO, offset: int, size: int) -> bytes:
    handle.seek(offset)
    return handle.read(size)


def _zip_directories(handle: BinaryIO) -> list[_Directory]:
    """The central directories the end records describe, found as ``zipfile`` finds them.

    The classic record is the last 22 bytes, or else the last signature in the final 64 KiB
    (an archive comment). A zip64 locator just before it points at a zip64 record, which
    Python 3.11 and 3.12 read right before the locator, but which may be at the locator's
    offset instead: both are returned, and the classic record's own figures too unless the
    first replaces them or they are zip64 placeholders (0xFFFF entries, 0xFFFFFFFF bytes).
    """
    size = handle.seek(0, io.SEEK_END)
    if size < _END.size:
        return []
    tail_start = max(size - (1 << 16) - _END.size, 0)
    tail = _read_at(handle, tail_start, size - tail_start)
    if tail[-_END.size :].startswith(_END_SIGNATURE) and tail.endswith(b"\x00\x00"):
        found = len(tail) - _END.size
    else:
        found = tail.rfind(_END_SIGNATURE)
        if found < 0 or found + _END.size > len(tail):
            return []  # not a zip: zipfile refuses it
    location = tail_start + found
    end = _END.unpack_from(tail, found)
    classic = _Directory(max(end[3], end[4]), end[5], location - end[5])
    directories: list[_Directory] = []
    replaced = False
    locator_at = location - _END64_LOCATOR.size
    locator = _read_at(handle, locator_at, _END64_LOCATOR.size) if locator_at >= 0 else b""
    if len(locator) == _END64_LOCATOR.size and locator.startswith(_END64_LOCATOR_SIGNATURE):
        offset = _END64_LOCATOR.unpack(locator)[2]
        for record_at in dict.fromkeys((locator_at - _END64.size, offset)):
            if not 0 <= record_at <= locator_at - _END64.size:
                continue
            record = _read_at(handle, record_at, _END64.size)
            if len(record) == _END64.size and record.startswith(_END64_SIGNATURE):
                fields = _END64.unpack(record)
                directories.append(
                    _Directory(max(fields[6], fields[7]), fields[8], record_at - fields[8])
                )
                replaced = replaced or record_at == locator_at - _END64.size
    placeholders = 0xFFFF in end[3:5] or 0xFFFFFFFF in end[5:7]
    if not replaced and not (directories and placeholders):
        directories.append(classic)
    return directories


def _check_zip_entries(handle: BinaryIO, directory: _Directory, limits: ArchiveLimits) -> None:
    """Walk the directory's entries as ``zipfile`` will parse them, reading only their fixed
    46 bytes and extra fields: refuse more than ``max_entries`` of them, or an extra field of
    more than ``_ZIP_EXTRA_RECORDS`` records (zipfile decodes each in time quadratic in its
    record count). Stop quietly where zipfile will find the directory corrupt."""
    entries = position = 0  # position: bytes into the directory
    handle.seek(directory.start)
    while position < directory.size:
        fixed = handle.read(min(_ENTRY.size, directory.size - position))
        if len(fixed) != _ENTRY.size or not fixed.startswith(_ENTRY_SIGNATURE):
            return
        entries += 1
        if entries > limits.max_entries:
            raise ArchiveTooLarge(
                f"The archive has more than {limits.max_entries} entries.",
                {"limit": limits.max_entries},
            )
        name, extra_bytes, comment = _ENTRY.unpack(fixed)[12:15]
        left = directory.size - position - _ENTRY.size
        extra = handle.read(max(min(name + extra_bytes, left), 0))[name:]
        records = offset = 0
        while len(extra) - offset >= 4:
            records += 1
            if records > _ZIP_EXTRA_RECORDS:
                raise ArchiveTooLarge(
                    f"The archive's entry {entries} has an extra field of more than "
                    f"{_ZIP_EXTRA_RECORDS} records.",
                    {"entry": entries, "limit": _ZIP_EXTRA_RECORDS},
                )
            offset += 4 + struct.unpack_from("<H", extra, offset + 2)[0]
        position += _ENTRY.size + name + extra_bytes + comment
        if comment:
            handle.seek(directory.start + position)


def _check_zip_directory(path: Path, limits: ArchiveLimits) -> None:
    """Refuse a zip whose central directory is larger than the limits allow, before
    ``zipfile.ZipFile()`` reads and parses all of it."""
    most_bytes = limits.max_entries * ZIP_DIRECTORY_ENTRY_MAX_BYTES
    with path.open("rb") as handle:
        for directory in _zip_directories(handle):
            if directory.entries > limits.max_entries:
                raise ArchiveTooLarge(
                    f"The archive has more than {limits.max_entries} entries (its directory "
                    f"claims {directory.entries}).",
                    {"entries": directory.entries, "limit": limits.max_entries},
                )
            if directory.size > most_bytes:
                raise ArchiveTooLarge(
                    f"The archive's central directory claims {directory.size} bytes; at most "
                    f"{most_bytes} are allowed for {limits.max_entries} entries.",
                    {"directory_bytes": directory.size, "limit": most_bytes},
                )
            if directory.start >= 0:  # else zipfile refuses it as corrupt
                _check_zip_entries(handle, directory, limits)


# --- tar: headers checked as tarfile reads them, on a stream with a byte budget -------------

_EXTENDED = {
    tarfile.GNUTYPE_LONGNAME: "GNU long name",
    tarfile.GNUTYPE_LONGLINK: "GNU long link",
    tarfile.XHDTYPE: "pax extended header",
    tarfile.XGLTYPE: "pax global header",
    tarfile.SOLARIS_XHDTYPE: "Solaris extended header",
}
_PAX = frozenset({tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE})


def _blocks(size: int) -> int:
    """``size`` rounded up to whole tar blocks, as tarfile reads an extended header's data."""
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


class _Stream:
    """The (decompressed) tar stream as tarfile sees it: a byte budget, and a look-ahead.

    Reading or seeking past ``budget`` bytes from the start is an ``ArchiveTooLarge`` before
    anything past it is decompressed. ``peek`` reads ahead without moving the position, so
    a header can be checked before tarfile reads the same bytes.
    """

    def __init__(self, inner: IO[bytes], raw: IO[bytes], budget: int) -> None:
        self._inner = inner
        self._raw = raw
        self._budget = budget
        self._position = 0
        self._ahead = b""  # read from inner, not yet by tarfile: the position is before it

    def _pull(self, size: int) -> bytes:
        """Up to ``size`` more bytes from the decompressor, refusing any past the budget."""
        reached = self._position + len(self._ahead)
        data = self._inner.read(max(min(size, self._budget - reached + 1), 0))
        if reached + len(data) > self._budget:
            raise ArchiveTooLarge(
                f"The archive's tar stream passes {self._budget} bytes.",
                {"limit": self._budget},
            )
        return data

    def read(self, size: int = -1, /) -> bytes:
        if size < 0:
            size = self._budget + 1 - self._position
        if not self._ahead:
            data = self._pull(size)
        elif len(self._ahead) >= size:
            data, self._ahead = self._ahead[:size], self._ahead[size:]
        else:
            data, self._ahead = self._ahead, b""
            data += self._pull(size - len(data))
        self._position += len(data)
        return data

    def peek(self, size: int) -> bytes:
        if len(self._ahead) < size:
            self._ahead += self._pull(size - len(self._ahead))
        return self._ahead[:size]

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        if whence == io.SEEK_CUR:
            offset += self._position
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("a tar stream seeks from its start only")
        if offset > self._budget:
            raise ArchiveTooLarge(
                f"The archive's tar stream passes {self._budget} bytes.",
                {"limit": self._budget},
            )
        if self._position <= offset <= self._position + len(self._ahead):
            self._ahead = self._ahead[offset - self._position :]
        else:
            self._ahead = b""
            self._inner.seek(offset)
        self._position = offset
        return offset

    def write(self, data: bytes, /) -> int:
        raise io.UnsupportedOperation("a tar stream is read only")

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._raw.close()


def _check_pax(block: bytes, size: int, most_records: int) -> tuple[int, int]:
    """Check a pax header's blocks in one linear pass; return its record count and the
    records it may still have.

    Refuses malformed records (tarfile would misread them), ``GNU.sparse`` ones (sparse
    files are refused, and tarfile reads the 1.0 map in quadratic time), and what makes
    tarfile's regexes quadratic before Python 3.11.10: long digit runs, repeated ``hdrcharset``.
    """
    long_run = bytes(_PAX_DIGIT_RUN + 1) in block.translate(_DIGITS_TO_ZERO)
    if long_run or block.count(b"hdrcharset=") > 1:
        raise InvalidArchive(
            "The archive has a pax header that tarfile would take quadratic time to parse.",
            {"limit": f"{_PAX_DIGIT_RUN} digits in a row, one hdrcharset"},
        )
    if b"GNU.sparse." in block:
        raise InvalidArchive("The archive holds a sparse file.", {"pax_record": "GNU.sparse"})
    records, position = 0, 0
    while position < size:
        space = block.find(b" ", position, min(position + 21, size))
        digits = block[position:space] if space > position else b""
        length = int(digits) if digits.isdigit() else 0
        end = position + length
        equals = block.find(b"=", space + 1, end - 1) if length else -1
        if equals <= space + 1 or end > size or block[end - 1 : end] != b"\n":
            raise InvalidArchive(
                f"The archive has a malformed pax record at byte {position} of its header.",
                {"offset": position},
            )
        records += 1
        if records > most_records:
            break
        position = end
    else:
        if _PAX_RECORD.match(block, size):  # tarfile would read records from the padding
            raise InvalidArchive(
                "The archive has pax records past its header's declared size.",
                {"offset": size},
            )
    return records, most_records - records


class _HeaderBudget:
    """What one tar's headers may still cost: its extended headers are counted as they come."""

    def __init__(self) -> None:
        self.members = 0
        self.in_a_row = 0
        self.extended_bytes = 0
        self.pax_records = 0
        self.global_records = 0

    def check(self, info: tarfile.TarInfo, stream: _Stream) -> None:
        """Check ``info``'s header, just read, before tarfile reads what follows it."""
        if info.type == tarfile.GNUTYPE_SPARSE:
            raise InvalidArchive("The archive holds a sparse file.", {"member": _shown(info.name)})
        kind = _EXTENDED.get(info.type)
        if kind is None:
            self.members += 1
            self.in_a_row = 0
            return
        details: dict[str, Any] = {"header": kind, "offset": info.offset}
        if info.size > MAX_EXTENDED_HEADER_BYTES:
            raise ArchiveTooLarge(
                f"The archive has a {kind} of {info.size} bytes; the limit is "
                f"{MAX_EXTENDED_HEADER_BYTES}.",
                {**details, "bytes": info.size, "limit": MAX_EXTENDED_HEADER_BYTES},
            )
        self.in_a_row += 1
        if self.in_a_row > _EXTENDED_HEADERS_IN_A_ROW:
            raise ArchiveTooLarge(
                f"The archive has more than {_EXTENDED_HEADERS_IN_A_ROW} extended headers "
                "in a row.",
                {**details, "limit": _EXTENDED_HEADERS_IN_A_ROW},
            )
        self.extended_bytes += info.size
        allowed = MAX_EXTENDED_HEADER_BYTES + _EXTENDED_BYTES_PER_MEMBER * self.members
        if self.extended_bytes > allowed:
            raise ArchiveTooLarge(
                f"The archive's extended headers hold more than {allowed} bytes "
                f"({self.members} members read).",
                {**details, "bytes": self.extended_bytes, "limit": allowed},
            )
        if info.type in _PAX:
            self._check_pax(info, stream, details)

    def _check_pax(self, info: tarfile.TarInfo, stream: _Stream, details: dict[str, Any]) -> None:
        allowed = _PAX_RECORDS_FIRST + _PAX_RECORDS_PER_MEMBER * self.members
        most = allowed - self.pax_records
        if info.type == tarfile.XGLTYPE:
            most = min(most, _GLOBAL_PAX_RECORDS - self.global_records)
        records, left = _check_pax(stream.peek(_blocks(info.size)), info.size, most)
        if left < 0:
            limit = _GLOBAL_PAX_RECORDS if info.type == tarfile.XGLTYPE else allowed
            raise ArchiveTooLarge(
                f"The archive's pax headers hold more than {limit} records ({self.members} "
                "members read).",
                {**details, "limit": limit},
            )
        self.pax_records += records
        if info.type == tarfile.XGLTYPE:
            self.global_records += records


_PROC_MEMBER: Callable[[tarfile.TarInfo, tarfile.TarFile], tarfile.TarInfo] = vars(tarfile.TarInfo)[
    "_proc_member"
]


class _CheckedTarInfo(tarfile.TarInfo):
    """A header that ``_CheckedTarFile`` checks before tarfile processes what follows it."""

    __slots__ = ()

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        # tarfile calls this with each header just parsed, before reading the blocks after it
        # (extended headers, sparse maps), and for each header of an extended chain.
        if isinstance(archive, _CheckedTarFile):
            archive.header_budget.check(self, archive.stream)
        return _PROC_MEMBER(self, archive)


class _CheckedTarFile(tarfile.TarFile):
    """A tar read from a ``_Stream``, every header checked as it arrives; closing it closes
    the stream."""

    tarinfo = _CheckedTarInfo

    def __init__(self, stream: _Stream) -> None:
        self.stream = stream
        self.header_budget = _HeaderBudget()
        super().__init__(fileobj=stream, mode="r")

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.stream.close()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            super().__exit__(kind, value, traceback)
        finally:
            self.stream.close()


def _decompressing(raw: IO[bytes], magic: bytes) -> IO[bytes] | None:
    """``raw`` through the decompressor its first bytes announce (gzip, bzip2, xz), if any."""
    if magic.startswith(b"\x1f\x8b"):
        return cast("IO[bytes]", gzip.GzipFile(fileobj=raw, mode="rb"))
    if magic.startswith(b"BZh"):
        return cast("IO[bytes]", bz2.BZ2File(raw))
    if magic.startswith(b"\xfd7zXZ\x00"):
        return cast("IO[bytes]", lzma.LZMAFile(raw))
    return None


def _tar_stream_budget(limits: ArchiveLimits) -> int:
    return (
        limits.max_total_bytes
        + limits.max_entries * _STREAM_BYTES_PER_ENTRY
        + MAX_EXTENDED_HEADER_BYTES
        + 2 * tarfile.BLOCKSIZE
    )


def _open_tar(path: Path, limits: ArchiveLimits) -> tarfile.TarFile | None:
    """Open ``path`` as a plain tar, else as the compressed tar its first bytes announce, as
    ``tarfile.open(path, "r:*")`` would; None if it is not a tar."""
    with path.open("rb") as probe:
        magic = probe.read(6)
    for compressed in (False, True):
        raw = path.open("rb")
        try:
            inner = _decompressing(raw, magic) if compressed else raw
            if inner is None:
                raw.close()
                break
            stream = _Stream(inner, raw, _tar_stream_budget(limits))
        except BaseException:
            raw.close()
            raise
        try:
            return _CheckedTarFile(stream)
        except _NOT_THIS_FORMAT:
            stream.close()
        except BaseException:
            stream.close()
            raise
    return None


def _open_archive(path: Path, limits: ArchiveLimits) -> zipfile.ZipFile | tarfile.TarFile:
    try:
        if zipfile.is_zipfile(path):
            _check_zip_directory(path, limits)
            return zipfile.ZipFile(path)
        archive = _open_tar(path, limits)
    except _READ_ERRORS as exc:
        raise InvalidArchive(f"The archive is corrupt: {exc}") from exc
    if archive is None:
        raise InvalidArchive("The upload is not a zip or tar archive (optionally gzip-compressed).")
    return archive


def _members(archive: zipfile.ZipFile | tarfile.TarFile) -> Iterator[_Member]:
    """Yield members in archive order, lazily, so a limit can stop a tar early."""
    try:
        if isinstance(archive, zipfile.ZipFile):
            for info in archive.infolist():
                _check_name_size(info.filename)
                is_file = _zip_is_file(info)
                opener = partial(archive.open, info)
                yield _Member(_normalise(info.filename), is_file, info.file_size, opener)
        else:
            for entry in archive:
                _check_name_size(entry.name)
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


_Tree = dict[str, "_Tree | None"]  # a folder: child name -> its folder, or None for a file


def _check_no_file_is_a_folder(files: set[str]) -> None:
    """Refuse a file whose name is also a folder of another file.

    The names are walked down one tree of their folders, each component looked up once, so the
    work is linear in the names' total length whatever their depth.
    """
    root: _Tree = {}
    for name in sorted(files):
        node, parts = root, name.split("/")
        for depth, part in enumerate(parts[:-1], start=1):
            child = node.setdefault(part, {})
            if child is None:
                folder = "/".join(parts[:depth])
                raise InvalidArchive(
                    f"Member {folder!r} is both a file and a folder.", {"member": folder}
                )
            node = child
        if parts[-1] in node:
            raise InvalidArchive(f"Member {name!r} is both a file and a folder.", {"member": name})
        node[parts[-1]] = None


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
    with _open_archive(path, limits) as archive:
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
        with _open_archive(path, limits) as archive:
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
    with _open_archive(path, limits) as archive:
        for member in _members(archive):
            if member.is_file and member.name in names and member.name not in digests:
                digest = _Digest()
                size = _copy(member, cast("BinaryIO", digest), budget)
                budget -= size
                digests[member.name] = (digest.sha256.hexdigest(), size)
    return digests

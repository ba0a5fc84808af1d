"""Archive listing is bounded work: hostile names, headers and directories are refused early.

Each hostile archive here is refused from what it declares, before the standard library reads
what it declares: the tests check which limit refused it (the error's details) and, through a
counting wrapper around the decompressor, how little of the stream was read first. A normal
nested dataset, in every format, still lists and extracts.
"""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, cast

import pytest

from ml import archive
from ml.archive import (
    MAX_COMPONENT_BYTES,
    MAX_EXTENDED_HEADER_BYTES,
    MAX_NAME_BYTES,
    MAX_NAME_DEPTH,
    ArchiveLimits,
    extract_archive,
    hash_files,
    list_archive,
)
from ml.errors import ArchiveTooLarge, InvalidArchive

LIMITS = ArchiveLimits(max_entries=100, max_total_bytes=10_000_000, max_ratio=100.0)
BLOCK = tarfile.BLOCKSIZE
MEGABYTE = 1 << 20
END = bytes(2 * BLOCK)


# --- tar streams written by hand -----------------------------------------------------------


def _header(name: str, kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


def _regular(name: str, data: bytes = b"") -> bytes:
    return _header(name, tarfile.REGTYPE, len(data)) + data + _padding(len(data))


def _record(keyword: bytes, value: bytes) -> bytes:
    """One pax record, ``"<length> <keyword>=<value>\\n"``, its length counting itself."""
    body = b" " + keyword + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def _pax(records: bytes, kind: bytes = tarfile.XHDTYPE) -> bytes:
    return _header("././@PaxHeader", kind, len(records)) + records + _padding(len(records))


def _write_gz(path: Path, *parts: bytes) -> Path:
    with gzip.open(path, "wb") as target:
        for part in parts:
            target.write(part)
    return path


class _Counting:
    """A decompressed stream that remembers how far into it anything was read or sought."""

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner = inner
        self.reached = 0

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.reached = max(self.reached, self.inner.tell())
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        position = self.inner.seek(offset, whence)
        self.reached = max(self.reached, position)
        return position

    def tell(self) -> int:
        return self.inner.tell()

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def decompressed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[_Counting]]:
    """Every decompressed stream the archive module opens, counted."""
    opened: list[_Counting] = []
    real = archive._decompressing

    def counting(raw: IO[bytes], magic: bytes) -> IO[bytes] | None:
        inner = real(raw, magic)
        if inner is None:
            return None
        opened.append(_Counting(inner))
        return cast("IO[bytes]", opened[-1])

    monkeypatch.setattr(archive, "_decompressing", counting)
    yield opened


def _furthest(opened: list[_Counting]) -> int:
    return max(stream.reached for stream in opened)


# --- tar: extended headers ------------------------------------------------------------------


def test_a_200_mb_gnu_long_name_is_refused_from_its_header(
    tmp_path: Path, decompressed: list[_Counting]
) -> None:
    size = 200 * MEGABYTE + 1
    # gzip members concatenate: one compressed megabyte of "a", repeated, is 200 MB of name.
    megabyte = gzip.compress(b"a" * MEGABYTE, compresslevel=9)
    path = tmp_path / "long-name.tar.gz"
    path.write_bytes(
        gzip.compress(_header("././@LongLink", tarfile.GNUTYPE_LONGNAME, size))
        + megabyte * 200
        + gzip.compress(b"\0" + _padding(size) + _regular("cats/a.jpg") + END)
    )
    assert path.stat().st_size < 300_000
    with pytest.raises(ArchiveTooLarge) as caught:
        list_archive(path, LIMITS)
    assert caught.value.details == {
        "header": "GNU long name",
        "offset": 0,
        "bytes": size,
        "limit": MAX_EXTENDED_HEADER_BYTES,
    }
    assert caught.value.status == 413
    assert _furthest(decompressed) <= BLOCK  # the header, and not a byte of the name


def test_a_pax_header_over_64_kib_is_refused_before_it_is_read(
    tmp_path: Path, decompressed: list[_Counting]
) -> None:
    records = _record(b"comment", b"x" * (MAX_EXTENDED_HEADER_BYTES + 1))
    path = _write_gz(tmp_path / "pax.tar.gz", _pax(records), _regular("cats/a.jpg"), END)
    with pytest.raises(ArchiveTooLarge) as caught:
        list_archive(path, LIMITS)
    assert caught.value.details["header"] == "pax extended header"
    assert caught.value.details["bytes"] == len(records)
    assert caught.value.details["limit"] == MAX_EXTENDED_HEADER_BYTES
    assert _furthest(decompressed) <= BLOCK


def test_a_pax_header_under_the_cap_is_read_as_tarfile_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "pax.tar.gz"
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as bundle:
        info = tarfile.TarInfo("cats/a.jpg")
        info.size = 3
        info.pax_headers = {"comment": "y" * 60_000, "mtime": "1700000000.123456789"}
        bundle.addfile(info, io.BytesIO(b"cat"))
    assert list_archive(path, LIMITS) == ["cats/a.jpg"]
    assert [p.read_bytes() for p in extract_archive(path, tmp_path / "out", LIMITS)] == [b"cat"]


@pytest.mark.parametrize(
    "records",
    [
        _record(b"comment", b"1" * 60_000),  # tarfile's hdrcharset regex: quadratic in the run
        _record(b"hdrcharset", b"BINARY") * 2 + _record(b"comment", b"1 hdrcharset=" * 3000),
    ],
    ids=["digit-run", "hdrcharset"],
)
def test_a_pax_header_that_would_make_tarfile_quadratic_is_refused(
    records: bytes, tmp_path: Path
) -> None:
    assert len(records) < MAX_EXTENDED_HEADER_BYTES
    path = _write_gz(tmp_path / "redos.tar.gz", _pax(records), _regular("cats/a.jpg"), END)
    with pytest.raises(InvalidArchive, match="quadratic"):
        list_archive(path, LIMITS)


@pytest.mark.parametrize(
    "records",
    [
        b"2 2 2 2 2 2 2 2 2 2 =\n",  # records shorter than their own text
        b"30 path=cats/a.jpg\n",  # a length past the header
        b"12 nokeyword\n",  # no "="
    ],
)
def test_malformed_pax_records_are_refused(records: bytes, tmp_path: Path) -> None:
    path = _write_gz(tmp_path / "bad.tar.gz", _pax(records), _regular("cats/a.jpg"), END)
    with pytest.raises(InvalidArchive, match="malformed pax record"):
        list_archive(path, LIMITS)


def test_a_chain_of_extended_headers_is_refused_instead_of_recursing(tmp_path: Path) -> None:
    long_name = _header("././@LongLink", tarfile.GNUTYPE_LONGNAME, 100) + b"b" * 100
    chain = (long_name + _padding(100)) * 3000  # tarfile recursed once per header
    path = _write_gz(tmp_path / "chain.tar.gz", chain, _regular("cats/a.jpg"), END)
    with pytest.raises(ArchiveTooLarge, match="extended headers in a row"):
        list_archive(path, LIMITS)


def test_extended_header_bytes_are_bounded_across_the_archive(tmp_path: Path) -> None:
    big = _record(b"comment", b"z" * 30_000)  # each under the cap; together over the budget
    members = [_pax(big) + _regular(f"cats/{index}.jpg") for index in range(4)]
    path = _write_gz(tmp_path / "headers.tar.gz", *members, END)
    with pytest.raises(ArchiveTooLarge, match="extended headers hold more than") as caught:
        list_archive(path, LIMITS)
    assert caught.value.details["header"] == "pax extended header"


def test_pax_records_are_bounded_per_member(tmp_path: Path) -> None:
    many = b"".join(_record(b"k%d" % index, b"v") for index in range(1000))  # 9 kB, fine alone
    members = [_pax(many) + _regular(f"cats/{index}.jpg") for index in range(5)]
    path = _write_gz(tmp_path / "records.tar.gz", *members, END)
    with pytest.raises(ArchiveTooLarge, match="records"):
        list_archive(path, LIMITS)


def test_global_pax_records_are_bounded(tmp_path: Path) -> None:
    records = b"".join(_record(b"k%d" % index, b"v") for index in range(100))
    path = _write_gz(
        tmp_path / "global.tar.gz", _pax(records, tarfile.XGLTYPE), _regular("cats/a.jpg"), END
    )
    with pytest.raises(ArchiveTooLarge, match="more than 64 records"):
        list_archive(path, LIMITS)


def test_a_git_archive_global_header_is_fine(tmp_path: Path) -> None:
    commit = _record(b"comment", b"0123456789abcdef0123456789abcdef01234567")
    path = _write_gz(
        tmp_path / "git.tar.gz", _pax(commit, tarfile.XGLTYPE), _regular("cats/a.jpg"), END
    )
    assert list_archive(path, LIMITS) == ["cats/a.jpg"]


def _old_gnu_sparse(name: str, extension_blocks: int) -> bytes:
    header = bytearray(_header(name, tarfile.GNUTYPE_SPARSE, 0))
    header[482] = 1  # "isextended": sparse-map blocks follow, each saying whether another does
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    extension = bytearray(BLOCK)
    extension[504] = 1
    return bytes(header) + bytes(extension) * extension_blocks + bytes(BLOCK)


@pytest.mark.parametrize(
    "member",
    [
        _old_gnu_sparse("cats/a.jpg", 10_000),
        _pax(_record(b"GNU.sparse.major", b"1") + _record(b"GNU.sparse.minor", b"0"))
        + _regular("cats/a.jpg", b"999999999999\n"),
    ],
    ids=["old-gnu", "pax-1.0"],
)
def test_sparse_members_are_refused_before_their_maps_are_read(
    member: bytes, tmp_path: Path, decompressed: list[_Counting]
) -> None:
    path = _write_gz(tmp_path / "sparse.tar.gz", member, END)
    with pytest.raises(InvalidArchive, match="sparse"):
        list_archive(path, LIMITS)
    assert _furthest(decompressed) <= 2 * BLOCK


def test_the_decompressed_stream_is_bounded(tmp_path: Path) -> None:
    # Eight small pax headers before each member stay within every header budget, but each
    # member then takes 8.5 KiB of stream: the budget is 3 KiB an entry beyond the data.
    headers = _pax(_record(b"comment", b"c")) * 8
    members = [headers + _regular(f"cats/{index}.jpg") for index in range(100)]
    path = _write_gz(tmp_path / "stream.tar.gz", *members, END)
    small = ArchiveLimits(max_entries=100, max_total_bytes=1000, max_ratio=100.0)
    with pytest.raises(ArchiveTooLarge, match="tar stream passes") as caught:
        list_archive(path, small)
    assert caught.value.details == {"limit": archive._tar_stream_budget(small)}


# --- zip: the end records and the central directory ------------------------------------------


def _zip_entries(names: list[bytes], extra: bytes = b"") -> tuple[bytes, bytes]:
    """One local file (its data ``x``) and a central directory with an entry per name."""
    crc = zlib.crc32(b"x")
    local = struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, crc, 1, 1, 1, 0)
    directory = b"".join(
        struct.pack(
            "<4s4B4HL2L5H2L",
            b"PK\x01\x02",
            *(20, 3, 20, 0),
            *(0, 0, 0, 0),
            crc,
            *(1, 1),
            *(len(name), len(extra), 0, 0, 0),
            0o100644 << 16,
            0,
        )
        + name
        + extra
        for name in names
    )
    return local + b"a" + b"x", directory


def _end(entries: int, directory: bytes, offset: int) -> bytes:
    return struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, entries, entries, len(directory), offset, 0)


@pytest.fixture
def no_zipfile(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if ``zipfile.ZipFile`` is built: the refusal must come first."""

    def refuse(*arguments: object, **keywords: object) -> None:
        raise AssertionError("zipfile.ZipFile() parsed the central directory")

    monkeypatch.setattr(zipfile, "ZipFile", refuse)


def test_a_zip64_end_record_claiming_10_million_entries_is_refused_before_parsing(
    tmp_path: Path, no_zipfile: None
) -> None:
    local, directory = _zip_entries([b"cats/a.jpg"])
    zip64_end = struct.pack(
        "<4sQ2H2L4Q",
        *(b"PK\x06\x06", 44, 45, 45, 0, 0),
        *(10_000_000, 10_000_000, len(directory), len(local)),
    )
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, len(local) + len(directory), 1)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    path = tmp_path / "claims.zip"
    path.write_bytes(local + directory + zip64_end + locator + end)
    with pytest.raises(ArchiveTooLarge, match="more than 100 entries") as caught:
        list_archive(path, LIMITS)
    assert caught.value.details == {"entries": 10_000_000, "limit": 100}


def test_a_zip_whose_end_record_understates_its_entries_is_refused_before_parsing(
    tmp_path: Path, no_zipfile: None
) -> None:
    local, directory = _zip_entries([b"cats/%d.jpg" % index for index in range(101)])
    path = tmp_path / "understates.zip"
    path.write_bytes(local + directory + _end(1, directory, len(local)))  # zipfile ignores "1"
    with pytest.raises(ArchiveTooLarge, match="more than 100 entries") as caught:
        list_archive(path, LIMITS)
    assert caught.value.details == {"limit": 100}


def test_an_implausibly_large_central_directory_is_refused_before_it_is_read(
    tmp_path: Path, no_zipfile: None
) -> None:
    local, directory = _zip_entries([b"cats/a.jpg"])
    claimed = 100 * archive.ZIP_DIRECTORY_ENTRY_MAX_BYTES + 1
    path = tmp_path / "huge.zip"
    path.write_bytes(
        local
        + directory
        + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, claimed, len(local), 0)
    )
    with pytest.raises(ArchiveTooLarge, match="central directory") as caught:
        list_archive(path, LIMITS)
    assert caught.value.details["directory_bytes"] == claimed


def test_an_extra_field_of_many_records_is_refused_before_parsing(
    tmp_path: Path, no_zipfile: None
) -> None:
    local, directory = _zip_entries([b"cats/a.jpg"], extra=b"\xff\xff\x00\x00" * 1000)
    path = tmp_path / "extra.zip"
    path.write_bytes(local + directory + _end(1, directory, len(local)))
    with pytest.raises(ArchiveTooLarge, match="extra field"):
        list_archive(path, LIMITS)


def test_hand_made_zips_within_the_limits_still_open(tmp_path: Path) -> None:
    local, directory = _zip_entries([b"cats/a.jpg"], extra=b"\xff\xff\x01\x00z")
    path = tmp_path / "fine.zip"
    path.write_bytes(local + directory + _end(1, directory, len(local)))
    assert list_archive(path, LIMITS) == ["cats/a.jpg"]


def test_a_zip64_archive_with_a_comment_still_opens(tmp_path: Path) -> None:
    path = tmp_path / "zip64.zip"
    with zipfile.ZipFile(path, "w") as bundle:
        with bundle.open("cats/a.jpg", "w", force_zip64=True) as member:
            member.write(b"cat")
        bundle.comment = b"an archive comment"
    assert list_archive(path, LIMITS) == ["cats/a.jpg"]
    assert [p.read_bytes() for p in extract_archive(path, tmp_path / "out", LIMITS)] == [b"cat"]


# --- names -----------------------------------------------------------------------------------


def _zip(path: Path, names: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        for name in names:
            bundle.writestr(name, b"x")
    return path


def _tar(path: Path, names: list[str]) -> Path:
    with tarfile.open(path, "w:gz") as bundle:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 1
            bundle.addfile(info, io.BytesIO(b"x"))
    return path


Maker = Callable[[Path, list[str]], Path]
MAKERS: list[Maker] = [_zip, _tar]


@pytest.mark.parametrize("maker", MAKERS, ids=["zip", "tar.gz"])
def test_a_16_kb_deep_path_is_refused_by_the_depth_cap(maker: Maker, tmp_path: Path) -> None:
    name = "a/" * 8000 + "x.jpg"
    path = maker(tmp_path / "deep", [name])
    with pytest.raises(InvalidArchive, match="path components deep") as caught:
        list_archive(path, LIMITS)
    assert caught.value.details["depth"] == 8001
    assert caught.value.details["limit"] == MAX_NAME_DEPTH
    assert len(caught.value.details["member"]) < 200  # the name is not echoed whole


@pytest.mark.parametrize("maker", MAKERS, ids=["zip", "tar.gz"])
def test_the_depth_cap_counts_path_components(maker: Maker, tmp_path: Path) -> None:
    deepest = "/".join(["d"] * (MAX_NAME_DEPTH - 1)) + "/x.jpg"
    path = maker(tmp_path / "ok", [deepest])
    assert list_archive(path, LIMITS) == [deepest]
    path = maker(tmp_path / "deeper", ["e/" + deepest])
    with pytest.raises(InvalidArchive, match="deep"):
        list_archive(path, LIMITS)


@pytest.mark.parametrize("maker", MAKERS, ids=["zip", "tar.gz"])
def test_names_over_1024_bytes_are_refused(maker: Maker, tmp_path: Path) -> None:
    folders = "/".join(["é" * 100] * 5)  # 200 bytes a component, 1004 bytes with slashes
    at_the_cap = folders + "/" + "x" * (MAX_NAME_BYTES - len(folders.encode()) - 1)
    assert len(at_the_cap.encode()) == MAX_NAME_BYTES
    path = maker(tmp_path / "ok", [at_the_cap])
    assert list_archive(path, LIMITS) == [at_the_cap]
    path = maker(tmp_path / "long", [at_the_cap + "y"])
    with pytest.raises(InvalidArchive, match="bytes") as caught:
        list_archive(path, LIMITS)
    assert caught.value.status == 400
    assert caught.value.details["name_bytes"] == MAX_NAME_BYTES + 1
    assert caught.value.details["limit"] == MAX_NAME_BYTES


@pytest.mark.parametrize("maker", MAKERS, ids=["zip", "tar.gz"])
def test_a_component_no_file_system_can_hold_is_refused(maker: Maker, tmp_path: Path) -> None:
    path = maker(tmp_path / "component", ["cats/" + "c" * 256 + ".jpg"])
    with pytest.raises(InvalidArchive, match="file or folder name") as caught:
        list_archive(path, LIMITS)
    assert caught.value.details["component_bytes"] == 260
    assert caught.value.details["limit"] == MAX_COMPONENT_BYTES


@pytest.mark.parametrize(
    ("names", "clash"),
    [
        (["cats/a", "cats/a/b.png"], "cats/a"),
        (["cats/a/b.png", "cats/a"], "cats/a"),
        (["x/" * 8000 + "y", "x/" * 4000 + "x"], "x/" * 4000 + "x"),
    ],
    ids=["file-first", "folder-first", "deep"],
)
def test_a_file_that_is_also_a_folder_is_found_whatever_the_order(
    names: list[str], clash: str
) -> None:
    with pytest.raises(InvalidArchive, match="both a file and a folder") as caught:
        archive._check_no_file_is_a_folder(set(names))
    assert caught.value.details == {"member": clash}


# --- what legitimate archives look like ------------------------------------------------------

NESTED = {
    "cats/2024/01/" + "long-name-" * 12 + "a.jpg": b"cat-a" * 300,  # over 100 bytes: L or pax
    "cats/2024/02/b.jpg": b"cat-b" * 103,  # 515 bytes: data past one block
    "dogs/été/ç.jpg": b"dog" * 512,  # non-ASCII: a pax path
    "dogs/empty.jpg": b"",
    "__MACOSX/dogs/._ç.jpg": b"resource fork",
}


@pytest.mark.parametrize(
    ("mode", "tar_format"),
    [
        ("w", tarfile.PAX_FORMAT),
        ("w:gz", tarfile.PAX_FORMAT),
        ("w:gz", tarfile.GNU_FORMAT),
        ("w:bz2", tarfile.PAX_FORMAT),
        ("w:xz", tarfile.GNU_FORMAT),
        ("zip", None),
    ],
    ids=["tar-pax", "tgz-pax", "tgz-gnu", "tbz2-pax", "txz-gnu", "zip"],
)
def test_a_nested_dataset_still_lists_extracts_and_hashes(
    mode: str, tar_format: int | None, tmp_path: Path
) -> None:
    path = tmp_path / "dataset"
    if tar_format is None:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bundle:
            for name, data in NESTED.items():
                bundle.writestr(name, data)
    else:
        with tarfile.open(path, mode, format=tar_format) as bundle:  # type: ignore[call-overload]
            for name, data in NESTED.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = 1_700_000_000.5  # a fractional mtime: a pax record too
                bundle.addfile(info, io.BytesIO(data))
    wanted = sorted(name for name in NESTED if not name.startswith("__MACOSX"))
    assert list_archive(path, LIMITS) == wanted
    dest = tmp_path / "out"
    written = extract_archive(path, dest, LIMITS)
    assert {p.relative_to(dest).as_posix(): p.read_bytes() for p in written} == {
        name: NESTED[name] for name in wanted
    }
    sizes = {name: size for name, (_, size) in hash_files(path, set(wanted), LIMITS).items()}
    assert sizes == {name: len(NESTED[name]) for name in wanted}

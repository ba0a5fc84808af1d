"""Files on the model store, local or remote: the few operations the registry and the dataset
store are built from.

The store is a local path by default and any ``fsspec`` URL otherwise (``s3://bucket/models``),
so several machines can share it. Small documents are written whole: on a local disk aside and
renamed into place, on an object store by one PUT (which is atomic), so a reader never sees
half a file. Removing a directory makes it vanish at once (a rename aside on a local disk)
before its files are deleted.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
import uuid
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem


def write_atomically(path: Path, content: str | bytes) -> None:
    """Write a local file aside and rename it into place, so readers see all of it or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "w" if isinstance(content, str) else "wb"
    with tempfile.NamedTemporaryFile(
        mode, dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as handle:
        handle.write(content)
    os.replace(handle.name, path)


class StoreFiles:
    """A store root and its files.

    Args:
        store: a local path or an ``fsspec`` URL.
    """

    def __init__(self, store: str | Path) -> None:
        self.fs, root = fsspec.core.url_to_fs(str(store))
        self.root = root.rstrip("/") or "/"
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def _path(self, *parts: str | int) -> str:
        return posixpath.join(self.root, *(str(part) for part in parts))

    def _read(self, path: str) -> str | None:
        found = self._read_bytes(path)
        return None if found is None else found.decode()

    def _read_bytes(self, path: str) -> bytes | None:
        try:
            return bytes(self.fs.cat_file(path))
        except FileNotFoundError:
            return None

    def _write(self, path: str, content: str | bytes) -> None:
        if self.is_local:
            write_atomically(Path(path), content)
        else:
            self.fs.pipe_file(path, content.encode() if isinstance(content, str) else content)

    def _children(self, path: str) -> list[str]:
        if not self.fs.exists(path):
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(path, detail=False))

    def _remove(self, path: str) -> None:
        """Make a directory vanish at once, then delete its files (local: by a rename aside)."""
        if not self.is_local:
            self.fs.rm(path, recursive=True)
            return
        doomed = Path(path).with_name(f".deleted-{Path(path).name}-{uuid.uuid4().hex}")
        os.rename(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def _bytes_under(self, path: str) -> int:
        return int(self.fs.du(path, total=True)) if self.fs.exists(path) else 0

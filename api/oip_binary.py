"""Triton's binary tensor data extension, and the body around it, for OIP v2 infer calls.

With the extension, an infer body is a JSON header of ``Inference-Header-Content-Length``
bytes followed by the tensors' raw data, in the order the header lists them, each tensor's
size in its ``parameters.binary_data_size``. Data is little-endian, row-major; a BYTES element
is a 4-byte little-endian length and that many bytes, so encoded images travel as they are,
with no base64 on the way. tritonclient can also compress the body (``Content-Encoding: gzip``
or ``deflate``), which is undone here within the request size limit.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

from imgq.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

HEADER_LENGTH = "Inference-Header-Content-Length"
"""Length of the JSON header when binary tensor data follows it (Triton's extension)."""

_LENGTH = struct.Struct("<I")


def inflate(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body without its ``Content-Encoding`` (tritonclient's ``gzip`` or ``deflate``).

    Args:
        body: the body as received.
        encoding: the request's ``Content-Encoding`` header, if any.
        limit: most bytes the decoded body may have (``IMGQ_MAX_REQUEST_BYTES``).

    Raises:
        UnsupportedMediaType: another encoding. PayloadTooLarge: the body inflates past
            ``limit``. InvalidRequest: the body is not in the encoding it names.
    """
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        return body
    if name not in ("gzip", "deflate"):
        raise UnsupportedMediaType(
            f"Content-Encoding {name!r} is not supported; send gzip, deflate or identity."
        )
    inflater = zlib.decompressobj(zlib.MAX_WBITS | (16 if name == "gzip" else 0))
    try:
        decoded = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"The body is not valid {name} data.") from exc
    if len(decoded) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"The body inflates past {limit} bytes.", {"limit": limit})
    if not inflater.eof:
        raise InvalidRequest(f"The {name} body is truncated.")
    return decoded


def read_header_length(text: str, body_length: int) -> int:
    """The ``Inference-Header-Content-Length`` of a body of ``body_length`` bytes.

    Raises:
        InvalidRequest: not a number, or not within the body (Triton's messages).
    """
    try:
        length = int(text.strip())
    except ValueError:
        raise InvalidRequest(f"Unable to parse {HEADER_LENGTH}, got: {text!r}") from None
    if not 0 <= length <= body_length:
        raise InvalidRequest(
            f"inference header size should be in range (0, {body_length}), got: {length}"
        )
    return length


def bytes_elements(buffer: bytes, name: str) -> list[bytes]:
    """The BYTES elements of an input's binary data (``name`` is the input's, for messages).

    Raises:
        InvalidRequest: the data ends inside an element's length or its bytes.
    """
    elements, offset = [], 0
    while offset < len(buffer):
        if offset + _LENGTH.size > len(buffer):
            raise InvalidRequest(f"The binary data of input '{name}' is truncated.")
        (length,) = _LENGTH.unpack_from(buffer, offset)
        offset += _LENGTH.size
        if offset + length > len(buffer):
            raise InvalidRequest(f"The binary data of input '{name}' is truncated.")
        elements.append(buffer[offset : offset + length])
        offset += length
    return elements


def packed(datatype: str, values: Sequence[float] | Sequence[str]) -> bytes:
    """A tensor's binary data: little-endian FP32, or length-prefixed BYTES elements."""
    if datatype == "FP32":
        return struct.pack(f"<{len(values)}f", *values)
    encoded = [str(value).encode() for value in values]
    return b"".join(_LENGTH.pack(len(element)) + element for element in encoded)

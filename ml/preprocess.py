"""Image decoding for every model: bytes in, fixed-size RGB uint8 arrays out.

Pillow only (no TensorFlow), so the API can run the same checks the workers do. Only the
formats imgq serves are parsed (``SERVED_FORMATS``: JPEG, PNG, WebP, GIF, BMP, TIFF); any
other is ``invalid_image``, named from its magic bytes alone. Truncated files raise instead
of being padded with grey.

Memory bounds. Before any pixel is decoded, the header gives the size, and the decode's memory
is estimated from it (``decode_bytes``): the decoded image in Pillow's storage (bytes a pixel:
1 for 1-bit, grey and palette images, 2 for 16-bit grey, 4 for all others, RGB included, and
8 a row), plus what the format's decoder holds beside it: for a PNG two rows; for a baseline
JPEG a few rows (it is decoded at 1/2, 1/4 or 1/8 scale when the target is much smaller:
``draft``), but for a progressive or non-interleaved one every DCT coefficient of the full-size
image, whatever the scale (2 bytes a sample: 3 bytes a pixel at 4:2:0, 6 at 4:4:4); for a WebP
13 bytes a pixel (libwebp's two RGBA canvases and Pillow's copy of the frame: 17 in all); for a
TIFF its largest strip or tile and a copy of the file; for an RLE BMP three copies of its
pixels. An image over ``max_pixels`` pixels, or whose estimate is over ``max_decode_bytes``
(200 MiB by default), is ``decompression_bomb``: with the default 40 MP, PNG, GIF, BMP,
baseline JPEG and TIFF in small strips or tiles are accepted up to 40 MP, WebP up to 12 MP,
progressive 4:4:4 JPEG up to 34 MP, a single-strip 8-bit RGB TIFF up to 26 MP.

Decoding never copies a full-size image that is to be reduced (one under 6 times the target on
a side is not). A JPEG is drafted; any other image is decoded once at full size, in its own
mode, and reduced before it is converted: RGB and grey with ``Image.reduce`` (the integer box
averaging ``resize(reducing_gap=3.0)`` starts with), every other mode in 512 x 512 tiles, each
cropped, converted (16- and 32-bit grey scaled to 8 bits with ``point``, alpha composited on
white), reduced and pasted into the reduced RGB image, so a conversion holds one tile at a time
(24 bytes a tile pixel, 6 MiB). The EXIF orientation is applied to the reduced image and the
last, bilinear, resize reads the same region of it. Without an EXIF rotation the result is bit
for bit what converting the full-size image and ``resize(..., reducing_gap=3.0)`` gave, 16-bit
grey included (32-bit float grey may differ by one level); with one, within a few levels where
the last block is partial.

So a decode peaks at its estimate plus what the pipeline holds after it (``_pipeline_bytes``:
at most 5 MiB at the API's 8 x 8 check, 20 MiB at 224 x 224, 105 MiB at 600 x 600). Measured
at 40 MP: 156 MiB for an RGB or RGBA PNG, 80 MiB for a 16-bit grey one (the float64 path
peaked at 990 MB for that 80 kB file), 40 MiB for a grey or palette one, 118 MiB for a
progressive 4:2:0 JPEG, 5 MiB for a baseline JPEG; 186 MiB for a 12 MP WebP.

A decode estimated over ``SMALL_DECODE_BYTES`` (4 MiB) is a full decode: it runs on one of the
process's ``concurrent_decodes`` decode threads (1 by default) while its caller waits, which
is the semaphore; smaller ones run on the caller's thread, at most ``SMALL_DECODES`` (4) at
once, and never wait behind a full decode. Large images are thus allocated and freed by the
same thread, one at a time, as single allocations that go back to the system when freed (see
``_full_decoders``). A process's decoding memory is at most ``concurrent_decodes x
(max_decode_bytes + pipeline) + SMALL_DECODES x SMALL_DECODE_BYTES``: 221 MiB for an API
process with the defaults, request bodies aside, 236 MiB for a prediction worker at 224 x 224.
``check_images`` also refuses a request whose images together declare more than a pixel
budget, before decoding any, which bounds one request's decoding time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import (
    ExifTags,
    Image,
    ImageFile,
    PngImagePlugin,
    TiffImagePlugin,
    UnidentifiedImageError,
    _imaging,
)

from ml.errors import DecompressionBomb, ImageTooLarge, ImgqError, InvalidImage

SERVED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
"""The formats imgq decodes (Pillow's names); ``Image.open`` tries no other plugin."""

_JPEG_FORMATS = frozenset({"JPEG", "MPO"})
"""Pillow opens a JPEG with an MPF index (many cameras' photos) as MPO: still a JPEG."""

MIB = 1024 * 1024

DEFAULT_MAX_DECODE_BYTES = 200 * MIB
"""Default of ``ImageLimits.max_decode_bytes`` (and of ``IMGQ_MAX_DECODE_BYTES``)."""

DEFAULT_CONCURRENT_DECODES = 1
"""Default of ``ImageLimits.concurrent_decodes`` (and of ``IMGQ_MAX_CONCURRENT_DECODES``)."""

SMALL_DECODE_BYTES = 4 * MIB
"""Decodes estimated at most this big (a JPEG photo at 1/8 scale, a PNG under a megapixel)
take a small-decode slot instead of a full one, so they never wait behind large ones."""

SMALL_DECODES = 4
"""Small decodes one process runs at once (each takes milliseconds)."""

_TILE = 512
"""Side of the tiles other modes are converted in (source pixels, whole blocks)."""

_TILE_BYTES_PER_PIXEL = 24
"""Most bytes one tile pixel takes in the conversion: the crop, RGBA, the white background,
the composite and RGB (16-bit: the crop, 32-bit, grey and RGB)."""

_REDUCED_AS_IS = frozenset({"RGB", "L"})
"""Modes reduced whole, without tiles: converting them commutes with box averaging."""

_REDUCING_GAP = 3.0
"""As ``resize(reducing_gap=3.0)``: reduce by whole factors to at least 3x the target first."""

_FIXED_OVERHEAD = 2 * MIB
"""Decoder state that does not scale with the image (zlib, Huffman tables, palettes)."""

# Pillow decompresses a PNG's text chunks when it opens the file, up to 64 MiB in total by
# default; nothing imgq does reads them, so that memory is capped far lower.
PngImagePlugin.MAX_TEXT_MEMORY = 4 * MIB

# Pillow allocates an image's rows in blocks, 16 MiB by default. glibc serves allocations under
# 32 MiB from the allocating thread's arena, which keeps them when they are freed, and maps
# larger ones, unmapped when freed. Blocks larger than any image the limits accept make each
# image one allocation: a large one goes back to the system as soon as it is freed.
_imaging.set_block_size(256 * MIB)


@dataclass(frozen=True)
class ImageLimits:
    """Bounds every decoded image must respect.

    Attributes:
        max_bytes: largest encoded image (``image_too_large`` beyond).
        max_pixels: largest declared width x height (``decompression_bomb`` beyond).
        max_decode_bytes: most memory one decode may need, as ``decode_bytes`` estimates it
            from the header (``decompression_bomb`` beyond; see the module's docstring).
        concurrent_decodes: full decodes (estimated over ``SMALL_DECODE_BYTES``) that run at
            once in this process, on its decode threads; the others wait.
    """

    max_bytes: int
    max_pixels: int
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES
    concurrent_decodes: int = DEFAULT_CONCURRENT_DECODES


# --- opening: served formats, size limits, cost estimate ----------------------------------


def _format_name(image_bytes: bytes) -> str | None:
    """The format Pillow would take the bytes for, from the magic bytes only (no parsing)."""
    prefix = image_bytes[:16]
    for name, (_, accept) in Image.OPEN.items():
        try:
            if accept is not None and accept(prefix):
                return name
        except Exception:  # noqa: S112 (a plugin's check failing on odd bytes is a "no")
            continue
    return None


def _open(image_bytes: bytes, limits: ImageLimits) -> Image.Image:
    if not image_bytes:
        raise InvalidImage("The image is empty (zero bytes).")
    if len(image_bytes) > limits.max_bytes:
        raise ImageTooLarge(
            f"The image is {len(image_bytes)} bytes; the limit is {limits.max_bytes}.",
            {"size": len(image_bytes), "limit": limits.max_bytes},
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(image_bytes), formats=SERVED_FORMATS)
    except (
        UnidentifiedImageError,
        Image.DecompressionBombWarning,
        Image.DecompressionBombError,
    ) as exc:
        if isinstance(exc, Image.DecompressionBombWarning | Image.DecompressionBombError):
            raise DecompressionBomb(f"The image declares too many pixels: {exc}") from exc
        other = _format_name(image_bytes)
        if other is not None and other not in SERVED_FORMATS:
            raise InvalidImage(
                f"The image is {other}, a format imgq does not read; "
                "send JPEG, PNG, WebP, GIF, BMP or TIFF.",
                {"format": other},
            ) from exc
        raise InvalidImage("The bytes are not an image in a format imgq reads.") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImage(f"The image header is corrupt: {exc}") from exc
    width, height = image.size
    if width * height > limits.max_pixels or width < 1 or height < 1:
        image.close()
        raise DecompressionBomb(
            f"The image is {width}x{height} pixels; the limit is {limits.max_pixels} pixels.",
            {"width": width, "height": height, "limit": limits.max_pixels},
        )
    return image


def _storage_bytes(mode: str) -> int:
    """Bytes Pillow stores per pixel of an image of ``mode``."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def _factors(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """The whole reduction factors ``resize(target, reducing_gap=3.0)`` would apply first.

    At most ``_TILE``, so that a tile (whole blocks) stays ``_TILE`` pixels a side whatever the
    image's shape; only an image over 1536 times its target's size on a side reduces less
    than ``resize`` would (the API's 8 x 8 check of an image over 12288 pixels wide), and the
    last resize then averages the rest.
    """
    return (
        min(_TILE, int(size[0] / target[0] / _REDUCING_GAP) or 1),
        min(_TILE, int(size[1] / target[1] / _REDUCING_GAP) or 1),
    )


def _reduced_size(size: tuple[int, int], factors: tuple[int, int]) -> tuple[int, int]:
    return math.ceil(size[0] / factors[0]), math.ceil(size[1] / factors[1])


def _tile_steps(factors: tuple[int, int]) -> tuple[int, int]:
    """Tile width and height: at most ``_TILE``, whole multiples of the factors."""
    return _TILE // factors[0] * factors[0], _TILE // factors[1] * factors[1]


def _pipeline_bytes(mode: str, size: tuple[int, int], target: tuple[int, int]) -> int:
    """What reducing, converting, orienting and resizing hold beside the decoded image."""
    largest = 0
    for swapped in (False, True):  # the EXIF orientation is known only once decoded
        oriented = size[::-1] if swapped else size
        factors = _factors(oriented, target)
        factors = factors[::-1] if swapped else factors  # in the stored image's axes
        reduced_w, reduced_h = _reduced_size(size, factors)
        held = 2 * 4 * reduced_w * reduced_h  # the reduced image, then oriented
        if mode not in _REDUCED_AS_IS:
            step_w, step_h = _tile_steps(factors)
            tile_w, tile_h = min(step_w, size[0]), min(step_h, size[1])
            held += tile_w * tile_h * _TILE_BYTES_PER_PIXEL + tile_h * 8 * 6  # and row pointers
        largest = max(largest, held)
    return largest + 2 * 4 * target[0] * target[1]  # the resized image and the array


def _jpeg_coefficient_bytes(data: bytes) -> int:
    """The DCT coefficient buffer libjpeg keeps for a progressive or multi-scan JPEG, else 0.

    Such a file's scans each refine part of the image, so libjpeg holds every coefficient of
    the full-size image until the last one (``draft`` only scales the inverse DCT). Read from
    the markers before the first scan; a file whose first scan is not found counts as multi-scan.
    """
    position, frame = 2, None
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            break
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
            position += 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        segment = data[position + 4 : position + 2 + length]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and len(segment) >= 6:
            frame = (marker, segment)
        elif marker == 0xDA:  # start of scan
            if frame is None or not segment:
                break
            progressive = frame[0] in (0xC2, 0xC6, 0xCA, 0xCE)
            if not progressive and segment[0] >= frame[1][5]:
                return 0  # one interleaved scan: decoded row by row
            break
        position += 2 + length
    if frame is None:
        return 0  # Pillow found a frame header; no frame here means an odd layout, not a bomb
    segment = frame[1]
    height = int.from_bytes(segment[1:3], "big")
    width = int.from_bytes(segment[3:5], "big")
    count = segment[5]
    sampling = [
        (segment[7 + 3 * i] >> 4 or 1, segment[7 + 3 * i] & 0x0F or 1)
        for i in range(count)
        if 7 + 3 * i < len(segment)
    ]
    if not sampling:
        return 0
    max_h = max(h for h, _ in sampling)
    max_v = max(v for _, v in sampling)
    total = 0
    for h, v in sampling:
        blocks_w = math.ceil(math.ceil(width * h / max_h) / 8)
        blocks_h = math.ceil(math.ceil(height * v / max_v) / 8)
        blocks_w = math.ceil(blocks_w / h) * h  # libjpeg rounds up to whole MCUs
        blocks_h = math.ceil(blocks_h / v) * v
        total += blocks_w * blocks_h * 64 * 2
    return total


def _tiff_buffer_bytes(image: TiffImagePlugin.TiffImageFile) -> int:
    """libtiff's buffer for the largest strip or tile, as stored (or as RGBA when converted)."""
    tags = image.tag_v2
    width, height = image.size
    samples = int(tags.get(TiffImagePlugin.SAMPLESPERPIXEL, 1) or 1)
    bits = tags.get(TiffImagePlugin.BITSPERSAMPLE, 8)
    depth = max(bits) if isinstance(bits, tuple) and bits else int(bits or 8)
    per_pixel = max(4, math.ceil(samples * depth / 8))
    tile_w, tile_h = tags.get(322), tags.get(323)  # TileWidth, TileLength
    if tile_w and tile_h:
        return int(tile_w) * int(tile_h) * per_pixel
    rows = min(int(tags.get(TiffImagePlugin.ROWSPERSTRIP, height) or height), height)
    return width * rows * per_pixel


def _decoder_bytes(image: Image.Image, data: bytes, declared: tuple[int, int]) -> int:
    """What the format's decoder holds beside the decoded image (see the module docstring)."""
    width, height = image.size
    if image.format in _JPEG_FORMATS:
        return _jpeg_coefficient_bytes(data) + 128 * declared[0]
    if image.format == "PNG":
        return 16 * width
    if image.format == "WEBP":
        return 13 * width * height
    if isinstance(image, TiffImagePlugin.TiffImageFile):
        return len(data) + _tiff_buffer_bytes(image)
    if isinstance(image, ImageFile.ImageFile) and image.tile and image.tile[0][0] == "bmp_rle":
        return 3 * _storage_bytes(image.mode) * width * height
    return 4 * width


def _stored_bytes(mode: str, size: tuple[int, int]) -> int:
    """An image's pixels in Pillow, with its table of row pointers (32 MiB for a 4 M-row one)."""
    return _storage_bytes(mode) * size[0] * size[1] + 8 * size[1]


def decode_bytes(image: Image.Image, data: bytes, declared: tuple[int, int]) -> int:
    """Memory a decode of ``image`` needs whatever its target: checked against the limit.

    Args:
        image: the opened image (after ``draft`` for a JPEG).
        data: its encoded bytes.
        declared: the size its header declares (a JPEG's ``image.size`` is its draft size).

    Returns:
        Bytes: the decoded image in Pillow's storage (a JPEG's at 1/8 scale, the smallest),
        the format's decoder buffers, and a fixed allowance. A decode peaks at this plus what
        its pipeline holds (``_pipeline_bytes``: under 6 MiB at the API's check, about 12 MiB
        at 224 x 224).
    """
    size = image.size
    if image.format in _JPEG_FORMATS:
        size = (math.ceil(declared[0] / 8), math.ceil(declared[1] / 8))
    return _stored_bytes(image.mode, size) + _decoder_bytes(image, data, declared) + _FIXED_OVERHEAD


def _peak_bytes(
    image: Image.Image, data: bytes, declared: tuple[int, int], target: tuple[int, int]
) -> int:
    """Estimated peak memory of decoding ``image`` (drafted) to ``target`` (w, h)."""
    return (
        _stored_bytes(image.mode, image.size)
        + _decoder_bytes(image, data, declared)
        + _pipeline_bytes(image.mode, image.size, target)
        + _FIXED_OVERHEAD
    )


@dataclass
class _Opened:
    """An image opened and checked, not decoded yet."""

    image: Image.Image
    declared: tuple[int, int]
    """Width and height from the header (a JPEG's ``image.size`` is its draft size)."""
    cost: int
    """Estimated peak memory of this decode (``_peak_bytes``)."""


def _prepare(image_bytes: bytes, limits: ImageLimits, target: tuple[int, int]) -> _Opened:
    """Open, check the limits, draft a JPEG to ``target`` (w, h) and check the decode's cost."""
    image = _open(image_bytes, limits)
    declared = image.size
    try:
        if image.format in _JPEG_FORMATS:
            image.draft("RGB", (target[0] * 2, target[1] * 2))
        needed = decode_bytes(image, image_bytes, declared)
        cost = _peak_bytes(image, image_bytes, declared, target)
    except (OSError, ValueError, SyntaxError) as exc:
        image.close()
        raise InvalidImage(f"The image header is corrupt: {exc}") from exc
    if needed > limits.max_decode_bytes:
        image.close()
        raise DecompressionBomb(
            f"Decoding this {declared[0]}x{declared[1]} {image.format} image would take about "
            f"{needed // MIB} MiB; the limit is {limits.max_decode_bytes // MIB} MiB.",
            {
                "width": declared[0],
                "height": declared[1],
                "bytes": needed,
                "limit": limits.max_decode_bytes,
            },
        )
    return _Opened(image, declared, cost)


# --- at most N full decodes at once per process -------------------------------------------

_pools_lock = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}
_small_slots = threading.BoundedSemaphore(SMALL_DECODES)


def _full_decoders(count: int) -> ThreadPoolExecutor:
    """The process's ``count`` full-decode threads: its semaphore on full decodes.

    A full decode runs on one of these threads while its caller waits, rather than on the
    caller's thread, so that large images are allocated and freed by the same few threads.
    glibc's malloc gives each thread an arena and keeps part of what a thread frees for that
    thread's next allocations (``malloc_trim`` cannot return the top of a thread's arena):
    16 request threads taking turns to decode 80 MB images held 1.1 GB of RSS.
    """
    with _pools_lock:
        pool = _pools.get(count)
        if pool is None:
            pool = ThreadPoolExecutor(max(1, count), thread_name_prefix="imgq-decode")
            _pools[count] = pool
        return pool


def _after_fork_in_child() -> None:
    """A forked child (a gunicorn worker) has none of its parent's threads: start afresh."""
    global _pools_lock, _small_slots  # noqa: PLW0603 (module state, reset once per fork)
    _pools_lock = threading.Lock()
    _pools.clear()
    _small_slots = threading.BoundedSemaphore(SMALL_DECODES)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _load(image: Image.Image) -> None:
    """Decode every pixel (its own function so tests can watch how many run at once)."""
    image.load()


def _release(image: Image.Image) -> None:
    """Free an image's pixels now, and its decoder's (a WebP's canvases live on the plugin's
    ``_decoder`` until the object goes, which a traceback can delay)."""
    image.close()
    vars(image).pop("_decoder", None)


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return None
    return trim


_malloc_trim = _find_malloc_trim()


def _return_free_memory() -> None:
    """Give back to the system what a full decode freed and malloc still holds.

    Large images are single mapped allocations, unmapped when freed, but a decoder's own
    buffers under 32 MiB (libjpeg's chrominance coefficients, libwebp's, Pillow's tiles) are
    kept by malloc; ``malloc_trim(0)`` returns their free pages (a millisecond or two).
    """
    if _malloc_trim is not None:
        _malloc_trim(0)


# --- reduce, then convert -----------------------------------------------------------------

_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
"""EXIF orientation to the transposition that shows the image upright (as ``exif_transpose``)."""

_SWAPS_AXES = frozenset(
    {
        Image.Transpose.TRANSPOSE,
        Image.Transpose.ROTATE_270,
        Image.Transpose.TRANSVERSE,
        Image.Transpose.ROTATE_90,
    }
)


def _grey_scale(image: Image.Image, steps: tuple[int, int]) -> float:
    """``255 / max`` of a 16- or 32-bit image (1 when the image is black), as before."""
    try:
        top = float(image.getextrema()[1])  # type: ignore[arg-type]
    except ValueError:  # I;16B and I;16L have no extrema of their own: read tile by tile
        top = float("-inf")
        width, height = image.size
        for y in range(0, height, steps[1]):
            for x in range(0, width, steps[0]):
                box = (x, y, min(width, x + steps[0]), min(height, y + steps[1]))
                tile = image.crop(box).convert("I")
                top = max(top, float(tile.getextrema()[1]))  # type: ignore[arg-type]
    return 255.0 / (top or 1.0)


def _tile_to_rgb(tile: Image.Image, scale: float) -> Image.Image:
    """One tile of any mode as 8-bit RGB: deep grey scaled, alpha composited on white.

    Deep grey goes through ``point``: ``value * scale`` in double precision, truncated, then
    clipped to 0..255 on conversion to ``L``, which is exactly what the float64 arrays gave.
    """
    if tile.mode.startswith("I;16") and tile.mode != "I;16":
        tile = tile.convert("I")  # point() scales only native-endian 16-bit
    if tile.mode in ("I;16", "I", "F"):
        tile = tile.point(lambda value: value * scale).convert("L")
    if tile.mode in ("RGBA", "LA", "PA") or (tile.mode == "P" and "transparency" in tile.info):
        rgba = tile.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return tile if tile.mode == "RGB" else tile.convert("RGB")


def _reduce_to_rgb(image: Image.Image, factors: tuple[int, int]) -> Image.Image:
    """``image`` reduced by ``factors`` (box averages) as RGB, never converted at full size."""
    if image.mode in _REDUCED_AS_IS:
        reduced = image.reduce(factors) if factors != (1, 1) else image.copy()
        return reduced if reduced.mode == "RGB" else reduced.convert("RGB")
    width, height = image.size
    steps = _tile_steps(factors)
    scale = _grey_scale(image, steps) if image.mode.startswith("I") or image.mode == "F" else 1
    out = Image.new("RGB", _reduced_size(image.size, factors))
    for y in range(0, height, steps[1]):
        for x in range(0, width, steps[0]):
            box = (x, y, min(width, x + steps[0]), min(height, y + steps[1]))
            tile = _tile_to_rgb(image.crop(box), scale)
            if factors != (1, 1):
                tile = tile.reduce(factors)
            out.paste(tile, (x // factors[0], y // factors[1]))
    return out


def _oriented_box(
    reduced: tuple[int, int], valid: tuple[float, float], method: Image.Transpose | None
) -> tuple[float, float, float, float]:
    """Where the image's own area (``valid``, from the top left) lies once transposed."""
    width, height = reduced
    valid_w, valid_h = valid
    corners = [(0.0, 0.0), (valid_w, valid_h)]
    mapped: list[tuple[float, float]]
    if method is None:
        mapped = corners
    elif method is Image.Transpose.FLIP_LEFT_RIGHT:
        mapped = [(width - x, y) for x, y in corners]
    elif method is Image.Transpose.FLIP_TOP_BOTTOM:
        mapped = [(x, height - y) for x, y in corners]
    elif method is Image.Transpose.ROTATE_180:
        mapped = [(width - x, height - y) for x, y in corners]
    elif method is Image.Transpose.TRANSPOSE:
        mapped = [(y, x) for x, y in corners]
    elif method is Image.Transpose.ROTATE_90:
        mapped = [(y, width - x) for x, y in corners]
    elif method is Image.Transpose.ROTATE_270:
        mapped = [(height - y, x) for x, y in corners]
    else:  # TRANSVERSE
        mapped = [(height - y, width - x) for x, y in corners]
    xs, ys = [x for x, _ in mapped], [y for _, y in mapped]
    return min(xs), min(ys), max(xs), max(ys)


def _orientation(image: Image.Image) -> Image.Transpose | None:
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return _TRANSPOSES.get(orientation) if isinstance(orientation, int) else None


def decode_image(
    image_bytes: bytes, size: tuple[int, int], limits: ImageLimits
) -> NDArray[np.uint8]:
    """Decode, orient and resize one image to ``size`` (height, width) as RGB uint8.

    Args:
        image_bytes: an encoded image (JPEG, PNG, GIF, WebP, BMP or TIFF).
        size: target ``(height, width)``.
        limits: byte, pixel and memory bounds, and the process's concurrent full decodes.

    Returns:
        An array of shape ``(height, width, 3)``.

    Raises:
        InvalidImage: not an image, not a served format, or truncated / corrupt.
        DecompressionBomb: more pixels than ``limits.max_pixels``, or a decode that would
            need more than ``limits.max_decode_bytes``.
        ImageTooLarge: more bytes than ``limits.max_bytes``.
    """
    height, width = size
    return _decode_opened(_prepare(image_bytes, limits, (width, height)), size, limits)


def _decode_opened(
    opened: _Opened, size: tuple[int, int], limits: ImageLimits
) -> NDArray[np.uint8]:
    """``decode_image`` of an image ``_prepare`` opened (and drafted) for ``size``."""
    height, width = size
    try:
        if opened.cost > SMALL_DECODE_BYTES:
            pool = _full_decoders(limits.concurrent_decodes)
            reduced, valid, method = pool.submit(_decode_reduced, opened, (width, height)).result()
        else:
            with _small_slots:
                reduced, valid, method = _decode_reduced(opened, (width, height))
        box = _oriented_box(reduced.size, valid, method)
        if method is not None:
            reduced = reduced.transpose(method)
        result = reduced.resize((width, height), Image.Resampling.BILINEAR, box=box)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise InvalidImage(f"The image could not be decoded: {exc}") from exc
    return np.asarray(result, dtype=np.uint8)


def _decode_reduced(
    opened: _Opened, target: tuple[int, int]
) -> tuple[Image.Image, tuple[float, float], Image.Transpose | None]:
    """Decode at full size, reduce as RGB, and give the full-size memory back to the system.

    Returns:
        The reduced image (stored orientation), the part of it that is the image's own area
        (the last row and column may be partial blocks), and the EXIF transposition.
    """
    image = opened.image
    try:
        _load(image)
        method = _orientation(image)
        source = image.size
        swapped = method in _SWAPS_AXES
        factors = _factors(source[::-1] if swapped else source, target)
        factors = factors[::-1] if swapped else factors  # in the stored image's axes
        return (
            _reduce_to_rgb(image, factors),
            (source[0] / factors[0], source[1] / factors[1]),
            method,
        )
    finally:
        _release(image)
        del image
        if opened.cost > SMALL_DECODE_BYTES:
            _return_free_memory()


def check_image(image_bytes: bytes, limits: ImageLimits) -> None:
    """Reject what is certainly not a usable image, cheaply, before a job is queued.

    Decodes every pixel (at the smallest scale a JPEG allows) so a truncated or corrupt file
    is caught at the API with a clear error instead of failing the job later.
    """
    decode_image(image_bytes, (8, 8), limits)


def check_images(images: Sequence[bytes], limits: ImageLimits, max_total_pixels: int) -> None:
    """``check_image`` for each of a request's images, within a pixel budget for all of them.

    Every header is read first and no pixel is decoded until all of them are, so a request
    whose images together declare more than ``max_total_pixels`` (width x height as declared,
    summed) costs no decoding. An error names the image at fault in ``details["image"]``.

    Raises:
        DecompressionBomb: the images declare more than ``max_total_pixels`` together, or
            one image is over its own limits.
        InvalidImage, ImageTooLarge: as ``check_image``, for the first image at fault.
    """
    opened: list[_Opened] = []
    try:
        for index, image_bytes in enumerate(images):
            with _naming(index):
                opened.append(_prepare(image_bytes, limits, (8, 8)))
        total = sum(one.declared[0] * one.declared[1] for one in opened)
        if total > max_total_pixels:
            raise DecompressionBomb(
                f"The request's {len(images)} images declare {total} pixels together; the "
                f"limit is {max_total_pixels}.",
                {"pixels": total, "limit": max_total_pixels},
            )
        for index, one in enumerate(opened):  # each header was read once, above
            with _naming(index):
                _decode_opened(one, (8, 8), limits)
    finally:
        for one in opened:
            one.image.close()


@contextmanager
def _naming(index: int) -> Iterator[None]:
    """Add the image's index to the details of an error it raises."""
    try:
        yield
    except ImgqError as exc:
        exc.details = {**(exc.details or {}), "image": index}
        raise

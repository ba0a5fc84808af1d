"""Image decoding: every mode becomes RGB, orientation is honoured, bad input has clear codes,
and memory stays within the documented bounds."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from imgq.errors import DecompressionBomb, ImageTooLarge, InvalidImage
from imgq.settings import Settings
from ml import preprocess
from ml.preprocess import MIB, ImageLimits, check_image, check_images, decode_image
from tests.support.images import encode_image

LIMITS = ImageLimits(max_bytes=1_000_000, max_pixels=4_000_000)
DEFAULTS = Settings()
DEFAULT_LIMITS = ImageLimits(
    DEFAULTS.max_image_bytes,
    DEFAULTS.max_image_pixels,
    DEFAULTS.max_decode_bytes,
    DEFAULTS.max_concurrent_decodes,
)


def _red(mode: str = "RGB") -> Image.Image:
    return Image.new("RGB", (40, 30), (220, 20, 20)).convert(mode)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("RGB", "JPEG"),
        ("L", "PNG"),
        ("P", "GIF"),
        ("RGBA", "PNG"),
        ("CMYK", "JPEG"),
        ("RGB", "WEBP"),
        ("LA", "PNG"),
        ("I;16", "PNG"),
        ("RGB", "BMP"),
        ("RGB", "TIFF"),
    ],
)
def test_every_mode_decodes_to_rgb_uint8_of_the_target_size(mode: str, fmt: str) -> None:
    pixels = decode_image(encode_image(_red(mode), fmt), (16, 24), LIMITS)
    assert pixels.shape == (16, 24, 3)
    assert pixels.dtype == np.uint8


def test_transparent_pixels_are_composited_on_white() -> None:
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    pixels = decode_image(encode_image(clear, "PNG"), (8, 8), LIMITS)
    assert (pixels == 255).all()


def test_exif_orientation_is_applied() -> None:
    wide = Image.new("RGB", (60, 20), (0, 0, 255))
    exif = wide.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = encode_image(wide, "JPEG", exif=exif)
    pixels = decode_image(data, (60, 20), LIMITS)
    assert pixels.shape == (60, 20, 3)


def test_sixteen_bit_grey_keeps_its_contrast() -> None:
    ramp = Image.fromarray(np.tile(np.linspace(0, 4000, 32, dtype=np.uint16), (8, 1)))
    pixels = decode_image(encode_image(ramp, "PNG"), (8, 32), LIMITS)
    assert pixels[..., 0].max() > 200 and pixels[..., 0].min() < 20


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"", InvalidImage),
        (b"hello, not an image", InvalidImage),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 10, InvalidImage),
    ],
)
def test_non_images_are_invalid_image(payload: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        check_image(payload, LIMITS)


def test_truncated_jpeg_is_rejected_with_invalid_image() -> None:
    noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    data = encode_image(Image.fromarray(noise), "JPEG")
    with pytest.raises(InvalidImage):
        check_image(data[: len(data) // 2], LIMITS)


def test_truncated_png_is_rejected_with_invalid_image() -> None:
    noise = np.random.default_rng(1).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    data = encode_image(Image.fromarray(noise), "PNG")
    with pytest.raises(InvalidImage):
        decode_image(data[: len(data) - 200], (8, 8), LIMITS)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = encode_image(Image.new("1", (5000, 5000)), "PNG")  # a few KB, 25 megapixels
    assert len(bomb) < 100_000
    with pytest.raises(DecompressionBomb):
        check_image(bomb, LIMITS)


def test_image_over_the_byte_limit_is_too_large() -> None:
    with pytest.raises(ImageTooLarge):
        check_image(b"\x00" * (LIMITS.max_bytes + 1), LIMITS)


# --- only served formats, bit for bit as before, bounded memory -------------------------------


def sixteen_bit_png(width: int, height: int) -> bytes:
    """A black 16-bit greyscale PNG written row by row (no full-size array is ever made).

    8000 x 5000 is about 80 kB, declares 40 megapixels (``max_image_pixels``) and decodes to
    80 MB in Pillow: the issue's hostile image.
    """
    row = bytes(1 + 2 * width)  # filter byte, then big-endian zeros
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _reference_decode(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """The decoder before bounded decoding (full-size float64 and RGB copies), as it was."""
    height, width = size
    opened = Image.open(io.BytesIO(data))
    if opened.format == "JPEG":
        opened.draft("RGB", (width * 2, height * 2))
    opened.load()
    image = ImageOps.exif_transpose(opened)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = float(array.max()) or 1.0
        image = Image.fromarray((array * (255.0 / top)).clip(0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    rgb = image.convert("RGB")
    return np.asarray(rgb.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0))


def _photo(width: int, height: int) -> np.ndarray:
    """Gradients in red and green, noise in blue: box averages differ wherever blocks do."""
    y, x = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(width * height).integers(0, 256, (height, width))
    return np.stack(
        [x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), noise], -1
    ).astype(np.uint8)


def _as(kind: str, rgb: np.ndarray) -> bytes:
    """``rgb`` encoded as ``MODE-FORMAT``."""
    alpha = rgb[..., 2]
    grey16 = rgb[..., 0].astype(np.uint16) * 200 + rgb[..., 1]
    images = {
        "RGB-JPEG": lambda: encode_image(Image.fromarray(rgb), "JPEG", quality=90),
        "L-JPEG": lambda: encode_image(Image.fromarray(rgb[..., 0]), "JPEG"),
        "CMYK-JPEG": lambda: encode_image(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
        "RGB-PNG": lambda: encode_image(Image.fromarray(rgb), "PNG"),
        "L-PNG": lambda: encode_image(Image.fromarray(rgb[..., 1]), "PNG"),
        "RGBA-PNG": lambda: encode_image(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG"),
        "LA-PNG": lambda: encode_image(
            Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA"), "PNG"
        ),
        "P-transparent-PNG": lambda: encode_image(
            Image.fromarray(rgb).convert("P"), "PNG", transparency=3
        ),
        "I;16-PNG": lambda: encode_image(Image.fromarray(grey16), "PNG"),
        "P-GIF": lambda: encode_image(Image.fromarray(rgb).convert("P"), "GIF"),
        "RGB-WEBP": lambda: encode_image(Image.fromarray(rgb), "WEBP", lossless=True),
        "RGB-BMP": lambda: encode_image(Image.fromarray(rgb), "BMP"),
        "1-BMP": lambda: encode_image(Image.fromarray(rgb[..., 0] > 128), "BMP"),
        "RGB-TIFF": lambda: encode_image(Image.fromarray(rgb), "TIFF"),
        "I;16B-TIFF": lambda: encode_image(
            Image.frombytes("I;16B", grey16.shape[::-1], grey16.astype(">u2").tobytes()), "TIFF"
        ),
        "I-TIFF": lambda: encode_image(
            Image.fromarray(rgb[..., 0].astype(np.int32) * 1000 - 5000), "TIFF"
        ),
    }
    return images[kind]()


KINDS = [
    "RGB-JPEG",
    "L-JPEG",
    "CMYK-JPEG",
    "RGB-PNG",
    "L-PNG",
    "RGBA-PNG",
    "LA-PNG",
    "P-transparent-PNG",
    "I;16-PNG",
    "P-GIF",
    "RGB-WEBP",
    "RGB-BMP",
    "1-BMP",
    "RGB-TIFF",
    "I;16B-TIFF",
    "I-TIFF",
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(61, 97), (480, 640), (17, 3000)])
def test_results_are_bit_for_bit_those_of_the_full_size_path(
    kind: str, shape: tuple[int, int]
) -> None:
    data = _as(kind, _photo(shape[1], shape[0]))
    for size in [(8, 8), (224, 224), (16, 24)]:
        expected = _reference_decode(data, size)
        assert np.array_equal(decode_image(data, size, DEFAULT_LIMITS), expected), (kind, size)


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_rotations_match_rotating_first(orientation: int) -> None:
    """The rotation is applied to the reduced image: exact when the factors divide the size,
    within a few levels on a smooth image when the last block is partial (a wrong region
    of the reduced image would be off by 8 to 12 levels here)."""
    for width, height, exact in [(96, 48, True), (97, 61, False), (1001, 777, False)]:
        y, x = np.mgrid[0:height, 0:width]
        smooth = np.stack([x / (width - 1), y / (height - 1), (x + y) / (width + height)], -1)
        image = Image.fromarray((smooth * 255).astype(np.uint8))
        exif = image.getexif()
        exif[0x0112] = orientation
        data = encode_image(image, "PNG", exif=exif)
        for size in [(8, 8), (16, 24), (30, 20)]:
            expected = _reference_decode(data, size).astype(int)
            pixels = decode_image(data, size, LIMITS).astype(int)
            assert pixels.shape == expected.shape
            worst = int(np.abs(pixels - expected).max())
            assert worst == 0 if exact else worst <= 3, (width, height, size, worst)


def test_sixteen_bit_grey_is_scaled_to_its_brightest_value() -> None:
    ramp = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (4, 1))  # 0..4080
    pixels = decode_image(encode_image(Image.fromarray(ramp), "PNG"), (4, 256), LIMITS)
    expected = (ramp * (255.0 / 4080)).astype(np.uint8)
    assert np.array_equal(pixels[..., 0], expected)
    assert (pixels[..., 0] == pixels[..., 2]).all()


def test_sixteen_bit_black_stays_black() -> None:
    pixels = decode_image(sixteen_bit_png(300, 200), (8, 8), LIMITS)
    assert (pixels == 0).all()


@pytest.mark.parametrize("fmt", ["PPM", "ICO", "PCX", "SGI", "JPEG2000", "QOI", "DDS", "ICNS"])
def test_formats_imgq_does_not_serve_are_refused_by_name(fmt: str) -> None:
    image = Image.new("RGB", (16, 16), (10, 200, 30))
    data = encode_image(image, fmt)
    with pytest.raises(InvalidImage) as caught:
        check_image(data, LIMITS)
    assert caught.value.details == {"format": fmt}
    assert (
        fmt in caught.value.message and "JPEG, PNG, WebP, GIF, BMP or TIFF" in caught.value.message
    )


@pytest.mark.parametrize("fmt", ["TGA", "EPS"])
def test_formats_without_a_signature_are_refused_too(fmt: str) -> None:
    data = encode_image(Image.new("RGB", (16, 16), (10, 200, 30)), fmt)
    with pytest.raises(InvalidImage):
        check_image(data, LIMITS)


def test_a_camera_jpeg_with_an_mpf_index_is_still_a_jpeg() -> None:
    photo = Image.fromarray(_photo(64, 48))
    data = encode_image(photo, "MPO", save_all=True, append_images=[photo])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert decode_image(data, (8, 8), LIMITS).shape == (8, 8, 3)


# --- memory: estimates, limits, the semaphore, the request budget ----------------------------


def test_the_library_defaults_are_the_settings_defaults() -> None:
    """Callers that build ``ImageLimits(bytes, pixels)`` get the documented bounds."""
    assert ImageLimits(1, 1).max_decode_bytes == DEFAULTS.max_decode_bytes
    assert ImageLimits(1, 1).concurrent_decodes == DEFAULTS.max_concurrent_decodes
    assert DEFAULTS.max_request_pixels >= DEFAULTS.max_image_pixels


_PEAK_SCRIPT = """
import sys, numpy as np
from ml.preprocess import ImageLimits, decode_image, decode_bytes, _prepare
data = open(sys.argv[1], "rb").read()
size = (int(sys.argv[2]), int(sys.argv[3]))
limits = ImageLimits(10**9, 40_000_000, 10**10)
opened = _prepare(data, limits, size[::-1])
needed = decode_bytes(opened.image, data, opened.declared)
opened.image.close()
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
before = status("VmRSS")
decode_image(data, size, limits)
print(status("VmHWM") - before, opened.cost, needed)
"""


def _peak(path: Path, size: tuple[int, int] = (8, 8)) -> tuple[int, int, int]:
    """Peak RSS growth of decoding the file in a fresh process, its estimate and its cap check.

    Pillow's memory is not Python's (``tracemalloc`` cannot see it), so a fresh process's
    high-water mark is read before and after; nothing large was allocated before.
    """
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(path), *map(str, size)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=120,
    )
    peak, estimate, needed = map(int, done.stdout.split())
    return peak, estimate, needed


def test_a_16_bit_png_at_the_pixel_limit_decodes_in_a_fraction_of_the_old_memory(
    tmp_path: Path,
) -> None:
    """The issue's image: 80 kB, 40 MP of 16-bit grey. The float64 path peaked at 990 MB."""
    path = tmp_path / "grey16.png"
    path.write_bytes(sixteen_bit_png(8000, 5000))
    with Image.open(path) as image:
        assert image.mode == "I;16" and image.size == (8000, 5000)
    assert path.stat().st_size < 100_000
    peak, estimate, _ = _peak(path)
    assert peak < 150 * MIB, f"peak {peak / MIB:.0f} MiB"
    assert peak <= estimate, f"peak {peak / MIB:.0f} MiB over its estimate {estimate / MIB:.0f}"


def _gradient(width: int, height: int, channels: int) -> np.ndarray:
    row = np.linspace(0, 255, width, dtype=np.uint8)
    pixels = np.zeros((height, width, channels), np.uint8)
    pixels[..., 0] = row
    pixels[..., -1] = 200
    return pixels


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("rgba.png", lambda: encode_image(Image.fromarray(_gradient(4000, 3000, 4)), "PNG")),
        ("l.png", lambda: encode_image(Image.fromarray(_gradient(4000, 3000, 1)[..., 0]), "PNG")),
        (
            "progressive.jpg",
            lambda: encode_image(
                Image.fromarray(_gradient(4000, 3000, 3)), "JPEG", progressive=True, subsampling=0
            ),
        ),
        ("baseline.jpg", lambda: encode_image(Image.fromarray(_gradient(4000, 3000, 3)), "JPEG")),
        (
            "rgba.webp",
            lambda: encode_image(Image.fromarray(_gradient(3000, 2000, 4)), "WEBP", lossless=True),
        ),
        (
            "one-strip.tif",
            lambda: encode_image(
                Image.fromarray(_gradient(4000, 3000, 3)),
                "TIFF",
                compression="tiff_deflate",
                strip_size=4000 * 3000 * 3,
            ),
        ),
        ("tall.png", lambda: encode_image(Image.new("RGBA", (4, 1_000_000), "red"), "PNG")),
    ],
)
@pytest.mark.parametrize("size", [(8, 8), (224, 224)])
def test_each_format_decodes_within_its_estimate(
    name: str, make: Callable[[], bytes], size: tuple[int, int], tmp_path: Path
) -> None:
    path = tmp_path / name
    path.write_bytes(make())
    peak, estimate, needed = _peak(path, size)
    assert peak <= estimate, f"{name}: peak {peak / MIB:.1f} MiB, estimate {estimate / MIB:.1f}"
    assert estimate - needed < 16 * MIB  # the pipeline's share is small at these sizes


def test_a_webp_over_its_share_of_memory_is_a_decompression_bomb() -> None:
    """libwebp holds two RGBA canvases and Pillow a copy of the frame: 17 bytes a pixel."""
    big = encode_image(Image.new("RGB", (4000, 4000), "white"), "WEBP", lossless=True)
    assert len(big) < 100_000
    with pytest.raises(DecompressionBomb) as caught:
        check_image(big, DEFAULT_LIMITS)
    assert caught.value.details["bytes"] > DEFAULTS.max_decode_bytes
    phone = encode_image(Image.new("RGB", (4032, 3024), "white"), "WEBP", lossless=True)
    check_image(phone, DEFAULT_LIMITS)  # a 12 MP phone photo still fits


def test_a_progressive_jpeg_counts_its_full_size_coefficients() -> None:
    pixels = _gradient(8000, 5000, 3)
    baseline = encode_image(Image.fromarray(pixels), "JPEG", subsampling=0)
    check_image(baseline, DEFAULT_LIMITS)  # decoded at 1/8 scale, a few rows at a time
    progressive = encode_image(Image.fromarray(pixels), "JPEG", progressive=True, subsampling=0)
    with pytest.raises(DecompressionBomb):  # 40 MP x 3 samples x 2 bytes of coefficients
        check_image(progressive, DEFAULT_LIMITS)


class _Loads:
    """Counts the full-size decodes running at once, each held for a moment."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.original = preprocess._load

    def __call__(self, image: Image.Image) -> None:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.05)
            self.original(image)
        finally:
            with self.lock:
                self.running -= 1


@pytest.mark.parametrize("slots", [1, 2])
def test_at_most_the_configured_full_decodes_run_at_once(
    slots: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = _Loads()
    monkeypatch.setattr(preprocess, "_load", loads)
    big = sixteen_bit_png(2000, 1500)  # 6 MB decoded: a full decode
    limits = ImageLimits(LIMITS.max_bytes, LIMITS.max_pixels, concurrent_decodes=slots)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: check_image(big, limits), range(16)))
    assert loads.most == slots


def test_small_images_do_not_wait_behind_large_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    original = preprocess._load

    def held(image: Image.Image) -> None:
        if image.size[0] >= 2000:
            release.wait(10)
        original(image)

    monkeypatch.setattr(preprocess, "_load", held)
    limits = ImageLimits(LIMITS.max_bytes, LIMITS.max_pixels, concurrent_decodes=1)
    with ThreadPoolExecutor(2) as pool:
        blocked = pool.submit(check_image, sixteen_bit_png(2000, 1500), limits)
        time.sleep(0.1)  # the large decode holds the only slot
        small = encode_image(Image.fromarray(_photo(400, 300)), "PNG")
        check_image(small, limits)  # does not wait
        assert not blocked.done()
        release.set()
        blocked.result(timeout=10)


def test_a_request_over_its_pixel_budget_is_refused_before_any_decode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(preprocess, "_load", lambda image: pytest.fail("decoded"))
    burst = [sixteen_bit_png(8000, 5000)] * 5
    with pytest.raises(DecompressionBomb) as caught:
        check_images(burst, DEFAULT_LIMITS, DEFAULTS.max_request_pixels)
    assert caught.value.details == {"pixels": 200_000_000, "limit": 160_000_000}


def test_a_request_within_its_budget_is_checked_image_by_image() -> None:
    good = encode_image(Image.fromarray(_photo(40, 30)), "PNG")
    check_images([sixteen_bit_png(8000, 5000)] * 4, DEFAULT_LIMITS, DEFAULTS.max_request_pixels)
    with pytest.raises(InvalidImage) as caught:
        check_images([good, good, good[:-200]], DEFAULT_LIMITS, DEFAULTS.max_request_pixels)
    assert caught.value.details["image"] == 2
    with pytest.raises(DecompressionBomb) as bomb:
        check_images([good, sixteen_bit_png(9000, 5000)], DEFAULT_LIMITS, 10**9)
    assert bomb.value.details["image"] == 1

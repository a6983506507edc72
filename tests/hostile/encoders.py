"""Byte-level builders for tests/hostile/corpus.py: images written by Pillow or by hand, with
whatever header, chunk or EXIF block a hostile case needs. All deterministic (seeded NumPy noise).

    image(size, mode, seed) -> PIL image; save(image, fmt, **options) -> bytes
    valid_jpeg / valid_png                           good files
    png_chunk, raw_png, png_declaring, text_chunks   PNGs at the chunk level (any bit depth, colour
                                                     type, extra chunks, declared size, CRC)
    rgba_pixel_bomb(width, height)                   a large transparent RGBA PNG, built row by row
    jpeg_sof_declaring, jpeg_with_exif, exif_bomb_jpeg, tiff, bmp_with_height, gif_with_screen,
    zip_bytes, animated                              the other formats' odd headers
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from collections.abc import Iterable

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def pixels(size: tuple[int, int], seed: int, channels: int = 3) -> np.ndarray:
    """A smooth gradient with seeded noise (compresses like a photo, not like white noise)."""
    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)), (x + y) % 256], -1)
    base = np.concatenate([base] * 2, axis=-1)[..., :channels]
    noise = rng.integers(-20, 21, size=base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def image(size: tuple[int, int] = (96, 64), mode: str = "RGB", seed: int = 0) -> Image.Image:
    if mode == "RGBA":
        return Image.fromarray(pixels(size, seed, 4), "RGBA")
    return Image.fromarray(pixels(size, seed), "RGB").convert(mode)


def valid_jpeg(size: tuple[int, int] = (96, 64), seed: int = 0, **options: object) -> bytes:
    """A good JPEG (gradient with seeded noise)."""
    return save(image(size, "RGB", seed), "JPEG", quality=90, **options)


def valid_png(size: tuple[int, int] = (64, 48), mode: str = "RGB", seed: int = 0) -> bytes:
    """A good PNG in `mode` (RGB, RGBA, L, LA, P, 1, ...)."""
    return save(image(size, mode, seed), "PNG")


def png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    """One PNG chunk: length, type, data, CRC (the right one unless `crc` is given)."""
    checksum = zlib.crc32(kind + data) & 0xFFFFFFFF if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", checksum)


_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def raw_png(
    width: int,
    height: int,
    bit_depth: int = 8,
    color_type: int = 2,
    before_idat: Iterable[bytes] = (),
    idat: bytes | None = None,
    seed: int = 0,
) -> bytes:
    """A PNG written by hand (any bit depth and colour type, extra chunks before IDAT); the pixel
    rows are seeded random bytes unless `idat` (the compressed data) is given."""
    if idat is None:
        row_bytes = (width * _CHANNELS[color_type] * bit_depth + 7) // 8
        rng = np.random.default_rng(seed)
        rows = rng.integers(0, 256, size=(height, row_bytes + 1), dtype=np.uint8)
        rows[:, 0] = 0  # filter type "none"
        idat = zlib.compress(rows.tobytes(), 9)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + b"".join(before_idat)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def png_declaring(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR declares width x height (CRC fixed): a pixel bomb's header."""
    data = bytearray(valid_png((1, 1)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


@functools.lru_cache(maxsize=2)
def rgba_pixel_bomb(width: int = 7000, height: int = 7000) -> bytes:
    """A width x height RGBA PNG of transparent black (~190 KB for 7000 x 7000: 49 MP, under a 50 MP
    cap, ~200 MB of RGBA pixels once decoded). Compressed row by row, never held whole."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + 4 * width)
    parts = [compressor.compress(row) for _ in range(height)]
    idat = b"".join(parts) + compressor.flush()
    return raw_png(width, height, 8, 6, idat=idat)


def jpeg_sof_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose SOF0 segment declares width x height."""
    data = bytearray(valid_jpeg((16, 16)))
    at = data.find(b"\xff\xc0")
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def tiff(width: int, height: int, pixels: bytes | None = None, float_width: bool = False) -> bytes:
    """A grey uncompressed little-endian TIFF written by hand (any declared width and height;
    `float_width`: the width is stored as a FLOAT, which is no valid width)."""
    pixels = pixels if pixels is not None else bytes(range(256)) * 4
    entries = [
        (256, 11 if float_width else 4, 1, width),  # ImageWidth: LONG (or FLOAT)
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: black is zero
        (273, 4, 1, 0),  # StripOffsets (patched below)
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, max(height, 1)),  # RowsPerStrip
        (279, 4, 1, len(pixels)),  # StripByteCounts
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    strip_offset = 8 + ifd_size
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = strip_offset if tag == 273 else value
        if kind == 3:  # SHORT
            packed = struct.pack("<HH", value, 0)
        else:
            packed = struct.pack("<f", value) if kind == 11 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + pixels


def bmp_with_height(height: int, width: int | None = None) -> bytes:
    """A 24-bit BMP with its header's height (and width) patched: negative = rows top-down."""
    data = bytearray(save(image((32, 24), "RGB", 5), "BMP"))
    if width is not None:
        data[18:22] = struct.pack("<i", width)
    data[22:26] = struct.pack("<i", height)
    return bytes(data)


def gif_with_screen(width: int, height: int) -> bytes:
    """A small GIF whose logical screen descriptor declares width x height."""
    data = bytearray(save(image((8, 8), "P", 6), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def exif_bomb_jpeg() -> bytes:
    """A JPEG whose APP1 Exif block holds 5,000 entries with absurd counts and offsets, an Exif
    sub-IFD pointer back to IFD0 (a loop) and an orientation of the wrong type."""
    entries = [(0x0112, 4, 1, 0xFFFFFFFF), (0x8769, 4, 1, 8)]  # orientation as LONG; ExifIFD -> IFD0
    entries += [(0x9000 + i, 2, 0x3FFFFFFF, 0x7FFFFFF0) for i in range(5000)]  # ASCII, huge counts
    ifd = struct.pack(">H", len(entries) % 65536)
    ifd += b"".join(struct.pack(">HHII", tag, kind, count, value) for tag, kind, count, value in entries)
    tiff = b"MM\x00*" + struct.pack(">I", 8) + ifd + struct.pack(">I", 8)  # next IFD: IFD0 again
    payload = b"Exif\x00\x00" + tiff
    payload = payload[: 65533 - 2]
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    jpeg = valid_jpeg((64, 48), seed=7)
    return jpeg[:2] + app1 + jpeg[2:]


def jpeg_with_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(image((80, 40), "RGB", 8), "JPEG", quality=90, exif=exif.tobytes())


def zip_bytes() -> bytes:
    """A small ZIP archive (a photo and a text file inside), dated 2000-01-01 so its bytes never change."""
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in (("car.jpg", valid_jpeg((16, 16))), ("readme.txt", b"not a photo")):
            archive.writestr(zipfile.ZipInfo(name, date_time=(2000, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def text_chunks(kind: bytes, count: int, size: int) -> list[bytes]:
    """`count` compressed text chunks (zTXt or iTXt), each inflating to `size` bytes of zeros."""
    compressed = zlib.compress(bytes(size), 9)
    if kind == b"zTXt":
        body = b"Comment\x00\x00" + compressed
    else:  # iTXt: keyword, compression flag 1, method 0, language, translated keyword
        body = b"Comment\x00\x01\x00en\x00\x00" + compressed
    return [png_chunk(kind, body) for _ in range(count)]


def animated(fmt: str) -> bytes:
    frames = [image((40, 30), "RGB", seed) for seed in range(4)]
    return save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)

"""A corpus of hostile uploads, built in memory by the tests themselves (nothing is downloaded).

    hostile_cases(heavy=False) -> list[HostileCase]
        every kind of bad, odd or malicious upload, in a fixed order (more than 80 kinds: not an
        image, truncated, decompression and pixel bombs, odd modes and bit depths, odd headers,
        EXIF bombs, polyglots, hostile file names, lying content types); `heavy=True` adds the
        expensive ones (the 7000x7000 RGBA PNG that costs seconds and much memory to decode)
    mutations(count=200, seed=0) -> list[HostileCase]
        a small deterministic mutation fuzzer: seeded byte flips, truncations, zeroed, repeated and
        inserted ranges of valid JPEG, PNG (RGB, RGBA, 16-bit RGB and RGBA), TIFF, GIF, WebP and
        BMP files; half of the PNG ones get their chunk CRCs fixed afterwards, so that the decoder
        (not the checksum test) meets the damage
    case_by_name(name, heavy=True) -> HostileCase
    write_cases(folder, cases) -> list[Path]
        each case's bytes written as `folder / case.disk_name` (a safe, unique file name made from
        the case name and the suffix of its client file name), for commands that read files
    UPLOAD_CODES                     the error codes of `carid.serve` that name an upload's problem
    tests.hostile.encoders           the byte-level builders (valid_jpeg, valid_png, raw_png, ...)

A `HostileCase` has a `name` (stable id), the `filename` a client sends (itself hostile for the
name_* cases), the `data`, the part's `content_type` (which may lie) and what a server may answer:
`statuses` (200 when the bytes are a usable image; else the correct 4xx statuses) and, for a 4xx,
`codes` (the acceptable error codes; empty means any of UPLOAD_CODES). `allows(status, code)`
checks one answer. Every case is deterministic: the same bytes on every run.
"""

from __future__ import annotations

import functools
import re
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tests.hostile.encoders import (
    PNG_SIGNATURE,
    animated,
    bmp_with_height,
    exif_bomb_jpeg,
    gif_with_screen,
    image,
    jpeg_sof_declaring,
    jpeg_with_exif,
    png_chunk,
    png_declaring,
    raw_png,
    rgba_pixel_bomb,
    save,
    text_chunks,
    tiff,
    valid_jpeg,
    valid_png,
    zip_bytes,
)

OK = frozenset({200})
NOT_IMAGE = frozenset({415})
BROKEN = frozenset({422})
TOO_BIG = frozenset({413})
OK_OR_BROKEN = frozenset({200, 422})
BIG_OR_BROKEN = frozenset({413, 422})
ANY_ANSWER = frozenset({200, 400, 413, 415, 422})
UPLOAD_CODES = frozenset(
    {
        "empty_file",
        "file_too_large",
        "too_many_pixels",
        "unsupported_media_type",
        "truncated_image",
        "unreadable_image",
    }
)
PIXELS = frozenset({"too_many_pixels"})
FORM = frozenset({"bad_request"})  # the form itself cannot be read (so no file name to name)
HEAVY_NAMES = ("png_rgba_7000x7000",)


@dataclass(frozen=True)
class HostileCase:
    """One hostile upload and the answers a server may give it (see the module docstring)."""

    name: str
    filename: str
    data: bytes = field(repr=False)
    content_type: str = "application/octet-stream"
    statuses: frozenset[int] = OK
    codes: frozenset[str] = frozenset()
    note: str = ""

    @property
    def may_succeed(self) -> bool:
        return any(200 <= status < 300 for status in self.statuses)

    @property
    def disk_name(self) -> str:
        """A safe file name for this case on disk: the case name plus its file name's suffix."""
        suffix = Path(self.filename.replace("\x00", "")).suffix.lower()
        suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ".bin"
        return f"{self.name}{suffix}"

    def allows(self, status: int, code: str | None = None) -> bool:
        """True when (status, error code) is an acceptable answer to this upload."""
        if status not in self.statuses:
            return False
        return 200 <= status < 300 or code in (self.codes or UPLOAD_CODES)


Row = tuple[str, str, bytes, str]  # name, file name, bytes, content type


def _group(rows: Iterable[Row], statuses: frozenset[int], codes: frozenset[str] = frozenset()) -> list:
    return [HostileCase(name, filename, data, kind, statuses, codes) for name, filename, data, kind in rows]


def _not_images() -> list[HostileCase]:
    """Bytes that are no accepted image, whatever the name or the content type claims: 415."""
    script = b"<script>alert(1)</script>"
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)">' + script + b"</svg>"
    rows: list[Row] = [
        ("text_named_jpg", "car.jpg", b"this is not a photo of a car\n" * 40, "image/jpeg"),
        ("html_page", "index.jpg", b"<!DOCTYPE html><html><body>" + script, "text/html"),
        ("svg_with_script", "car.svg", svg, "image/svg+xml"),
        (
            "xml_svg",
            "car.svg",
            b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>',
            "image/svg",
        ),
        ("pdf_document", "car.pdf", b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "application/pdf"),
        ("zip_archive", "car.zip", zip_bytes(), "application/zip"),
        (
            "heic_brand",
            "car.heic",
            b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64),
            "image/heic",
        ),
        ("ico_icon", "favicon.ico", save(image((32, 32), "RGB", 4), "ICO"), "image/x-icon"),
        ("psd_magic", "car.psd", b"8BPS\x00\x01" + bytes(64), "image/vnd.adobe.photoshop"),
        ("ppm_image", "car.ppm", save(image((8, 8)), "PPM"), "image/x-portable-pixmap"),
        ("null_bytes", "car.jpg", bytes(4096), "image/jpeg"),
        (
            "random_bytes",
            "car.jpg",
            np.random.default_rng(9).integers(0, 256, 4096, np.uint8).tobytes(),
            "image/jpeg",
        ),
        ("elf_binary", "car.jpg", b"\x7fELF\x02\x01\x01" + bytes(120), "application/octet-stream"),
    ]
    empty = HostileCase(
        "empty_file", "car.jpg", b"", "image/jpeg", frozenset({400}), frozenset({"empty_file"})
    )
    return [empty, *_group(rows, NOT_IMAGE)]


def _broken(jpeg: bytes, png: bytes) -> list[HostileCase]:
    """The magic number says image, the rest is broken: 422 (or 200 where a decoder copes)."""
    webp = save(image((64, 48), "RGB", 3), "WEBP", quality=80)
    gif = animated("GIF")
    short_ihdr = PNG_SIGNATURE + png_chunk(b"IHDR", b"\x00\x00\x00\x10\x00") + png[33:]
    bomb = "png_ztxt_bomb", "ztxt.png", raw_png(32, 32, before_idat=text_chunks(b"zTXt", 1, 50_000_000))
    broken: list[Row] = [
        ("jpeg_header_only", "cut.jpg", jpeg[:20], "image/jpeg"),
        ("jpeg_truncated_half", "half.jpg", jpeg[: len(jpeg) // 2], "image/jpeg"),
        ("jpeg_only_soi", "soi.jpg", b"\xff\xd8\xff", "image/jpeg"),
        ("png_signature_only", "sig.png", PNG_SIGNATURE, "image/png"),
        ("png_truncated_ihdr", "ihdr.png", png[: 8 + 8 + 5], "image/png"),
        ("png_ihdr_length_5", "short-ihdr.png", short_ihdr, "image/png"),
        ("png_no_idat", "noidat.png", png[:33] + png_chunk(b"IEND", b""), "image/png"),
        ("png_truncated_idat", "cutidat.png", png[: len(png) * 2 // 3], "image/png"),
        ("png_bad_ihdr_crc", "crc.png", png[:29] + bytes(4) + png[33:], "image/png"),
        ("png_idat_not_zlib", "notzlib.png", raw_png(16, 16, idat=b"this is not zlib data" * 4), "image/png"),
        ("png_idat_too_short", "short.png", raw_png(64, 64, idat=zlib.compress(bytes(100))), "image/png"),
        ("png_zero_size", "zero.png", raw_png(0, 0, idat=zlib.compress(b"")), "image/png"),
        ("tiff_zero_width", "zero.tif", tiff(0, 16), "image/tiff"),
        ("tiff_width_not_a_number", "float.tif", tiff(16, 16, float_width=True), "image/tiff"),
        ("bmp_header_only", "cut.bmp", bmp_with_height(24)[:30], "image/bmp"),
    ]
    maybe: list[Row] = [
        ("jpeg_missing_eoi", "noeoi.jpg", jpeg[:-2], "image/jpeg"),
        ("png_bad_idat_crc", "idatcrc.png", png[:-16] + bytes(4) + png[-12:], "image/png"),
        (*bomb, "image/png"),  # a zTXt chunk inflating to 50 MB
        (
            "png_itxt_bomb",
            "itxt.png",
            raw_png(32, 32, before_idat=text_chunks(b"iTXt", 1, 50_000_000)),
            "image/png",
        ),
        # 80 zTXt chunks of 1 MB each: past Pillow's 64 MB budget for text
        (
            "png_many_text_chunks",
            "texts.png",
            raw_png(32, 32, before_idat=text_chunks(b"zTXt", 80, 1 << 20)),
            "image/png",
        ),
        ("webp_truncated", "cut.webp", webp[: len(webp) // 2], "image/webp"),
        ("gif_truncated", "cut.gif", gif[: len(gif) // 2], "image/gif"),
        ("tiff_strip_beyond_file", "strip.tif", tiff(64, 64, pixels=bytes(10)), "image/tiff"),
        ("tiff_float32", "float.tif", save(image((32, 24), "F", 26), "TIFF"), "image/tiff"),
        ("jpeg_exif_bomb", "exif.jpg", exif_bomb_jpeg(), "image/jpeg"),  # 5,000 absurd entries, a loop
    ]
    depth = raw_png(8, 8, bit_depth=7, idat=zlib.compress(bytes(80)))
    odd_depth = HostileCase("png_bad_bit_depth", "depth.png", depth, "image/png", frozenset({415, 422}))
    return [*_group(broken, BROKEN), *_group(maybe, OK_OR_BROKEN), odd_depth]


def _pixel_bombs() -> list[HostileCase]:
    """Headers declaring too many pixels: refused from the header (413), before any pixel is decoded."""
    sure: list[Row] = [
        ("png_declares_30000x30000", "bomb.png", png_declaring(30000, 30000), "image/png"),
        ("png_declares_8000x8000", "big.png", png_declaring(8000, 8000), "image/png"),  # < Pillow's guard
        ("jpeg_declares_65500x65500", "bomb.jpg", jpeg_sof_declaring(65500, 65500), "image/jpeg"),
        ("tiff_declares_100000x100000", "bomb.tif", tiff(100_000, 100_000), "image/tiff"),
    ]
    either: list[Row] = [
        ("png_declares_1x4000000000", "thin.png", png_declaring(1, 4_000_000_000), "image/png"),
        ("gif_screen_65535x65535", "bomb.gif", gif_with_screen(65535, 65535), "image/gif"),
        ("bmp_declares_huge", "bomb.bmp", bmp_with_height(-60000, 60000), "image/bmp"),
    ]
    return [*_group(sure, TOO_BIG, PIXELS), *_group(either, BIG_OR_BROKEN)]


def _odd_but_valid() -> list[HostileCase]:
    """Unusual modes, depths, shapes, frames and metadata of real images: 200."""
    text = png_chunk(b"tEXt", b"Comment\x00<script>alert(1)</script>")
    polyglot = valid_jpeg((64, 48), 24, comment=b"<script>alert(1)</script>") + zip_bytes()
    rows: list[Row] = [
        ("png_rgba", "alpha.png", valid_png((64, 48), "RGBA", 10), "image/png"),
        ("png_grey_alpha", "la.png", valid_png((64, 48), "LA", 11), "image/png"),
        (
            "png_palette_transparency",
            "pal.png",
            save(image((64, 48), "P", 12), "PNG", transparency=0),
            "image/png",
        ),
        ("png_1bit", "bilevel.png", valid_png((64, 48), "1", 13), "image/png"),
        ("png_16bit_rgb", "deep.png", raw_png(48, 32, 16, 2, seed=14), "image/png"),
        ("png_16bit_rgba", "deepa.png", raw_png(48, 32, 16, 6, seed=15), "image/png"),
        ("png_16bit_grey", "deepgrey.png", raw_png(48, 32, 16, 0, seed=16), "image/png"),
        ("png_16bit_grey_alpha", "deepla.png", raw_png(48, 32, 16, 4, seed=17), "image/png"),
        ("png_animated_apng", "anim.png", animated("PNG"), "image/png"),
        ("png_one_pixel", "dot.png", valid_png((1, 1)), "image/png"),
        ("png_sliver_10x10000", "sliver.png", valid_png((10, 10000), "RGB", 19), "image/png"),
        ("png_sliver_10000x10", "strip.png", valid_png((10000, 10), "RGB", 20), "image/png"),
        ("png_script_in_text", "xss.png", raw_png(16, 16, before_idat=[text]), "image/png"),
        ("jpeg_cmyk", "cmyk.jpg", save(image((64, 48), "CMYK", 21), "JPEG"), "image/jpeg"),
        ("jpeg_grey", "grey.jpg", save(image((64, 48), "L", 22), "JPEG"), "image/jpeg"),
        ("jpeg_progressive", "prog.jpg", valid_jpeg((128, 96), 23, progressive=True), "image/jpeg"),
        ("jpeg_exif_orientation_8", "rot8.jpg", jpeg_with_exif(8), "image/jpeg"),
        ("jpeg_exif_orientation_invalid", "rot99.jpg", jpeg_with_exif(99), "image/jpeg"),
        (
            "jpeg_garbage_after_eoi",
            "tail.jpg",
            valid_jpeg((128, 96), 1) + bytes(range(256)) * 8,
            "image/jpeg",
        ),
        ("jpeg_zip_polyglot", "poly.jpg", polyglot, "image/jpeg"),  # HTML in its comment, a ZIP appended
        ("gif_multi_frame", "anim.gif", animated("GIF"), "image/gif"),
        ("webp_animated", "anim.webp", animated("WEBP"), "image/webp"),
        (
            "webp_lossless_alpha",
            "alpha.webp",
            save(image((48, 32), "RGBA", 25), "WEBP", lossless=True),
            "image/webp",
        ),
        ("tiff_multi_page", "pages.tif", animated("TIFF"), "image/tiff"),
        ("bmp_negative_height", "topdown.bmp", bmp_with_height(-24), "image/bmp"),
    ]
    return _group(rows, OK)


def _hostile_names(jpeg: bytes, png: bytes) -> list[HostileCase]:
    """A good photo under a hostile name or a lying content type: 200, the name only displayed."""
    webp = save(image((64, 48), "RGB", 3), "WEBP", quality=80)
    rows: list[Row] = [
        ("name_unicode", "ñandú 🚗 車 ＼ \u202egpj.exe", jpeg, "image/jpeg"),
        ("name_newline", "car\r\nX-Injected: 1\r\n.jpg", jpeg, "image/jpeg"),
        ("name_path_traversal", "../../etc/passwd.jpg", jpeg, "image/jpeg"),
        ("name_windows_path", "C:\\Windows\\System32\\car.jpg", jpeg, "image/jpeg"),
        ("name_nul_byte", "car.jpg\x00.php", jpeg, "image/jpeg"),
        ("name_html", '<img src=x onerror=alert(1)>".jpg', jpeg, "image/jpeg"),
        ("name_dot_dot", "..", jpeg, "image/jpeg"),
        ("content_type_html", "car.png", png, "text/html"),
        ("content_type_garbage", "car.jpg", jpeg, "\x01not/a type;;;"),
        ("webp_named_jpg", "car.jpg", webp, "image/jpeg"),
    ]
    # a part header past the multipart parser's 4 KB: 200, or 400 saying the form cannot be read
    long = HostileCase("name_very_long", "a" * 5000 + ".jpg", jpeg, "image/jpeg", frozenset({200, 400}), FORM)
    return [*_group(rows, OK), long]


@functools.lru_cache(maxsize=1)
def _light_cases() -> tuple[HostileCase, ...]:
    jpeg, png = valid_jpeg((128, 96), seed=1), valid_png((64, 48), seed=2)
    cases = (
        *_not_images(),
        *_broken(jpeg, png),
        *_pixel_bombs(),
        *_odd_but_valid(),
        *_hostile_names(jpeg, png),
    )
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


def _heavy_cases() -> list[HostileCase]:
    note = "49 MP RGBA under the 50 MP cap: ~190 KB that decode to ~200 MB of pixels"
    bomb = rgba_pixel_bomb(7000, 7000)
    return [
        HostileCase(HEAVY_NAMES[0], "bomb-rgba.png", bomb, "image/png", frozenset({200, 413}), PIXELS, note)
    ]


def hostile_cases(heavy: bool = False) -> list[HostileCase]:
    """Every hostile case, in a fixed order; `heavy` adds the ones that are expensive to decode."""
    return [*_light_cases(), *(_heavy_cases() if heavy else [])]


def case_by_name(name: str, heavy: bool = True) -> HostileCase:
    """The case called `name` (KeyError naming the known ones otherwise)."""
    found = {case.name: case for case in hostile_cases(heavy=heavy)}
    if name not in found:
        raise KeyError(f"no hostile case {name!r}; known: {', '.join(found)}")
    return found[name]


# --- the mutation fuzzer -------------------------------------------------------------------------------


def _fix_png_crcs(data: bytearray) -> bytearray:
    """Recompute every complete chunk's CRC (so the decoder, not the checksum test, meets the damage)."""
    at = len(PNG_SIGNATURE)
    while at + 12 <= len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        end = at + 8 + length
        if end + 4 > len(data):
            break
        data[end : end + 4] = struct.pack(">I", zlib.crc32(bytes(data[at + 4 : end])) & 0xFFFFFFFF)
        at = end + 4
    return data


def _mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytearray]:
    out = bytearray(data)
    size = len(out)
    kind = str(rng.choice(["flip", "flip", "flip", "truncate", "zero_range", "repeat_range", "insert"]))
    if kind == "flip":
        for _ in range(int(rng.integers(1, 9))):
            out[int(rng.integers(0, size))] = int(rng.integers(0, 256))
    elif kind == "truncate":
        del out[int(rng.integers(1, size)) :]
    else:
        start = int(rng.integers(0, size))
        length = int(rng.integers(1, max(2, size // 8)))
        if kind == "zero_range":
            out[start : start + length] = bytes(len(out[start : start + length]))
        elif kind == "repeat_range":
            out[start:start] = out[start : start + length]
        else:
            out[start:start] = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
    return kind, out


@functools.lru_cache(maxsize=1)
def _fuzz_seeds() -> tuple[tuple[str, str, str, bytes], ...]:
    """(base name, suffix, content type, bytes) of the valid files the fuzzer mutates."""
    return (
        ("jpeg", ".jpg", "image/jpeg", valid_jpeg((96, 64), seed=31)),
        ("png", ".png", "image/png", valid_png((48, 32), "RGB", 32)),
        ("png_rgba", ".png", "image/png", valid_png((48, 32), "RGBA", 33)),
        ("png16", ".png", "image/png", raw_png(32, 24, 16, 2, seed=34)),
        ("png16_rgba", ".png", "image/png", raw_png(32, 24, 16, 6, seed=35)),
        ("tiff", ".tif", "image/tiff", save(image((32, 24), "RGB", 36), "TIFF")),
        ("gif", ".gif", "image/gif", save(image((32, 24), "P", 37), "GIF")),
        ("webp", ".webp", "image/webp", save(image((32, 24), "RGB", 38), "WEBP")),
        ("bmp", ".bmp", "image/bmp", save(image((32, 24), "RGB", 39), "BMP")),
    )


def mutations(count: int = 200, seed: int = 0) -> list[HostileCase]:
    """`count` seeded mutations of valid files (the formats in turn); each may be answered 200 (the
    damage missed what matters) or a 4xx naming the problem, never a 5xx. Same (count, seed), same bytes."""
    seeds = _fuzz_seeds()
    rng = np.random.default_rng(seed)
    cases = []
    for index in range(count):
        base, suffix, content_type, data = seeds[index % len(seeds)]
        kind, mutated = _mutate(data, rng)
        fixed = base.startswith("png") and bool(rng.integers(0, 2))
        if fixed:
            mutated = _fix_png_crcs(mutated)
        name = f"fuzz_{index:03d}_{base}_{kind}{'_crc' if fixed else ''}"
        cases.append(HostileCase(name, f"{name}{suffix}", bytes(mutated), content_type, ANY_ANSWER))
    return cases


def write_cases(folder: Path, cases: Iterable[HostileCase]) -> list[Path]:
    """Write each case's bytes to `folder / case.disk_name` (folder created); returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for case in cases:
        path = folder / case.disk_name
        path.write_bytes(case.data)
        paths.append(path)
    return paths

"""The root of "never a 500": `carid.images` and `carid.runtime.inputs.prepare_image` turn whatever
Pillow raises on a hostile file into an `ImageError` naming the file (or a prepared image whose
error says so), for every case of the corpus and the mutation fuzzer."""

from __future__ import annotations

import pytest

from carid.images import ImageError, decode_rgb, probe_image
from carid.preprocess import PreprocessSpec
from carid.runtime.inputs import prepare_image
from tests.hostile.corpus import HostileCase, hostile_cases, mutations

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

CASES = [case for case in hostile_cases() + mutations(200) if not case.name.startswith("name_")]
SPEC = PreprocessSpec(image_size=(32, 32))


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_decoding_raises_only_an_image_error_naming_the_file(case: HostileCase) -> None:
    for decode in (
        lambda: probe_image(case.data, name="upload.bin"),
        lambda: decode_rgb(case.data, "upload.bin"),
    ):
        try:
            decode()
        except ImageError as exc:
            assert "upload.bin" in str(exc)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_preparing_never_raises(case: HostileCase) -> None:
    prepared = prepare_image(case.data, SPEC, "upload.bin")
    assert (prepared.array is None) == (prepared.error is not None)
    if prepared.error is not None:
        assert "upload.bin" in prepared.error


@pytest.mark.parametrize(
    "error",
    [
        __import__("struct").error("unpack requires a buffer of 4 bytes"),
        __import__("zlib").error("invalid stored block lengths"),
        EOFError(),
        IndexError("tuple index out of range"),
        KeyError("tag"),
    ],
)
def test_any_pillow_parser_error_becomes_an_image_error(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """Pillow's parsers raise more than OSError/ValueError on malformed chunks (struct.error on a short
    IHDR, zlib.error in a compressed chunk, ...): each must name the file, not escape as a 500."""
    from PIL import ImageFile

    from tests.hostile.encoders import valid_png

    data = valid_png()

    def broken_load(self: ImageFile.ImageFile) -> None:
        raise error

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken_load)
    with pytest.raises(ImageError, match=r"upload\.png: cannot decode"):
        decode_rgb(data, "upload.png")
    prepared = prepare_image(data, SPEC, "upload.png")
    assert prepared.array is None and prepared.error is not None and "upload.png" in prepared.error

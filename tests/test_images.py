"""Image decoding: every kind of file a museum folder holds, broken ones included."""

from __future__ import annotations

import io
import os
import resource
import struct
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

from artnote.errors import ImageError
from artnote.images import decode_image

LIMIT = 400_000_000  # the default [scan] max_pixels
WHITE, RED, BLUE = (255, 255, 255), (255, 0, 0), (0, 0, 255)


def art_dir() -> Path:
    env = os.environ.get("ARTNOTE_ART_DIR")
    return Path(env) if env else Path(__file__).resolve().parent / "fixtures" / "art"


# name -> (width, height) from the README of the sample paintings
PAINTINGS = {
    "van-gogh_the-starry-night_1889.jpg": (1024, 640),
    "munch_the-scream_1893.jpg": (1200, 1528),
    "turner_the-shipwreck-of-the-minotaur_1810.jpg": (1000, 690),
    "hokusai_the-great-wave-off-kanagawa_1831.jpg": (1131, 707),
    "monet_water-lilies_1919.jpg": (1600, 1052),
    "matisse_woman-with-a-hat_1905.jpg": (591, 800),
    "sakai-hoitsu_flowers_c1820.jpg": (750, 343),
    "picabia_udnie_1913.jpg": (512, 512),
}


def save(tmp_path: Path, name: str, im: Image.Image, **params: object) -> Path:
    path = tmp_path / name
    im.save(path, **params)
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a size its (absent) pixel data never backs."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real tiny JPEG whose frame header is rewritten to claim a huge size, then cut short."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), RED).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    sos = data.index(b"\xff\xda")
    return bytes(data[: sos + 20])  # inside the entropy-coded data, before its end marker


def rgb_at(decoded: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    return tuple(decoded.getpixel(xy))  # type: ignore[arg-type]


# --- files that are not (whole) images -------------------------------------


def test_empty_text_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.png").write_text("these are my notes, not a picture\n")
    cases = {
        "empty.jpg": "empty file",
        "notes.png": "not an image (unrecognised format)",
        "gone.jpg": "file disappeared",
        ".": "not a file",
    }
    for name, reason in cases.items():
        with pytest.raises(ImageError) as err:
            decode_image(tmp_path / name, max_pixels=LIMIT)
        assert str(err.value) == reason


def test_eps_is_never_handed_to_ghostscript(tmp_path: Path) -> None:
    path = tmp_path / "trap.jpg"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ImageError, match="not an image"):
        decode_image(path, max_pixels=LIMIT)


def test_truncated_files_are_errors_not_padding(tmp_path: Path) -> None:
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), np.uint8))
    for name in ("cut.jpg", "cut.png"):
        whole = save(tmp_path, "whole" + name[3:], noise, quality=95)
        data = whole.read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(ImageError, match="^truncated or corrupt image data: "):
            decode_image(tmp_path / name, max_pixels=LIMIT)
        assert decode_image(whole, max_pixels=LIMIT).image.size == (400, 300)


def test_bomb_is_refused_from_the_header(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(30000, 30000))
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for limit in (1_000_000, LIMIT):
        with pytest.raises(ImageError) as err:
            decode_image(bomb, max_pixels=limit, target_size=512)
        assert str(err.value) == (
            f"image has 900000000 pixels, over the limit of {limit} ([scan] max_pixels)"
        )
    big_jpeg = tmp_path / "bomb.jpg"
    big_jpeg.write_bytes(jpeg_claiming(30000, 30000))
    with pytest.raises(ImageError, match="900000000 pixels"):
        decode_image(big_jpeg, max_pixels=LIMIT)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown_kib < 100_000  # decoding 900 megapixels would take gigabytes


def test_pillows_own_limit_is_not_in_the_way(tmp_path: Path) -> None:
    # 225 megapixels: Pillow's default check would raise DecompressionBombError at open.
    path = tmp_path / "large.jpg"
    path.write_bytes(jpeg_claiming(15000, 15000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(
            ImageError, match="^truncated or corrupt image data: image file is trunc"
        ):
            decode_image(path, max_pixels=LIMIT, target_size=512)


# --- modes, orientation, frames ---------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path: Path, fmt: str) -> None:
    ramp = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    path = save(tmp_path, f"deep.{fmt}", Image.fromarray(ramp))
    decoded = decode_image(path, max_pixels=LIMIT)
    assert decoded.mode.startswith("I;16") and decoded.image.mode == "RGB"
    assert [rgb_at(decoded.image, (x, 0))[0] for x in range(4)] == [0, 4, 128, 255]


def test_32_bit_and_float_tiffs(tmp_path: Path) -> None:
    floats = np.array([[0.0, 0.25, 1.0]], dtype=np.float32)
    f = decode_image(save(tmp_path, "f.tif", Image.fromarray(floats)), max_pixels=LIMIT)
    assert f.mode == "F" and [rgb_at(f.image, (x, 0))[1] for x in range(3)] == [0, 64, 255]
    ints = np.array([[-100, 0, 100]], dtype=np.int32)
    i = decode_image(save(tmp_path, "i.tif", Image.fromarray(ints)), max_pixels=LIMIT)
    assert i.mode == "I" and [rgb_at(i.image, (x, 0))[2] for x in range(3)] in (
        [0, 127, 255],
        [0, 128, 255],
    )


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = save(tmp_path, "print.jpg", Image.new("CMYK", (32, 24), (0, 255, 255, 0)))
    decoded = decode_image(path, max_pixels=LIMIT)
    assert (decoded.mode, decoded.format, decoded.image.mode) == ("CMYK", "JPEG", "RGB")
    r, g, b = rgb_at(decoded.image, (16, 12))
    assert r > 200 and g < 60 and b < 60  # cyan-free, magenta+yellow: red


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(1, (5, 0, 10, 10))
    p = decode_image(save(tmp_path, "p.png", palette, transparency=0), max_pixels=LIMIT)
    assert p.mode == "P" and rgb_at(p.image, (0, 0)) == WHITE and rgb_at(p.image, (9, 9)) == RED
    rgba = Image.new("RGBA", (4, 4), (0, 0, 255, 128))
    a = decode_image(save(tmp_path, "a.png", rgba), max_pixels=LIMIT)
    assert a.mode == "RGBA" and rgb_at(a.image, (1, 1)) in {(127, 127, 255), (126, 126, 255)}
    la = decode_image(save(tmp_path, "la.png", Image.new("LA", (4, 4), (0, 0))), max_pixels=LIMIT)
    assert la.mode == "LA" and rgb_at(la.image, (0, 0)) == WHITE


def test_first_frame_of_animations_and_multipage_files(tmp_path: Path) -> None:
    red, blue = Image.new("RGB", (20, 10), RED), Image.new("RGB", (30, 30), BLUE)
    gif = save(tmp_path, "anim.gif", red, save_all=True, append_images=[blue], duration=100)
    tif = save(tmp_path, "pages.tif", red, save_all=True, append_images=[blue])
    for path in (gif, tif):
        decoded = decode_image(path, max_pixels=LIMIT)
        assert (decoded.width, decoded.height) == (20, 10)
        assert rgb_at(decoded.image, (5, 5)) == RED


def test_exif_orientation(tmp_path: Path) -> None:
    im = Image.new("RGB", (40, 20), WHITE)
    im.paste((0, 0, 0), (0, 0, 20, 20))  # left half black
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    decoded = decode_image(save(tmp_path, "r.jpg", im, exif=exif), max_pixels=LIMIT)
    assert (decoded.width, decoded.height) == (20, 40) and decoded.image.size == (20, 40)
    assert rgb_at(decoded.image, (10, 5))[0] < 30  # the black left half is now on top
    assert rgb_at(decoded.image, (10, 35))[0] > 225


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_broken_exif_is_tolerated(tmp_path: Path) -> None:
    path = save(tmp_path, "ok.jpg", Image.new("RGB", (8, 6), RED))
    data = path.read_bytes()
    garbage = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\xff\xff" + b"\x13" * 40
    app1 = b"\xff\xe1" + struct.pack(">H", len(garbage) + 2) + garbage
    broken = tmp_path / "broken_exif.jpg"
    broken.write_bytes(data[:2] + app1 + data[2:])
    decoded = decode_image(broken, max_pixels=LIMIT)
    assert (decoded.width, decoded.height) == (8, 6)


def test_extreme_shapes(tmp_path: Path) -> None:
    one = save(tmp_path, "1.png", Image.new("L", (1, 1), 7))
    tiny = decode_image(one, max_pixels=LIMIT, target_size=512)
    assert tiny.image.size == (1, 1) and rgb_at(tiny.image, (0, 0)) == (7, 7, 7)
    wide = save(tmp_path, "strip.png", Image.new("RGB", (20000, 20), BLUE))
    strip = decode_image(wide, max_pixels=LIMIT, target_size=512)
    assert (strip.width, strip.height) == (20000, 20)
    assert strip.image.size == (512, 1)


# --- the real paintings -------------------------------------------------------


def test_sample_paintings(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = sorted(art_dir().glob("*.jpg"))
    assert len(paths) == 8, f"sample paintings missing from {art_dir()} (set ARTNOTE_ART_DIR)"
    drafts: list[tuple[int, int]] = []
    original_draft = JpegImageFile.draft

    def spy(self: JpegImageFile, mode: str | None, size: tuple[int, int] | None) -> object:
        result = original_draft(self, mode, size)
        drafts.append(self.size)
        return result

    monkeypatch.setattr(JpegImageFile, "draft", spy)
    for path in paths:
        decoded = decode_image(path, max_pixels=LIMIT, target_size=384)
        assert (decoded.width, decoded.height) == PAINTINGS[path.name], path.name
        assert decoded.format == "JPEG" and decoded.image.mode == "RGB"
        assert max(decoded.image.size) == 384
        ratio = decoded.width / decoded.height
        assert abs(decoded.image.size[0] / decoded.image.size[1] - ratio) < 0.02
    # JPEGs at least twice the target are decoded at a reduced scale by libjpeg.
    assert (800, 526) in drafts  # Monet: 1600x1052 at 1/2
    full = decode_image(paths[0], max_pixels=LIMIT)
    assert full.image.size == (full.width, full.height)


def test_decoding_in_threads_gives_the_same_pixels() -> None:
    path = art_dir() / "hokusai_the-great-wave-off-kanagawa_1831.jpg"
    expected = decode_image(path, max_pixels=LIMIT, target_size=224).image.tobytes()
    results: list[bytes] = []

    def work() -> None:
        for _ in range(3):
            results.append(decode_image(path, max_pixels=LIMIT, target_size=224).image.tobytes())

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 12 and all(r == expected for r in results)


@pytest.mark.parametrize(
    ("raised", "message"),
    [
        (MemoryError(), "not enough memory to convert"),
        (ValueError("conversion\nnot supported"), "cannot convert this image to RGB: conversion"),
    ],
)
def test_failures_after_decoding_are_image_errors(tmp_path: Path, monkeypatch, raised, message):
    """Converting, turning and scaling a huge or odd image can fail too: that image gets a
    one-line reason, it does not stop the scan."""
    import artnote.images

    path = tmp_path / "a.png"
    Image.new("RGB", (8, 6), RED).save(path)

    def fail(im):
        raise raised

    monkeypatch.setattr(artnote.images, "_to_rgb", fail)
    with pytest.raises(ImageError) as err:
        decode_image(path, max_pixels=LIMIT)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_errors_say_whether_the_bytes_are_at_fault(tmp_path: Path, monkeypatch) -> None:
    """Corrupt bytes fail every copy of them; a missing file or a memory shortage does not
    (the scan fails byte-identical twins together only for the former)."""
    import artnote.images

    with pytest.raises(ImageError) as missing:
        decode_image(tmp_path / "gone.png", max_pixels=LIMIT)
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(ImageError) as corrupt:
        decode_image(tmp_path / "junk.png", max_pixels=LIMIT)
    Image.new("RGB", (8, 6), RED).save(tmp_path / "a.png")

    def no_memory(im):
        raise MemoryError

    monkeypatch.setattr(artnote.images, "_to_rgb", no_memory)
    with pytest.raises(ImageError) as memory:
        decode_image(tmp_path / "a.png", max_pixels=LIMIT)
    assert corrupt.value.of_content
    assert not missing.value.of_content and not memory.value.of_content

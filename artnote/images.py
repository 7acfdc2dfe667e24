"""Decode one image safely and make it small enough for the model.

Every way a file can be unreadable becomes an ImageError with a one-line
reason a curator can act on; the scan records it and goes on.

Safety:
- the pixel count is checked from the header before any pixel is decoded, so a
  decompression bomb never reaches the decoder. Pillow's own bomb check is
  switched off at import (its 89-megapixel limit would refuse ordinary museum
  scans) and replaced by [scan] max_pixels, passed to every call: nothing
  global changes per call, so decoding is thread-safe;
- truncated files are errors, never silently padded (LOAD_TRUNCATED_IMAGES stays off);
- only Pillow's own raster decoders run: formats that delegate to outside
  programs (EPS via Ghostscript) or that have no signature to recognise them
  by (TGA) are never tried, whatever the file's extension says.

Result: RGB, EXIF orientation applied, transparency composited on white,
16-bit and float images scaled (not clipped) to 8 bits, the first frame of
animated and multi-page files, and at most `target_size` on the longest edge.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from artnote.errors import ImageError

# Our limit replaces Pillow's (see the module doc); set once, never per call.
Image.MAX_IMAGE_PIXELS = None

_SAFE_FORMATS = ("JPEG", "PNG", "TIFF", "WEBP", "GIF", "BMP", "JPEG2000", "AVIF")

# EXIF orientation -> the transposition that undoes it (as ImageOps.exif_transpose).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112


@dataclass
class DecodedImage:
    """An image ready for the model, and facts about the original for the catalog."""

    image: Image.Image  # RGB, at most target_size on the longest edge
    width: int  # original size, after EXIF orientation
    height: int
    format: str | None  # as Pillow names it: JPEG, PNG, TIFF...
    mode: str  # original colour mode: RGB, CMYK, P, I;16...


def decode_image(
    path: str | Path, *, max_pixels: int, target_size: int | None = None
) -> DecodedImage:
    """Decode `path` (first frame) to RGB, refusing images over `max_pixels` before decoding."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise ImageError(_os_reason(exc), of_content=False) from None
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ImageError("empty file")
        try:
            im = Image.open(f, formats=_formats())
        except UnidentifiedImageError:
            raise ImageError("not an image (unrecognised format)") from None
        except OSError as exc:  # may be a read error of this file only
            raise ImageError(_os_reason(exc), of_content=False) from None
        except Exception as exc:  # Pillow's parsers raise many types on malformed headers
            raise ImageError(_corrupt(exc)) from None
        with im:
            return _decode_open(im, max_pixels, target_size)


def _decode_open(im: Any, max_pixels: int, target_size: int | None) -> DecodedImage:
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageError(f"truncated or corrupt image data: size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(
            f"image has {width * height} pixels, over the limit of {max_pixels} ([scan] max_pixels)"
        )
    fmt, mode = im.format, im.mode
    orientation = _orientation(im)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    if target_size and fmt == "JPEG" and max(width, height) >= 2 * target_size:
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (never below target_size):
        # a 100-megapixel scan then costs a fraction of the time and memory.
        im.draft("RGB", (target_size, target_size))
    try:
        im.load()
    except MemoryError:
        raise ImageError("not enough memory to decode this image", of_content=False) from None
    except Exception as exc:  # truncated data, bad compression streams, decoder errors
        raise ImageError(_corrupt(exc)) from None
    try:  # conversion, turning and scaling allocate too, and meet odd modes
        out = _to_rgb(im)
        if orientation in _ORIENTATION:
            out = out.transpose(_ORIENTATION[orientation])
        if target_size:
            out.thumbnail((target_size, target_size), Image.Resampling.LANCZOS)
        if out is im:  # closing the source file would also drop these pixels
            out = im.copy()
    except MemoryError:
        raise ImageError("not enough memory to convert this image", of_content=False) from None
    except Exception as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ImageError(f"cannot convert this image to RGB: {detail}") from None
    return DecodedImage(out, width, height, fmt, mode)


def _formats() -> tuple[str, ...]:
    Image.init()
    return tuple(f for f in _SAFE_FORMATS if f in Image.OPEN)


def _orientation(im: Image.Image) -> int:
    # Broken EXIF is common in scans from old software; it must not cost the image.
    try:
        value = im.getexif().get(_EXIF_ORIENTATION_TAG, 1)
        return int(value) if value in _ORIENTATION else 1
    except Exception:
        return 1


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if "transparency" in im.info and mode in ("P", "L", "RGB"):  # a palette index or colour key
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode == "RGB":
        return im
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, "white")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _scale_to_8bit(im).convert("RGB")
    try:
        return im.convert("RGB")  # 1, L, CMYK, YCbCr, LAB, HSV, RGBX
    except ValueError:
        raise ImageError(f"unsupported colour mode {mode}") from None


def _scale_to_8bit(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float greyscale to 8 bits by scaling, so highlights keep detail."""
    import numpy as np  # only these rare modes need it

    values = np.asarray(im).astype(np.float64)
    if im.mode.startswith("I;16"):
        scaled = values / 257.0  # 65535 -> 255
    else:
        low, high = float(values.min()), float(values.max())
        if im.mode == "F" and low >= 0.0 and high <= 1.0:
            scaled = values * 255.0
        elif im.mode == "I" and low >= 0.0 and high <= 65535.0:
            scaled = values / (257.0 if high > 255.0 else 1.0)  # 16-bit data in a 32-bit mode
        else:  # anything else: stretch the range the image uses
            span = high - low if high > low else 1.0
            scaled = (values - low) * (255.0 / span)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))  # 2-D uint8: L


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file disappeared"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "not a file"
    if exc.strerror:
        return f"cannot read file: {exc.strerror}"
    return _corrupt(exc)


def _corrupt(exc: BaseException) -> str:
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return f"truncated or corrupt image data: {detail}"

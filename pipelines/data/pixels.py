"""Every Pillow mode an image can open in, turned into 8 bits per sample, or refused in one line.

The prepared arrays are uint8. Deeper samples are scaled from the full range their format can
hold, never stretched image by image, so that a dark scan stays dark and one grey level means the
same in every image:

- unsigned integers of b bits (16-bit PNG; 16-bit and 12-bit TIFF; 16-bit PPM): v * 255 / (2**b - 1),
  rounded. Pillow's own conversion to "L" clips them at 255 instead, which turns a 16-bit scan white.
- 32-bit unsigned integer TIFF: the same with b = 32.
- 32-bit float ("F", TIFF): 0.0 is black and 1.0 white; an image with samples outside 0..1, NaN or
  infinity is refused, naming its range, since no scale would be right for every such file.
- signed integers (TIFF SampleFormat 2): refused; they have no fixed black and white.
- 16-bit colour (48/64-bit PNG and TIFF): Pillow already reads it as 8-bit colour, keeping each
  sample's high byte (v >> 8: within one level of the rounding above).

8-bit modes (1, L, LA, P, PA, RGB, RGBA, RGBX, CMYK, YCbCr, LAB, HSV) are left to Pillow's
conversion to grey or RGB, which drops an alpha channel as torchvision's ImageFolder does.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from pipelines.errors import DataError

EIGHT_BIT = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
UNSIGNED_16 = ("I;16", "I;16L", "I;16B", "I;16N")
# 8-bit modes Pillow cannot convert to both "L" and "RGB" directly, and the mode that it can.
VIA = {"LAB": "RGB", "La": "LA"}
TIFF_BITS, TIFF_SAMPLE_FORMAT = 258, 339   # BitsPerSample; SampleFormat (1 unsigned, 2 signed, 3 float)
ADVICE = "save it with 8- or 16-bit unsigned samples (PNG or TIFF), or as 32-bit float from 0.0 to 1.0"


class Samples(NamedTuple):
    """How an image's samples are read: kind '8-bit', 'unsigned' (of `bits` bits) or 'float'."""
    kind: str
    bits: int


def _tiff_tag(img: Image.Image, tag: int) -> tuple[int, ...]:
    value = getattr(img, "tag_v2", {}).get(tag) if img.format == "TIFF" else None
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def samples(img: Image.Image, where: Path | str) -> Samples:
    """How `img` (as opened, before any conversion) is read, or DataError naming `where`."""
    mode = img.mode
    if 2 in _tiff_tag(img, TIFF_SAMPLE_FORMAT):
        bits = _tiff_tag(img, TIFF_BITS)
        raise DataError(f"{where}: {bits[0] if bits else '?'}-bit signed integer samples (TIFF, Pillow mode {mode}) "
                        f"have no fixed black and white to scale from; {ADVICE}")
    if mode in EIGHT_BIT:
        return Samples("8-bit", 8)
    bits = _tiff_tag(img, TIFF_BITS)
    if mode in UNSIGNED_16:
        # A 12-bit TIFF opens as I;16 holding 0..4095: its own range is 12 bits, not 16.
        return Samples("unsigned", bits[0] if bits and 8 < bits[0] <= 16 else 16)
    if mode == "I":
        if bits and bits[0] in (16, 32):   # SampleFormat unsigned (signed was refused above)
            return Samples("unsigned", bits[0])
        if img.format in ("PNG", "PPM"):   # 16-bit grey; Pillow scales a PPM's maxval to 65535
            return Samples("unsigned", 16)
        raise DataError(f"{where}: 32-bit integer samples (Pillow mode I) in a {img.format} file, whose bit depth "
                        f"Pillow does not say; {ADVICE}")
    if mode == "F":
        return Samples("float", 32)
    raise DataError(f"{where}: Pillow mode {mode} ({img.format}) is not an image mode this pipeline reads; {ADVICE}")


def to_8bit(img: Image.Image, how: Samples, where: Path | str) -> Image.Image:
    """`img` in a mode Pillow converts to both "L" and "RGB", deep samples scaled as the module says."""
    if how.kind == "8-bit":
        return img.convert(VIA[img.mode]) if img.mode in VIA else img
    a = np.asarray(img)
    if how.kind == "float":
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            raise DataError(f"{where}: 32-bit float samples include NaN or infinity; {ADVICE}")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(f"{where}: 32-bit float samples from {lo:g} to {hi:g}; a float image is read as "
                            "0.0 = black to 1.0 = white: rescale it to 0..1, or save it with 8- or 16-bit unsigned samples")
        return Image.fromarray(np.floor(a * 255.0 + 0.5).astype(np.uint8))
    top = (1 << how.bits) - 1
    if how.bits > 16:
        a = a.view(np.uint32).astype(np.uint64)   # Pillow holds 32-bit unsigned samples in int32 ("I")
    else:
        a = a.astype(np.uint32)   # v * 255 stays below 2**32
    peak = int(a.max()) if a.size else 0
    if peak > top:
        raise DataError(f"{where}: a sample of {peak} in a {how.bits}-bit image (at most {top}); {ADVICE}")
    return Image.fromarray(((a * 255 + top // 2) // top).astype(np.uint8))

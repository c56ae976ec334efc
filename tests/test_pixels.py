"""Every Pillow mode, built with Pillow (or written byte by byte where Pillow writes no such file), saved
in a format of your own folder, prepared through the download and preprocess code, and the prepared
pixels compared with the values the format's full range gives (pipelines/data/pixels.py)."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import numpy as np
import pytest
from PIL import Image

from pipelines.data import folder
from pipelines.data.prepare import prepare
from pipelines.data.sources import acquire
from pipelines.errors import DataError
from pipelines.io import load_npz

SIZE = 8   # images are SIZE x SIZE and prepared at SIZE: no resize, so every pixel is compared exactly
RNG = np.random.default_rng(0)
RGB8 = RNG.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
A8 = RNG.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
GRAD16 = np.linspace(0, 65535, SIZE * SIZE).round().astype(np.uint16).reshape(SIZE, SIZE)


def full_range(v: np.ndarray, top: int) -> np.ndarray:
    """The expected 8-bit value of each sample of a format whose white is `top`."""
    return np.floor(v.astype(np.float64) * 255.0 / top + 0.5).astype(np.uint8)


def tiff_bytes(data: bytes, bits: int, sample_format: int) -> bytes:
    """An uncompressed one-sample little-endian TIFF of SIZE x SIZE (Pillow writes no 12-bit, unsigned
    32-bit or signed 16-bit TIFF)."""
    tags = [(256, 3, SIZE), (257, 3, SIZE), (258, 3, bits), (259, 3, 1), (262, 3, 1), (273, 4, 0), (277, 3, 1),
            (278, 3, SIZE), (279, 4, len(data)), (339, 3, sample_format)]
    offset = 8 + 2 + 12 * len(tags) + 4
    ifd = struct.pack("<H", len(tags))
    for tag, kind, value in tags:
        value = offset if tag == 273 else value
        ifd += struct.pack("<HHIHH", tag, kind, 1, value, 0) if kind == 3 else struct.pack("<HHII", tag, kind, 1, value)
    return b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + data


def png16_rgb_bytes(rgb16: np.ndarray) -> bytes:
    """A 48-bit RGB PNG (Pillow writes none)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in rgb16)
    head = struct.pack(">IIBBBBB", SIZE, SIZE, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


class Case(NamedTuple):
    mode: str            # the Pillow mode built (for the coverage check)
    name: str            # file name; None-like "" for an image that no accepted format stores
    image: Optional[Image.Image]
    raw: Optional[bytes]
    gray: np.ndarray     # expected prepared pixels, 1 channel
    rgb: np.ndarray      # expected prepared pixels, 3 channels


def eight_bit(mode: str, name: str, img: Image.Image, via: Optional[str] = None) -> Case:
    """An 8-bit mode: Pillow's own conversion to grey and RGB is the expected result."""
    src = img.convert(via) if via else img
    return Case(mode, name, img, None, np.asarray(src.convert("L")), np.asarray(src.convert("RGB")))


def deep(mode: str, name: str, img: Optional[Image.Image], gray: np.ndarray, raw: Optional[bytes] = None) -> Case:
    return Case(mode, name, img, raw, gray, np.repeat(gray[..., None], 3, axis=2))


def _cases() -> list[Case]:
    rgb = Image.fromarray(RGB8)
    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    p = Image.fromarray(A8, "L").convert("P")
    p.putpalette(palette.tobytes())
    bits = "".join(f"{v:012b}" for v in (GRAD16 >> 4).ravel())
    u32 = (GRAD16.astype(np.uint64) * 65537).astype("<u4")   # 0 .. 2**32 - 1
    dark = (GRAD16 // 66).astype(np.uint16)                   # a dark 16-bit scan: 0 .. 993
    floats = GRAD16.astype(np.float32) / 65535
    cases = [
        eight_bit("1", "one.png", Image.fromarray(A8 > 127)),
        eight_bit("L", "gray.png", Image.fromarray(A8)),
        eight_bit("LA", "gray-alpha.png", Image.merge("LA", [Image.fromarray(A8), Image.fromarray(255 - A8)])),
        eight_bit("P", "palette.png", p),
        eight_bit("PA", "palette-alpha.tif", Image.merge("PA", [p.convert("L"), Image.fromarray(A8)]).copy()),
        eight_bit("RGB", "rgb.png", rgb),
        eight_bit("RGBA", "rgba.png", Image.merge("RGBA", [*rgb.split(), Image.fromarray(A8)])),
        eight_bit("RGBX", "rgbx.tif", rgb.convert("RGBX")),
        eight_bit("CMYK", "cmyk.tif", rgb.convert("CMYK")),
        eight_bit("YCbCr", "ycbcr.tif", rgb.convert("YCbCr")),
        eight_bit("LAB", "lab.tif", rgb.convert("LAB"), via="RGB"),
        deep("I;16", "gray16.png", Image.fromarray(GRAD16), full_range(GRAD16, 65535)),
        deep("I;16", "dark16.png", Image.fromarray(dark), full_range(dark, 65535)),
        deep("I;16B", "gray16-big-endian.tif", Image.frombytes("I;16B", (SIZE, SIZE), GRAD16.astype(">u2").tobytes()),
             full_range(GRAD16, 65535)),
        deep("I;16L", "gray16-little-endian.tif", Image.frombytes("I;16L", (SIZE, SIZE), GRAD16.astype("<u2").tobytes()),
             full_range(GRAD16, 65535)),
        deep("I;16", "gray12.tif", None, full_range(GRAD16 >> 4, 4095),
             raw=tiff_bytes(int(bits, 2).to_bytes(len(bits) // 8, "big"), 12, 1)),
        deep("I", "gray32-unsigned.tif", None, full_range(u32, 2**32 - 1), raw=tiff_bytes(u32.tobytes(), 32, 1)),
        deep("F", "float.tif", Image.fromarray(floats), full_range(GRAD16, 65535)),
        # 16-bit colour: Pillow keeps each sample's high byte.
        Case("RGB", "rgb48.png", None, png16_rgb_bytes(np.stack([GRAD16, GRAD16[::-1], GRAD16.T], 2)),
             np.asarray(Image.fromarray(np.stack([GRAD16 >> 8, GRAD16[::-1] >> 8, GRAD16.T >> 8], 2).astype(np.uint8))
                        .convert("L")),
             np.stack([GRAD16 >> 8, GRAD16[::-1] >> 8, GRAD16.T >> 8], 2).astype(np.uint8)),
    ]
    # Modes no accepted file format stores: decoded from memory by the same function.
    cases += [
        eight_bit("La", "", Image.merge("LA", [Image.fromarray(A8), Image.fromarray(255 - A8)]).convert("La"), via="LA"),
        eight_bit("RGBa", "", Image.merge("RGBA", [*rgb.split(), Image.fromarray(A8)]).convert("RGBa")),
        eight_bit("HSV", "", rgb.convert("HSV")),
        deep("I;16N", "", Image.frombytes("I;16N", (SIZE, SIZE), GRAD16.astype("=u2").tobytes()),
             full_range(GRAD16, 65535)),
    ]
    return cases


CASES = _cases()
REFUSED_MODES = {"I": "signed", "F": "outside"}   # Pillow's own I (signed) and F out of range: tests below


def test_every_pillow_mode_is_covered():
    assert set(Image.MODES) <= {c.mode for c in CASES} | set(REFUSED_MODES), \
        f"Pillow modes without a case: {set(Image.MODES) - {c.mode for c in CASES}}"


def _write(case: Case, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if case.raw is not None:
        path.write_bytes(case.raw)
    else:
        case.image.save(path)


def _folder(root: Path, cases: list[Case]) -> None:
    for c in cases:
        _write(c, root / "deep" / c.name)
    (root / "plain").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(255 - A8 if i else A8).save(root / "plain" / f"p{i}.png")


@pytest.mark.parametrize("dataset, channels", [("mnist", 1), ("cifar10", 3)])
def test_each_mode_is_prepared_to_its_full_range_values(tmp_path, make_params, dataset, channels):
    files = [c for c in CASES if c.name]
    opened = {}
    root = tmp_path / "scans"
    _folder(root, files)
    for c in files:   # each file opens in the mode its case is about
        with Image.open(root / "deep" / c.name) as im:
            opened[c.name] = im.mode
    assert opened["gray16.png"] == "I;16" and opened["gray12.tif"] == "I;16" and opened["float.tif"] == "F"
    assert opened["gray32-unsigned.tif"] == "I" and opened["lab.tif"] == "LAB" and opened["rgb48.png"] == "RGB"
    params = make_params({"datasets": {dataset: {"folder": str(root), "image_size": SIZE, "train_limit": 0,
                                                 "val_limit": 1, "test_limit": None}}})
    acquire(dataset, params, tmp_path / "raw")
    prepare(dataset, params, tmp_path / "raw", tmp_path / "prepared")
    record = acquire(dataset, params, tmp_path / "raw")
    rows = {}
    for split, items in record["folder"]["splits"].items():
        x = load_npz(tmp_path / "prepared" / f"{split}.npz")["x"]
        rows.update({rel: x[i] for i, (rel, _) in enumerate(items)})
    for c in files:
        got = rows[f"deep/{c.name}"]
        want = c.gray[..., None] if channels == 1 else c.rgb
        assert got.shape == want.shape and np.array_equal(got, want), \
            f"{c.name} ({opened[c.name]}): max difference {np.abs(got.astype(int) - want).max()}"
    dark = rows["deep/dark16.png"]
    assert dark.max() == 4 and dark.min() == 0   # a dark scan stays dark: no per-image stretching
    assert rows["deep/gray16.png"].max() == 255 and rows["deep/gray16.png"].min() == 0


@pytest.mark.parametrize("channels", [1, 3])
def test_modes_no_file_format_stores_are_converted_the_same_way(channels):
    for c in [c for c in CASES if not c.name]:
        got = folder.to_square(c.image, SIZE, channels, c.mode)
        want = c.gray[..., None] if channels == 1 else c.rgb
        assert np.array_equal(got, want), f"{c.mode}: max difference {np.abs(got.astype(int) - want).max()}"


def _refused(tmp_path, make_params, write: Callable[[Path], None], stage: str) -> str:
    root = tmp_path / "scans"
    _folder(root, [CASES[1], CASES[5]])
    write(root / "deep" / "odd.tif")
    params = make_params({"datasets": {"mnist": {"folder": str(root), "image_size": SIZE, "train_limit": 0,
                                                 "val_limit": 1, "test_limit": None}}})
    with pytest.raises(DataError) as err:
        acquire("mnist", params, tmp_path / "raw")
        assert stage == "preprocess", "the download stage accepted it"
        prepare("mnist", params, tmp_path / "raw", tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()
    msg = str(err.value)
    assert msg.startswith(f"{root / 'deep' / 'odd.tif'}: ") and "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("what, write, stage, says", [
    ("Pillow's mode I: 32-bit signed", lambda p: Image.fromarray(GRAD16.astype(np.int32)).save(p), "download",
     "32-bit signed integer samples (TIFF, Pillow mode I) have no fixed black and white"),
    ("16-bit signed", lambda p: p.write_bytes(tiff_bytes(GRAD16.astype("<i2").tobytes(), 16, 2)), "download",
     "16-bit signed integer samples (TIFF, Pillow mode I)"),
    ("float over 1", lambda p: Image.fromarray(GRAD16.astype(np.float32)).save(p), "preprocess",
     "32-bit float samples from 0 to 65535; a float image is read as 0.0 = black to 1.0 = white"),
    ("float NaN", lambda p: Image.fromarray(np.full((SIZE, SIZE), np.nan, np.float32)).save(p), "preprocess",
     "32-bit float samples include NaN or infinity"),
])
def test_sample_formats_without_a_fixed_range_are_refused_by_name(tmp_path, make_params, what, write, stage, says):
    msg = _refused(tmp_path, make_params, write, stage)
    assert says in msg and "save it with 8- or 16-bit unsigned samples" in msg, msg
